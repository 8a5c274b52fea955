"""The library holds models and adapters with an index; the starter model is assembled offline and verified."""

import json

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
