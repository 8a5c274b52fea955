"""The chat window with the real engine child process: streaming, stop, branches, faults, safe rendering."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PySide6.QtCore import QTimer, QUrl

from app.main import MainWindow
from engine.conversations import ConversationStore, StoredMessage
from engine.events import Token
from engine.settings import SamplingSettings

REPO = Path(__file__).resolve().parents[1]
TINY_EOG = ((2, -100.0), (4, -100.0))  # </s> and <end_of_turn> in the tiny vocab: banned so replies run long
GEMMA_EOG = ((1, -100.0), (106, -100.0))  # <eos> and <end_of_turn>
LOAD_TIMEOUT = 300_000


def open_window(qtbot, db: Path, model: Path) -> MainWindow:
    window = MainWindow(store=ConversationStore(db), model=model)
    qtbot.addWidget(window)
    window.show()
    with qtbot.waitSignal(window.model_ready, timeout=LOAD_TIMEOUT):
        pass
    return window


def new_chat(window: MainWindow, **settings) -> int:
    window.new_chat()
    window.store.set_settings(window.conversation, SamplingSettings(**settings))
    return window.conversation


def send_and_wait(qtbot, window: MainWindow, text: str, timeout: int = 300_000) -> StoredMessage:
    with qtbot.waitSignal(window.reply_finished, timeout=timeout) as blocker:
        assert window.send(text)
    assert not window.bridge.busy  # reply_finished means the engine is free for the next action
    return window.store.message(blocker.args[0])


def after_tokens(window: MainWindow, n: int, action):
    """Run `action` when the n-th streamed token arrives; returns the connected slot (to disconnect it)."""
    seen: list[Token] = []

    def on_event(ev):
        if isinstance(ev, Token):
            seen.append(ev)
            if len(seen) == n:
                action()

    window.bridge.event.connect(on_event)
    return on_event


@pytest.fixture
def db(tmp_path) -> Path:
    return tmp_path / "chats.sqlite3"


@pytest.fixture
def window(qtbot, db, tiny_model):
    w = open_window(qtbot, db, tiny_model)
    yield w
    w.close()


def test_send_streams_tokens_into_the_view_and_stores_the_reply(qtbot, window):
    new_chat(window, max_tokens=40, seed=1, logit_bias=TINY_EOG)
    tokens, redraws = [], []
    window.bridge.event.connect(lambda ev: tokens.append(ev) if isinstance(ev, Token) else None)
    original = window.view.update_stream
    window.view.update_stream = lambda msg: (redraws.append(msg.content), original(msg))
    reply = send_and_wait(qtbot, window, "Hello there")
    assert len(tokens) == 40
    assert redraws and len(redraws[0]) <= len(reply.content)  # the view grew while tokens streamed
    assert reply.status == "done" and reply.content == "".join(t.text for t in tokens)
    assert [m.role for m in window.store.path(window.conversation)] == ["user", "assistant"]
    assert reply.stats["generated"] == 40
    assert "Context" in window.context_label.text() and "tok/s" in window.speed_label.text()
    words = [w for w in reply.content.split() if w.isalpha() and len(w) >= 3]  # random weights: odd bytes too
    assert words and all(w in window.view.toPlainText() for w in words)


def test_stop_ends_the_reply_and_keeps_it_marked_stopped(qtbot, window):
    new_chat(window, max_tokens=3000, logit_bias=TINY_EOG)
    after_tokens(window, 5, window.stop)
    reply = send_and_wait(qtbot, window, "Go on")
    assert reply.status == "stopped"
    assert reply.content and reply.stats["generated"] < 3000
    assert "(stopped)" in window.view.toPlainText()


def test_continue_goes_on_writing_a_cut_off_reply_in_the_same_message(qtbot, window):
    new_chat(window, max_tokens=8, temperature=0, logit_bias=TINY_EOG)
    cut = send_and_wait(qtbot, window, "Tell me more")
    assert cut.stats["stop"] == "max_tokens"
    anchors = re.findall(r'<a href="(ingle:[^"]+)"[^>]*>(.*?)</a>', window.view.toHtml(), re.S)
    links = [href for href, text in anchors if re.sub(r"<[^>]+>", "", text) == "continue"]
    assert len(links) == 1  # the "continue" link is offered, on the cut-off reply
    with qtbot.waitSignal(window.reply_finished, timeout=300_000) as blocker:
        window.view.anchorClicked.emit(QUrl(links[0]))
    assert blocker.args[0] == cut.id  # same message, grown
    grown = window.store.message(cut.id)
    assert grown.content.startswith(cut.content) and len(grown.content) > len(cut.content)
    assert grown.status == "done" and len(window.store.path(window.conversation)) == 2


def test_overflow_policy_is_chosen_in_the_sampling_panel_and_remembered(qtbot, db, tiny_model, window):
    from engine.settings import OverflowPolicy

    window.sampling_panel.set_policy(OverflowPolicy.DROP_OLDEST)
    assert window.gui_settings.value("overflow_policy") == "drop_oldest"


def test_regenerate_keeps_both_and_edit_branches_survive_a_restart(qtbot, db, tiny_model, window):
    cid = new_chat(window, max_tokens=12, seed=-1, temperature=1.0, logit_bias=TINY_EOG)
    first = send_and_wait(qtbot, window, "Question one")
    with qtbot.waitSignal(window.reply_finished, timeout=300_000) as blocker:
        window.regenerate(first.id)
    assert not window.bridge.busy
    second = window.store.message(blocker.args[0])
    assert [m.id for m in window.store.siblings(first.id)] == [first.id, second.id]
    assert "2/2" in window.view.toPlainText()
    window._on_view_action("prev", second.id, "")  # the "‹" link
    assert window.store.path(cid)[-1].id == first.id and "1/2" in window.view.toPlainText()

    user = window.store.path(cid)[0]
    window.edit(user.id)
    assert window.composer.toPlainText() == "Question one"
    edited = send_and_wait(qtbot, window, "Question two")
    assert [m.content for m in window.store.path(cid)][0] == "Question two"
    window.close()

    again = open_window(qtbot, db, tiny_model)
    try:
        assert again.conversation == cid
        path = again.store.path(cid)
        assert path[0].content == "Question two" and path[-1].id == edited.id
        users = again.store.siblings(path[0].id)
        assert [m.content for m in users] == ["Question one", "Question two"]
        again._on_view_action("prev", path[0].id, "")
        assert [m.id for m in again.store.siblings(again.store.path(cid)[-1].id)] == [first.id, second.id]
        assert "Question one" in again.view.toPlainText()
    finally:
        again.close()


def test_engine_killed_mid_reply_shows_banner_keeps_partial_and_restart_answers(qtbot, window):
    new_chat(window, max_tokens=3000, logit_bias=TINY_EOG)
    on_event = after_tokens(window, 20, lambda: os.kill(window.bridge.host.pid, signal.SIGKILL))
    reply = send_and_wait(qtbot, window, "Talk")
    window.bridge.event.disconnect(on_event)
    assert reply.status == "interrupted" and len(reply.content) > 0
    assert window.fault_banner.isVisible()
    assert "SIGKILL" in window.fault_banner.label.text()
    assert window.fault_banner.button.text() == "Restart engine"
    assert "(interrupted)" in window.view.toPlainText()
    with qtbot.waitSignal(window.model_ready, timeout=LOAD_TIMEOUT):
        window.fault_banner.button.click()
    assert not window.fault_banner.isVisible()
    window.store.set_settings(window.conversation, SamplingSettings(max_tokens=8, logit_bias=TINY_EOG))
    answer = send_and_wait(qtbot, window, "Again")
    assert answer.status == "done" and answer.content
    assert window.store.message(reply.id).content == reply.content  # the partial reply is still there


def test_model_output_html_renders_as_text_and_loads_nothing(qtbot, window):
    evil = (
        "<script>alert('x')</script>\n\n<img src=http://example.com/track.png>\n\n"
        '<b>bold?</b> <iframe src="http://example.com"></iframe>\n\n![pic](http://example.com/p.png)\n\n'
        "```html\n<script>x()</script>\n```"
    )
    msg = StoredMessage(1, 1, None, "assistant", evil, "done", {}, 0.0)
    window.view.show_messages([(msg, (1, 1))], None)
    text = window.view.toPlainText()
    assert "<script>alert('x')</script>" in text
    assert "<img src=http://example.com/track.png>" in text
    assert "<b>bold?</b>" in text and "<iframe" in text
    assert "<img" not in window.view.toHtml().replace("&lt;img", "")
    assert not [u for u in window.view.refused_urls if u.startswith("http")]
    assert window.view.code[1] == ["<script>x()</script>\n"]  # the code block's copy link has its raw text
    assert not window.view.openExternalLinks() and not window.view.openLinks()


def test_reasoning_block_collapses_and_expands(qtbot, window):
    msg = StoredMessage(
        7, 1, None, "assistant", "<think>secret plan</think>The answer is 4.", "done", {}, 0.0
    )
    window.view.show_messages([(msg, (1, 1))], None)
    assert "The answer is 4." in window.view.toPlainText()
    assert "secret plan" not in window.view.toPlainText() and "Reasoning" in window.view.toPlainText()
    window.view.expanded_thinking.add(7)
    window.view.show_messages([(msg, (1, 1))], None)
    assert "secret plan" in window.view.toPlainText()
    streaming = StoredMessage(8, 1, None, "assistant", "<think>still thinking", "streaming", {}, 0.0)
    window.view.show_messages([], streaming)
    assert "Thinking…" in window.view.toPlainText() and "still thinking" in window.view.toPlainText()


def test_sampling_panel_edits_every_field_and_applies_presets(qtbot, window):
    panel = window.sampling_panel
    cid = new_chat(window)
    assert set(panel.fields) == {f.name for f in SamplingSettings.field_specs()}
    with qtbot.waitSignal(panel.settings_changed):
        panel.fields["temperature"].box.setValue(0.35)
    assert window.store.settings(cid).temperature == pytest.approx(0.35)
    panel.fields["stop"].setText("not json")
    panel.fields["stop"].editingFinished.emit()
    assert panel.error.isVisibleTo(panel) and "stop" in panel.error.text()
    panel.apply_preset("Precise")
    assert window.store.settings(cid).temperature == 0.2
    assert panel.fields["top_k"].value() == 20


@pytest.fixture
def panel_window(qtbot, tmp_path, tiny_model):
    """A window over its own library holding the tiny model (passed in, not swapped); no engine needed."""
    from engine.library import Library

    library = Library(tmp_path / "library")
    library.import_file(tiny_model, link=True, name="tiny")
    w = MainWindow(store=ConversationStore(tmp_path / "c.sqlite3"), library=library, start_engine=False)
    qtbot.addWidget(w)
    yield w
    w.close()


def test_model_panel_estimates_memory_and_lists_the_model(qtbot, panel_window):
    window = panel_window
    panel = window.model_panel
    panel.refresh()
    panel.select("tiny")
    assert "tiny" in panel.model_box.currentText() and "llama" in panel.model_box.currentText()
    panel.n_ctx.setValue(4096)
    small = panel.current_estimate()
    panel.n_ctx.setValue(65536)
    big = panel.current_estimate()
    assert big.kv_cache == small.kv_cache * 16 and small.verdict == "fits"
    assert panel.estimate.text().startswith("fits:") and "KV cache" in panel.estimate.text()


def test_fit_verdict_uses_the_engine_childs_view_of_gpus(qtbot, window, tiny_model):
    import dataclasses

    from app.model_panel import estimate_memory
    from engine.gguf_info import inspect_gguf
    from engine.hardware import Device
    from engine.settings import LoadSettings

    # reported by the engine child when it started (the GUI process never loads llama.cpp: tests/test_bench.py)
    hw = window.model_panel.hardware
    assert hw is not None and hw.ram_total > 0 and hw.physical_cores >= 1
    gpu = Device("CUDA0", "a 24 GiB GPU", "GPU", 20 << 30, 24 << 30)
    with_gpu = dataclasses.replace(hw, gpu_offload=True, devices=(*hw.devices, gpu))
    info = inspect_gguf(tiny_model)
    on_cpu = estimate_memory(info, LoadSettings(n_gpu_layers=0), with_gpu).available
    offloaded = estimate_memory(info, LoadSettings(n_gpu_layers=-1), with_gpu).available
    assert offloaded - on_cpu == pytest.approx(
        with_gpu.vram_free, rel=0.01
    )  # RAM moves a little between calls


def test_event_loop_never_stalls_while_streaming_the_starter(qtbot, db, starter_model):
    window = open_window(qtbot, db, starter_model)
    try:
        assert window.info_banner.isVisible() and "base model" in window.info_banner.label.text()
        new_chat(window, max_tokens=120, logit_bias=GEMMA_EOG)
        gaps, last = [], [time.perf_counter()]

        def probe():
            now = time.perf_counter()
            gaps.append(now - last[0])
            last[0] = now

        timer = QTimer(interval=5)
        timer.timeout.connect(probe)
        timer.start()
        reply = send_and_wait(qtbot, window, "Write a story about a lighthouse.", timeout=600_000)
        timer.stop()
        worst = max(gaps) * 1000
        print(f"\nGUI event loop: {len(gaps)} probes, worst gap {worst:.1f} ms, "
              f"{reply.stats['generated']} tokens at {reply.stats['tok_s']:.1f} tok/s")  # fmt: skip
        assert reply.stats["generated"] == 120
        # the figure is printed (and measured by `ingle bench` mode 5); the bound only catches a GUI thread
        # that waits on the engine or re-renders everything per token, even on a busy machine
        assert worst < 2000
    finally:
        window.close()


KILL_SCRIPT = """
import sys
from PySide6.QtWidgets import QApplication
app = QApplication([])
from app.main import MainWindow
from engine.conversations import ConversationStore
from engine.settings import SamplingSettings
w = MainWindow(store=ConversationStore(sys.argv[1]), model=sys.argv[2])
w.show()
def ready(_ev):
    w.new_chat()
    w.store.set_settings(w.conversation, SamplingSettings(max_tokens=2000, logit_bias=((1, -100.0), (106, -100.0))))
    w.send("Tell me everything about the sea.")
    print("SENT", flush=True)
w.model_ready.connect(ready)
app.exec()
"""


def test_killing_the_app_mid_reply_keeps_the_conversation_and_partial_reply(
    qtbot, tmp_path, db, starter_model
):
    script = tmp_path / "kill_me.py"
    script.write_text(KILL_SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script), str(db), str(starter_model)], cwd=REPO,
                            stdout=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))  # fmt: skip
    try:
        assert proc.stdout.readline().strip() == "SENT"
        deadline, partial = time.monotonic() + 90, ""
        while time.monotonic() < deadline and len(partial) < 20:
            time.sleep(0.2)
            with sqlite3.connect(db) as con:
                row = con.execute("SELECT content FROM messages WHERE role='assistant'").fetchone()
            partial = row[0] if row else ""
        assert len(partial) >= 20, "the reply was not saved while it streamed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    store = ConversationStore(db)
    (conv,) = store.conversations()
    path = store.path(conv.id)
    assert [m.role for m in path] == ["user", "assistant"]
    assert path[1].status == "interrupted" and path[1].content.startswith(partial)
    window = MainWindow(store=store, start_engine=False)
    qtbot.addWidget(window)
    assert window.conversation == conv.id
    assert "(interrupted)" in window.view.toPlainText() and partial[:15] in window.view.toPlainText()
    window.close()


def test_a_thousand_message_conversation_opens_and_scrolls_smoothly(qtbot, db):
    store = ConversationStore(db)
    conv = store.create("Long")
    parent = None
    for i in range(1000):
        role = "user" if i % 2 == 0 else "assistant"
        parent = store.add_message(
            conv.id, parent, role, f"Message {i}, **bold**\n\n```python\nx = {i}\n```"
        ).id
    started = time.perf_counter()
    window = MainWindow(store=store, start_engine=False)
    qtbot.addWidget(window)
    window.show()
    opened = time.perf_counter() - started
    bar = window.view.verticalScrollBar()
    steps = range(0, bar.maximum(), max(1, bar.maximum() // 50))
    started = time.perf_counter()
    for value in steps:
        bar.setValue(value)
        window.view.viewport().repaint()
    per_frame = (time.perf_counter() - started) / len(steps) * 1000
    print(f"\n1,000 messages: opened in {opened:.2f} s; {per_frame:.1f} ms per scrolled frame")
    assert "Message 999" in window.view.toPlainText()
    assert per_frame < 500  # printed above; the bound catches a view that re-renders on scroll
    window.close()


def test_delete_undo_export_import_and_message_delete(qtbot, db, tmp_path):
    store = ConversationStore(db)
    conv = store.create("Keep me")
    user = store.add_message(conv.id, None, "user", "hello *there*")
    reply = store.add_message(conv.id, user.id, "assistant", "hi")
    window = MainWindow(store=store, start_engine=False)
    qtbot.addWidget(window)
    window.export_conversation(tmp_path / "c.json", "json")
    window.export_conversation(tmp_path / "c.md", "md")
    assert "## Assistant" in (tmp_path / "c.md").read_text()
    window.delete_conversation(conv.id)
    assert window.conv_list.count() == 0 and window.undo_banner.isVisibleTo(window)
    window.undo_banner.button.click()
    assert window.conv_list.count() == 1 and window.conversation == conv.id
    window.import_conversation(tmp_path / "c.json")
    assert window.conv_list.count() == 2 and "hello" in window.view.toPlainText()
    window._on_view_action("delete", reply.id, "")  # not the open conversation: refused
    assert [m.id for m in store.path(conv.id)] == [user.id, reply.id]
    window.open_conversation(conv.id)
    window._on_view_action("delete", reply.id, "")
    assert [m.id for m in store.path(conv.id)] == [user.id]
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(Exception, match="Cannot read bad.json"):
        window.import_conversation(tmp_path / "bad.json")
    window.close()


def test_models_menu_opens_one_download_manager_and_refreshes_the_picker(qtbot, window, tiny_model):
    manager = window.open_model_manager(1)
    assert manager.isVisible() and manager.tabs.currentIndex() == 1
    assert window.open_model_manager(0) is manager and manager.tabs.currentIndex() == 0
    from engine.library import Library

    Library().import_file(tiny_model, name="tiny-from-manager", link=True)
    manager.library_changed.emit()
    assert any("tiny-from-manager" in window.model_panel.model_box.itemText(i)
               for i in range(window.model_panel.model_box.count()))  # fmt: skip
    Library().remove("tiny-from-manager")
    manager.close()


def test_advanced_load_settings_reach_the_load_and_the_estimate(qtbot, panel_window):
    window = panel_window
    panel = window.model_panel
    panel.refresh()
    panel.select("tiny")
    assert panel.advanced.isHidden()
    panel.advanced_toggle.click()
    assert not panel.advanced.isHidden()
    panel.advanced_fields["n_batch"].setValue(256)
    panel.advanced_fields["n_ubatch"].setValue(128)
    panel.advanced_fields["use_mmap"].setChecked(False)
    settings = panel.load_settings()
    assert (settings.n_batch, settings.n_ubatch, settings.use_mmap) == (256, 128, False)
    panel.advanced_fields["n_ubatch"].setValue(512)  # larger than the batch: said, not loaded
    assert "n_ubatch" in panel.estimate.text() and "larger than n_batch" in panel.estimate.text()
    with qtbot.assertNotEmitted(panel.load_requested):
        panel.load_button.click()
    panel.advanced_fields["n_ubatch"].setValue(128)
    with qtbot.waitSignal(panel.load_requested) as blocker:
        panel.load_button.click()
    assert blocker.args[1].n_ubatch == 128 and blocker.args[1].use_mmap is False
