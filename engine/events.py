"""Typed events the engine streams, identical in-process and through the host process."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class StopReason(StrEnum):
    EOS = "eos"  # the model ended its turn
    STOP_STRING = "stop_string"
    MAX_TOKENS = "max_tokens"
    CONTEXT_FULL = "context_full"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"  # a remote server's stream was cut midway: the reply so far is kept


@dataclass(frozen=True)
class ToolCall:
    """A function call the model made: `arguments` is JSON text of an object (as OpenAI sends it)."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class Message:
    """One chat message. `role` is system, user, assistant or tool (a tool's result, answering `tool_call_id`;
    `name` is the tool's). An assistant message may carry the tool calls it made."""

    role: str
    content: str
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str = ""
    name: str = ""


@dataclass(frozen=True)
class LoadProgress:
    fraction: float  # 0..1


@dataclass(frozen=True)
class ModelLoaded:
    path: str
    info: dict[str, Any]  # ModelInfo.summary()
    n_ctx: int
    n_gpu_layers: int
    load_seconds: float
    adapters: tuple[tuple[str, float], ...] = ()
    template_source: str = ""  # "gguf", a built-in's name, "<built-in> (fallback)" or "file <name>"
    template_warning: str = ""  # why the model's own template failed (a built-in stands in): show it
    fit_note: str = ""  # with "Fit automatically": what was chosen and why


@dataclass(frozen=True)
class ContextTrimmed:
    """The overflow policy removed part of the conversation so the reply fits."""

    policy: str
    dropped_messages: int
    dropped_tokens: int
    description: str


@dataclass(frozen=True)
class PromptEvaluated:
    prompt_tokens: int
    reused_tokens: int  # taken from the KV cache
    evaluated_tokens: int  # computed now
    seconds: float


@dataclass(frozen=True)
class TokenAlternative:
    token_id: int
    piece: str
    logprob: float


@dataclass(frozen=True)
class Token:
    """One generated token. `text` is what became displayable with it (UTF-8 and stop strings may hold text back).

    A final Token with token_id -1 carries text that was held back until the reply ended.
    """

    token_id: int
    text: str
    logprob: float | None = None
    alternatives: tuple[TokenAlternative, ...] = ()
    piece: str = ""  # the token's own text, filled when log-probabilities were asked for (APIs report it)


@dataclass(frozen=True)
class ReplyStats:
    prompt_tokens: int
    reused_tokens: int
    evaluated_tokens: int
    generated_tokens: int
    ttft_seconds: float
    prefill_seconds: float
    decode_seconds: float
    stop_reason: StopReason
    n_ctx: int
    n_past: int  # tokens in the KV cache after the reply
    seed: int
    drafted_tokens: int = 0  # speculative decoding: tokens proposed for the model to check
    accepted_tokens: int = 0  # ... and how many of them it kept
    drafting: str = ""  # what drafted ("prompt lookup", "draft NAME"); empty when nothing did
    drafting_switched_off: bool = False  # drafting did not pay during this reply and went off for a while

    @property
    def acceptance(self) -> float:
        return self.accepted_tokens / self.drafted_tokens if self.drafted_tokens else 0.0

    @property
    def prefill_tok_s(self) -> float:
        return self.evaluated_tokens / self.prefill_seconds if self.prefill_seconds > 0 else 0.0

    @property
    def decode_tok_s(self) -> float:
        # the first token comes from the prefill's logits; decode time covers the rest
        n = self.generated_tokens - 1
        return n / self.decode_seconds if n > 0 and self.decode_seconds > 0 else 0.0

    def describe(self) -> str:
        return (
            f"prompt {self.prompt_tokens} tok ({self.reused_tokens} from cache, {self.evaluated_tokens} evaluated), "
            f"{self.generated_tokens} generated; TTFT {self.ttft_seconds * 1000:.0f} ms; "
            f"prefill {self.prefill_tok_s:.1f} tok/s; decode {self.decode_tok_s:.1f} tok/s; "
            f"stop: {self.stop_reason.value}; context {self.n_past}/{self.n_ctx}; seed {self.seed}"
            + (
                f"; drafting ({self.drafting}): {self.accepted_tokens}/{self.drafted_tokens} accepted"
                + (", switched itself off (it did not pay)" if self.drafting_switched_off else "")
                if self.drafting
                else ""
            )
        )


@dataclass(frozen=True)
class ReplyDone:
    text: str
    stats: ReplyStats
    tokens: tuple[int, ...] = field(default=(), repr=False)


@dataclass(frozen=True)
class ToolCallsMade:
    """The reply of a chat with tools, split: its text and the calls it made (comes just before ReplyDone).
    `cut`: the end of `content` where a call began but the reply ran out of tokens or context before the call
    was complete (no tool runs; the text stays in `content`)."""

    content: str
    calls: tuple[ToolCall, ...]
    cut: str = ""


@dataclass(frozen=True)
class ThreadsChosen:
    """The CPU threads a reply runs on (engine.threads), sent before its prompt is read."""

    threads: int
    threads_batch: int  # for reading the prompt
    cores: int  # CPUs the engine may use
    idle: int  # of them idle when chosen; -1: not measured (the load settings gave the count)
    source: str  # "idle cores" or "setting"

    def describe(self) -> str:
        n = f"{self.threads} thread{'s' if self.threads != 1 else ''}"
        if self.source == "setting":
            return f"{n} (set in the load settings)"
        busy = self.cores - self.idle
        return f"{n}: {self.idle} of {self.cores} cores idle" + (
            f" ({busy} busy with other work)" if busy > 0 else ""
        )


Event = (
    LoadProgress
    | ModelLoaded
    | ContextTrimmed
    | PromptEvaluated
    | Token
    | ToolCallsMade
    | ReplyDone
    | ThreadsChosen
)
