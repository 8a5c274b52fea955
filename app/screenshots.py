"""Render the main window offscreen to PNG, light and dark, over a sample conversation (for the README).

QT_QPA_PLATFORM=offscreen python -m app.screenshots [OUT_DIR]   (default assets/screenshots)
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

SAMPLE = [
    ("user", "How do I reverse a list in Python?"),
    (
        "assistant",
        "<think>The user wants the idiomatic ways; mention slicing and reverse().</think>"
        "Two common ways:\n\n1. **In place** with `list.reverse()`\n2. **A reversed copy** with slicing:\n\n"
        "```python\nnumbers = [1, 2, 3]\nbackwards = numbers[::-1]\nprint(backwards)  # [3, 2, 1]\n```\n\n"
        "Use `reversed(numbers)` when you only need to iterate.",
    ),
    ("user", "And <b>tags</b> in a reply stay text: <script>alert(1)</script>"),
    ("assistant", "Right: model output is shown as text, so `<script>` never runs."),
]


def render(out_dir: Path) -> list[Path]:
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    os.environ.setdefault("INGLE_HOME", tempfile.mkdtemp(prefix="ingle-shots-"))
    from PySide6.QtWidgets import QApplication

    app = QApplication.instance() or QApplication(sys.argv)
    from app.main import MainWindow
    from engine.conversations import ConversationStore
    from engine.library import Library

    Library().ensure_starter()  # the model picker shows the bundled model
    store = ConversationStore(Path(os.environ["INGLE_HOME"]) / "shots.sqlite3")
    for title in ("Trip to Lisbon", "Regex help"):
        store.create(title)
    conv = store.create("Reverse a list")
    parent = None
    for role, text in SAMPLE:
        parent = store.add_message(conv.id, parent, role, text).id
    store.add_message(conv.id, store.message(parent).parent, "assistant", "An alternative reply.")
    store.select(parent)
    window = MainWindow(store=store, start_engine=False)
    window.resize(1400, 860)
    window.model_label.setText("gemma-3-270m-q4_k_m · gemma3 Q4_K_M")
    window.context_label.setText("Context 412 / 4,096")
    window.speed_label.setText("46.2 tok/s · TTFT 84 ms")
    window.show()
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


if __name__ == "__main__":
    for p in render(Path(sys.argv[1] if len(sys.argv) > 1 else "assets/screenshots")):
        print(p)
