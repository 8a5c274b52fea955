"""The inspector: docks the visualizers in the main window, opened from the View menu, and keeps them current.

It asks the engine (through the window's bridge, when it is free) for one `inspect` after each reply, model load,
conversation switch or pause in typing, and only for a `preview` when a sampling slider moves: the logits are
computed once, so sliders never run the model. While a reply streams, the KV map, token probabilities and timing
follow the stream's own events with no request at all.
"""

from __future__ import annotations

from PySide6.QtCore import QObject, Qt, QTimer, Signal
from PySide6.QtWidgets import QDockWidget, QScrollArea, QWidget

from app.bridge import State
from app.visualizers import (
    ContextBar,
    KVCacheMap,
    KVCalculator,
    SamplingPreview,
    TimingBar,
    TokenPanel,
    TokenProbabilities,
)
from app.visualizers.attention import AttentionView
from app.visualizers.embeddings import EmbeddingsView
from engine.events import Message, ModelLoaded, PromptEvaluated, ReplyDone, ThreadsChosen, Token
from engine.interface import Inspection

DRAFT_DEBOUNCE_MS = 350
TOP_N = 12


def _scrolled(widget: QWidget) -> QScrollArea:
    scroll = QScrollArea()
    scroll.setWidgetResizable(True)
    scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
    scroll.setWidget(widget)
    return scroll


class Inspector(QObject):
    updated = Signal(
        str
    )  # "inspect", "preview", "token_pieces", "attention" or "sources": a view was refreshed (or failed)

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
        self.attention = AttentionView()
        self.embeddings = EmbeddingsView()
        self.docks: dict[str, QDockWidget] = {}
        for key, title, widget in (
            ("context", "Context window", self.context_bar),
            ("tokens", "Tokens", self.tokens),
            ("kv", "KV cache", _scrolled(self.kv_map)),
            ("kv_calculator", "KV cache calculator", self.kv_calculator),
            ("probabilities", "Token probabilities", self.probabilities),
            ("preview", "Sampling preview", _scrolled(self.preview)),
            ("timing", "Timing", self.timing),
            ("attention", "Attention", self.attention),
            ("embeddings", "Embeddings", self.embeddings),
        ):
            dock = QDockWidget(title, window)
            dock.setObjectName(f"inspector-{key}")  # saveState/restoreState key
            dock.setWidget(widget)
            dock.hide()
            dock.visibilityChanged.connect(lambda shown, k=key: self._dock_shown(k, shown))
            window.addDockWidget(Qt.BottomDockWidgetArea, dock)
            self.docks[key] = dock
        first = self.docks["context"]
        for key in (
            "tokens",
            "kv",
            "probabilities",
            "preview",
            "timing",
            "kv_calculator",
            "attention",
            "embeddings",
        ):
            window.tabifyDockWidget(first, self.docks[key])
        self.messages: list = []  # what the last inspect evaluated (Message list, draft included)
        self.has_draft = False
        self.last_turn = (0, 0)  # (reused, evaluated) of the last reply's prompt
        self.token_message = -1  # index into self.messages shown in the token view
        self.token_pinned = False  # the user picked a message: keep it; else follow the newest
        self.attention_messages: list = []  # the conversation the attention dock shows
        self.replies: dict[int, list[Token]] = {}  # streamed tokens per assistant message id (this session)
        self._draft_timer = QTimer(self, singleShot=True, interval=DRAFT_DEBOUNCE_MS)
        self._draft_timer.timeout.connect(self.refresh)
        window.composer.textChanged.connect(self._draft_timer.start)
        window.sampling_panel.settings_changed.connect(lambda _s: self.refresh_preview())
        window.sampling_panel.policy_box.currentIndexChanged.connect(lambda _i: self.refresh())
        window.reply_finished.connect(self._reply_finished)
        window.model_ready.connect(lambda _ev: (self.refresh(), self.refresh_attention()))
        window.conversation_opened.connect(self._conversation_opened)
        self.bridge.event.connect(self._on_event)
        self.tokens.message_chosen.connect(self._pick_tokens)
        self.probabilities.continue_requested.connect(window.continue_with)
        self.attention.refresh_requested.connect(self.refresh_attention)
        self.embeddings.neighbours_requested.connect(self._neighbours)
        self.embeddings.projection_requested.connect(self.refresh_projection)

    # ------------------------------------------------------------ visibility
    def active(self) -> bool:
        # the calculator and the attention dock need no inspection: they ask for their own data
        return any(not d.isHidden() for k, d in self.docks.items() if k not in ("kv_calculator", "attention"))

    def show(self, key: str) -> None:
        dock = self.docks[key]
        dock.show()
        dock.raise_()

    def _dock_shown(self, key: str, shown: bool) -> None:
        if shown and key == "kv_calculator":
            self.kv_calculator.refresh()
        elif shown and key == "attention":
            self.refresh_attention(force=False)
        elif shown:
            self.refresh()

    def stream_settings(self, settings):
        """Replies streamed while the inspector is open carry each token's probability and alternatives."""
        if not self.active():
            return settings
        return settings.replace(logprobs=True, top_logprobs=max(settings.top_logprobs, 8))

    # ------------------------------------------------------------ requests (background: user actions go first)
    def refresh(self) -> None:
        """Budget, preview and KV state for the conversation and the draft (one engine round trip)."""
        w = self.window
        if not self.active() or w.loaded is None:
            return
        messages = w.engine_messages()
        draft = w.composer.toPlainText().strip()
        settings, policy = w.sampling_panel.settings(), w.sampling_panel.policy()
        messages, retrieved = self._with_sources(messages, draft)
        evaluated = messages + ([Message("user", draft)] if draft else [])
        for stale in self.bridge.pending("preview"):  # the inspection brings a fresh preview
            stale.cancel()
        # with tools, the conversation as its tool turns render it: their definitions counted, the cache their prefix
        source = getattr(w, "tool_set_source", None)
        tools_of = source() if source is not None else None
        self.bridge.call(
            lambda engine: engine.inspect(messages, draft, settings, policy, TOP_N, tools_of and tools_of()),
            lambda result: self._inspected(result, evaluated, bool(draft), retrieved),
            lambda err: self._failed("inspect", err),
            background=True, key="inspect",
        )  # fmt: skip

    def refresh_preview(self) -> None:
        """Sliders moved: re-apply the samplers to the stored logits; no model evaluation."""
        if not self.active() or self.window.loaded is None or not self.messages:
            return
        if any(r.state is State.QUEUED for r in self.bridge.pending("inspect")):
            return  # the inspection about to run takes the new settings
        settings = self.window.sampling_panel.settings()
        self.bridge.call(
            lambda engine: engine.preview(settings, TOP_N),
            self._previewed, lambda err: self._failed("preview", err),
            background=True, key="preview",
        )  # fmt: skip

    def _with_sources(self, messages: list, draft: str) -> tuple[list, dict[int, int]]:
        """When the last reply was given document passages, its question as it was sent (passages included:
        what the KV cache holds) and {message index: their tokens}. A draft is a new question, for which new
        passages are retrieved when it is sent: then the conversation is shown as the next reply gets it."""
        w = self.window
        path = w.store.path(w.conversation) if w.conversation is not None and not draft else []
        if len(path) < 2 or path[-1].role != "assistant" or not path[-1].sources or path[-2].role != "user":
            return messages, {}
        from engine.docs.search import sources_prompt
        from engine.reply_meta import hits_from_records

        index = len(messages) - 2
        if index < 0 or messages[index].content != path[-2].content:
            return messages, {}
        hits = hits_from_records(path[-1].sources)
        messages = list(messages)
        messages[index] = Message("user", sources_prompt(messages[index].content, hits))
        return messages, {index: sum(h.tokens for h in hits)}

    def show_sources(self, found) -> None:
        """A reply is starting with document passages (app/docs_chat.py SourcesRetrieved): the bar shows the
        context as it was sent, the passages as their own segment, while the reply is written."""
        if found.budget is None:
            return
        self.context_bar.set_budget(
            found.budget, list(found.roles), False, {found.index: sum(h.tokens for h in found.hits)}
        )
        self.window.show_context_figure(self.context_bar.used, found.budget.n_ctx)
        self.updated.emit("sources")

    def _inspected(self, result: Inspection, messages: list, has_draft: bool, retrieved=None) -> None:
        self.messages, self.has_draft = messages, has_draft
        roles = [m.role for m in self.messages]
        if self.has_draft:
            roles[-1] = "draft"
        budget = result.budget
        self.context_bar.set_budget(budget, roles, self.has_draft, retrieved)
        self.window.show_context_figure(self.context_bar.used, budget.n_ctx)
        self.kv_map.set_state(result.kv, budget.spans, roles, *self.last_turn)
        self.preview.set_stages(list(result.preview), result.preview_note)
        labels = [f"{i + 1}. {m.role}: {m.content[:40]!r}" for i, m in enumerate(self.messages)]
        if labels:
            pinned = self.token_pinned and 0 <= self.token_message < len(labels)
            index = self.token_message if pinned else len(labels) - 1
            self.tokens.set_messages(labels, index)
            self._show_tokens(index)
        if not self.docks["embeddings"].isHidden():
            self.refresh_projection()
        self.updated.emit("inspect")

    def refresh_attention(self, force: bool = True) -> None:
        """Capture the attention over the open conversation (the last 512 tokens) in the engine child; unless
        `force`d, not again for the conversation already shown (a dock brought to the front)."""
        w = self.window
        if self.docks["attention"].isHidden() or w.loaded is None:
            return
        messages = w.engine_messages()
        if not messages:
            self.attention.clear("Nothing to show yet: send a message, then press Refresh.")
            return
        if not force and self.attention.amap is not None and messages == self.attention_messages:
            return
        self.attention.set_busy()
        self.bridge.call(
            lambda engine: engine.attention(engine.render_tokens(messages, add_generation_prompt=False)),
            lambda amap: self._attention_captured(amap, messages), lambda err: self._failed("attention", err),
            background=True, key="attention",
        )  # fmt: skip

    def _attention_captured(self, amap, messages: list) -> None:
        self.attention_messages = messages
        self.attention.set_map(amap)
        self.updated.emit("attention")

    def _neighbours(self, token, k: int) -> None:
        if self.window.loaded is None:
            self.embeddings.show_error("Load a model first.")
            return
        self.bridge.call(lambda engine: engine.token_neighbours(token, k), self.embeddings.show_neighbours,
                         lambda err: self.embeddings.show_error(str(err)))  # fmt: skip

    def refresh_projection(self) -> None:
        """The tokens in the KV cache now (the conversation and draft the last inspect evaluated)."""
        if self.window.loaded is None:
            self.embeddings.show_error("Load a model first.")
            return
        self.bridge.call(
            lambda engine: engine.embedding_projection(None), self.embeddings.show_projection,
            lambda err: self.embeddings.show_error(str(err)), background=True, key="embedding_projection",
        )  # fmt: skip

    def _previewed(self, stages: list) -> None:
        self.preview.set_stages(stages)
        self.updated.emit("preview")

    def _failed(self, what: str, err: Exception) -> None:
        if what == "attention":
            self.attention.clear(str(err))
            self.updated.emit(what)
            return
        if what == "inspect":
            self.context_bar.clear(str(err))
        self.preview.set_stages([], str(err))
        self.updated.emit(what)

    def _pick_tokens(self, index: int) -> None:
        self.token_pinned = True
        self._show_tokens(index)

    def _show_tokens(self, index: int) -> None:
        if not 0 <= index < len(self.messages):
            return
        self.token_message = index
        text = self.messages[index].content
        self.bridge.call(
            lambda engine: engine.token_pieces(text),
            self._pieces, lambda err: self._failed("token_pieces", err),
            background=True, key="token_pieces",
        )  # fmt: skip

    def _pieces(self, pieces: list) -> None:
        self.tokens.show_pieces(pieces)
        self.updated.emit("token_pieces")

    # ------------------------------------------------------------ the stream's own events
    def _on_event(self, ev) -> None:
        streaming = self.window.streaming
        if isinstance(ev, PromptEvaluated):
            self.last_turn = (ev.reused_tokens, ev.evaluated_tokens)
        elif isinstance(ev, Token) and streaming is not None:
            self.replies.setdefault(streaming.id, []).append(ev)
            if ev.token_id >= 0:
                self.kv_map.add_generated()
            if ev.token_id != -1:  # -1: held-back text; a remote server's tokens (-2) have probabilities
                self.probabilities.add_token(streaming.id, ev)
        elif isinstance(ev, ThreadsChosen):
            self.timing.set_threads(ev)
        elif isinstance(ev, ReplyDone):
            self.timing.add_reply(ev.stats)
        elif isinstance(ev, ModelLoaded):
            self.replies.clear()

    def _reply_finished(self, mid: int) -> None:
        self.probabilities.set_reply(mid, self.replies.get(mid, []))
        self.refresh()
        self.refresh_attention()

    def _conversation_opened(self, _cid) -> None:
        self.token_pinned = False
        path = self.window.store.path(self.window.conversation) if self.window.conversation else []
        last = next((m for m in reversed(path) if m.role == "assistant"), None)
        self.probabilities.set_reply(last.id if last else None, self.replies.get(last.id, []) if last else [])
        self.refresh()
        self.refresh_attention()
