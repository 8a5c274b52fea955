"""The visualizers in the real chat window: real engine child, the starter model, real widgets; each one rendered."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PySide6.QtGui import QImage

from app.main import MainWindow
from engine.conversations import ConversationStore
from engine.library import Library
from engine.settings import CacheType, FlashAttention, LoadSettings, OverflowPolicy, SamplingSettings

GREEDY = SamplingSettings(temperature=0.0, max_tokens=24, top_k=40)
VISUALIZERS = ("context", "tokens", "kv", "probabilities", "preview", "timing", "kv_calculator")


def open_window(qtbot, tmp_path, starter_model, settings: LoadSettings | None = None) -> MainWindow:
    # a home of its own: the docks this test opens are remembered in its gui.ini, not in other tests' windows
    home = tmp_path / "home"
    os.environ["INGLE_HOME"] = str(home)
    library = Library(home)
    library.import_file(starter_model, link=True)
    window = MainWindow(
        store=ConversationStore(tmp_path / "chats.sqlite3"), library=library, model=str(starter_model)
    )
    qtbot.addWidget(window)
    window.resize(1400, 1000)
    window.show()
    with qtbot.waitSignal(window.model_ready, timeout=300_000):
        pass
    if settings is not None:
        with qtbot.waitSignal(window.model_ready, timeout=300_000):
            window.load_model(str(starter_model), settings)
    for key in VISUALIZERS:
        window.inspector.show(key)
    qtbot.waitUntil(lambda: window.bridge.idle, timeout=300_000)
    return window


def wait_inspected(qtbot, window, what: str = "inspect"):
    """Wait until the inspector has shown a fresh `what` and the engine queue is empty."""
    with qtbot.waitSignal(window.inspector.updated, timeout=300_000, check_params_cb=lambda w: w == what):
        pass
    qtbot.waitUntil(lambda: window.bridge.idle, timeout=300_000)


def chat(qtbot, window, text: str, settings: SamplingSettings = GREEDY) -> int:
    window.new_chat()
    window.store.set_settings(window.conversation, settings)
    window.sampling_panel.set_settings(settings)
    with qtbot.waitSignal(window.reply_finished, timeout=300_000) as blocker:
        assert window.send(text)
    wait_inspected(qtbot, window)
    return blocker.args[0]


def saved_png(widget, path: Path) -> QImage:
    assert widget.grab().save(str(path))
    image = QImage(str(path))
    colours = {image.pixel(x, y) for x in range(0, image.width(), 7) for y in range(0, image.height(), 7)}
    assert len(colours) > 8, f"{path.name} is nearly blank"
    return image


@pytest.fixture(autouse=True)
def own_home(monkeypatch):
    monkeypatch.setenv("INGLE_HOME", os.environ["INGLE_HOME"])  # restored after each test


@pytest.fixture
def window(qtbot, tmp_path, starter_model):
    w = open_window(qtbot, tmp_path, starter_model)
    yield w
    w.close()


def test_every_visualizer_shows_real_data_and_renders(qtbot, window, tmp_path):
    mid = chat(qtbot, window, "Write one sentence about the sea.")
    window.composer.setPlainText("And one about mountains?")
    wait_inspected(qtbot, window)
    state = window.bridge.host.kv_state()  # the engine is idle: ask it directly what its cache holds
    ins = window.inspector
    budget = ins.context_bar.budget
    assert budget.draft_tokens > 0 and budget.history_tokens > 0 and budget.fits
    assert ins.context_bar.segments[-1].label == "reserved for the reply"
    # the map holds exactly what the engine's cache holds, coloured by message
    assert ins.kv_map.n_past == state.n_past == sum(e - s for _, s, e in budget.spans)
    assert ins.kv_map.cell_roles.count("draft") == budget.draft_tokens
    assert [s.name for s in ins.preview.stages] == ["model", "greedy"] and ins.preview.rows()  # temperature 0
    reply = window.store.message(mid)
    tokens = ins.probabilities.tokens
    assert len(tokens) == reply.stats["generated"] and all(
        t.logprob is not None and t.alternatives for t in tokens
    )
    assert "".join(t.text for t in tokens) == reply.content
    assert len(ins.timing.replies) == 1 and ins.timing.replies[0]["generated"] == reply.stats["generated"]
    # the token view follows the newest message (the draft) until the user picks another
    assert ins.tokens.view.joined_bytes() == b"And one about mountains?"
    ins.tokens.picker.setCurrentIndex(1)
    ins.tokens.picker.activated.emit(1)
    wait_inspected(qtbot, window, "token_pieces")
    assert ins.tokens.view.joined_bytes() == reply.content.encode()
    assert ins.kv_calculator.computed_layout.total_bytes == sum(
        g["bytes_k"] + g["bytes_v"] for g in ins.kv_calculator.computed_layout.groups()
    )
    for key in VISUALIZERS:
        ins.show(key)
        qtbot.wait(50)
        saved_png(ins.docks[key], tmp_path / f"visualizer-{key}.png")


def test_moving_a_sampling_slider_updates_the_preview_without_running_the_model(qtbot, window):
    chat(qtbot, window, "Name three colours.", SamplingSettings(temperature=0.8, seed=1, max_tokens=16))
    ins = window.inspector
    before_stages = ins.preview.stages
    evaluations = window.bridge.host.evaluation_count()
    with qtbot.waitSignal(
        window.inspector.updated, timeout=300_000, check_params_cb=lambda w: w == "preview"
    ):
        window.sampling_panel.fields["top_k"].set_value(2)
    qtbot.waitUntil(lambda: window.bridge.idle, timeout=300_000)
    assert window.bridge.host.evaluation_count() == evaluations  # no llama_decode for a slider
    top_k = next(s for s in ins.preview.stages if s.name == "top_k")
    assert top_k.kept == 2 and ins.preview.stages != before_stages
    removed = [r for r in ins.preview.rows() if r["removed_by"] == "top_k"]
    assert len(removed) == len(ins.preview.stages[0].tokens) - 2  # each dropped token names its stage


def test_token_view_round_trips_multibyte_text_and_special_tokens(qtbot, window):
    text = "naïve café 海 🌊 <start_of_turn>user\nhi<end_of_turn>"
    got = []
    window.bridge.call(lambda engine: engine.token_pieces(text), got.append, background=True)
    qtbot.waitUntil(lambda: bool(got) and window.bridge.idle, timeout=300_000)
    pieces = got[0]
    view = window.inspector.tokens.view
    window.inspector.tokens.show_pieces(pieces)
    assert view.joined_bytes() == text.encode("utf-8")
    special = [i for i, p in enumerate(pieces) if p.special]
    assert [pieces[i].text for i in special] == ["<start_of_turn>", "<end_of_turn>"]
    tip = view.tooltip_for(special[0])
    assert tip.startswith("special token") and f"id {pieces[special[0]].token_id}" in tip
    assert "tokens (2 special)" in window.inspector.tokens.count.text()
    multibyte = next(i for i, p in enumerate(pieces) if len(p.data) > len(p.text.encode("ascii", "ignore")))
    assert pieces[multibyte].data.hex(" ") in view.tooltip_for(multibyte)


def test_continuing_from_an_alternative_token_branches_the_reply(qtbot, window):
    mid = chat(qtbot, window, "Write one sentence about the sea.")
    probs = window.inspector.probabilities
    index = 2
    probs.select(index)
    chosen = probs.tokens[index]
    other = next(a for a in chosen.alternatives if a.token_id != chosen.token_id)
    row = [probs.alternatives.item(i).data(256) for i in range(probs.alternatives.count())].index(other.piece)
    probs.alternatives.setCurrentRow(row)
    assert probs.continue_button.isEnabled()
    prefix = "".join(t.text for t in probs.tokens[:index]) + other.piece
    with qtbot.waitSignal(window.reply_finished, timeout=300_000) as blocker:
        probs.continue_button.click()
    branch = window.store.message(blocker.args[0])
    assert branch.id != mid and branch.parent == window.store.message(mid).parent  # a sibling: both kept
    assert branch.content.startswith(prefix) and len(branch.content) > len(prefix)
    assert [m.id for m in window.store.siblings(mid)] == [mid, branch.id]


@pytest.mark.parametrize("cache", [CacheType.F16, CacheType.Q8_0])
def test_kv_map_bytes_and_cells_equal_llama_cpps_report(qtbot, tmp_path, starter_model, cache):
    settings = LoadSettings(n_ctx=2048, type_k=cache, type_v=cache, flash_attn=FlashAttention.ON)
    window = open_window(qtbot, tmp_path, starter_model, settings)
    try:
        state = chat(qtbot, window, "Hello") and window.bridge.host.kv_state()
        reports = list(state.llama_reports[-2:])  # the global and the sliding-window cache of this load
        kv = window.inspector.kv_map
        assert kv.layout_info["type_k"] == cache.value
        assert kv.total_bytes / 2**20 == pytest.approx(sum(r["mib"] for r in reports), abs=0.02)
        cells = {lyr["cells"] for lyr in kv.layout_info["layers"]}
        assert cells == {r["cells"] for r in reports}
        assert sum(r["layers"] for r in reports) == len(kv.layout_info["layers"])
    finally:
        window.close()


def test_context_bar_marks_the_turns_the_overflow_policy_would_drop(qtbot, tmp_path, starter_model):
    window = open_window(qtbot, tmp_path, starter_model, LoadSettings(n_ctx=512))
    try:
        window.sampling_panel.set_policy(OverflowPolicy.DROP_OLDEST)
        window.new_chat()
        window.store.set_settings(window.conversation, SamplingSettings(max_tokens=128))
        parent = None
        for i in range(8):  # ~8 x 60 tokens + reserve 128 > 512
            role = "user" if i % 2 == 0 else "assistant"
            parent = window.store.add_message(
                window.conversation, parent, role, f"turn {i}: " + "word " * 55
            ).id
        window.open_conversation(window.conversation)
        window.composer.setPlainText("And the next question?")
        wait_inspected(qtbot, window)
        bar = window.inspector.context_bar
        assert bar.budget.would_drop_messages and bar.budget.would_drop_messages[0] == 0
        dropped = [s for s in bar.segments if s.dropped]
        assert len(dropped) == len(bar.budget.would_drop_messages)
        assert "drops" in bar.note and sum(s.tokens for s in dropped) == bar.budget.would_drop_tokens
        saved_png(window.inspector.docks["context"], tmp_path / "context-dropping.png")
    finally:
        window.close()


def test_the_gui_process_can_read_visualizer_data_without_llama_cpp():
    code = (
        "import sys, pickle, app.inspector, engine.visual; "
        "from engine.visual import PreviewStage, PreviewToken; "
        "pickle.loads(pickle.dumps(PreviewStage('model', 1, (PreviewToken(1, 'a', 1.0),)))); "
        "print('llama_cpp' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_probability_colours_run_from_red_to_green():
    from app.visualizers import prob_color

    hues = [prob_color(p).hueF() for p in (0.0001, 0.01, 0.3, 1.0)]
    assert hues == sorted(hues) and hues[0] < 0.02 and math.isclose(hues[-1], 0.33, abs_tol=0.01)


def test_a_message_sent_while_a_visualizer_request_runs_is_sent_right_after(qtbot, window):
    window.new_chat()
    window.store.set_settings(window.conversation, GREEDY)
    window.composer.setPlainText("Hello there")
    window.inspector.refresh()
    # the engine is held by the inspector right now
    assert window.bridge.running is not None and window.bridge.running.key == "inspect"
    with qtbot.waitSignal(window.reply_finished, timeout=300_000) as blocker:
        window.send_from_composer()
        assert window.composer.toPlainText() == ""  # taken, not refused
    assert window.store.message(blocker.args[0]).content
    assert [m.role for m in window.store.path(window.conversation)] == ["user", "assistant"]


def _figures(text: str) -> list[int]:
    return [int(n.replace(",", "")) for n in re.findall(r"\d[\d,]*", text)]


def test_typing_in_a_new_chat_never_shows_negative_turns(qtbot, window, tmp_path):
    window.new_chat()
    qtbot.waitUntil(lambda: window.bridge.idle, timeout=300_000)
    window.composer.setPlainText("Hello there, how are you?")
    bar = window.inspector.context_bar
    qtbot.waitUntil(lambda: bar.budget is not None and bar.budget.draft_tokens > 0, timeout=300_000)
    note = bar.note.splitlines()[0]
    assert "-" not in note, note  # was "turns -1": the start-of-text token counted as system and as typing
    used, _n_ctx, system, turns, typing = _figures(note)[:5]
    assert turns == 0 and typing > 0 and system + turns + typing == used
    assert used == sum(s.tokens for s in bar.segments if s.label != "reserved for the reply")
    saved_png(window.inspector.docks["context"], tmp_path / "context-typing.png")


def test_the_status_bar_and_the_context_view_count_the_same_tokens(qtbot, window):
    chat(qtbot, window, "Name three colours.")
    bar = window.inspector.context_bar
    status = _figures(window.context_label.text())
    assert status == [bar.used, bar.budget.n_ctx], (window.context_label.text(), bar.note)
    window.composer.setPlainText("And three more?")
    qtbot.waitUntil(lambda: bar.budget.draft_tokens > 0, timeout=300_000)
    assert _figures(window.context_label.text()) == [bar.used, bar.budget.n_ctx]
