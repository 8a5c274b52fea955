"""The Attention dock in the real chat window: the tiny model in the real engine child, real widgets; rendered."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PySide6.QtCore import QPoint, Qt
from PySide6.QtGui import QColor, QImage, QPalette
from tiny_gemma3 import write_tiny_gemma3

from app.main import MainWindow
from app.visualizers.attention import AttentionView, label
from engine.attention_map import AttentionMap
from engine.conversations import ConversationStore
from engine.runtime import Runtime
from engine.settings import LoadSettings, SamplingSettings

TIMEOUT = 300_000
TINY_EOG = ((2, -100.0), (4, -100.0))  # the tiny vocab's end tokens, banned so the reply has its full length


@pytest.fixture
def window(qtbot, tmp_path, tiny_model, monkeypatch):
    monkeypatch.setenv(
        "INGLE_HOME", str(tmp_path / "home")
    )  # the docks opened here stay in this test's gui.ini
    w = MainWindow(store=ConversationStore(tmp_path / "chats.sqlite3"), model=tiny_model)
    qtbot.addWidget(w)
    w.resize(1300, 900)
    w.show()
    with qtbot.waitSignal(w.model_ready, timeout=TIMEOUT):
        pass
    yield w
    w.close()


def captured(qtbot, window, action) -> None:
    """Run `action` and wait for the attention dock to show a fresh capture (or its failure)."""
    with qtbot.waitSignal(
        window.inspector.updated, timeout=TIMEOUT, check_params_cb=lambda what: what == "attention"
    ):
        action()
    qtbot.waitUntil(lambda: window.bridge.idle, timeout=TIMEOUT)


def test_attention_dock_shows_the_conversation_and_follows_the_hovered_token(qtbot, window, tmp_path):
    ins = window.inspector
    view = ins.attention
    ins.show("attention")
    assert "send a message" in view.status.text()  # an empty conversation: nothing captured, said so
    window.new_chat()
    window.store.set_settings(
        window.conversation, SamplingSettings(max_tokens=12, seed=3, logit_bias=TINY_EOG)
    )
    # the capture follows the reply by itself
    captured(qtbot, window, lambda: window.send("the cat is on the moon and the dog is in the sun"))
    amap = view.amap
    expected = window.bridge.host.render_tokens(window.engine_messages(), add_generation_prompt=False)
    assert list(amap.tokens) == expected and len(expected) > 20
    assert [m.role for m in window.engine_messages()] == ["user", "assistant"]
    assert view.layer_box.count() == 2 and view.head_box.count() == 5  # 2 layers; mean + 4 heads
    assert "global" in view.layer_box.itemText(0) and "global" in view.layer_note.text()
    # the heatmap shows the chosen layer and head, the mean over heads by default
    np.testing.assert_allclose(view.heatmap.matrix, amap.weights[1].mean(axis=0))
    view.head_box.setCurrentIndex(3)
    view.layer_box.setCurrentIndex(0)
    np.testing.assert_array_equal(view.heatmap.matrix, amap.weights[0, 2])
    assert "tokens" in view.status.text() and "2 layers" in view.status.text()

    # hover a token in the text: it is focused and the token it attends to most is drawn hottest
    text = view.text
    qtbot.waitUntil(lambda: len(text._chip_rects) == len(amap.tokens), timeout=10_000)
    q = 14
    qtbot.mouseMove(text, text._chip_rects[q].center())
    qtbot.waitUntil(lambda: text.focus == q, timeout=10_000)
    assert view.heatmap.focus == q
    row = amap.weights[0, 2, q]
    strongest, weakest = int(np.argmax(row[: q + 1])), int(np.argmin(row[: q + 1]))
    image = text.grab().toImage()

    def redness(i: int) -> float:
        c = QColor(image.pixel(text._chip_rects[i].topLeft() + QPoint(1, 1)))
        return c.redF() - c.blueF()

    assert redness(strongest) > redness(weakest) + 0.1
    assert redness(q + 1) < redness(strongest)  # tokens after the hovered one get no highlight

    # hovering a heatmap row focuses that query in the text
    heat = view.heatmap
    left, top, cell = heat._geometry()
    qtbot.mouseMove(heat, QPoint(int(left + 2 * cell + cell / 2), int(top + 5 * cell + cell / 2)))
    qtbot.waitUntil(lambda: text.focus == 5, timeout=10_000)
    assert heat.cell_at(QPoint(int(left + 2 * cell + 1), int(top + 5 * cell + 1))) == (5, 2)

    path = tmp_path / "attention-tiny.png"
    assert ins.docks["attention"].grab().save(str(path))
    image = QImage(str(path))
    colours = {image.pixel(x, y) for x in range(0, image.width(), 5) for y in range(0, image.height(), 5)}
    assert len(colours) > 20, "the dock rendered nearly blank"


def test_refresh_button_captures_again_and_errors_are_shown(qtbot, window):
    ins = window.inspector
    ins.show("attention")
    window.new_chat()
    window.store.set_settings(window.conversation, SamplingSettings(max_tokens=4, seed=1))
    captured(qtbot, window, lambda: window.send("hello world"))
    first = ins.attention.amap
    before = window.bridge.host.evaluation_count()
    ins.docks["attention"].hide()  # shown again for the same conversation: no new capture
    ins.show("attention")
    qtbot.wait(300)
    qtbot.waitUntil(lambda: window.bridge.idle, timeout=TIMEOUT)
    assert window.bridge.host.evaluation_count() == before and ins.attention.amap is first
    captured(qtbot, window, lambda: qtbot.mouseClick(ins.attention.refresh_button, Qt.LeftButton))
    assert ins.attention.amap is not first and window.bridge.host.evaluation_count() == before + 1
    assert ins.attention.amap.tokens == first.tokens
    # the engine fails (here: its model is gone behind the window's back): the dock shows the engine's one
    # line, keeps the last good capture on screen, and its button works again
    window.bridge.host.unload()
    captured(qtbot, window, ins.refresh_attention)
    assert "No model is loaded" in ins.attention.status.text()
    assert ins.attention.refresh_button.isEnabled() and ins.attention.amap.tokens == first.tokens


def test_the_gui_process_reads_an_attention_map_without_llama_cpp():
    import subprocess
    import sys

    code = (
        "import sys, pickle, numpy as np, app.inspector; from engine.attention_map import AttentionMap; "
        "m = pickle.loads(pickle.dumps(AttentionMap((1, 2), ('a', 'b'), np.eye(2, dtype='f4')[None, None], (), 0))); "
        "print(m.matrix(0, None).shape, 'llama_cpp' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})  # fmt: skip
    assert out.stdout.strip() == "(2, 2) False"


def test_sliding_window_layers_are_marked_and_their_window_drawn(qtbot, tmp_path):
    rt = Runtime()
    list(
        rt.load(
            write_tiny_gemma3(tmp_path / "g3.gguf", window=4, pattern=[True, False]), LoadSettings(n_ctx=256)
        )
    )
    try:
        amap = rt.attention("the cat is on the moon and the dog is in the sun")
    finally:
        rt.close()
    view = AttentionView()
    qtbot.addWidget(view)
    view.resize(1000, 520)
    view.show()
    view.set_map(amap)
    assert view.layer_box.itemText(0) == "0 · sliding window 4" and view.layer_box.itemText(1) == "1 · global"
    assert view.layer_box.currentIndex() == 1  # the last layer first

    def greens(widget) -> int:
        image = widget.grab().toImage()
        sliding = QColor("#3a9d5d").rgb()
        return sum(image.pixel(x, y) == sliding for x in range(image.width()) for y in range(image.height()))

    assert greens(view.heatmap) == 0  # a global layer has no window edge
    view.layer_box.setCurrentIndex(0)
    assert "at most the 4 tokens" in view.layer_note.text()
    assert greens(view.heatmap) > 50  # the window's edge, drawn along the band
    heat = view.heatmap
    left, top, cell = heat._geometry()
    image = heat.grab().toImage()

    def cell_colour(q: int, k: int) -> QColor:
        return QColor(image.pixel(int(left + (k + 0.5) * cell), int(top + (q + 0.5) * cell)))

    inside, outside = cell_colour(10, 8), cell_colour(10, 2)  # window 4: query 10 sees keys 7..10
    assert outside == view.palette().color(QPalette.Base) and inside.red() - inside.blue() > 30
    assert view.grab().save(str(tmp_path / "attention-sliding.png"))


def test_a_hostile_token_text_is_elided_not_measured_whole(qtbot):
    # a model's vocabulary is untrusted: one "token" can be megabytes of text
    weights = np.tril(np.ones((3, 3), np.float32))
    weights /= weights.sum(-1, keepdims=True)
    amap = AttentionMap((1, 2, 3), ("x" * 2_000_000, "\n\t", "ok"), weights[None, None], (), 0)
    view = AttentionView()
    qtbot.addWidget(view)
    view.resize(900, 500)
    view.show()
    view.set_map(amap)
    assert view.text.chip_text(1) == "↵⇥" and len(label(amap.pieces[0])) <= 40
    assert not view.grab().isNull()
    qtbot.mouseMove(view.text, view.text._chip_rects[2].center())
    qtbot.waitUntil(lambda: view.text.focus == 2, timeout=10_000)
