"""Ingle's main window: the engine and the model, chat actions on the open conversation's ChatSession, the other
windows. Its layout and menus are in app/window_layout.py, conversation management in app/window_conversations.py."""

from __future__ import annotations

import logging
from pathlib import Path

from PySide6.QtCore import QSettings, QTimer, Signal
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import (
    QMainWindow,
    QMessageBox,
)

from app.bridge import EngineBridge
from app.ops import Op, describe_error
from app.remote_models import RemoteChoice, load_remote, remote_loaded, show_notices
from app.reopen import ReopenCache, ReopenSettings
from app.reply_extras import ReplyExtras
from app.window_conversations import ConversationActions
from app.window_layout import WindowLayout
from engine.conversations import ConversationStore, StoredMessage
from engine.errors import EngineDied, IngleError
from engine.events import LoadProgress, Message, ModelLoaded, ReplyDone
from engine.library import STARTER_NAME, Library, data_dir
from engine.session import ChatSession, Phase
from engine.settings import LoadSettings

log = logging.getLogger(__name__)
SAVE_INTERVAL = 0.5  # seconds between saves of a growing reply (a kill -9 loses at most this much)
REDRAW_INTERVAL_MS = 40  # streamed text is redrawn at most this often
STARTER_NOTE = (
    "<b>Gemma 3 270M</b> is loaded: a tiny <b>base model</b>, with the bundled <b>starter-chat</b> adapter that "
    'teaches it to answer in turns (set the LoRA adapter to "none" to see the base model). It is often '
    "wrong. Teach it more with the fine-tuning wizard, or get a chat model from the download manager."
)


class MainWindow(WindowLayout, ConversationActions, ReplyExtras, QMainWindow):
    reply_finished = Signal(int)  # assistant message id, after it is stored (done, stopped or interrupted)
    conversation_opened = Signal(object)  # conversation id or None
    model_ready = Signal(object)  # ModelLoaded
    engine_failed = Signal(str)

    def __init__(self, store: ConversationStore | None = None, library: Library | None = None,
                 model: str | Path | None = None, start_engine: bool = True):  # fmt: skip
        super().__init__()
        self.setWindowTitle("Ingle")
        self.store = store or ConversationStore()
        self.library = library or Library()
        self.gui_settings = QSettings(str(data_dir() / "gui.ini"), QSettings.IniFormat)
        self.bridge = EngineBridge(self)
        self.bridge.busy_changed.connect(self._update_buttons)
        self.bridge.died.connect(self._engine_died)
        self.conversation: int | None = None
        self._undo = None  # what the undo banner's button undoes: returns the conversation to show
        self._unopenable: set[int] = set()  # conversations that failed to open (not retried as fallbacks)
        self.loaded: ModelLoaded | None = None
        self.last_load: tuple | None = None
        self.chat: ChatSession | None = None  # the open conversation's chat logic (engine/session.py)
        self._interrupted: int | None = None  # a reply the engine's death cut off (for the fault banner)
        self.editing: int | None = None
        self.model_manager = None  # the download manager window, made on first use
        self.wizard = None  # the fine-tuning wizard, while open
        self._build()
        self._redraw = QTimer(self, singleShot=True, interval=REDRAW_INTERVAL_MS)
        self._redraw.timeout.connect(self._redraw_stream)
        self.apply_theme(self.gui_settings.value("theme", "system"))
        QGuiApplication.styleHints().colorSchemeChanged.connect(self._system_scheme_changed)
        self.refresh_conversations()
        convs = self.store.conversations()
        self.open_conversation(convs[0].id if convs else None)  # a bad one shows its error, another opens
        self._restore_layout()
        self.reopen = ReopenCache(self)  # saves and restores conversations' KV caches (instant reopen)
        self.reopen.open_cid = self.conversation
        self.initial_model = model
        if start_engine:
            self.start_engine()

    @property
    def streaming(self) -> StoredMessage | None:
        """The reply being written, if any."""
        return self.chat.reply if self.chat is not None and self.chat.phase is Phase.STREAMING else None

    # ------------------------------------------------------------ other windows
    def open_model_manager(self, tab: int = 0):
        """The download manager and library window; one per main window, so partial downloads have one owner."""
        if self.model_manager is None:
            from app.downloads_window import DownloadManagerWindow

            self.model_manager = DownloadManagerWindow(self)
            self.model_manager.library_changed.connect(self.model_panel.refresh)
        tabs = getattr(self.model_manager, "tabs", None)
        if tabs is not None:
            tabs.setCurrentIndex(tab)
        self.model_manager.show()
        self.model_manager.raise_()
        return self.model_manager

    def open_wizard(self):
        """The fine-tuning wizard (one at a time); 'Chat with it' comes back here."""
        from app.wizard import FineTuneWizard

        if self.wizard is None:
            self.wizard = FineTuneWizard(self.library, self)
            self.wizard.chat_requested.connect(self.chat_with_adapter)
            self.wizard.finished.connect(self._wizard_closed)
        self.wizard.show()
        self.wizard.raise_()
        return self.wizard

    def _wizard_closed(self, _result: int) -> None:
        self.wizard.deleteLater()
        self.wizard = None
        self.model_panel.refresh()  # trained adapters and exports are in the library now

    def chat_with_adapter(self, base: str, adapter: str, scale: float) -> None:
        """A new conversation with `base` + `adapter` loaded (from the wizard's last page)."""
        self.model_panel.refresh()
        self.new_chat()
        self.load_model(base, self.model_panel.load_settings(), ((adapter, scale),))

    # ------------------------------------------------------------ engine and model
    def start_engine(self) -> None:
        """Start (or restart) the engine child; then load the last model, or the first one."""
        self.bridge.start_engine(self._engine_started, self._engine_start_failed)

    def _engine_started(self, hardware) -> None:
        self.model_panel.set_hardware(hardware)
        self.model_label.setText("No model")
        if self.last_load is not None:  # after a crash, bring the same model back
            self.load_model(*self.last_load)
        else:
            self._load_initial_model()

    def _engine_start_failed(self, err: Exception) -> None:
        if not isinstance(err, EngineDied):  # a child that died at start is reported by _engine_died
            self.fault_banner.show_message(str(err), "Restart engine")
            self.engine_failed.emit(str(err))

    def _load_initial_model(self) -> None:
        model = self.initial_model or self.gui_settings.value("last_model")
        if isinstance(model, (str, Path)) and model and Path(model).exists():  # gui.ini may be edited
            self.load_model(str(model), adapters=self._starter_adapters(model))
            return
        # the bundled starter: assembled and checked (250 MB, sha256) off the GUI thread on first start
        self.model_label.setText("Preparing the starter model…")

        def prepare(progress):
            progress(None, "Assembling the starter model (first start)…")
            checking = "Checking the starter model's sha256…"
            return self.library.ensure_starter(lambda done, total: progress(done / total, checking))

        def failed(err: BaseException) -> None:
            self.model_label.setText("No model")
            self.fault_banner.show_message(describe_error(err))

        (
            Op(self, prepare)
            .with_progress("Preparing the starter model…")
            .success(
                lambda entry: self.load_model(str(entry.file), adapters=self._starter_adapters(entry.file))
            )
            .failure(failed)
            .run()
        )

    def _starter_adapters(self, model) -> tuple:
        """The starter loads with its bundled chat adapter, shown selected in the model panel, unless the user
        last loaded the starter without it."""
        try:
            starter = self.library.get(STARTER_NAME)
            is_starter = starter.present and Path(model).resolve() == starter.file.resolve()
            adapter = None
            if is_starter:
                self.library.ensure_starter()  # links the adapter for a starter assembled by an older Ingle
                adapter = self.library.starter_adapter()
        except IngleError as err:
            log.warning("no starter adapter: %s", err)
            adapter = None
        self.model_panel.refresh()
        if adapter is None or not self.gui_settings.value("starter_adapter", True, type=bool):
            return ()
        self.model_panel.select_adapter(adapter.name, 1.0)
        return ((str(adapter.file), 1.0),)

    def _refuse_while_busy(self, what: str) -> bool:
        """User actions run one at a time; True (and a note) when one is queued or running."""
        if self.bridge.busy:
            self.statusBar().showMessage(
                f"Wait for the engine to finish (or press Stop) before {what}.", 5000
            )
            return True
        return False

    def load_model(
        self, path: str, settings: LoadSettings | None = None, adapters=(), template: str | None = None
    ) -> None:
        """Load a model (with LoRA adapters; `template`: a chat template override, else the panel's choice)."""
        if self._refuse_while_busy("loading"):
            return
        self._stop_server(
            "The server stopped: the chat window is loading another model. Start it again to serve it."
        )
        if template is None:
            template = self.model_panel.chat_template()
        self.last_load = (str(path), settings or self.model_panel.load_settings(), tuple(adapters), template)
        path, load, adapters, template = self.last_load
        self.model_panel.set_loading(0.0)
        self.model_label.setText(f"Loading {Path(path).name}…")
        self.bridge.stream(
            lambda _engine: self.bridge.use_engine(None).load(path, load, adapters, template),
            event=self._on_load_event, done=self._load_done, failed=self._load_failed,
        )  # fmt: skip

    def load_remote(self, choice: RemoteChoice) -> None:
        """Chat with a model on a saved remote server (app/remote_models.py); a local load switches back."""
        if self._refuse_while_busy("loading"):
            return
        self._stop_server("The server stopped: the chat window uses a remote model now.")
        load_remote(self, choice)

    def _on_load_event(self, ev) -> None:
        if isinstance(ev, LoadProgress):
            self.model_panel.set_loading(ev.fraction)
        elif isinstance(ev, ModelLoaded):
            self._model_loaded(ev)

    def _load_done(self, _result) -> None:
        if self.loaded is not None:
            self.model_ready.emit(self.loaded)  # the engine is free now: ready to send

    def _load_failed(self, err: Exception) -> None:
        self.model_panel.set_loading(None)
        self.model_label.setText("No model")
        if not isinstance(err, EngineDied):
            self.fault_banner.show_message(str(err))
            self.engine_failed.emit(str(err))

    def unload_model(self) -> None:
        if self._refuse_while_busy("unloading"):
            return
        self._stop_server("The server stopped: the model was unloaded.")
        self.loaded = None
        self.model_label.setText("No model")
        self.bridge.call(lambda _engine: self.bridge.use_engine(None).unload())

    def restart_engine(self) -> None:
        self.fault_banner.hide()
        self.model_label.setText("Restarting the engine…")
        self.start_engine()

    def _stop_server(self, why: str) -> None:
        if self.server.running:
            self.server.stop(why)
            self.statusBar().showMessage(why, 10_000)

    def _engine_died(self, err: EngineDied) -> None:
        self._stop_server("The server stopped: the engine stopped. Restart it, then start the server again.")
        self.loaded = None
        self.model_label.setText("Engine stopped")
        detail = " Your conversation and the partial reply are kept." if self._interrupted is not None else ""
        self._interrupted = None
        self.fault_banner.show_message(f"{err}{detail}", "Restart engine", bold="The engine stopped.")
        self.engine_failed.emit(str(err))

    def _model_loaded(self, ev: ModelLoaded) -> None:
        self.loaded = ev
        self.model_panel.set_loading(None)
        if ev.info.get("kind") == "remote":
            remote_loaded(self, ev)
            return
        name = Path(ev.path).stem
        self.model_label.setText(f"{name} · {ev.info.get('architecture', '')} {ev.info.get('file_type', '')}")
        self.context_label.setText(f"Context 0 / {ev.n_ctx:,}")
        self.gui_settings.setValue("last_model", ev.path)
        # remembered, so "none" chosen for the starter stays chosen at the next start
        if name == STARTER_NAME:
            self.gui_settings.setValue("starter_adapter", bool(self.last_load and self.last_load[2]))
        if ev.fit_note:  # what "Fit automatically" chose, and why
            self.model_panel.estimate.setText(ev.fit_note)
        if ev.template_warning:
            self.info_banner.show_message(ev.template_warning)
        elif name == STARTER_NAME:
            self.info_banner.show_html(STARTER_NOTE)
        else:
            self.info_banner.hide()

    # ------------------------------------------------------------ chat actions (engine/session.py decides)
    def send_from_composer(self) -> None:
        text = self.composer.toPlainText().strip()
        if text and self.send(text):
            self.composer.clear()

    def _can_chat(self) -> bool:
        if self.loaded is None:
            self.statusBar().showMessage("Load a model first.", 5000)
            return False
        return not self._refuse_while_busy("sending")

    def send(self, text: str) -> bool:
        """Add a user message (a new branch when editing) and stream the reply. False when it cannot start."""
        if not self._can_chat():
            return False
        if self.conversation is None:
            self.new_chat()
        editing, self.editing = self.editing, None
        if not self._start(lambda chat: chat.send(text, editing=editing)):
            return False
        self.refresh_conversations()  # the first message titles the chat
        return True

    def regenerate(self, mid: int) -> None:
        if self._can_chat():
            self._start(lambda chat: chat.regenerate(mid))

    def continue_reply(self, mid: int) -> None:
        """Let the model go on writing a reply that was stopped or cut off, in the same message."""
        if self._can_chat() and not self._needs_local_model("Continuing a reply"):
            self._start(lambda chat: chat.continue_reply(mid))

    def continue_with(self, mid: int, text: str) -> None:
        """A new branch beside reply `mid` that starts with `text` (its tokens up to one, then another choice
        there), which the model then goes on writing."""
        if self._can_chat() and not self._needs_local_model("Continuing from a chosen token"):
            self._start(lambda chat: chat.continue_with(mid, text))

    def _needs_local_model(self, what: str) -> bool:
        """True (and the reason in the status bar) when a remote model is loaded: `what` needs a local one."""
        remote = self.bridge.remote
        if remote is not None:
            self.statusBar().showMessage(
                f"{what} needs a local model: the server at {remote.host} can only reply anew.", 8000
            )
        return remote is not None

    def engine_messages(self) -> list[Message]:
        """The open conversation as the engine gets it (for the visualizers)."""
        return self.chat.engine_messages() if self.chat is not None else []

    def _start(self, plan) -> bool:
        """Plan a turn with the session, then stream it through the engine queue."""
        try:
            turn = plan(self.chat)
        except IngleError as err:
            self.statusBar().showMessage(str(err), 5000)
            return False
        settings = self.inspector.stream_settings(self.store.settings(self.conversation))
        policy = self.sampling_panel.policy()
        self.render_conversation()
        # documents and MCP tools, as the conversation has them (app/reply_extras.py)
        work = self.turn_work(turn.reply, list(turn.messages), settings, policy, turn.continue_last)
        self.bridge.stream(
            work,
            event=lambda ev, chat=self.chat: self._on_chat_event(chat, ev),
            done=lambda _r, chat=self.chat, mid=turn.reply: self._chat_done(chat, mid),
            failed=lambda err, chat=self.chat, mid=turn.reply: self._chat_failed(chat, mid, err),
        )
        return True

    def stop(self) -> None:
        self.bridge.cancel()

    def _docs_collection(self) -> str:
        """The open conversation's document collection (attaching to no conversation starts one)."""
        if self.conversation is None:
            self.new_chat()
        return f"chat-{self.conversation}"

    def _on_chat_event(self, chat: ChatSession, ev) -> None:
        if self.extras_event(ev):  # sources retrieved, tool calls (app/reply_extras.py)
            if chat is self.chat and not self._redraw.isActive():
                self._redraw.start()  # a finished call shows under the reply being written
            return
        if not chat.on_event(ev):
            return
        if isinstance(ev, ReplyDone):
            st = ev.stats
            if chat is self.chat:
                self._show_stats(st.n_past, st.n_ctx, st.decode_tok_s, st.ttft_seconds)
            self._redraw.stop()
            self.render_conversation()
            self.refresh_conversations()
        elif not self._redraw.isActive():
            self._redraw.start()

    def _redraw_stream(self) -> None:
        live = self.chat.live_message() if self.chat is not None else None
        if live is not None:
            self.view.update_stream(self.with_live_calls(live))

    def _chat_done(self, chat: ChatSession, mid: int) -> None:
        """The request has ended (the engine is free): the reply is stored, as done or stopped."""
        if chat.stopped_without_reply() is not None:  # cancelled before any token came
            self.render_conversation()
        self.store_extras(mid)
        show_notices(self, mid)
        self.reply_finished.emit(mid)

    def _chat_failed(self, chat: ChatSession, mid: int, err: Exception) -> None:
        chat.fail()  # the partial reply is kept, marked interrupted
        self._redraw.stop()
        self.store_extras(mid)
        self.render_conversation()
        if isinstance(err, EngineDied):  # reported once, by _engine_died, which the bridge calls next
            self._interrupted = mid
        else:
            self.fault_banner.show_message(str(err))
            self.engine_failed.emit(str(err))
        self.reply_finished.emit(mid)

    def _show_stats(self, n_past: int, n_ctx: int, tok_s: float, ttft: float) -> None:
        size = f"{n_ctx:,}" if n_ctx else "?"  # a remote server that does not say its context size
        self.context_label.setText(f"Context {n_past:,} / {size}")
        self.speed_label.setText(f"{tok_s:.1f} tok/s · TTFT {ttft * 1000:.0f} ms")

    def _update_buttons(self, busy: bool) -> None:
        self.send_button.setEnabled(not busy)
        self.stop_button.setEnabled(busy)

    def open_settings(self) -> None:
        ReopenSettings(self.reopen.folder, self).exec()

    # ------------------------------------------------------------ shutdown
    def closeEvent(self, event) -> None:
        if self.wizard is not None and self.wizard.training_active():
            answer = QMessageBox.question(
                self, "Training is running",
                "A fine-tuning run is still training. Stop it now (a checkpoint is saved; resume it later from "
                "the wizard or with `ingle train --resume`), or keep the app open until it finishes?",
                QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No, QMessageBox.StandardButton.No,
            )  # fmt: skip
            if answer != QMessageBox.StandardButton.Yes:  # No: keep training
                event.ignore()
                return
            self.wizard.train_page.stop_for_exit()
        if self.wizard is not None:
            self.wizard.done(0)
        self.gui_settings.setValue("geometry", self.saveGeometry())
        self.gui_settings.setValue("splitter", self.splitter.saveState())
        self.gui_settings.setValue("docks", self.saveState())
        self.gui_settings.setValue("side_visible", "true" if self.side.isVisible() else "false")
        if self.chat is not None:
            self.chat.suspend()  # a reply being written is kept as stopped
        self.reopen.save_on_close()
        self.server.stop_now("The window is closing.")  # before the engine child it uses goes
        self.bridge.shutdown()
        if hasattr(self, "tool_session"):  # the MCP servers this window started
            self.tool_session.close()
        self.store.purge()
        self.reopen.forget_missing()  # a deleted conversation's saved cache goes with it
        super().closeEvent(event)
