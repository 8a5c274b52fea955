"""Render chat with documents and a tool call to PNG, offscreen, in a real session on the starter model with its chat
adapter (for the README): notes attached through the Documents tab and a question they answer (documents.png),
then the `mcp-server-time` MCP server enabled and a question for it (tools.png). Greedy sampling; every reply,
source and tool result comes from the model, the index and the server.

QT_QPA_PLATFORM=offscreen python -m app.screenshot_docs [OUT_DIR]   (default assets/screenshots)
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

from app.screenshots import start_window, until, wait

NOTES = {
    "garden-notes.md": """# Garden notes

## Tomatoes

Tomatoes need staking in June, when the first trusses set. Water them at the base in the morning;
wet leaves in the evening invite blight.

## Slugs

Slugs eat the lettuce at night. Beer traps sunk level with the soil catch them, and a ring of
crushed eggshells around each plant keeps most of them off.
""",
    "bike-repair.md": """# Bike repair

## Fixing a flat tyre

Take the wheel off, lever one side of the tyre off the rim with two tyre levers and pull out the
inner tube. Pump it up and listen for the hiss to find the hole; roughen the area, spread the glue,
wait a minute and press the patch on. Run a finger round the inside of the tyre for the thorn.

## Brakes

Brake pads are worn when the grooves are gone. Replace them in pairs and toe them in slightly.
""",
    "bread.md": """# Bread

A simple loaf: 500 g flour, 350 g water, 10 g salt, 7 g yeast. Knead ten minutes, rise an hour,
shape, rise again and bake 35 minutes at 220 °C.
""",
}
DOCS_QUESTION = "How do I keep slugs off my lettuce?"
TOOLS_QUESTION = "What time is it in Tokyo?"
GREEDY = {"temperature": 0, "max_tokens": 160}


def _tab(window, title: str) -> None:
    window.side.setCurrentIndex(
        next(i for i in range(window.side.count()) if window.side.tabText(i) == title)
    )


def _new_greedy_chat(window) -> None:
    from engine.settings import SamplingSettings

    settings = SamplingSettings(**GREEDY)
    window.new_chat()
    window.store.set_settings(window.conversation, settings)
    window.sampling_panel.set_settings(settings)


def render_documents(app, window, out_dir: Path) -> Path:
    """Notes attached to a new conversation and indexed, a question they answer; the Documents tab lists the
    reply's sources and the Context window dock shows them as their own segment."""
    folder = Path(tempfile.mkdtemp(prefix="ingle-notes-"))
    for name, text in NOTES.items():
        (folder / name).write_text(text, encoding="utf-8")
    _new_greedy_chat(window)
    window.inspector.show("context")  # shown before sending: the reply's context is measured with its sources
    _tab(window, "Documents")
    panel = window.docs_panel
    if panel.attach([str(folder / name) for name in NOTES]) is None:
        raise SystemExit(f"the documents were not attached: {panel.status.text()}")
    wait(panel.indexed)
    print(f"indexed: {panel.status.text()!r}")
    window.send(DOCS_QUESTION)
    wait(window.reply_finished)
    wait(window.inspector.updated, 30_000)  # the context bar measured again after the reply
    wait(ms=500)
    reply = window.store.path(window.conversation)[-1]
    print(f"documents reply ({reply.status}): {reply.content!r}")
    for i in range(panel.sources.count()):
        print(f"  source {panel.sources.item(i).text()}")
    app.processEvents()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "documents.png"
    window.grab().save(str(path))
    return path


def render_tools(app, window, out_dir: Path) -> Path:
    """`mcp-server-time` enabled in a new conversation with tool choice "required", its call allowed once (the
    answer the approval dialog would give, given here in code), the transcript, the Tools tab and the Context
    window dock with the tool definitions as their own segment."""
    from PySide6.QtCore import Qt

    from app.tool_chat_gui import GuiApprover, ToolSession
    from engine.tool_loop import Approval

    _new_greedy_chat(window)
    _tab(window, "Tools")
    panel = window.tools_panel
    if not shutil.which("mcp-server-time"):  # run from the venv without activating it: its scripts on PATH
        os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    if panel.server_item("time") is None and not panel.add("time", "mcp-server-time --local-timezone UTC"):
        raise SystemExit(f"the MCP server was not added: {panel.status.text()}")
    panel.server_item("time").setCheckState(0, Qt.Checked)
    panel.choice.setCurrentText("required")
    panel.tree.setColumnWidth(0, 300)  # the tools' names and parameters, not cut
    panel.refresh_tools()
    until(lambda: panel.server_item("time").childCount() > 0, 120)
    asked = []

    def allow_once(call, server: str) -> Approval:
        asked.append((server, call.name, call.arguments))
        return Approval.ONCE

    window.tool_session, window.tool_approver = ToolSession(), GuiApprover(window, ask=allow_once)
    window.send(TOOLS_QUESTION)
    wait(window.reply_finished)
    wait(window.inspector.updated, 30_000)  # the context bar measured again, tool definitions included
    wait(ms=500)
    print(f"context: {window.inspector.context_bar.note!r}")
    reply = window.store.path(window.conversation)[-1]
    print(f"calls allowed: {asked}")
    print(f"tools reply ({reply.status}): {reply.content!r}")
    for card in panel.cards:
        print(f"  call {card.call.name} {card.call.arguments}: {card.result.toPlainText()[:200]!r}")
        card.toggle.click()  # the result unfolded, as a click on it shows it
    app.processEvents()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "tools.png"
    window.grab().save(str(path))
    return path


def render(out_dir: Path) -> list[Path]:
    app, window = start_window("docs-shots.sqlite3", size=(1600, 1000))
    window.splitter.setSizes([200, 700, 700])  # the side panel wide enough for a call's result line
    written = [render_documents(app, window, out_dir), render_tools(app, window, out_dir)]
    window.close()
    return written


if __name__ == "__main__":
    for shot in render(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("assets/screenshots")):
        print(shot)
