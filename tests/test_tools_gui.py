"""The tools GUI under pytest-qt: the approval dialog, the call card, and the Tools panel on a real MCP server."""

import json
import sys
from pathlib import Path

from PySide6.QtCore import Qt, QTimer

from app.tool_approval import ToolApprovalDialog, ToolCallCard, ask_with_dialog
from app.tools_panel import ToolsPanel
from engine.events import ToolCall
from engine.tool_loop import Approval, Approver

SERVER = Path(__file__).resolve().parent / "mcp_test_server.py"
CALL = ToolCall("call_1", "get_current_time", '{"timezone": "Europe/Paris"}')


def test_dialog_shows_the_call_and_returns_each_answer(qtbot):
    for button, answer in (("once", Approval.ONCE), ("always", Approval.ALWAYS), ("deny", Approval.DENY)):
        dialog = ToolApprovalDialog(CALL, "time")
        qtbot.addWidget(dialog)
        assert json.loads(dialog.arguments.toPlainText()) == {"timezone": "Europe/Paris"}
        assert "\n" in dialog.arguments.toPlainText()  # indented, one argument a line
        assert dialog.deny.isDefault()
        qtbot.mouseClick(getattr(dialog, button), Qt.LeftButton)
        assert dialog.answer is answer


def test_dialog_closed_is_deny(qtbot):
    dialog = ToolApprovalDialog(CALL, "time")
    qtbot.addWidget(dialog)
    dialog.show()
    dialog.reject()
    assert dialog.answer is Approval.DENY


def test_always_asks_once_through_the_dialog(qtbot):
    shown = []

    def click_always():
        from PySide6.QtWidgets import QApplication

        dialog = QApplication.activeModalWidget()
        shown.append(dialog)
        dialog.always.click()

    approve = Approver(ask_with_dialog(None))
    QTimer.singleShot(50, click_always)
    assert approve(CALL, "time") is True
    assert approve(CALL, "time") is True  # no dialog this time: nothing would click it
    assert len(shown) == 1 and "Europe/Paris" in shown[0].arguments.toPlainText()


def test_call_card_keeps_the_result_collapsed(qtbot):
    card = ToolCallCard(CALL, "time")
    qtbot.addWidget(card)
    card.show()
    assert not card.toggle.isEnabled()
    card.finish(True, '{"datetime": "2026-11-29T23:00:00+01:00"}\nmore', False)
    assert card.result.isHidden() and "done" in card.header.text()
    card.toggle.click()
    assert card.result.isVisible() and "more" in card.result.toPlainText()
    card.finish(False, "The user did not allow this call.", True)
    assert "not run" in card.header.text()
    card.grab().save("/tmp/h-mcp-card.png")


def test_a_long_result_does_not_widen_the_call_card(qtbot):
    """The result's first line is cut on the toggle (whole in its tooltip and behind it): a narrow side panel
    stays narrow."""
    card = ToolCallCard(CALL, "time")
    qtbot.addWidget(card)
    short_width = card.minimumSizeHint().width()
    line = "Error executing tool convert_time: Invalid time format. Expected HH:MM [24-hour format] " * 3
    card.finish(True, line + "\nsecond line", True)
    assert card.toggle.text().endswith("…") and len(card.toggle.text()) < 60
    assert card.toggle.toolTip() == line  # the whole first line
    assert card.minimumSizeHint().width() <= max(short_width, 320)
    card.toggle.click()
    assert "second line" in card.result.toPlainText()


def test_tools_panel_lists_real_tools_and_enables_per_conversation(qtbot, fresh_home):
    panel = ToolsPanel()
    qtbot.addWidget(panel)
    panel.resize(460, 420)
    panel.show()
    assert not panel.add("bad name", "x")
    assert "not a server name" in panel.status.text()
    assert panel.add("t", f"{sys.executable} {SERVER}")
    item = panel.server_item("t")
    assert item is not None and panel.enabled() == []
    panel.set_conversation("c1")
    panel.server_item("t").setCheckState(0, Qt.Checked)
    assert panel.enabled() == ["t"]
    panel.set_conversation("c2")
    assert panel.enabled() == [] and panel.server_item("t").checkState(0) == Qt.Unchecked
    panel.set_conversation("c1")
    assert panel.enabled() == ["t"] and panel.enabled_specs()[0].args == (str(SERVER),)
    panel.refresh_tools()
    qtbot.waitUntil(lambda: panel.server_item("t").childCount() > 0, timeout=120_000)
    names = [panel.server_item("t").child(i).text(0) for i in range(panel.server_item("t").childCount())]
    assert "echo(text)" in names and "hang()" in names
    panel.grab().save("/tmp/h-mcp-panel.png")
    dialog = ToolApprovalDialog(CALL, "time")
    qtbot.addWidget(dialog)
    dialog.show()
    dialog.grab().save("/tmp/h-mcp-dialog.png")


def test_main_window_has_the_tools_tab(qtbot, tmp_path, fresh_home):
    from app.main import MainWindow
    from engine.conversations import ConversationStore
    from engine.mcp_client import ServerSpec, add_server

    add_server(ServerSpec("t", sys.executable, (str(SERVER),)))
    window = MainWindow(store=ConversationStore(tmp_path / "c.sqlite3"), start_engine=False)
    qtbot.addWidget(window)
    window.resize(1280, 800)
    window.show()
    window.new_chat()
    index = next(i for i in range(window.side.count()) if window.side.tabText(i) == "Tools")
    window.side.setCurrentIndex(index)
    panel = window.tools_panel
    panel.server_item("t").setCheckState(0, Qt.Checked)
    assert panel.enabled() == ["t"]
    window.new_chat()  # a new conversation starts with no tools enabled
    assert panel.enabled() == []
    window.grab().save("/tmp/h-mcp-window.png")


def test_a_reply_with_tools_asks_runs_and_shows_the_call(qtbot, tmp_path, fresh_home, tiny_model):
    """The whole GUI path: Tools tab -> the tool loop on the engine queue -> the approval dialog on the GUI
    thread -> the real MCP server -> the call's card with its result -> the model's answer stored."""
    from PySide6.QtWidgets import QApplication

    from app.main import MainWindow
    from engine.conversations import ConversationStore
    from engine.mcp_client import ServerSpec, add_server
    from engine.settings import SamplingSettings

    add_server(ServerSpec("t", sys.executable, (str(SERVER),), {"INGLE_TEST_TOOLS": "echo"}))
    window = MainWindow(store=ConversationStore(tmp_path / "c.sqlite3"), model=tiny_model)
    qtbot.addWidget(window)
    window.resize(1280, 800)
    window.show()
    with qtbot.waitSignal(window.model_ready, timeout=300_000):
        pass
    window.new_chat()
    window.store.set_settings(window.conversation, SamplingSettings(max_tokens=200, seed=1))
    panel = window.tools_panel
    panel.server_item("t").setCheckState(0, Qt.Checked)
    panel.choice.setCurrentText("required")
    window.side.setCurrentIndex(
        next(i for i in range(window.side.count()) if window.side.tabText(i) == "Tools")
    )
    dialogs = []

    def answer():
        dialog = QApplication.activeModalWidget()
        if isinstance(dialog, ToolApprovalDialog):
            dialogs.append(dialog.arguments.toPlainText())
            dialog.once.click()
        else:
            QTimer.singleShot(50, answer)

    QTimer.singleShot(50, answer)
    with qtbot.waitSignal(window.reply_finished, timeout=300_000) as blocker:
        assert window.send("say something")
    assert len(dialogs) == 1 and '"text"' in dialogs[0]
    (card,) = panel.cards
    assert card.call.name == "echo" and "done" in card.header.text()
    assert card.result.toPlainText().startswith("echo: ") and card.result.isHidden()
    reply = window.store.message(blocker.args[0])
    assert reply.status == "done"
    window.grab().save("/tmp/h-mcp-window-call.png")
    window.close()
