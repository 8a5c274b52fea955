"""Document search with any embedding model in the library: recognised from its GGUF, chosen with --embed-model
(or the collection's, the bundled MiniLM, the first in the library), a chat model refused, never two models'
vectors in one collection, and the embedding context's threads chosen as the chat's are."""

from __future__ import annotations

from pathlib import Path

import gguf
import llama_cpp
import pytest
from gguf_factory import write_tiny_llama
from tiny_bert import write_tiny_bert

from engine.docs.embed_model import choose, named_embedding_model
from engine.docs.index import open_store
from engine.errors import DocsError
from engine.gguf_info import inspect_gguf
from engine.library import Library

DOCS = {
    "animals.md": "# Animals\n\nThe cat sleeps on the mat. The kitten naps on the rug.\n\nThe dog is in the town.\n",
    "money.md": "# Money\n\nQuarterly tax returns are due in April.\n\nThe tax file is in the library.\n",
    "places.md": "# Places\n\nThe river is under the bridge.\n\nThe bridge is in the town.\n",
}


@pytest.fixture(scope="session")
def bert_files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bert")
    return {
        "a": write_tiny_bert(d / "tiny-bert-a.gguf", seed=1),
        "b": write_tiny_bert(d / "tiny-bert-b.gguf", seed=2),
    }


@pytest.fixture
def library(fresh_home, bert_files, tiny_model) -> Library:
    lib = Library()
    lib.import_file(bert_files["a"], name="bert-a")
    lib.import_file(bert_files["b"], name="bert-b")
    lib.import_file(tiny_model, name="chatty")
    return lib


@pytest.fixture
def docs_folder(tmp_path) -> Path:
    folder = tmp_path / "docs"
    folder.mkdir()
    for name, text in DOCS.items():
        (folder / name).write_text(text)
    return folder


def ingle(*argv: str) -> int:
    from app.cli import main

    return main(list(argv))


def test_embedding_models_are_known_by_their_gguf(tmp_path, bert_files, library):
    assert inspect_gguf(bert_files["a"]).is_embedding
    assert not inspect_gguf(library.get("chatty").file).is_embedding
    pooled = write_tiny_llama(
        tmp_path / "pooled.gguf", seed=4, kv={"llama.pooling_type": (1, gguf.GGUFValueType.UINT32)}
    )
    assert inspect_gguf(pooled).is_embedding  # a decoder that declares its pooling (as Qwen3-Embedding does)
    assert library.get("bert-a").is_embedding and library.get("bert-a").extra["embedding"] is True
    assert not library.get("chatty").is_embedding and "embedding" not in library.get("chatty").extra
    reopened = Library(library.root)  # the mark is kept in the library's index
    assert [e.name for e in reopened.entries("model") if e.is_embedding] == ["bert-a", "bert-b"]


def test_docs_add_with_an_embedding_model_from_the_library(
    capsys, library, docs_folder, tiny_model, tiny_runtime
):
    from engine.docs.cli import retrieve

    args = ("docs", "add", "zoo", str(docs_folder), "--model", str(tiny_model), "--chunk-tokens", "24")
    assert ingle(*args, "--embed-model", "bert-b", "--in-process") == 0
    out, err = capsys.readouterr()
    assert "3 files indexed" in out and "(bert-b, " in out and " threads)" in out, out
    store = open_store(library)
    (info,) = store.collections("zoo")  # one collection's counts, without counting the others'
    assert info.embed_model == "bert-b" and info.embedded == info.chunks > 0
    assert info in store.collections() and store.collections("no such") == []
    store.close()
    hits = retrieve(tiny_runtime, "zoo", "a kitten naps on the rug", 400)
    assert hits and {h.method for h in hits} & {"vector", "hybrid"}, hits
    assert any(h.path.endswith("animals.md") for h in hits)
    # re-adding keeps the collection's model without being told; a changed file is embedded by it alone
    (docs_folder / "money.md").write_text("# Money\n\nThe tax is due.\n")
    assert ingle(*args, "--in-process") == 0
    out = capsys.readouterr()[0]
    assert "1 files indexed" in out and "(bert-b, " in out, out


def test_a_chat_model_or_unknown_name_is_refused_in_one_line(capsys, library, docs_folder):
    for name, expected in (("chatty", "'chatty' is a llama chat model, not an embedding model"),
                           ("nope", "no model named 'nope' in the library")):  # fmt: skip
        assert ingle("docs", "add", "zoo", str(docs_folder), "--embed-model", name, "--in-process") == 2
        err = capsys.readouterr()[1]
        assert err.startswith("ingle: error: --embed-model: ") and expected in err, err
        assert "bert-a, bert-b" in err and err.count("\n") == 1
    store = open_store(library)
    assert "zoo" not in {c.name for c in store.collections()}  # refused before any work
    store.close()


def test_another_model_for_an_embedded_collection_is_refused(capsys, library, docs_folder, tiny_model):
    args = (
        "docs",
        "add",
        "zoo",
        str(docs_folder),
        "--model",
        str(tiny_model),
        "--chunk-tokens",
        "24",
        "--in-process",
    )
    assert ingle(*args, "--embed-model", "bert-a") == 0
    capsys.readouterr()
    assert ingle(*args, "--embed-model", "bert-b") == 2
    err = capsys.readouterr()[1]
    assert "embedded with 'bert-a'" in err and "ingle docs rm zoo" in err and err.count("\n") == 1, err
    assert ingle(*args, "--embed-model", "bert-a") == 0  # the same one is fine


def test_the_default_choice(library, fresh_home, bert_files, tmp_path):
    store = open_store(library)
    assert choose(library, store, "new", bundled=lambda lib: bert_files["a"]).why == "bundled"
    first = choose(library, store, "new", bundled=lambda lib: None)
    assert (first.name, first.why) == ("bert-a", "the first in the library")
    store.collection_id("kept", create=True)
    store.set_embed_model("kept", "bert-b")
    assert choose(library, store, "kept", bundled=lambda lib: None).name == "bert-b"
    # the collection's model has left the library after embedding: full-text, never another model's vectors
    from engine.docs.chunk import Chunk

    (kid,) = store.put_file("kept", "/x.md", "0" * 64, 1, [Chunk("text", 1, None, 1, 1)])
    store.put_vectors([(kid, [1.0, 0.0])])
    library.remove("bert-b")
    gone = choose(library, store, "kept", bundled=lambda lib: bert_files["a"])
    assert not gone.usable and "'bert-b' is not in the library" in gone.why
    with pytest.raises(DocsError, match="embedded with 'bert-b'"):
        choose(library, store, "kept", "bert-a")
    for name in ("bert-a", "chatty"):
        library.remove(name)
    empty = choose(library, store, "new", bundled=lambda lib: None)
    assert not empty.usable and "Models window" in empty.why
    with pytest.raises(DocsError, match="none yet"):
        named_embedding_model(library, "chatty")
    store.close()


def test_embedding_runs_on_the_chosen_threads(bert_files, tiny_model):
    from engine.runtime import Runtime
    from engine.settings import LoadSettings

    rt = Runtime()
    try:
        list(rt.load(tiny_model, LoadSettings(n_ctx=256, n_threads=1)))
        result = rt.embed(["the cat sleeps"], str(bert_files["a"]))
        ctx = rt._embedder.ctx
        assert result.threads == 1 == llama_cpp.llama_n_threads_batch(ctx) == llama_cpp.llama_n_threads(ctx)
        assert rt._embedder.threads.source == "setting"
        list(rt.load(tiny_model, LoadSettings(n_ctx=256)))  # no count given: the idle cores decide
        result = rt.embed(["the cat sleeps"], str(bert_files["a"]))
        chosen = rt._embedder.threads
        assert chosen.source == "idle cores" and chosen.idle >= 0
        assert result.threads == chosen.threads_batch == llama_cpp.llama_n_threads_batch(rt._embedder.ctx)
        assert 1 <= result.threads <= chosen.cores
    finally:
        rt.close()


def test_the_background_index_job_takes_the_collection_setting(library, docs_folder, tiny_model):
    """What the Documents panel runs: the embedding model named once is stored with the collection and used again;
    a chat model is refused before an engine starts."""
    from engine.docs.index import index_job
    from engine.runtime import Runtime

    opened = []

    def open_engine():
        opened.append(Runtime())
        return opened[-1]

    def no_progress(fraction, text):
        pass

    report = index_job(
        "desk", [str(docs_folder)], str(tiny_model), no_progress, open_engine, embed_model="bert-a"
    )
    assert report.embedded > 0 and report.embed_model == "bert-a" and report.embed_threads >= 1
    (docs_folder / "new.md").write_text("# New\n\nThe river is in the town.\n")
    again = index_job("desk", [str(docs_folder)], str(tiny_model), no_progress, open_engine)
    assert again.embedded == 1 and again.embed_model == "bert-a" and len(opened) == 2
    with pytest.raises(DocsError, match="'chatty' is a llama chat model"):
        index_job(
            "desk2", [str(docs_folder)], str(tiny_model), no_progress, open_engine, embed_model="chatty"
        )
    assert len(opened) == 2  # refused before any engine was started


def test_a_passage_longer_than_the_embedding_model_reads_is_embedded_by_its_start(
    tmp_path, bert_files, tiny_runtime
):
    from engine.docs.chunk import Chunk
    from engine.docs.index import EMBED_CHARS, embed_pending
    from engine.docs.store import DocStore
    from engine.errors import SettingsError

    store = DocStore(tmp_path / "index.sqlite")
    long_text = ("xq zv " * 400)[
        :EMBED_CHARS
    ]  # spelled letter by letter: more word pieces than its 512 positions
    with pytest.raises(SettingsError, match="at most 512 tokens"):
        tiny_runtime.embed([long_text], str(bert_files["a"]))
    store.put_file(
        "long", "/long.md", "0" * 64, 1, [Chunk(long_text, 400, None, 1, 1), Chunk("the cat", 2, None, 2, 2)]
    )
    assert embed_pending(store, "long", tiny_runtime, bert_files["a"], name="bert-a") == 2
    assert store.unembedded("long") == [] and store.embed_model("long") == "bert-a"
    store.close()


def test_the_documents_panel_offers_the_library_embedding_models(qtbot, library, docs_folder, tiny_model):
    """The panel lists the library's embedding models (not its chat models); the one picked embeds the files."""
    from app.docs_panel import DocsPanel
    from engine.runtime import Runtime

    panel = DocsPanel("panel-embed", str(tiny_model), engine_factory=Runtime)
    qtbot.addWidget(panel)
    panel.show()  # the tab lists the library's embedding models as it is shown
    names = [panel.embed_model.itemText(i) for i in range(panel.embed_model.count())]
    assert names == ["Automatic", "bert-a", "bert-b"]  # "chatty" is a chat model: not offered
    panel.embed_model.setCurrentIndex(2)
    with qtbot.waitSignal(panel.indexed, timeout=240_000) as got:
        panel.attach([str(docs_folder)])
    report = got.args[0]
    assert report.embed_model == "bert-b" and report.embedded > 0
    assert f"{report.embedded} passages embedded with bert-b" in panel.status.text()
    panel.resize(420, 360)
    panel.grab().save("/tmp/docs-panel-embed.png")
