"""Conversations in the main window: the list, opening one (a bad one never takes the window down), rename,
pin, delete with undo, the actions of a message's links, export and import (a mixin of app.main.MainWindow)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import (
    QFileDialog,
    QInputDialog,
    QListWidgetItem,
    QMenu,
)

from app.dialogs import show_error
from engine.conversations import ConversationError
from engine.errors import IngleError
from engine.library import atomic_write_bytes
from engine.session import ChatSession
from engine.settings import SamplingSettings

log = logging.getLogger(__name__)
SAVE_INTERVAL = 0.5  # seconds between saves of a growing reply (a kill -9 loses at most this much)
REDRAW_INTERVAL_MS = 40  # streamed text is redrawn at most this often
STARTER_NOTE = (
    "<b>Gemma 3 270M</b> is loaded: a small <b>base model</b>. It continues text rather than following "
    "instructions. Teach it with the fine-tuning wizard, or get a chat model from the download manager."
)


class ConversationActions:
    """What the user does to conversations and messages; chat itself is in MainWindow (engine/session.py)."""

    # ------------------------------------------------------------ conversations
    def refresh_conversations(self) -> None:
        self.conv_list.clear()
        for conv in self.store.conversations(self.search.text()):
            item = QListWidgetItem(("📌 " if conv.pinned else "") + conv.title)
            item.setData(Qt.UserRole, conv.id)
            self.conv_list.addItem(item)
            if conv.id == self.conversation:
                item.setSelected(True)

    def new_chat(self) -> None:
        conv = self.store.create(settings=self.sampling_panel.settings())
        self.tools_panel.adopt_unsaved(conv.id)  # tools picked with no conversation open go with this one
        self.open_conversation(conv.id)
        self.refresh_conversations()
        self.composer.setFocus()

    def open_conversation(self, cid: int | None) -> bool:
        """Show conversation `cid`. One that cannot be shown (a damaged store, a bad import) leaves the window
        working: its error is shown and the previous conversation, or another one, stays open. False then."""
        if self.bridge.busy and self.streaming is not None:
            self.statusBar().showMessage("A reply is streaming: stop it (Esc) or let it finish first.", 5000)
            return False
        previous = self.conversation
        try:
            self._show_conversation(cid)
        except Exception as err:
            log.exception("conversation %s could not be opened", cid)
            title = self._title_or_id(cid)
            fallbacks = [previous] + [c.id for c in self._conversations_or_none()]
            for other in fallbacks:
                if other is not None and other != cid and other not in self._unopenable:
                    try:
                        self._show_conversation(other)
                        break
                    except Exception:
                        log.exception("conversation %s could not be opened either", other)
                        self._unopenable.add(other)
            else:
                self._show_conversation(None)
            self._unopenable.add(cid)
            self.fault_banner.show_message(
                f"The conversation “{title}” could not be opened ({str(err).rstrip('.')}). Its messages are kept in the store; "
                "the other conversations work as before."
            )
            return False
        return True

    def _title_or_id(self, cid: int | None) -> str:
        try:
            return self.store.get(cid).title
        except Exception:
            return f"#{cid}"

    def _conversations_or_none(self) -> list:
        try:
            return self.store.conversations()
        except Exception:
            return []

    def _show_conversation(self, cid: int | None) -> None:
        settings = None
        if cid is not None:
            try:
                settings = self.store.settings(cid)
            except (
                IngleError,
                ValueError,
                TypeError,
            ) as err:  # damaged settings: the chat itself still opens
                settings = SamplingSettings()
                self.fault_banner.show_message(
                    f"The sampling settings of “{self._title_or_id(cid)}” could not be read ({err}); the defaults "
                    "are used, and saved when you change one."
                )
        system_prompt = self.store.get(cid).system_prompt if cid is not None else ""
        self.conversation = cid
        self.chat = ChatSession(self.store, cid, SAVE_INTERVAL) if cid is not None else None
        self.tools_panel.set_conversation(str(cid))  # each conversation enables its own MCP servers
        self.editing = None
        if settings is not None:
            self.sampling_panel.set_settings(settings)
        self.system_prompt.blockSignals(True)
        self.system_prompt.setPlainText(system_prompt)
        self.system_prompt.blockSignals(False)
        self.refresh_conversations()
        self.render_conversation()
        self._show_conversation_figures()
        self.show_reply_extras()  # the last reply's sources and tool calls (app/reply_extras.py)
        self.conversation_opened.emit(cid)

    def _show_conversation_figures(self) -> None:
        """The status bar's context and speed belong to the open conversation: its last reply, or nothing."""
        path = self.store.path(self.conversation) if self.conversation is not None else []
        last = next((m for m in reversed(path) if m.role == "assistant" and m.stats), None)
        n_ctx = self.loaded.n_ctx if self.loaded is not None else 0
        stats = last.stats if last is not None else {}
        try:
            n_past, tok_s, ttft = int(stats["n_past"]), float(stats["tok_s"]), float(stats["ttft"])
        except (KeyError, TypeError, ValueError):
            self.context_label.setText(f"Context 0 / {n_ctx:,}" if n_ctx else "")
            self.speed_label.setText("")
            return
        self._show_stats(n_past, n_ctx or int(stats.get("n_ctx") or 0), tok_s, ttft)

    def show_context_figure(self, used: int, n_ctx: int) -> None:
        """The context view's count (the conversation as the next reply would see it): the status bar says the
        same number."""
        self.context_label.setText(f"Context {used:,} / {n_ctx:,}")

    def render_conversation(self) -> None:
        if self.conversation is None:
            self.view.show_messages([], None)
            return
        shown = []
        live = self.chat.live_message() if self.chat is not None else None
        for msg in self.store.path(self.conversation):
            if live is not None and msg.id == live.id:
                continue
            siblings = [m.id for m in self.store.siblings(msg.id)]
            shown.append((msg, (siblings.index(msg.id) + 1, len(siblings))))
        self.view.show_messages(shown, live)

    def _conversation_menu(self, pos) -> None:
        item = self.conv_list.itemAt(pos)
        if item is None:
            return
        cid = item.data(Qt.UserRole)
        conv = self.store.get(cid)
        menu = QMenu(self)
        menu.addAction("Rename…", lambda: self._rename(cid))
        menu.addAction("Unpin" if conv.pinned else "Pin", lambda: self._pin(cid, not conv.pinned))
        menu.addAction("Delete", lambda: self.delete_conversation(cid))
        menu.exec(self.conv_list.mapToGlobal(pos))

    def _rename(self, cid: int) -> None:
        title, ok = QInputDialog.getText(self, "Rename chat", "Title:", text=self.store.get(cid).title)
        if ok:
            self._guard(lambda: self.store.rename(cid, title))
            self.refresh_conversations()

    def _pin(self, cid: int, pinned: bool) -> None:
        self.store.set_pinned(cid, pinned)
        self.refresh_conversations()

    def delete_conversation(self, cid: int) -> None:
        self.store.delete(cid)
        self._undo = lambda: (self.store.undelete(cid), cid)[1]
        self.undo_banner.show_message(f"Deleted “{self.store.get(cid).title}”.", "Undo")
        if cid == self.conversation:
            convs = self.store.conversations()
            self.open_conversation(convs[0].id if convs else None)
        self.refresh_conversations()

    def delete_message(self, mid: int) -> None:
        """Delete a message and its replies; the undo banner brings them back (until the app closes)."""
        if self.bridge.busy:
            self.statusBar().showMessage(
                "Wait for the engine to finish (or press Stop) before deleting.", 5000
            )
            return
        msg = self.store.message(mid)
        ticket = self.store.delete_message(mid)
        self._undo = lambda: self.store.undelete_message(ticket)
        who = {"user": "your message", "assistant": "a reply", "system": "a system message"}.get(
            msg.role, "a message"
        )
        preview = " ".join(msg.content.split())[:60]
        self.undo_banner.show_message(f"Deleted {who}: “{preview}”.", "Undo")
        self.render_conversation()

    def _undo_delete(self) -> None:
        undo, self._undo = self._undo, None
        self.undo_banner.hide()
        if undo is None:
            return
        try:
            cid = undo()
        except IngleError as err:
            show_error(self, str(err))
            return
        self.open_conversation(cid)
        self.refresh_conversations()

    def _settings_changed(self, settings) -> None:
        if self.conversation is not None:
            self.store.set_settings(self.conversation, settings)

    def _system_prompt_changed(self) -> None:
        if self.conversation is not None:
            self.store.set_system_prompt(self.conversation, self.system_prompt.toPlainText())

    def _guard(self, action) -> bool:
        try:
            action()
            return True
        except IngleError as err:
            show_error(self, str(err))
            return False

    # ------------------------------------------------------------ message links
    def _on_view_action(self, verb: str, mid: int, arg: str) -> None:
        if verb == "external":
            QGuiApplication.clipboard().setText(arg)
            self.statusBar().showMessage(f"Links are not opened from model output; copied: {arg}", 8000)
            return
        try:
            msg = self.store.message(mid)
        except ConversationError:
            return
        if msg.conversation != self.conversation:  # actions only ever apply to the open conversation
            return
        if verb == "copy":
            QGuiApplication.clipboard().setText(msg.content)
        elif verb == "copycode":
            blocks = self.view.code.get(mid, [])
            if arg.isdigit() and int(arg) < len(blocks):
                QGuiApplication.clipboard().setText(blocks[int(arg)])
        elif verb in ("prev", "next"):
            ids = [m.id for m in self.store.siblings(mid)]
            step = -1 if verb == "prev" else 1
            self.store.select(ids[(ids.index(mid) + step) % len(ids)])
            self.render_conversation()
        elif verb == "regenerate":
            self.regenerate(mid)
        elif verb == "continue":
            self.continue_reply(mid)
        elif verb == "edit":
            self.edit(mid)
        elif verb == "delete":
            self.delete_message(mid)
        elif verb == "think":
            self.view.expanded_thinking ^= {mid}
            self.render_conversation()
        elif verb in ("sources", "tools"):  # a reply's sources or calls, in their tab
            self.show_reply_extras(mid, "Documents" if verb == "sources" else "Tools")

    def edit(self, mid: int) -> None:
        """Put a user message back in the box; sending it makes a new branch beside the old one."""
        self.editing = mid
        self.composer.setPlainText(self.store.message(mid).content)
        self.composer.setFocus()
        self.statusBar().showMessage(
            "Editing: sending makes a new branch; the old one stays reachable.", 8000
        )

    # ------------------------------------------------------------ export / import
    def _export(self, fmt: str) -> None:
        if self.conversation is None:
            return
        path, _ = QFileDialog.getSaveFileName(self, "Export conversation", f"conversation.{fmt}")
        if path:
            self._guard(lambda: self.export_conversation(Path(path), fmt))

    def export_conversation(self, path: Path, fmt: str) -> None:
        """Written whole or not at all (a temporary file renamed into place); ConversationError when it cannot."""
        if fmt == "json":
            text = json.dumps(self.store.export_json(self.conversation), indent=2, ensure_ascii=False)
        else:
            text = self.store.export_markdown(self.conversation)
        try:
            atomic_write_bytes(path, text.encode("utf-8"))
        except OSError as err:
            raise ConversationError(
                f"Cannot write {path}: {err.strerror or err}. Choose another place."
            ) from None

    def _import_json(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Import conversation", "", "JSON (*.json)")
        if path:
            self._guard(lambda: self.import_conversation(Path(path)))

    def import_conversation(self, path: Path) -> None:
        conv = self.store.import_file(path)
        self.refresh_conversations()
        self.open_conversation(conv.id)
