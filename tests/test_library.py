"""The library holds models and adapters with an index; the starter model is assembled offline and verified."""

import json
from pathlib import Path

import pytest

from engine.errors import LibraryError, ModelFileError
from engine.library import STARTER_NAME, Library


def test_starter_is_assembled_once_and_verified(starter_model):
    lib = Library()
    entry = lib.get(STARTER_NAME)
    assert entry.sha256.startswith("a5fd3b62") and entry.source == "starter"
    assert entry.architecture == "gemma3" and entry.quant == "Q4_K_M"
    assert "BASE model" in entry.description
    mtime = starter_model.stat().st_mtime_ns
    assert lib.ensure_starter().file == starter_model
    assert starter_model.stat().st_mtime_ns == mtime  # not assembled again
    assert lib.resolve(None) == starter_model


def test_import_copy_link_list_remove(fresh_home, tiny_model, tmp_path):
    lib = Library()
    copied = lib.import_file(tiny_model, name="tiny-copy")
    linked = lib.import_file(tiny_model, link=True, name="tiny-link")
    assert copied.file.parent == fresh_home / "models" and copied.file.read_bytes() == tiny_model.read_bytes()
    assert linked.file == tiny_model and linked.linked
    assert {e.name for e in lib.entries("model")} == {"tiny-copy", "tiny-link"}
    assert lib.resolve("tiny-copy") == copied.file
    lib.remove("tiny-copy")
    lib.remove("tiny-link")
    assert not copied.file.exists()
    assert tiny_model.exists()  # a linked original is never deleted
    assert lib.entries() == []


def test_import_errors_leave_the_library_unchanged(fresh_home, tiny_model, corrupt_files):
    lib = Library()
    lib.import_file(tiny_model, name="tiny")
    with pytest.raises(LibraryError, match="already has 'tiny'"):
        lib.import_file(tiny_model, name="tiny")
    with pytest.raises(ModelFileError, match="truncated"):
        lib.import_file(corrupt_files["data_past_eof"])
    with pytest.raises(LibraryError, match="No model or adapter named 'nope'"):
        lib.resolve("nope")
    assert [e.name for e in lib.entries()] == ["tiny"]
    assert sorted(p.name for p in (fresh_home / "models").iterdir()) == ["tiny.gguf"]


def test_adapters_are_kept_apart(fresh_home, corrupt_files):
    entry = Library().import_file(corrupt_files["adapter"], name="my-adapter")
    assert entry.kind == "adapter" and entry.file.parent == fresh_home / "adapters"


def test_damaged_index_is_rebuilt_with_a_message(fresh_home, tiny_model):
    lib = Library()
    lib.import_file(tiny_model, name="tiny")
    lib.index_path.write_text("{ half written")
    with pytest.raises(LibraryError, match="damaged"):
        lib.entries()
    assert [e.name for e in lib.entries()] == ["tiny"]
    assert any(p.name.startswith("index.broken-") for p in fresh_home.iterdir())
    json.loads(lib.index_path.read_text())


def test_register_links_an_output_and_refreshes_it_when_written_again(tiny_model, tmp_path, fresh_home):
    import shutil

    from engine.library import Library

    out = tmp_path / "tiny.gguf"
    shutil.copy(tiny_model, out)
    library = Library()
    first = library.register(out, source="training", description="first")
    assert first.linked and first.file == out and first.source == "training"
    again = library.register(out, source="training", description="second")
    assert again.name == first.name and [e.description for e in library.entries()] == ["second"]
    other = tmp_path / "other" / "tiny.gguf"  # same stem, different file: a new name, nothing overwritten
    other.parent.mkdir()
    shutil.copy(tiny_model, other)
    assert library.register(other, source="training").name == "tiny-2"
    assert out.exists() and other.exists()


# ------------------------------------------------------------ names are names (issue 14, item 5)
@pytest.mark.parametrize(
    "name", ["../evil", "../../evil", "/tmp/abs-evil", "a/b", "..", ".hidden", "a\\b", "x y"]
)
def test_import_refuses_a_name_that_is_a_path(fresh_home, tiny_model, tmp_path, name):
    lib = Library()
    before = sorted(p.name for p in tmp_path.rglob("*") if p.is_file())
    with pytest.raises(LibraryError, match="not allowed"):
        lib.import_file(tiny_model, name=name)
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == before  # nothing written anywhere
    assert not Path("/tmp/abs-evil.gguf").exists()
    assert lib.entries() == []


def test_a_name_from_a_file_name_is_made_safe(fresh_home, tiny_model, tmp_path):
    import shutil

    odd = tmp_path / "my model (v2)\n.gguf"
    shutil.copy(tiny_model, odd)
    entry = Library().import_file(odd)
    assert entry.name == "my-model-v2" and entry.file == fresh_home / "models" / "my-model-v2.gguf"
    registered = Library().register(odd, source="training")
    assert registered.name == "my-model-v2-2" and registered.linked


def _forge_index(lib: Library, **entries) -> None:
    lib.index_path.parent.mkdir(parents=True, exist_ok=True)
    lib.index_path.write_text(json.dumps({"version": 1, "entries": entries}))


def _entry(name: str, path, linked: bool = False, **extra) -> dict:
    return {"name": name, "kind": "model", "path": str(path), "linked": linked, "size": 1, **extra}


def test_rm_never_deletes_a_file_outside_the_library_whatever_the_index_says(fresh_home, tmp_path):
    victim = tmp_path / "precious.txt"
    victim.write_text("keep me")
    lib = Library()
    _forge_index(lib, copied=_entry("copied", victim), linked=_entry("linked", victim, linked=True))
    assert lib.get("copied").linked  # a copy outside the library is treated as a link: never deleted
    lib.remove("copied")
    lib.remove("linked")
    assert victim.read_text() == "keep me"
    assert lib.entries() == []


def test_rm_does_not_follow_a_forged_part_name_out_of_the_library(fresh_home, tiny_model, tmp_path):
    lib = Library()
    entry = lib.import_file(tiny_model, name="tiny")
    victim = fresh_home / "precious.gguf"
    victim.write_text("keep me")
    forged = _entry("tiny", entry.path, extra={"parts": ["tiny.gguf", "../precious.gguf"]})
    _forge_index(lib, tiny=forged)
    with pytest.raises(LibraryError, match="damaged"):
        lib.entries()  # set aside and rebuilt from the files the library holds
    assert [e.name for e in lib.entries()] == ["tiny"]
    lib.remove("tiny")
    assert victim.read_text() == "keep me" and not entry.file.exists()


@pytest.mark.parametrize(
    "forged",
    [
        {"../evil": _entry("../evil", "/tmp/x.gguf")},
        {"a": _entry("a", "/tmp/x.gguf", linked="yes")},
        {"a": _entry("b", "/tmp/x.gguf")},
        {"a": {**_entry("a", "/tmp/x.gguf"), "surprise": 1}},
        {"a": [1, 2]},
    ],
    ids=["path-name", "wrong-type", "renamed", "unknown-field", "not-an-object"],
)
def test_a_forged_index_entry_sets_the_index_aside(fresh_home, forged):
    lib = Library()
    _forge_index(lib, **forged)
    with pytest.raises(LibraryError, match="damaged"):
        lib.entries()
    assert lib.entries() == []
    assert any(p.name.startswith("index.broken-") for p in fresh_home.iterdir())


def test_a_deeply_nested_index_is_set_aside_not_a_crash(fresh_home):
    lib = Library()
    lib.index_path.parent.mkdir(parents=True)
    lib.index_path.write_text('{"version": 1, "entries": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(LibraryError, match="damaged"):
        lib.entries()
    assert lib.entries() == []


def test_an_index_with_invalid_utf8_is_set_aside_with_a_message(fresh_home, tiny_model):
    lib = Library()
    lib.import_file(tiny_model, name="tiny")
    lib.index_path.write_bytes(b'{"version": 1, "entries": {"\xff\xfe": {}}}')
    with pytest.raises(LibraryError, match="damaged") as err:
        lib.entries()
    assert "\n" not in str(err.value)
    assert [e.name for e in lib.entries()] == ["tiny"]
    backups = [p for p in fresh_home.iterdir() if p.name.startswith("index.broken-")]
    assert len(backups) == 1 and backups[0].read_bytes().startswith(b'{"version": 1, "entries": {"\xff')


def test_an_unusable_home_is_one_clear_error(tmp_path, monkeypatch, tiny_model):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    lib = Library(blocker / "home")  # root can write anywhere; a file in the way stops everyone
    with pytest.raises(LibraryError, match="INGLE_HOME") as err:
        lib.import_file(tiny_model, name="tiny")
    assert str(blocker / "home") in str(err.value)
    with pytest.raises(LibraryError, match="INGLE_HOME"):
        lib.ensure_starter()
    assert lib.entries() == []  # reading an absent index is fine


_IMPORT_MANY = """
import sys
from engine.library import Library
lib = Library()
for i in range(int(sys.argv[2])):
    lib.import_file(sys.argv[1], link=True, name=f"{sys.argv[3]}-{i}")
"""


def test_two_processes_changing_the_library_at_once_lose_no_entry(fresh_home, tiny_model):
    import os
    import subprocess
    import sys

    env = dict(os.environ, INGLE_HOME=str(fresh_home))
    procs = [
        subprocess.Popen([sys.executable, "-c", _IMPORT_MANY, str(tiny_model), "15", who], env=env)
        for who in ("window", "pull")
    ]
    assert [p.wait(300) for p in procs] == [0, 0]
    names = {e.name for e in Library().entries()}
    assert names == {f"{who}-{i}" for who in ("window", "pull") for i in range(15)}


def test_every_entry_field_has_its_index_type():
    """The index check knows each field's type (a new Entry field must be added to _FIELD_TYPES)."""
    from dataclasses import fields

    from engine.library import _FIELD_TYPES, Entry

    assert set(_FIELD_TYPES) == {f.name for f in fields(Entry)}
