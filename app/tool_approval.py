"""Tool calls in the GUI: the dialog that asks before a call runs (allow once / always for this tool / deny),
and the card that shows a call with its arguments and its result, collapsed until clicked."""

from __future__ import annotations

import json

from PySide6.QtCore import Qt
from PySide6.QtGui import QFont
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QFrame,
    QLabel,
    QPlainTextEdit,
    QPushButton,
    QSizePolicy,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from engine.events import ToolCall
from engine.tool_loop import Approval


def pretty_arguments(arguments: str) -> str:
    """A call's arguments as indented JSON (as they came when they are not JSON)."""
    try:
        return json.dumps(json.loads(arguments or "{}"), indent=2, ensure_ascii=False)
    except json.JSONDecodeError:
        return arguments


def _mono(text: str, lines: int) -> QPlainTextEdit:
    box = QPlainTextEdit(text, readOnly=True)
    box.setFont(QFont("monospace"))
    box.setLineWrapMode(QPlainTextEdit.WidgetWidth)
    box.setMaximumHeight(box.fontMetrics().lineSpacing() * lines + 16)
    return box


class ToolApprovalDialog(QDialog):
    """Asks whether the model may run one call; `answer` is the Approval (DENY when closed)."""

    def __init__(self, call: ToolCall, server: str, parent: QWidget | None = None):
        super().__init__(parent)
        self.setWindowTitle("Allow a tool call?")
        self.answer = Approval.DENY
        layout = QVBoxLayout(self)
        title = QLabel(f"The model wants to run <b>{_esc(call.name)}</b> from the server <b>{_esc(server)}</b>"
                       " with these arguments:")  # fmt: skip
        title.setWordWrap(True)
        layout.addWidget(title)
        self.arguments = _mono(pretty_arguments(call.arguments), 12)
        layout.addWidget(self.arguments)
        note = QLabel(
            "Tools run on this computer with your permissions. Check the arguments before you allow."
        )
        note.setWordWrap(True)
        note.setEnabled(False)
        layout.addWidget(note)
        buttons = QDialogButtonBox()
        self.once = QPushButton("Allow once")
        self.always = QPushButton(f"Always allow {call.name}")
        self.deny = QPushButton("Deny")
        for button, role, answer in ((self.once, QDialogButtonBox.AcceptRole, Approval.ONCE),
                                     (self.always, QDialogButtonBox.AcceptRole, Approval.ALWAYS),
                                     (self.deny, QDialogButtonBox.RejectRole, Approval.DENY)):  # fmt: skip
            buttons.addButton(button, role)
            button.clicked.connect(lambda _=False, a=answer: self._choose(a))
        for button in (self.once, self.always):
            button.setAutoDefault(False)  # Enter must not run a tool by accident: it denies
        self.deny.setDefault(True)
        self.deny.setFocus()
        layout.addWidget(buttons)
        self.resize(520, 320)

    def _choose(self, answer: Approval) -> None:
        self.answer = answer
        self.accept() if answer is not Approval.DENY else self.reject()


def ask_with_dialog(parent: QWidget | None):
    """An `ask(call, server)` for engine.tool_loop.Approver that shows the dialog (on the GUI thread)."""

    def ask(call: ToolCall, server: str) -> Approval:
        dialog = ToolApprovalDialog(call, server, parent)
        dialog.exec()
        return dialog.answer

    return ask


class ToolCallCard(QFrame):
    """One call in a reply: the tool, its arguments, and (once it ran) its result behind a toggle."""

    def __init__(self, call: ToolCall, server: str, parent: QWidget | None = None):
        super().__init__(parent)
        self.setFrameShape(QFrame.StyledPanel)
        layout = QVBoxLayout(self)
        self.header = QLabel(
            f"Tool {_esc(call.name)} <span style='color:gray'>({_esc(server)})</span> — waiting"
        )
        layout.addWidget(self.header)
        self.arguments = _mono(pretty_arguments(call.arguments), 6)
        layout.addWidget(self.arguments)
        self.toggle = QToolButton(text="Result", checkable=True, arrowType=Qt.RightArrow)
        self.toggle.setToolButtonStyle(Qt.ToolButtonTextBesideIcon)
        # a long first line must not widen the side panel: the button takes the card's width, not its text's
        self.toggle.setSizePolicy(QSizePolicy.Ignored, QSizePolicy.Fixed)
        self.toggle.setEnabled(False)
        self.toggle.toggled.connect(self._toggled)
        layout.addWidget(self.toggle)
        self.result = _mono("", 10)
        self.result.setVisible(False)
        layout.addWidget(self.result)
        self.call, self.server = call, server

    def finish(self, approved: bool, text: str, is_error: bool) -> None:
        state = "error" if is_error else "done"
        if not approved:
            state = "not run"
        color = "#b00020" if is_error or not approved else "#2e7d32"
        self.header.setText(f"Tool {_esc(self.call.name)} <span style='color:gray'>({_esc(self.server)})</span> — "
                            f"<span style='color:{color}'>{state}</span>")  # fmt: skip
        self.result.setPlainText(text)
        first = text.strip().split("\n")[0]  # splitlines() would also cut at a control character
        self.toggle.setText(f"Result: {first[:48]}…" if len(first) > 48 else f"Result: {first}")
        self.toggle.setToolTip(first[:500])
        self.toggle.setEnabled(True)

    def _toggled(self, shown: bool) -> None:
        self.toggle.setArrowType(Qt.DownArrow if shown else Qt.RightArrow)
        self.result.setVisible(shown)


def _esc(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
