"""Hooks that drive the real main window for tools: the packaging smoke test (`ingle gui --smoke-prompt`) and
`ingle bench`'s chat-window streaming mode."""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import psutil
from PySide6.QtCore import QEventLoop, QTimer
from PySide6.QtWidgets import QApplication

from app.main import MainWindow
from engine.conversations import ConversationStore
from engine.events import Token
from engine.library import Library
from engine.settings import LoadSettings, SamplingSettings


def smoke(app: QApplication, window: MainWindow, prompt: str) -> int:
    """Packaging check: load the starter, send one prompt, print the reply; exit 0 only if it all worked."""
    outcome: dict = {}
    window.initial_model = Library().ensure_starter().file
    window.last_load = None

    started = psutil.Process().create_time()
    marks = {"window shown": time.time() - started}

    def ready(_ev) -> None:
        marks["model loaded"] = time.time() - started
        window.new_chat()
        window.store.set_settings(window.conversation, SamplingSettings(temperature=0, max_tokens=48))
        if not window.send(prompt):
            outcome["error"] = "could not send the prompt"
            app.quit()

    def finished(mid: int) -> None:
        marks["reply finished"] = time.time() - started
        msg = window.store.message(mid)
        if msg.status == "done" and msg.content.strip():
            outcome["reply"] = msg.content
        else:
            outcome["error"] = f"the reply ended {msg.status} with {len(msg.content)} characters"
        app.quit()

    def failed(text: str) -> None:
        outcome["error"] = text.splitlines()[0] if text else "engine failure"
        app.quit()

    window.model_ready.connect(ready)
    window.reply_finished.connect(finished)
    window.engine_failed.connect(failed)
    QTimer.singleShot(300_000, lambda: (outcome.setdefault("error", "timed out after 300 s"), app.quit()))
    app.exec()
    window.close()
    print(
        "timing since process start: " + ", ".join(f"{k} {v:.1f} s" for k, v in marks.items()),
        file=sys.stderr,
    )
    if "reply" in outcome:
        print(outcome["reply"])
        return 0
    print(f"ingle: smoke test failed: {outcome.get('error', 'no reply')}", file=sys.stderr)
    return 1


def bench_stream(model_path: str, prompt: str, max_tokens: int, threads: int) -> dict:
    """For `ingle bench`: stream one greedy reply into a real main window.

    Returns the tokens shown and the perf_counter times the reply was sent, showed its first token and was
    stored. Runs on the caller's QApplication; the bench measures the event loop around it.
    """

    def wait(signal) -> None:
        loop = QEventLoop()
        signal.connect(loop.quit)
        loop.exec()
        signal.disconnect(loop.quit)

    with tempfile.TemporaryDirectory() as tmp:
        window = MainWindow(store=ConversationStore(Path(tmp) / "bench.sqlite3"), model=model_path)
        window.show()
        wait(window.model_ready)
        window.load_model(model_path, LoadSettings(n_threads=threads))
        wait(window.model_ready)
        window.new_chat()
        window.store.set_settings(window.conversation, SamplingSettings(temperature=0, max_tokens=max_tokens))
        shown = []
        window.bridge.event.connect(
            lambda ev: (
                shown.append(time.perf_counter()) if isinstance(ev, Token) and ev.token_id >= 0 else None
            )
        )
        started = time.perf_counter()
        window.send(prompt)
        wait(window.reply_finished)
        ended = time.perf_counter()
        window.close()  # shuts the engine child down
        return {"tokens_shown": len(shown), "stream_started": started, "stream_ended": ended,
                "first_token": shown[0] if shown else None}  # fmt: skip
