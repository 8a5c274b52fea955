"""The inspector: docks the visualizers in the main window, opened from the View menu, and keeps them current.

It asks the engine (through the window's bridge, when it is free) for one `inspect` after each reply, model load,
conversation switch or pause in typing, and only for a `preview` when a sampling slider moves: the logits are
computed once, so sliders never run the model. While a reply streams, the KV map, token probabilities and timing
follow the stream's own events with no request at all.
"""

from __future__ import annotations

from PySide6.QtCore import QObject, Qt, QTimer
from PySide6.QtWidgets import QDockWidget, QScrollArea, QWidget

from app.visualizers import (
    ContextBar,
    KVCacheMap,
    KVCalculator,
    SamplingPreview,
    TimingBar,
    TokenPanel,
    TokenProbabilities,
)
from engine.events import Message, ModelLoaded, PromptEvaluated, ReplyDone, Token

METHODS = frozenset(
    {"inspect", "preview", "token_pieces"}
)  # requests the inspector makes; the window ignores them
DRAFT_DEBOUNCE_MS = 350
TOP_N = 12


def _scrolled(widget: QWidget) -> QScrollArea:
    scroll = QScrollArea()
    scroll.setWidgetResizable(True)
    scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
    scroll.setWidget(widget)
    return scroll


class Inspector(QObject):
    def __init__(self, window):
        super().__init__(window)
        self.window = window
        self.bridge = window.bridge
        self.context_bar = ContextBar()
        self.tokens = TokenPanel()
        self.kv_map = KVCacheMap()
        self.kv_calculator = KVCalculator(window.library)
        self.probabilities = TokenProbabilities()
        self.preview = SamplingPreview()
        self.timing = TimingBar()
        self.docks: dict[str, QDockWidget] = {}
        for key, title, widget in (
            ("context", "Context window", self.context_bar),
            ("tokens", "Tokens", self.tokens),
            ("kv", "KV cache", _scrolled(self.kv_map)),
            ("kv_calculator", "KV cache calculator", self.kv_calculator),
            ("probabilities", "Token probabilities", self.probabilities),
            ("preview", "Sampling preview", _scrolled(self.preview)),
            ("timing", "Timing", self.timing),
        ):
            dock = QDockWidget(title, window)
            dock.setObjectName(f"inspector-{key}")  # saveState/restoreState key
            dock.setWidget(widget)
            dock.hide()
            dock.visibilityChanged.connect(lambda shown, k=key: self._dock_shown(k, shown))
            window.addDockWidget(Qt.BottomDockWidgetArea, dock)
            self.docks[key] = dock
        first = self.docks["context"]
        for key in ("tokens", "kv", "probabilities", "preview", "timing", "kv_calculator"):
            window.tabifyDockWidget(first, self.docks[key])
        self.queue: list[tuple] = []  # requests waiting for the engine to be free
        self.in_flight: str | None = None
        self.messages: list = []  # what the last inspect evaluated (Message list, draft included)
        self.has_draft = False
        self.last_turn = (0, 0)  # (reused, evaluated) of the last reply's prompt
        self.token_message = -1  # index into self.messages shown in the token view
        self.token_pinned = False  # the user picked a message: keep it; else follow the newest
        self.replies: dict[int, list[Token]] = {}  # streamed tokens per assistant message id (this session)
        self._draft_timer = QTimer(self, singleShot=True, interval=DRAFT_DEBOUNCE_MS)
        self._draft_timer.timeout.connect(self.refresh)
        window.composer.textChanged.connect(self._draft_timer.start)
        window.sampling_panel.settings_changed.connect(lambda _s: self.refresh_preview())
        window.sampling_panel.policy_box.currentIndexChanged.connect(lambda _i: self.refresh())
        window.reply_finished.connect(self._reply_finished)
        window.model_ready.connect(lambda _ev: self.refresh())
        window.conversation_opened.connect(self._conversation_opened)
        self.bridge.event.connect(self._on_event)
        self.bridge.done.connect(self._on_done)
        self.bridge.failed.connect(self._on_failed)
        self.bridge.busy_changed.connect(lambda busy: None if busy else self._next())
        self.tokens.message_chosen.connect(self._pick_tokens)
        self.probabilities.continue_requested.connect(window.continue_with)

    # ------------------------------------------------------------ visibility
    def active(self) -> bool:
        return any(not d.isHidden() for k, d in self.docks.items() if k != "kv_calculator")

    def show(self, key: str) -> None:
        dock = self.docks[key]
        dock.show()
        dock.raise_()

    def _dock_shown(self, key: str, shown: bool) -> None:
        if shown and key == "kv_calculator":
            self.kv_calculator.refresh()
        elif shown:
            self.refresh()

    def stream_settings(self, settings):
        """Replies streamed while the inspector is open carry each token's probability and alternatives."""
        if not self.active():
            return settings
        return settings.replace(logprobs=True, top_logprobs=max(settings.top_logprobs, 8))

    # ------------------------------------------------------------ requests
    def refresh(self) -> None:
        """Budget, preview and KV state for the conversation and the draft (one engine round trip)."""
        if not self.active() or self.window.loaded is None:
            return
        self.queue = [r for r in self.queue if r[0] not in ("inspect", "preview")]
        self.queue.append(("inspect",))
        self._next()

    def refresh_preview(self) -> None:
        """Sliders moved: re-apply the samplers to the stored logits; no model evaluation."""
        if not self.active() or self.window.loaded is None or not self.messages:
            return
        if not any(r[0] == "inspect" for r in self.queue):
            self.queue = [r for r in self.queue if r[0] != "preview"]
            self.queue.append(("preview",))
        self._next()

    def _next(self) -> None:
        w = self.window
        if self.bridge.busy or not self.queue or w.streaming is not None or w.queued_actions:
            return
        kind, *args = self.queue.pop(0)
        settings = w.sampling_panel.settings()
        if kind == "inspect":
            messages = w.engine_messages()
            draft = w.composer.toPlainText().strip()
            self.messages = messages + ([Message("user", draft)] if draft else [])
            self.has_draft = bool(draft)
            self.in_flight = kind
            self.bridge.submit("inspect", messages, draft, settings, w.sampling_panel.policy(), TOP_N)
        elif kind == "preview":
            self.in_flight = kind
            self.bridge.submit("preview", settings, TOP_N)
        elif kind == "token_pieces":
            self.in_flight = kind
            self.bridge.submit("token_pieces", args[0])

    def _on_done(self, method: str, result) -> None:
        if method not in METHODS:
            return
        self.in_flight = None
        roles = [m.role for m in self.messages]
        if self.has_draft:
            roles[-1] = "draft"
        if method == "inspect":
            budget = result.budget
            self.context_bar.set_budget(budget, roles, self.has_draft)
            self.window.show_context_figure(self.context_bar.used, budget.n_ctx)
            self.kv_map.set_state(result.kv, budget.spans, roles, *self.last_turn)
            self.preview.set_stages(list(result.preview), result.preview_note)
            labels = [f"{i + 1}. {m.role}: {m.content[:40]!r}" for i, m in enumerate(self.messages)]
            if labels:
                pinned = self.token_pinned and 0 <= self.token_message < len(labels)
                index = self.token_message if pinned else len(labels) - 1
                self.tokens.set_messages(labels, index)
                self._show_tokens(index)
        elif method == "preview":
            self.preview.set_stages(result)
        elif method == "token_pieces":
            self.tokens.show_pieces(result)

    def _on_failed(self, method: str, err) -> None:
        if method not in METHODS:
            return
        self.in_flight = None
        if method == "inspect":
            self.context_bar.clear(str(err))
        self.preview.set_stages([], str(err))

    def _pick_tokens(self, index: int) -> None:
        self.token_pinned = True
        self._show_tokens(index)

    def _show_tokens(self, index: int) -> None:
        if not 0 <= index < len(self.messages):
            return
        self.token_message = index
        self.queue = [r for r in self.queue if r[0] != "token_pieces"]
        self.queue.append(("token_pieces", self.messages[index].content))
        self._next()

    # ------------------------------------------------------------ the stream's own events
    def _on_event(self, ev) -> None:
        streaming = self.window.streaming
        if isinstance(ev, PromptEvaluated):
            self.last_turn = (ev.reused_tokens, ev.evaluated_tokens)
        elif isinstance(ev, Token) and streaming is not None:
            self.replies.setdefault(streaming.id, []).append(ev)
            if ev.token_id >= 0:
                self.kv_map.add_generated()
                self.probabilities.add_token(streaming.id, ev)
        elif isinstance(ev, ReplyDone):
            self.timing.add_reply(ev.stats)
        elif isinstance(ev, ModelLoaded):
            self.replies.clear()

    def _reply_finished(self, mid: int) -> None:
        self.probabilities.set_reply(mid, self.replies.get(mid, []))
        self.refresh()

    def _conversation_opened(self, _cid) -> None:
        self.token_pinned = False
        path = self.window.store.path(self.window.conversation) if self.window.conversation else []
        last = next((m for m in reversed(path) if m.role == "assistant"), None)
        self.probabilities.set_reply(last.id if last else None, self.replies.get(last.id, []) if last else [])
        self.refresh()
