"""The numbers behind the visualizers, asked of a loaded runtime: the context budget, message spans, the token
view, the KV cache state and the sampling preview. Each needs the model (its template and tokenizer) but runs at
most one prompt evaluation (`inspect`), which prefix reuse keeps cheap; the sampling math is in engine.preview.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from engine.errors import EngineError
from engine.events import Message, PromptEvaluated
from engine.interface import Inspection, KVState
from engine.kv import KVLayout, kv_layout
from engine.preview import sampling_preview
from engine.settings import OverflowPolicy, SamplingSettings
from engine.textstream import common_prefix
from engine.visual import ContextBudget, PreviewStage, TokenPiece

if TYPE_CHECKING:
    from engine.runtime import Runtime
    from engine.tools import ToolSet


def preview(rt: Runtime, sampling: SamplingSettings, top_n: int = 20) -> list[PreviewStage]:
    """Next-token distribution after each sampler stage, from the logits of the last prompt evaluation.

    Runs no model evaluation: moving a slider only re-applies the samplers.
    """
    if rt.logits_snapshot is None:
        raise EngineError("Nothing evaluated yet: evaluate a prompt before asking for the sampling preview.")
    cached = rt.cached_tokens
    history = cached[-sampling.penalty_last_n :] if sampling.penalty_last_n > 0 else cached
    return sampling_preview(rt.logits_snapshot, sampling, rt.vocab, rt.n_ctx, history, rt.piece, top_n)


def evaluate_text(rt: Runtime, text: str, chat: bool = False) -> PromptEvaluated:
    """Evaluate a raw prompt, or one user message through the chat template, for inspection."""
    rt.require_model()
    tokens = rt.render_tokens([Message("user", text)]) if chat else rt.tokenize(text, add_special=True)
    return rt.evaluate(tokens)


def layout(rt: Runtime) -> KVLayout:
    rt.require_model()
    s = rt.load_settings
    return kv_layout(rt.info, rt.n_ctx, s.type_k, s.type_v, s.n_ubatch, s.swa_full)


def kv_state(rt: Runtime) -> KVState:
    """What the KV cache holds now: the layout, positions in use and the last turn's reused/fresh split."""
    pos_min, pos_max = rt.positions()
    last = rt.last_evaluation
    return KVState(
        layout=layout(rt),
        n_past=len(rt.cached_tokens),
        pos_min=pos_min,
        pos_max=pos_max,
        reused_tokens=last.reused_tokens if last else 0,
        evaluated_tokens=last.evaluated_tokens if last else 0,
        llama_reports=tuple(rt.kv_reports),
    )


def token_pieces(rt: Runtime, text: str, parse_special: bool = True) -> list[TokenPiece]:
    """A text as its tokens with their exact bytes (special tokens as their text)."""
    rt.require_model()
    return [
        TokenPiece(tok, rt.token_bytes(tok, special=True), rt.is_control(tok))
        for tok in rt.tokenize(text, add_special=False, parse_special=parse_special)
    ]


def message_spans(rt: Runtime, messages: Sequence[Message], render=None) -> list[tuple[int, int, int]]:
    """(message index, first token, end token) of each message in the rendered prompt (`render`: how it is
    rendered to tokens, Runtime.render_tokens's signature; default: without tools)."""
    render = render or rt.render_tokens
    spans, start = [], 0
    full = render(messages)
    for i in range(len(messages)):
        prefix = render(messages[: i + 1], add_generation_prompt=False)
        end = common_prefix(prefix, full) if i < len(messages) - 1 else len(full)
        spans.append((i, start, max(start, end)))
        start = max(start, end)
    return spans


def inspect(
    rt: Runtime,
    messages: Sequence[Message],
    draft: str,
    sampling: SamplingSettings,
    policy: OverflowPolicy,
    top_n: int = 12,
    tools: ToolSet | None = None,
) -> Inspection:
    """Everything the visualizers show, in one round trip: the context budget, the next-token preview and the
    KV cache after evaluating the conversation (+ the draft as a user turn; a conversation ending in a reply is
    evaluated as that reply, open). Prefix reuse makes this cheap: usually only the draft's tokens are computed,
    and they are then in the cache when the message is sent. `tools`: the conversation's tools, rendered as a
    tool turn renders them (so the cache stays that turn's prefix and the budget counts their definitions)."""
    rt.require_model()
    budget = context_budget(rt, messages, draft, sampling, policy, tools)
    convo = list(messages) + ([Message("user", draft)] if draft else [])
    stages: list[PreviewStage] = []
    note = ""
    if not convo:
        note = "Nothing to preview yet: type a message."
    else:
        tokens = _renderer(rt, tools)(convo, continue_last=convo[-1].role == "assistant")
        if len(tokens) > rt.n_ctx:
            note = f"The conversation ({len(tokens)} tokens) is longer than the context ({rt.n_ctx})."
        else:
            rt.evaluate(tokens)
            stages = preview(rt, sampling, top_n)
    return Inspection(budget, tuple(stages), note, kv_state(rt))


def _renderer(rt: Runtime, tools: ToolSet | None):
    """How the conversation is rendered to tokens: with the tool list while tools are active, else plainly."""
    if tools is None or not tools.active:
        return rt.render_tokens
    from engine.tool_chat import tool_renderer

    return tool_renderer(rt, tools)


def context_budget(
    rt: Runtime, messages: Sequence[Message], draft: str, sampling: SamplingSettings, policy: OverflowPolicy,
    tools: ToolSet | None = None,
) -> ContextBudget:  # fmt: skip
    """How system prompt, earlier turns, the draft and the reply reserve fill the context, and what would go;
    with `tools`, how many tokens their definitions take and in which message the template put them."""
    rt.require_model()
    convo = list(messages) + ([Message("user", draft)] if draft else [])
    reserve = rt.reply_reserve(sampling)
    if not convo:
        return ContextBudget(rt.n_ctx, 0, 0, 0, reserve)
    render = _renderer(rt, tools)
    spans = message_spans(rt, convo, render)
    total = spans[-1][2]
    tool_tokens, tools_in = 0, -1
    if tools is not None and tools.active:
        plain = message_spans(rt, convo)
        tool_tokens = max(0, total - plain[-1][2])
        # where the template wrote them: the message whose span grew the most (the first span starts at 0)
        grew = [
            (end - start) - (p_end - p_start)
            for (_, start, end), (_, p_start, p_end) in zip(spans, plain, strict=True)
        ]
        tools_in = grew.index(max(grew)) if tool_tokens else -1
    system = spans[0][2] if convo[0].role == "system" else (1 if total else 0)
    draft_tokens = spans[-1][2] - spans[-1][1] if draft else 0
    drop: list[int] = []
    dropped_tokens = 0
    overflow = total + reserve - rt.n_ctx
    if overflow > 0 and policy != OverflowPolicy.STOP:
        first = 1 if convo[0].role == "system" else 0
        for index, start, end in spans[first:-1]:
            if dropped_tokens >= overflow:
                break
            drop.append(index)
            dropped_tokens += end - start
    fits = overflow <= 0 or (policy != OverflowPolicy.STOP and dropped_tokens >= overflow)
    return ContextBudget(
        rt.n_ctx, system, total - system - draft_tokens, draft_tokens, reserve,
        tuple(drop), dropped_tokens, fits, tuple(spans), tool_tokens, tools_in,
    )  # fmt: skip
