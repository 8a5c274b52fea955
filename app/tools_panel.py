"""The Tools panel: the MCP servers of the config file (engine/mcp_client.py), their tools with descriptions,
which servers the current conversation may use (a check box per server) and its tool choice, both kept per
conversation in the conversation store when the panel is given one, so they stay after a restart."""

from __future__ import annotations

import json

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QComboBox,
    QHBoxLayout,
    QInputDialog,
    QLabel,
    QPushButton,
    QScrollArea,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from app.ops import Op
from app.tool_approval import ToolCallCard
from engine.mcp_client import McpClient, McpTool, ServerSpec, add_server, load_servers, remove_server


def list_tools(spec: ServerSpec) -> tuple[list[McpTool], str]:
    """Start a server, list its tools, stop it (off the GUI thread): its tools and what went wrong ("")."""
    with McpClient([spec]) as client:
        return client.tools(), "; ".join(client.problems.values())


class ToolsPanel(QWidget):
    """Servers and their tools; `enabled()` is the servers the current conversation may use."""

    changed = Signal()

    def __init__(self, parent: QWidget | None = None, lister=list_tools, store=None):
        """`store`: a ConversationStore that keeps each conversation's servers (None: kept in memory only)."""
        super().__init__(parent)
        self._lister = lister
        self._store = store
        self._enabled: dict[str, set[str]] = {}  # conversation id -> servers it may use
        self._choices: dict[str, str] = {}  # conversation id -> its tool choice
        self._conversation = ""
        self._servers: dict[str, ServerSpec] = {}
        layout = QVBoxLayout(self)
        intro = QLabel("Tools the model may call, from MCP servers. Check a server to let this conversation use "
                       "it; every call asks you first.")  # fmt: skip
        intro.setWordWrap(True)
        layout.addWidget(intro)
        self.tree = QTreeWidget()
        self.tree.setHeaderLabels(["Server / tool", "Description"])
        self.tree.setColumnWidth(0, 180)
        self.tree.itemChanged.connect(self._item_changed)
        layout.addWidget(self.tree, 1)
        row = QHBoxLayout()
        self.add_button = QPushButton("Add server…")
        self.remove_button = QPushButton("Remove")
        self.refresh_button = QPushButton("List tools")
        for b in (self.add_button, self.remove_button, self.refresh_button):
            row.addWidget(b)
        layout.addLayout(row)
        choice_row = QHBoxLayout()
        choice_row.addWidget(QLabel("Tool choice:"))
        self.choice = QComboBox()
        self.choice.addItems(["auto", "required", "none"])
        self.choice.setToolTip(
            "auto: the model decides; required: it must call a tool first; none: no calls (kept per conversation)"
        )
        self.choice.currentTextChanged.connect(self._choice_changed)
        choice_row.addWidget(self.choice, 1)
        layout.addLayout(choice_row)
        layout.addWidget(QLabel("Calls in the last reply:"))
        self.calls_box = QWidget()
        self.calls_layout = QVBoxLayout(self.calls_box)
        self.calls_layout.addStretch(1)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setWidget(self.calls_box)
        layout.addWidget(scroll, 1)
        self.cards: list[ToolCallCard] = []
        self.status = QLabel()
        self.status.setWordWrap(True)
        self.status.setTextFormat(Qt.PlainText)
        layout.addWidget(self.status)
        self.add_button.clicked.connect(self._add)
        self.remove_button.clicked.connect(self._remove)
        self.refresh_button.clicked.connect(self.refresh_tools)
        self.reload()

    # -- servers
    def reload(self) -> None:
        """Read the config file again and show its servers (tools are listed on demand)."""
        try:
            self._servers = load_servers()
        except Exception as err:  # a broken config file is shown, not fatal
            self._servers = {}
            self.status.setText(str(err))
        self.tree.blockSignals(True)
        self.tree.clear()
        for name, spec in self._servers.items():
            item = QTreeWidgetItem([name, spec.describe()])
            item.setFlags(item.flags() | Qt.ItemIsUserCheckable)
            item.setCheckState(0, Qt.Checked if name in self.enabled() else Qt.Unchecked)
            item.setData(0, Qt.UserRole, name)
            self.tree.addTopLevelItem(item)
        self.tree.blockSignals(False)

    def server_item(self, name: str) -> QTreeWidgetItem | None:
        for i in range(self.tree.topLevelItemCount()):
            item = self.tree.topLevelItem(i)
            if item.data(0, Qt.UserRole) == name:
                return item
        return None

    def show_tools(self, name: str, tools: list[McpTool], problem: str) -> None:
        item = self.server_item(name)
        if item is None:
            return
        item.takeChildren()
        for t in tools:
            params = ", ".join(json.loads(t.tool.parameters).get("properties", {}))
            child = QTreeWidgetItem([f"{t.name}({params})", t.tool.description.strip().splitlines()[0] if
                                     t.tool.description.strip() else ""])  # fmt: skip
            child.setToolTip(1, t.tool.description)
            child.setToolTip(0, json.dumps(json.loads(t.tool.parameters), indent=2))
            item.addChild(child)
        if problem:
            item.addChild(QTreeWidgetItem(["error", problem]))
        item.setExpanded(True)

    def refresh_tools(self) -> None:
        """Start each server in the background and show its tools."""
        for name, spec in self._servers.items():
            self.status.setText(f"Starting {name}…")
            Op(self, lambda _p, s=spec: self._lister(s)).success(
                lambda result, n=name: (self.show_tools(n, *result), self.status.setText(""))
            ).run()

    def _add(self) -> None:
        name, ok = QInputDialog.getText(self, "Add MCP server", "Name:")
        if not ok or not name:
            return
        target, ok = QInputDialog.getText(
            self, "Add MCP server", "Command with arguments, or an http(s) URL:"
        )
        if not ok or not target.strip():
            return
        self.add(name.strip(), target.strip())

    def add(self, name: str, target: str) -> bool:
        """Add a server from a command line or URL; a bad one is explained in the status line."""
        import shlex

        try:
            if target.startswith(("http://", "https://")):
                spec = ServerSpec(name, url=target)
            else:
                parts = shlex.split(target)
                spec = ServerSpec(name, parts[0], tuple(parts[1:]))
            add_server(spec)
        except (ValueError, IndexError) as err:
            self.status.setText(f"Not a command line: {err}")
            return False
        except Exception as err:
            self.status.setText(str(err))
            return False
        self.status.setText(f"Added {name}.")
        self.reload()
        return True

    def _remove(self) -> None:
        item = self.tree.currentItem()
        while item is not None and item.parent() is not None:
            item = item.parent()
        if item is None:
            return
        name = item.data(0, Qt.UserRole)
        remove_server(name)
        for servers in self._enabled.values():
            servers.discard(name)
        if self._store is not None:
            self._store.forget_tool_server(name)
        self.reload()
        self.changed.emit()

    # -- calls
    def clear_calls(self) -> None:
        for card in self.cards:  # out of the layout now: deleteLater() alone leaves them drawn until it runs
            self.calls_layout.removeWidget(card)
            card.hide()
            card.deleteLater()
        self.cards = []

    def _add_card(self, call, server: str) -> ToolCallCard:
        card = ToolCallCard(call, server)
        self.calls_layout.insertWidget(self.calls_layout.count() - 1, card)  # above the stretch
        self.cards.append(card)
        return card

    def show_stored_calls(self, calls) -> None:
        """A stored reply's calls (engine/reply_meta.py records), as its cards were when it ran."""
        from engine.events import ToolCall

        self.clear_calls()
        for n, record in enumerate(calls):
            call = ToolCall(
                record.get("id") or f"stored-{n}", record.get("tool", ""), record.get("arguments", "{}")
            )
            card = self._add_card(call, record.get("server", ""))
            status = record.get("status", "done")
            card.finish(status != "denied", record.get("result", ""), status == "error")

    def show_call(self, event) -> None:
        """A ToolCallStarted adds a card (the call and its arguments); a ToolCallFinished fills in its result."""
        from engine.tool_loop import ToolCallFinished, ToolCallStarted

        if isinstance(event, ToolCallStarted):
            self._add_card(event.call, event.server)
        elif isinstance(event, ToolCallFinished):
            card = next((c for c in reversed(self.cards) if c.call.id == event.call.id), None)
            if card is not None:
                card.finish(event.approved, event.result.text, event.result.is_error)

    # -- per conversation
    def set_conversation(self, conversation_id: str) -> None:
        self._conversation = conversation_id
        if self._store is not None and conversation_id.isdigit():
            try:
                self._enabled[conversation_id] = set(self._store.tool_servers(int(conversation_id)))
                self._choices[conversation_id] = self._store.tool_choice(int(conversation_id))
            except Exception as err:  # a damaged store: the conversation opens with no servers enabled
                self.status.setText(f"The servers this conversation enabled could not be read: {err}")
        self.choice.blockSignals(True)  # showing the conversation's choice is not changing it
        self.choice.setCurrentText(self._choices.get(conversation_id, "auto"))
        self.choice.blockSignals(False)
        self.reload()

    def adopt_unsaved(self, conversation_id: int) -> None:
        """The servers and tool choice picked while no conversation was open go with the conversation just made
        for them (the first message sent, a document attached), saved with it."""
        if self._conversation.isdigit():
            return
        key = str(conversation_id)
        if (servers := self._enabled.pop(self._conversation, None)) is not None:
            self._enabled[key] = servers
            self._save_servers(key)
        if (choice := self._choices.pop(self._conversation, None)) is not None:
            self._choices[key] = choice
            self._save_choice(key)

    def _choice_changed(self, choice: str) -> None:
        self._choices[self._conversation] = choice
        self._save_choice(self._conversation)

    def _save_choice(self, key: str) -> None:
        if self._store is not None and key.isdigit():
            try:
                self._store.set_tool_choice(int(key), self._choices[key])
            except Exception as err:  # a deleted conversation, a locked file: kept for this session only
                self.status.setText(f"Tool choice not saved (kept until the app closes): {err}")

    def _save_servers(self, key: str) -> None:
        if self._store is not None and key.isdigit():
            try:
                self._store.set_tool_servers(int(key), sorted(self._enabled[key]))
            except Exception as err:  # a deleted conversation, a locked file: enabled for this session only
                self.status.setText(f"Not saved (enabled until the app closes): {err}")

    def enabled(self) -> list[str]:
        return sorted(self._enabled.get(self._conversation, set()) & set(self._servers))

    def enabled_specs(self) -> list[ServerSpec]:
        return [self._servers[n] for n in self.enabled()]

    def _item_changed(self, item: QTreeWidgetItem, column: int) -> None:
        name = item.data(0, Qt.UserRole)
        if column != 0 or name is None:
            return
        servers = self._enabled.setdefault(self._conversation, set())
        if item.checkState(0) == Qt.Checked:
            servers.add(name)
        else:
            servers.discard(name)
        self._save_servers(self._conversation)
        self.changed.emit()
