"""Plain data the visualizers show: preview stages, token pieces, the context budget. No llama.cpp import, so the
GUI process can unpickle what the engine child sends (engine.inspection and engine.preview compute them)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class PreviewToken:
    token_id: int
    piece: str
    p: float


@dataclass(frozen=True)
class PreviewStage:
    """The distribution after one sampler: how many tokens remain and the most likely of them."""

    name: str
    kept: int
    tokens: tuple[PreviewToken, ...]
    removed: tuple[int, ...] = ()  # token ids (of the model's top list) this stage removed


@dataclass(frozen=True)
class TokenPiece:
    token_id: int
    data: bytes
    special: bool

    @property
    def text(self) -> str:
        return self.data.decode("utf-8", errors="replace")


@dataclass(frozen=True)
class ContextBudget:
    """How the context is split before a reply: what the bar shows, and what the overflow policy would drop."""

    n_ctx: int
    system_tokens: int
    history_tokens: int
    draft_tokens: int
    reserve_tokens: int
    would_drop_messages: tuple[int, ...] = ()  # indices into the conversation
    would_drop_tokens: int = 0
    fits: bool = True
    spans: tuple[tuple[int, int, int], ...] = field(default=())  # (message index, first token, end token)
    # the tool definitions the template writes while the conversation uses tools: part of the tokens above,
    # inside message `tools_in`'s span (-1: before the first message)
    tool_tokens: int = 0
    tools_in: int = -1

    @property
    def free_tokens(self) -> int:
        return max(
            0, self.n_ctx - self.system_tokens - self.history_tokens - self.draft_tokens - self.reserve_tokens
        )
