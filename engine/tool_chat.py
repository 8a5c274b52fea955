"""Chat with tools on a loaded Runtime: the prompt with the tool list, the call's grammar, the parsed call.

The formats and the choice of grammar are explained in engine/tools.py; this module is the half that needs
the model (its template, tokenizer and sampler), so it runs in the engine's process.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import llama_cpp

from engine.errors import EngineError, SettingsError
from engine.events import Event, Message, ReplyDone, StopReason, Token, ToolCallsMade
from engine.sampling import json_schema_grammar
from engine.settings import OverflowPolicy, SamplingSettings
from engine.tools import (
    MISTRAL,
    CallStyle,
    ToolSet,
    call_schema,
    generic_messages,
    nine_char_ids,
    parse_reply,
    style_for,
    wrap_grammar,
)

if TYPE_CHECKING:
    from engine.runtime import Runtime


def chat_tools(
    rt: Runtime,
    messages: Sequence[Message],
    tools: ToolSet | None,
    sampling: SamplingSettings | None = None,
    policy: OverflowPolicy = OverflowPolicy.STOP,
) -> Iterator[Event]:
    """Reply to a conversation that may use tools: the usual events, then ToolCallsMade (the reply split into
    its text and its calls) just before ReplyDone."""
    rt.require_model()
    rt.stop_flag.clear()
    tokens, sampling, style = prepare(rt, messages, tools, sampling or SamplingSettings(), rt.stop_flag)
    keep = 1 if tokens and tokens[0] == llama_cpp.llama_vocab_bos(rt.vocab) else 0
    yield from split_calls(rt._generate(tokens, sampling, policy, keep), tools, style)


def slot_chat_tools(
    rt: Runtime, messages: Sequence[Message], tools: ToolSet | None, sampling: SamplingSettings | None = None
) -> Iterator[Event]:
    """chat_tools in one of the Runtime's slots (engine.slots), batched with the other requests."""
    pool = rt.slot_pool()
    started = time.perf_counter()
    tokens, sampling, style = prepare(rt, messages, tools, sampling or SamplingSettings(), None)
    return split_calls(pool.submit(tokens, sampling, started), tools, style)


def render_text(
    rt: Runtime, messages: Sequence[Message], add_generation_prompt: bool = True, tools: ToolSet | None = None
) -> str:
    """The prompt text with the tool list, as the model's template takes it: native tools, or the generic format
    (the tool list in the system message) for a template that knows nothing of tools."""
    template = rt.template
    active = tools.active if tools else ()
    if template.uses_tools:
        messages = (
            nine_char_ids(list(messages)) if style_for(template.text, True) is MISTRAL else list(messages)
        )
        return template.render(messages, add_generation_prompt, [t.to_openai() for t in active] or None)
    return template.render(generic_messages(list(messages), active), add_generation_prompt)


def tool_renderer(rt: Runtime, tools: ToolSet | None):
    """Runtime.render_tokens with the tool list as chat_tools renders it: what the inspector evaluates and
    measures while the conversation uses tools, so its KV cache is the next tool turn's prefix."""
    return functools.partial(rt.render_tokens_with, functools.partial(render_text, rt, tools=tools))


def prepare(
    rt: Runtime, messages: Sequence[Message], tools: ToolSet | None, sampling: SamplingSettings, cancel
) -> tuple[list[int], SamplingSettings, CallStyle]:
    """The prompt with the tool list, tokenized, and the sampling settings with the call's grammar."""
    if not messages or messages[-1].role not in ("user", "system", "tool"):
        raise EngineError("The conversation must end with a user message or a tool's result to get a reply.")
    template = rt.template
    active = tools.active if tools else ()
    style = style_for(template.text, template.uses_tools)
    if cancel is not None:  # Stop also ends a slow template render (slot requests end by their own cancel)
        template.cancel = cancel
    try:
        text = render_text(rt, messages, tools=tools)
    finally:
        if cancel is not None:
            template.cancel = None
    tokens = rt.tokenize_rendered(text)
    if active:
        if sampling.grammar or sampling.json_schema:
            raise SettingsError("tools", "cannot be combined with a grammar or JSON schema (response_format)")
        grammar = wrap_grammar(json_schema_grammar(call_schema(active, style)), style)
        triggers = () if tools.forced else (style.trigger,)
        sampling = sampling.replace(grammar=grammar, grammar_triggers=triggers)
    return tokens, sampling, style


def split_calls(events: Iterator[Event], tools: ToolSet | None, style: CallStyle) -> Iterator[Event]:
    """Hold back streamed text where a call may begin; ToolCallsMade just before ReplyDone."""
    active = tools.active if tools else ()
    held = _Holdback(style)
    for event in events:
        if isinstance(event, Token) and active:
            event = dataclasses.replace(event, text=held.feed(event.text))
        if isinstance(event, ReplyDone) and active:
            if event.stats.stop_reason in (StopReason.EOS, StopReason.STOP_STRING):
                parsed = parse_reply(event.text, tools, style)
                yield ToolCallsMade(parsed.content, parsed.calls)
            else:  # cut off (length, cancel): whatever was written is text, a half call included
                ran_out = event.stats.stop_reason in (StopReason.MAX_TOKENS, StopReason.CONTEXT_FULL)
                # a call had begun: its marker was written, or the grammar forced one from the first token
                start = held.shown if held.found else 0 if tools.forced else len(event.text)
                yield ToolCallsMade(event.text, (), event.text[start:].strip() if ran_out else "")
        yield event


class _Holdback:
    """Token text for display, minus what may be a tool call: from the call's marker on (or a piece of text
    that could be the start of it) nothing is shown; ToolCallsMade carries the reply whole at the end."""

    def __init__(self, style: CallStyle):
        self.style = style
        self.marker = style.prefix.strip() or '{"name"'
        self.text = ""
        self.shown = 0
        self.found = False

    def feed(self, piece: str) -> str:
        self.text += piece
        if self.found:
            return ""
        end = self._safe_end()
        out = self.text[self.shown : end]
        self.shown = max(self.shown, end)
        return out

    def _safe_end(self) -> int:
        text, marker = self.text, self.marker
        if not self.style.prefix:  # llama3: a call is the whole reply, so only its start can be one
            head = text.lstrip()
            if head.startswith(marker) or marker.startswith(head):
                self.found = head.startswith(marker)
                return 0
            return len(text)
        at = text.find(marker)
        if at >= 0:
            self.found = True
            return at
        for n in range(min(len(marker) - 1, len(text)), 0, -1):  # the text ends with the marker's beginning
            if text.endswith(marker[:n]):
                return len(text) - n
        return len(text)
