"""Instant reopen in the window: switching away and closing save the conversation's KV cache; after a restart
(a new window, a new engine child) opening it evaluates only the new message. Settings shows the space used."""

from __future__ import annotations

import os
import re
import time

from test_chat_window import open_window

from app.reopen import ReopenSettings
from engine.events import PromptEvaluated
from engine.kv_store import StateFolder
from engine.settings import SamplingSettings

LOAD_TIMEOUT = 300_000
SHORT = SamplingSettings(temperature=0.0, max_tokens=6, logit_bias=((2, -100.0), (4, -100.0)))


def _chat(qtbot, window, text: str) -> int:
    window.new_chat()
    cid = window.conversation
    window.store.set_settings(cid, SHORT)
    assert not window.bridge.busy  # the switch saves the previous conversation first, without blocking a send
    with qtbot.waitSignal(window.reply_finished, timeout=LOAD_TIMEOUT):
        assert window.send(text)
    return cid


def test_switching_and_closing_save_and_a_restart_reuses_the_cache(qtbot, fresh_home, tiny_model, tmp_path):
    db = tmp_path / "chats.sqlite3"
    window = open_window(qtbot, db, tiny_model)
    folder = window.reopen.folder
    first = _chat(qtbot, window, "Tell me a long story about cats, the moon and a small red boat.")
    timing = window.inspector.timing  # the Timing view says how many threads the reply ran on, and why
    assert re.fullmatch(r"\d+ threads?: \d+ of \d+ cores idle.*", timing.replies[0]["threads"])
    timing.resize(700, timing.heightForWidth(700))
    timing.grab().save("/tmp/f2-fit-timing.png")
    second = _chat(qtbot, window, "And one about dogs?")  # switching away saves the first
    qtbot.waitUntil(lambda: folder.path_for(first).exists(), timeout=60_000)
    assert window.reopen.last_save.tokens > 20
    started = time.monotonic()
    window.close()  # saves the open one (the second), in bounded time
    assert time.monotonic() - started < 30
    assert folder.path_for(second).exists()

    reopened = open_window(qtbot, db, tiny_model)  # a new engine child: only the saved files carry over
    evaluated: list[PromptEvaluated] = []
    reopened.bridge.event.connect(lambda ev: isinstance(ev, PromptEvaluated) and evaluated.append(ev))
    reopened.open_conversation(first)
    qtbot.waitUntil(lambda: reopened.reopen.last_restore is not None, timeout=60_000)
    restored = reopened.reopen.last_restore
    assert restored.tokens > 20 and restored.reason == ""
    qtbot.waitUntil(lambda: not reopened.bridge.busy, timeout=60_000)
    with qtbot.waitSignal(reopened.reply_finished, timeout=LOAD_TIMEOUT):
        assert reopened.send("Go on.")
    assert evaluated and evaluated[-1].reused_tokens >= restored.tokens
    assert evaluated[-1].evaluated_tokens < evaluated[-1].prompt_tokens - 20  # only the new message was read
    qtbot.waitUntil(lambda: not reopened.bridge.busy, timeout=60_000)
    reopened.store.delete(second)
    reopened.close()  # the deleted conversation is purged, and its saved cache (its tokens) with it
    assert not folder.path_for(second).exists() and folder.path_for(first).exists()


def test_settings_shows_the_space_used_and_the_cap_evicts(qtbot, tmp_path):
    folder = StateFolder(tmp_path / "states")
    (tmp_path / "states").mkdir()
    for i, size in enumerate((3 << 20, 2 << 20)):
        path = folder.path_for(i)
        path.write_bytes(b"x" * size)
        old = time.time() - 100 + i
        os.utime(path, (old, old))
    dialog = ReopenSettings(folder)
    qtbot.addWidget(dialog)
    assert dialog.usage.text() == "5.0 MiB in 2 conversations (limit 2.00 GiB)"
    dialog.show()
    dialog.grab().save(str(tmp_path / "settings.png"))
    dialog.cap.setValue(2)
    dialog.accept()
    assert not folder.path_for(0).exists() and folder.path_for(1).exists()  # the least recently used went
    assert StateFolder(tmp_path / "states").cap == 2 << 20
    dialog = ReopenSettings(folder)
    qtbot.addWidget(dialog)
    assert dialog.cap.value() == 2 and dialog.usage.text().startswith("2.0 MiB in 1 conversation ")
    dialog.clear.click()
    assert folder.files() == [] and dialog.usage.text().startswith("0.0 MiB in 0 conversations")
