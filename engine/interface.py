"""The one engine interface: what the app, the CLI and (later) the API server may ask of an engine.

Implemented by the in-process `engine.runtime.Runtime` and by `engine.host.EngineHost` (the same runtime in a
child process); a remote (OpenAI-compatible HTTP) engine is the third. Calls are typed methods with dataclass
results; streaming calls yield the events of `engine.events`. Nothing here imports llama.cpp, so the GUI
process can type against it and unpickle its results.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from engine.attention_map import MAX_TOKENS, AttentionMap
from engine.embedding_space import Neighbours, Projection
from engine.events import Event, Message, PromptEvaluated
from engine.hardware import Hardware
from engine.kv import KVLayout
from engine.kv_store import StateRestored, StateSaved
from engine.settings import LoadSettings, OverflowPolicy, SamplingSettings
from engine.tools import ToolSet
from engine.visual import ContextBudget, PreviewStage, TokenPiece


@dataclass(frozen=True)
class KVState:
    """What the KV cache holds now: its layout, the positions in use, and the last turn's reused/fresh split."""

    layout: KVLayout
    n_past: int
    pos_min: int
    pos_max: int
    reused_tokens: int
    evaluated_tokens: int
    llama_reports: tuple[dict, ...] = ()  # llama.cpp's own report of the caches it allocated

    def to_dict(self) -> dict:
        """JSON-ready, with the layout's totals, groups and formula."""
        return {
            "layout": self.layout.to_dict(), "n_past": self.n_past, "pos_min": self.pos_min,
            "pos_max": self.pos_max, "reused_tokens": self.reused_tokens,
            "evaluated_tokens": self.evaluated_tokens, "llama_reports": list(self.llama_reports),
        }  # fmt: skip


MAX_SLOTS = 64  # requests an engine decodes at once (start_slots), at most


@dataclass(frozen=True)
class SlotState:
    """One slot of the batched engine (`start_slots`): what the server's status shows."""

    slot: int
    busy: bool
    cached_tokens: int  # tokens whose K/V the slot holds (its prefix cache)
    generated_tokens: int  # tokens generated so far for the request it serves (0 when free)


@dataclass(frozen=True)
class Inspection:
    """Everything the visualizers show after one evaluation: budget, next-token preview, KV cache."""

    budget: ContextBudget
    preview: tuple[PreviewStage, ...]
    preview_note: str  # why there is no preview, when there is none
    kv: KVState


@dataclass(frozen=True)
class Embeddings:
    """One unit-length vector per input text, in order, with the tokens each input took (usage counts)."""

    vectors: tuple[tuple[float, ...], ...]
    token_counts: tuple[int, ...]
    model: str  # the file name of the model that embedded them
    pooling: str  # mean, cls, last (how token vectors became one)
    threads: int = (
        0  # the CPU threads llama.cpp embedded them on (engine.threads chose them, or the load settings)
    )


@runtime_checkable
class Engine(Protocol):
    """One loaded model and the requests it serves. Ordinary calls one at a time, `cancel()` from any thread;
    slot calls (below) from many threads at once, batched."""

    def load(
        self,
        path: str | Path,
        settings: LoadSettings | None = None,
        adapters: Sequence[tuple[str, float]] = (),
        chat_template: str | None = None,
    ) -> Iterator[Event]:
        """Validate and load a model: LoadProgress events, then ModelLoaded."""
        ...

    def unload(self) -> None: ...

    def chat(
        self,
        messages: Sequence[Message],
        sampling: SamplingSettings | None = None,
        policy: OverflowPolicy = OverflowPolicy.STOP,
        continue_last: bool = False,
    ) -> Iterator[Event]:
        """Reply to a conversation (or go on writing its last, cut-off reply)."""
        ...

    def chat_tools(
        self,
        messages: Sequence[Message],
        tools: ToolSet | None,
        sampling: SamplingSettings | None = None,
        policy: OverflowPolicy = OverflowPolicy.STOP,
    ) -> Iterator[Event]:
        """Reply to a conversation that may call tools (messages may hold calls and results): the events of
        chat, then ToolCallsMade just before ReplyDone. See engine/tools.py."""
        ...

    def embed(self, texts: Sequence[str], model: str | None = None) -> Embeddings:
        """Unit-length embeddings of `texts`: pooled by the loaded model, or by the embedding model at the
        library path `model` (loaded on first use, one kept at a time)."""
        ...

    def complete(
        self,
        prompt: str,
        sampling: SamplingSettings | None = None,
        policy: OverflowPolicy = OverflowPolicy.STOP,
    ) -> Iterator[Event]:
        """Continue a raw prompt."""
        ...

    def cancel(self) -> None:
        """Stop the running request before its next token (safe from any thread)."""
        ...

    def tokenize(self, text: str, add_special: bool = False, parse_special: bool = True) -> list[int]: ...

    def detokenize(self, tokens: Sequence[int], special: bool = False) -> str: ...

    def render_tokens(
        self, messages: Sequence[Message], add_generation_prompt: bool = True, continue_last: bool = False
    ) -> list[int]:
        """The conversation through the model's chat template, as tokens."""
        ...

    def piece(self, token: int) -> str:
        """One token as text (special tokens as their text)."""
        ...

    def evaluate(self, tokens: Sequence[int]) -> PromptEvaluated:
        """Bring the KV cache to exactly `tokens`, reusing the common prefix."""
        ...

    def evaluate_text(self, text: str, chat: bool = False) -> PromptEvaluated:
        """Evaluate a raw prompt, or one user message through the chat template."""
        ...

    def evaluation_count(self) -> int:
        """llama_decode calls so far (the visualizers prove that sliders run none)."""
        ...

    def inspect(
        self,
        messages: Sequence[Message],
        draft: str,
        sampling: SamplingSettings,
        policy: OverflowPolicy,
        top_n: int = 12,
        tools: ToolSet | None = None,
    ) -> Inspection:
        """Budget, preview and KV state for the conversation plus the draft, in one round trip; `tools`: the
        conversation's tools, rendered as its tool turns render them."""
        ...

    def preview(self, sampling: SamplingSettings, top_n: int = 20) -> list[PreviewStage]:
        """The next-token distribution after each sampler stage; runs no model evaluation."""
        ...

    def kv_state(self) -> KVState: ...

    def token_pieces(self, text: str, parse_special: bool = True) -> list[TokenPiece]: ...

    def context_budget(
        self, messages: Sequence[Message], draft: str, sampling: SamplingSettings, policy: OverflowPolicy,
        tools: ToolSet | None = None,
    ) -> ContextBudget: ...  # fmt: skip

    def hardware(self) -> Hardware:
        """What the engine's process can run on (CPU, RAM, GPUs with free memory)."""
        ...

    def attention(self, text_or_tokens: str | Sequence[int], max_tokens: int = MAX_TOKENS) -> AttentionMap:
        """Every layer's and head's attention weights for a text (with BOS) or tokens, up to `max_tokens` (the
        last ones); evaluated in a separate context, so the chat's KV cache is untouched."""
        ...

    def token_neighbours(self, token: int | str, k: int = 20) -> Neighbours:
        """The k nearest tokens (cosine) to a token id or one-token text in the input embedding matrix."""
        ...

    def embedding_projection(self, tokens: Sequence[int] | None = None) -> Projection:
        """The distinct tokens (default: the context in the KV cache) in the PCA plane of their embeddings."""
        ...

    def eval_context(
        self, lengths: Sequence[int], depths: Sequence[int], perplexity: bool = True
    ) -> Iterator:
        """Needle in a haystack at each length and depth, and perplexity per length: EvalProgress events,
        then a ContextEval (engine.eval_context)."""
        ...

    def save_state(self, path: str, messages: Sequence[Message] | None = None) -> StateSaved:
        """Save the KV cache (instant reopen), cut back to the part that starts `messages` as rendered."""
        ...

    def restore_state(self, path: str, messages: Sequence[Message] | None = None) -> StateRestored:
        """Reuse a saved KV cache if it matches this model, settings, adapters and conversation; else delete it."""
        ...

    # Batched requests: `n_slots` sequences of `n_ctx` tokens decoded together (continuous batching). The
    # slot_ calls are safe from many threads at once and run beside an ordinary chat(); closing or
    # `cancel()`ing the iterator a slot call returns ends that request alone.
    def start_slots(self, n_slots: int, n_ctx: int) -> None:
        """(Re)start the slots on the loaded model: one more context, the same weights and adapters."""
        ...

    def slot_chat(
        self, messages: Sequence[Message], sampling: SamplingSettings | None = None
    ) -> Iterator[Event]:
        """Reply to a conversation in a free slot (waits for one); events as chat()'s."""
        ...

    def slot_chat_tools(
        self, messages: Sequence[Message], tools: ToolSet | None, sampling: SamplingSettings | None = None
    ) -> Iterator[Event]:
        """chat_tools() in a free slot: the usual events, then ToolCallsMade just before ReplyDone."""
        ...

    def slot_complete(self, prompt: str, sampling: SamplingSettings | None = None) -> Iterator[Event]:
        """Continue a raw prompt in a free slot."""
        ...

    def slot_states(self) -> list[SlotState]:
        """Every slot: busy or free, tokens cached, tokens generated for its request (empty when stopped)."""
        ...

    def stop_slots(self) -> None: ...


# The methods that stream events; every other Engine method returns one value.
STREAMING = frozenset(
    {
        "load",
        "chat",
        "chat_tools",
        "complete",
        "eval_context",
        "slot_chat",
        "slot_chat_tools",
        "slot_complete",
    }
)
# The calls the host runs beside the ordinary ones (on their own threads in the child), not one at a time.
# start/stop_slots too: the slots' context is the pool's own, so the GUI's server starts beside a chat reply
SLOT_CALLS = frozenset(
    {"start_slots", "stop_slots", "slot_chat", "slot_chat_tools", "slot_complete", "slot_states"}
)
# Every method an engine serves, by name: the host's wire protocol accepts these and nothing else.
METHODS = frozenset(
    name for name in Engine.__dict__ if not name.startswith("_") and callable(getattr(Engine, name))
)
