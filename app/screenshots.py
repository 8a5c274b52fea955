"""Render the main window offscreen to PNG, light and dark, in a real session on the starter model with its chat
adapter, and each visualizer with real data from the starter model (for the README).

QT_QPA_PLATFORM=offscreen python -m app.screenshots [OUT_DIR]   (default assets/screenshots)
QT_QPA_PLATFORM=offscreen python -m app.screenshots --wizard    (the whole fine-tuning wizard on the starter: minutes)
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

PROMPTS = (  # a real session on the starter with its bundled chat adapter: every reply comes from the model
    ("What is the capital of Japan?",),
    ("Hello! What can you do?", "Name three fruits."),
)


def qt_app():
    """The QApplication (offscreen unless QT_QPA_PLATFORM says otherwise), made once."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtWidgets import QApplication

    return QApplication.instance() or QApplication(sys.argv)


def session_env() -> None:
    """Offscreen, on a fresh INGLE_HOME (a temp folder) unless one is set: a session as a new user has it."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    os.environ.setdefault("INGLE_HOME", tempfile.mkdtemp(prefix="ingle-shots-"))


def wait(signal=None, ms: int = 300_000) -> None:
    """Run the event loop until `signal` fires (None: for `ms`), at most `ms` milliseconds."""
    from PySide6.QtCore import QEventLoop, QTimer

    loop = QEventLoop()
    if signal is not None:
        signal.connect(loop.quit)
    QTimer.singleShot(ms, loop.quit)
    loop.exec()
    if signal is not None:
        signal.disconnect(loop.quit)


def until(check, limit: float = 1800) -> None:
    """Run the event loop until `check()` is true, at most `limit` seconds."""
    started = time.monotonic()
    while not check() and time.monotonic() - started < limit:
        wait(ms=200)


def start_window(db_name: str, model: str | None = None, size: tuple[int, int] = (1400, 860),
                 ms: int = 300_000):  # fmt: skip
    """A real session: the main window on `db_name` in INGLE_HOME, shown at `size`, its engine child loaded
    (`model` None: the starter with its chat adapter, as a first start gives a new user). (QApplication, window)"""
    session_env()
    app = qt_app()
    from app.main import MainWindow
    from engine.conversations import ConversationStore

    store = ConversationStore(Path(os.environ["INGLE_HOME"]) / db_name)
    window = MainWindow(store=store) if model is None else MainWindow(store=store, model=model)
    window.resize(*size)
    window.show()
    app.processEvents()
    wait(window.model_ready, ms)
    return app, window


def render(out_dir: Path) -> list[Path]:
    """The main window in a real session: the starter (with its chat adapter) loaded in the engine child, real
    prompts sent, real replies and figures in the status bar; light, dark and the sampling panel."""
    app, window = start_window("shots.sqlite3")  # first start: the starter and its adapter, as a new user has
    from engine.settings import SamplingSettings

    greedy = SamplingSettings(temperature=0, max_tokens=96)
    for turns in PROMPTS:
        window.new_chat()
        window.store.set_settings(window.conversation, greedy)
        window.sampling_panel.set_settings(greedy)
        for text in turns:
            window.send(text)
            wait(window.reply_finished)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for theme in ("light", "dark"):
        window.apply_theme(theme)
        app.processEvents()
        path = out_dir / f"chat-{theme}.png"
        window.grab().save(str(path))
        written.append(path)
    window.side.setCurrentIndex(1)  # the sampling panel
    app.processEvents()
    path = out_dir / "sampling-dark.png"
    window.side.grab().save(str(path))
    written.append(path)
    window.close()
    return written


def render_visualizers(out_dir: Path) -> list[Path]:
    """A real reply from the starter model (engine child), a draft being typed, then each visualizer's dock."""
    session_env()
    from engine.library import Library
    from engine.settings import SamplingSettings

    model = Library().ensure_starter().file
    _qapp, window = start_window("visualizers.sqlite3", str(model), (1400, 1100), ms=60_000)
    for key in window.inspector.docks:
        window.inspector.show(key)
    window.new_chat()
    settings = SamplingSettings(temperature=0.7, top_k=40, top_p=0.9, min_p=0.05, max_tokens=40, seed=7)
    window.store.set_settings(window.conversation, settings)
    window.sampling_panel.set_settings(settings)
    window.send("Write one sentence about the sea.")
    wait(window.reply_finished, 60_000)
    window.composer.setPlainText("And one about mountains, please.")
    wait(ms=1500)
    probs = window.inspector.probabilities
    if len(probs.tokens) > 3:
        probs.select(3)
        probs.alternatives.setCurrentRow(1)
    attention = window.inspector.attention  # captured after the reply, in the engine child
    deadline = time.monotonic() + 900
    while attention.amap is None and time.monotonic() < deadline:
        wait(ms=250)
    if attention.amap is not None:  # a global layer, and the reply's last word hovered: what it attends to
        attention.layer_box.setCurrentIndex(min(11, attention.amap.n_layers - 1))
        words = [i for i, piece in enumerate(attention.amap.pieces) if piece.strip().isalpha()]
        attention.focus_token(words[-1] if words else len(attention.amap.pieces) - 1)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for key, dock in window.inspector.docks.items():
        dock.raise_()
        if key == "attention":  # a heatmap needs height: shown floating, as a user can drag it out
            dock.setFloating(True)
            dock.resize(1300, 760)
        wait(ms=200)
        path = out_dir / f"visualizer-{key.replace('_', '-')}.png"
        dock.grab().save(str(path))
        written.append(path)
    window.close()
    return written


def render_wizard(out_dir: Path) -> list[Path]:
    """The whole wizard on the starter model and the bundled sample (Quick preset): each step's PNG, the time
    it took and the replies of base and adapted model, printed. Trains for real: minutes on a 2-core CPU."""
    session_env()
    qapp = qt_app()
    from app.wizard import FineTuneWizard
    from engine.library import Library

    library = Library()
    library.ensure_starter()
    wizard = FineTuneWizard(library)
    wizard.resize(1000, 780)
    wizard.show()
    qapp.processEvents()
    out_dir.mkdir(parents=True, exist_ok=True)
    written, started = [], time.monotonic()

    def shot(name: str) -> None:
        qapp.processEvents()
        path = out_dir / f"wizard-{name}.png"
        wizard.grab().save(str(path))
        written.append(path)
        print(f"{time.monotonic() - started:7.1f} s  {name}", flush=True)

    shot("1-base")
    wizard.next()
    until(lambda: wizard.data_page.report is not None)
    shot("2-dataset")
    wizard.next()
    shot("3-settings")
    wizard.next()
    until(lambda: wizard.train_page.state in ("done", "failed", "cancelled"))
    shot("4-train")
    print(wizard.train_page.log.toPlainText().splitlines()[-1])
    wizard.next()
    until(lambda: wizard.evaluate_page.result is not None or "rror" in wizard.evaluate_page.status.text())
    shot("5-evaluate")
    result = wizard.evaluate_page.result or {}
    for name, row in result.get("perplexity", {}).items():
        print(f"perplexity {name}: {row['perplexity']:.3f} over {row['tokens']} tokens")
    for row in result.get("replies", []):
        print(f"prompt: {row['prompt']!r}\nbase: {row['base']!r}\nadapted: {row['adapted']!r}")
    wizard.next()
    wizard.export_page.export()
    until(lambda: wizard.export_page.report is not None or "rror" in wizard.export_page.status.text())
    shot("6-export")
    for name, row in (wizard.export_page.report or {}).items():
        print(name, {k: v for k, v in row.items() if k != "path"})
    print(f"whole wizard: {time.monotonic() - started:.0f} s")
    wizard.done(0)
    return written


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    target = Path(args[0] if args else "assets/screenshots")
    shots = render_wizard(target) if "--wizard" in sys.argv else render(target) + render_visualizers(target)
    for p in shots:
        print(p)
