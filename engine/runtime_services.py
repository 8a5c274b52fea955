"""The Runtime's services beyond loading and generating: thin delegates to the modules that do the work.

A mixin of engine.runtime.Runtime (kept apart so the Runtime's own file holds only what touches its model,
context and cached tokens): tool chats (engine.tool_chat), embeddings (engine.embeddings), batched slots
(engine.slots), saved KV states (engine.kv_store), the visualizers' numbers (engine.inspection, engine.attention,
engine.embedding_space) and the context-length eval (engine.eval_context). Every method here is part of the
Engine interface (engine/interface.py).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from engine import attention, embedding_space, embeddings, eval_context, inspection, kv_store, tool_chat
from engine.attention_map import MAX_TOKENS, AttentionMap
from engine.events import Event, Message, PromptEvaluated
from engine.interface import Embeddings, Inspection, KVState, SlotState
from engine.kv import KVLayout
from engine.settings import OverflowPolicy, SamplingSettings
from engine.slots import SlotPool, not_started
from engine.tools import ToolSet
from engine.visual import ContextBudget, PreviewStage, TokenPiece


class RuntimeServices:
    """Mixed into Runtime; `self` is the Runtime (its model, context and `_slots`)."""

    def chat_tools(
        self,
        messages: Sequence[Message],
        tools: ToolSet | None,
        sampling: SamplingSettings | None = None,
        policy: OverflowPolicy = OverflowPolicy.STOP,
    ) -> Iterator[Event]:
        return tool_chat.chat_tools(self, messages, tools, sampling, policy)

    def embed(self, texts: Sequence[str], model: str | None = None) -> Embeddings:
        return embeddings.embed(self, texts, model)

    # ---------------------------------------------------------- batched requests (engine.slots)
    def start_slots(self, n_slots: int, n_ctx: int) -> None:
        self.require_model()
        self.stop_slots()
        self._slots = SlotPool(self, n_slots, n_ctx)

    def slot_chat(
        self, messages: Sequence[Message], sampling: SamplingSettings | None = None
    ) -> Iterator[Event]:
        """Thread-safe, as every slot_ method: a reply decoded in a slot, batched with the others' requests."""
        return (self._slots or not_started()).chat(messages, sampling or SamplingSettings())

    def slot_chat_tools(
        self, messages: Sequence[Message], tools: ToolSet | None, sampling: SamplingSettings | None = None
    ) -> Iterator[Event]:
        return tool_chat.slot_chat_tools(self, messages, tools, sampling)

    def slot_pool(self):
        """The running engine.slots.SlotPool (an error saying to start the slots when there is none)."""
        return self._slots or not_started()

    def slot_complete(self, prompt: str, sampling: SamplingSettings | None = None) -> Iterator[Event]:
        return (self._slots or not_started()).complete(prompt, sampling or SamplingSettings())

    def slot_states(self) -> list[SlotState]:
        return self._slots.states() if self._slots else []

    def stop_slots(self) -> None:
        pool, self._slots = self._slots, None
        if pool is not None:
            pool.close()

    def save_state(self, path: str, messages: Sequence[Message] | None = None) -> kv_store.StateSaved:
        return kv_store.save(self, path, messages)

    def restore_state(self, path: str, messages: Sequence[Message] | None = None) -> kv_store.StateRestored:
        return kv_store.restore(self, path, messages)

    # ---------------------------------------------------------- visualizer numbers (engine.inspection)
    def preview(self, sampling: SamplingSettings, top_n: int = 20) -> list[PreviewStage]:
        return inspection.preview(self, sampling, top_n)

    def evaluate_text(self, text: str, chat: bool = False) -> PromptEvaluated:
        return inspection.evaluate_text(self, text, chat)

    def kv_layout(self) -> KVLayout:
        return inspection.layout(self)

    def kv_state(self) -> KVState:
        return inspection.kv_state(self)

    def token_pieces(self, text: str, parse_special: bool = True) -> list[TokenPiece]:
        return inspection.token_pieces(self, text, parse_special)

    def inspect(
        self, messages: Sequence[Message], draft: str, sampling: SamplingSettings, policy: OverflowPolicy,
        top_n: int = 12, tools: ToolSet | None = None,
    ) -> Inspection:  # fmt: skip
        return inspection.inspect(self, messages, draft, sampling, policy, top_n, tools)

    def context_budget(
        self, messages: Sequence[Message], draft: str, sampling: SamplingSettings, policy: OverflowPolicy,
        tools: ToolSet | None = None,
    ) -> ContextBudget:  # fmt: skip
        return inspection.context_budget(self, messages, draft, sampling, policy, tools)

    def attention(self, text_or_tokens: str | Sequence[int], max_tokens: int = MAX_TOKENS) -> AttentionMap:
        return attention.capture(self, text_or_tokens, max_tokens)

    def token_neighbours(self, token: int | str, k: int = 20) -> embedding_space.Neighbours:
        return embedding_space.token_neighbours(self, token, k)

    def embedding_projection(self, tokens: Sequence[int] | None = None) -> embedding_space.Projection:
        return embedding_space.embedding_projection(self, tokens)

    def eval_context(
        self, lengths: Sequence[int], depths: Sequence[int], perplexity: bool = True
    ) -> Iterator:
        return eval_context.evaluate_context(self, lengths, depths, perplexity)
