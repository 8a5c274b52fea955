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


def render(out_dir: Path) -> list[Path]:
    """The main window in a real session: the starter (with its chat adapter) loaded in the engine child, real
    prompts sent, real replies and figures in the status bar; light, dark and the sampling panel."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    os.environ.setdefault("INGLE_HOME", tempfile.mkdtemp(prefix="ingle-shots-"))
    from PySide6.QtCore import QEventLoop, QTimer
    from PySide6.QtWidgets import QApplication

    app = QApplication.instance() or QApplication(sys.argv)
    from app.main import MainWindow
    from engine.conversations import ConversationStore
    from engine.settings import SamplingSettings

    def wait(signal, ms: int = 300_000) -> None:
        loop = QEventLoop()
        signal.connect(loop.quit)
        QTimer.singleShot(ms, loop.quit)
        loop.exec()
        signal.disconnect(loop.quit)

    store = ConversationStore(Path(os.environ["INGLE_HOME"]) / "shots.sqlite3")
    window = MainWindow(store=store)  # first start: the starter and its adapter, as a new user gets them
    window.resize(1400, 860)
    window.show()
    wait(window.model_ready)
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
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    os.environ.setdefault("INGLE_HOME", tempfile.mkdtemp(prefix="ingle-shots-"))
    from PySide6.QtCore import QEventLoop, QTimer
    from PySide6.QtWidgets import QApplication

    qapp = QApplication.instance() or QApplication(sys.argv)
    from app.main import MainWindow
    from engine.conversations import ConversationStore
    from engine.library import Library
    from engine.settings import SamplingSettings

    def wait(signal=None, ms: int = 60_000) -> None:
        loop = QEventLoop()
        if signal is not None:
            signal.connect(loop.quit)
        QTimer.singleShot(ms, loop.quit)
        loop.exec()
        if signal is not None:
            signal.disconnect(loop.quit)

    model = Library().ensure_starter().file
    store = ConversationStore(Path(os.environ["INGLE_HOME"]) / "visualizers.sqlite3")
    window = MainWindow(store=store, model=str(model))
    window.resize(1400, 1100)
    window.show()
    qapp.processEvents()
    wait(window.model_ready)
    for key in window.inspector.docks:
        window.inspector.show(key)
    window.new_chat()
    settings = SamplingSettings(temperature=0.7, top_k=40, top_p=0.9, min_p=0.05, max_tokens=40, seed=7)
    window.store.set_settings(window.conversation, settings)
    window.sampling_panel.set_settings(settings)
    window.send("Write one sentence about the sea.")
    wait(window.reply_finished)
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
    import time

    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    os.environ.setdefault("INGLE_HOME", tempfile.mkdtemp(prefix="ingle-shots-"))
    from PySide6.QtCore import QEventLoop, QTimer
    from PySide6.QtWidgets import QApplication

    qapp = QApplication.instance() or QApplication(sys.argv)
    from app.wizard import FineTuneWizard
    from engine.library import Library

    def until(check, limit: float = 1800) -> None:
        started = time.monotonic()
        while not check() and time.monotonic() - started < limit:
            loop = QEventLoop()
            QTimer.singleShot(200, loop.quit)
            loop.exec()

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
