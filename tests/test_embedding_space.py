"""The embedding space: nearest tokens and the PCA projection agree with an independent numpy computation on the
matrix gguf-py dequantizes; bad input is refused in one line; the dock renders and runs through the engine child."""

from __future__ import annotations

import os

import gguf
import numpy as np
import pytest
from gguf.quants import dequantize, quantize

from engine.embedding_space import EmbeddingCache, load_matrix, nearest
from engine.errors import EngineError


def reference_matrix(path) -> np.ndarray:
    """token_embd as gguf-py's own reader and dequantizer give it (rows = tokens), float64."""
    reader = gguf.GGUFReader(path)
    tensor = next(t for t in reader.tensors if t.name == "token_embd.weight")
    rows = dequantize(np.asarray(tensor.data), tensor.tensor_type)
    return np.asarray(rows, np.float64).reshape(int(tensor.shape[1]), int(tensor.shape[0]))


def cosine_top(matrix: np.ndarray, token: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    unit = matrix / np.linalg.norm(matrix, axis=1, keepdims=True)
    scores = unit @ unit[token]
    scores[token] = -np.inf
    order = np.argsort(-scores, kind="stable")[:k]
    return order, scores


def test_neighbours_are_numpy_cosine_on_the_dequantized_matrix(tiny_runtime, tiny_model):
    rt = tiny_runtime
    token = rt.tokenize("hello")[0]
    result = rt.token_neighbours(token, 12)
    order, scores = cosine_top(reference_matrix(tiny_model), token, 12)
    assert [n.token for n in result.neighbours] == order.tolist()
    np.testing.assert_allclose([n.score for n in result.neighbours], scores[order], atol=1e-6)
    assert result.piece == rt.piece(token) and token not in [n.token for n in result.neighbours]
    assert result.neighbours[0].piece == rt.piece(order[0])
    # text that is one token works as its id does; the second call reads the cached matrix
    again = rt.token_neighbours("hello", 12)
    assert again.token == token and again.cached and again.neighbours == result.neighbours


def test_quantized_matrix_matches_gguf_py_in_float32_and_float16(tmp_path):
    rng = np.random.default_rng(3)
    embd = rng.standard_normal((300, 64)).astype(np.float32)
    path = tmp_path / "q8.gguf"
    writer = gguf.GGUFWriter(path, "llama")
    q8 = quantize(embd, gguf.GGMLQuantizationType.Q8_0)
    writer.add_tensor("token_embd.weight", q8, raw_shape=q8.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    ref = reference_matrix(path)
    assert np.abs(ref - embd).max() > 0  # it really was quantized: the reference is the dequantized matrix
    exact = load_matrix(path)
    assert exact.source_type == "Q8_0" and exact.unit.dtype == np.float32
    order, scores = cosine_top(ref, 7, 10)
    found = nearest(exact, 7, 10)
    assert [t for t, _ in found] == order.tolist()
    np.testing.assert_allclose([s for _, s in found], scores[order], atol=1e-5)
    half = load_matrix(path, float32_limit=0)  # the big-vocabulary path
    assert half.unit.dtype == np.float16
    # float16 rows move a cosine by < 1e-3 (11-bit mantissa over 64 terms): the scores of the true top 10
    np.testing.assert_allclose([s for _, s in nearest(half, 7, 10)], scores[order], atol=2e-3)


def test_projection_is_the_pca_of_the_context_tokens(tiny_runtime, tiny_model):
    rt = tiny_runtime
    tokens = rt.tokenize("the cat sat on the mat and the dog sat too", add_special=True)
    rt.evaluate(tokens)
    result = rt.embedding_projection()  # default: the tokens in the KV cache
    distinct = list(dict.fromkeys(tokens))
    assert list(result.tokens) == distinct and result.total_tokens == len(tokens)
    assert len(result.points) == len(distinct) and all(len(p) == 2 for p in result.points)
    ref = reference_matrix(tiny_model)[distinct]
    ref = ref / np.linalg.norm(ref, axis=1, keepdims=True)
    centred = ref - ref.mean(axis=0)
    _u, s, vt = np.linalg.svd(centred, full_matrices=False)
    expected = centred @ vt[:2].T
    got = np.array(result.points)
    # an axis has no sign of its own: compare each axis up to sign
    for axis in range(2):
        assert (
            min(
                np.abs(got[:, axis] - expected[:, axis]).max(), np.abs(got[:, axis] + expected[:, axis]).max()
            )
            < 1e-6
        )
    np.testing.assert_allclose(result.explained, (s[:2] ** 2) / (s**2).sum(), atol=1e-9)
    assert result.explained[0] >= result.explained[1] > 0
    explicit = rt.embedding_projection(tokens[:3])
    assert len(explicit.points) == len(set(tokens[:3]))


@pytest.mark.parametrize(
    ("token", "k", "message"),
    [
        (10**7, 5, "not in this model's vocabulary"),
        (-1, 5, "not in this model's vocabulary"),
        ("hello wonderful world", 5, "tokens for this model"),
        ("", 5, "Type a token"),
        (5, 0, "k must be a whole number from 1 to 200"),
        (5, 5000, "k must be a whole number from 1 to 200"),
    ],
)
def test_bad_input_is_refused_in_one_line(tiny_runtime, token, k, message):
    with pytest.raises(EngineError, match=message) as err:
        tiny_runtime.token_neighbours(token, k)
    assert "\n" not in str(err.value)


def test_projection_of_an_empty_context_or_a_bad_id_is_refused(tiny_runtime):
    with pytest.raises(EngineError, match="context is empty"):
        tiny_runtime.embedding_projection([])
    with pytest.raises(EngineError, match="not in this model's vocabulary"):
        tiny_runtime.embedding_projection([1, 10**7])


def test_cache_is_keyed_by_path_size_and_mtime(tmp_path, tiny_model):
    copy = tmp_path / "copy.gguf"
    copy.write_bytes(tiny_model.read_bytes())
    cache = EmbeddingCache()
    first, cached = cache.get(copy)
    assert not cached
    second, cached = cache.get(copy)
    assert cached and second is first
    stat = copy.stat()
    os.utime(copy, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # the file changed: read it again
    third, cached = cache.get(copy)
    assert not cached and third is not first
    np.testing.assert_array_equal(third.unit, first.unit)


def test_a_model_without_token_embeddings_is_refused(tmp_path):
    from engine.errors import ModelFileError

    path = tmp_path / "no-embd.gguf"
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_tensor("output.weight", np.zeros((4, 32), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ModelFileError, match="has no 2-D 'token_embd.weight' tensor"):
        load_matrix(path)


# ---------------------------------------------------------------------------- the dock
def test_dock_renders_results_from_the_engine(qtbot, tiny_runtime):
    from PySide6.QtCore import QPoint, Qt
    from PySide6.QtGui import QColor

    from app.visualizers.common import ROLE_COLORS
    from app.visualizers.embeddings import EmbeddingsView

    rt = tiny_runtime
    view = EmbeddingsView()
    qtbot.addWidget(view)
    view.resize(900, 420)
    view.show()
    with qtbot.waitSignal(view.neighbours_requested) as asked:
        view.token_box.setText("#42")
        view.token_box.returnPressed.emit()
    assert asked.args == [42, 15]
    result = rt.token_neighbours(42, 15)
    view.show_neighbours(result)
    rt.evaluate(rt.tokenize("the cat sat on the mat", add_special=True))
    view.show_projection(rt.embedding_projection())
    image = view.grab().toImage()
    bar = QColor(ROLE_COLORS["user"]).rgb()
    accent = QColor(ROLE_COLORS["draft"]).rgb()
    colours = [image.pixel(x, y) for x in range(0, image.width(), 2) for y in range(0, image.height(), 2)]
    assert colours.count(bar) > 200  # the score bars and the points
    assert "ms (" in view.status.text()
    highlighted = set(result.neighbours[i].token for i in range(15)) | {42}
    assert view.plot.highlight == highlighted
    if highlighted & set(view.plot.projection.tokens):
        assert accent in colours
    # clicking a neighbour looks up its own neighbours
    row_y = 4 + 2 * view.neighbours.ROW + 5  # the second neighbour's row
    with qtbot.waitSignal(view.neighbours_requested) as asked:
        qtbot.mouseClick(view.neighbours, Qt.LeftButton, pos=QPoint(30, row_y))
    assert asked.args == [result.neighbours[1].token, 15]


def test_dock_in_the_window_asks_the_engine_child(qtbot, tmp_path, tiny_model, monkeypatch):
    from app.main import MainWindow
    from engine.conversations import ConversationStore
    from engine.library import Library

    home = tmp_path / "home"
    monkeypatch.setenv("INGLE_HOME", str(home))  # (set directly, it would leak into every later test)
    library = Library(home)
    library.import_file(tiny_model, link=True)
    window = MainWindow(
        store=ConversationStore(tmp_path / "c.sqlite3"), library=library, model=str(tiny_model)
    )
    qtbot.addWidget(window)
    window.show()
    with qtbot.waitSignal(window.model_ready, timeout=120_000):
        pass
    inspector = window.inspector
    inspector.show("embeddings")
    view = inspector.embeddings
    view.token_box.setText("hello")
    view.token_box.returnPressed.emit()
    qtbot.waitUntil(lambda: view.neighbours.result is not None, timeout=60_000)
    assert view.neighbours.result.piece.strip() == "hello" and len(view.neighbours.result.neighbours) == 15
    window.composer.setPlainText("the cat sat on the mat")
    qtbot.waitUntil(lambda: view.plot.projection is not None, timeout=60_000)
    assert "cat" in "".join(view.plot.projection.pieces)
    view.token_box.setText("no such single token here")
    view.token_box.returnPressed.emit()
    qtbot.waitUntil(lambda: "tokens for this model" in view.status.text(), timeout=60_000)
