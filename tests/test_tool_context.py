"""The context view of a conversation that uses tools: the inspection renders it as its tool turns do, so the
tool definitions are counted (and placed in the message the template wrote them into), and the KV cache it
leaves is the next tool turn's prompt, reused whole instead of evaluated again."""

from __future__ import annotations

from pathlib import Path

import pytest
from gguf_factory import write_tiny_llama
from test_server_tools import TOOLS

from app.visualizers.context import TOOLS_COLOR, ContextBar
from engine.events import Message, PromptEvaluated
from engine.runtime import Runtime
from engine.settings import LoadSettings, OverflowPolicy, SamplingSettings
from engine.tool_chat import prepare
from engine.tools import ToolSet, parse_tools

TEMPLATES = Path(__file__).parent / "data" / "templates"


@pytest.fixture(scope="module", params=["generic", "Qwen-Qwen2.5-7B-Instruct.jinja"])
def runtime(request, tmp_path_factory):
    """A tiny model with the built-in template (it knows nothing of tools: the generic format puts them in the
    system message) or with Qwen 2.5's (native tools)."""
    template = None if request.param == "generic" else (TEMPLATES / request.param).read_text(encoding="utf-8")
    path = write_tiny_llama(tmp_path_factory.mktemp("tools") / "m.gguf", chat_template=template)
    rt = Runtime()
    list(rt.load(path, LoadSettings(n_ctx=2048)))
    yield rt
    rt.close()


CONVO = [Message("system", "Be brief."), Message("user", "Weather in Paris?"), Message("assistant", "Sunny.")]
DRAFT = "And in Rome?"


def test_inspection_counts_the_tool_definitions_and_leaves_the_tool_turns_prompt_in_the_cache(runtime):
    rt, settings = runtime, SamplingSettings(max_tokens=1, temperature=0)
    tools = ToolSet(parse_tools(TOOLS), "auto")
    plain = rt.inspect(CONVO, DRAFT, settings, OverflowPolicy.STOP).budget
    state = rt.inspect(CONVO, DRAFT, settings, OverflowPolicy.STOP, tools=tools)
    budget = state.budget
    used = budget.system_tokens + budget.history_tokens + budget.draft_tokens
    plain_used = plain.system_tokens + plain.history_tokens + plain.draft_tokens
    assert budget.tool_tokens > 40 and used == plain_used + budget.tool_tokens  # names, descriptions, schemas
    assert (plain.tool_tokens, plain.tools_in) == (0, -1)
    # the cache holds exactly what the tool turn for the draft sends ...
    sent = [*CONVO, Message("user", DRAFT)]
    prompt = prepare(rt, sent, tools, settings, None)[0]
    # the definitions are where the template wrote them: with the system prompt (Qwen's system turn; a template
    # without a system role, as the built-in one here, folds it into the first user turn)
    _, start, end = budget.spans[budget.tools_in]
    held = rt.detokenize(prompt[start:end], special=True)
    assert "get_weather" in held and "Add two integers." in held and "Be brief." in held
    assert budget.system_tokens == plain.system_tokens + (budget.tool_tokens if budget.tools_in == 0 else 0)
    assert rt.cached_tokens == prompt and state.kv.n_past == len(prompt) == budget.spans[-1][2]
    # ... so the turn evaluates nothing again but the one token llama.cpp needs for the logits
    evaluated = next(e for e in rt.chat_tools(sent, tools, settings) if isinstance(e, PromptEvaluated))
    assert evaluated.evaluated_tokens <= 1 and evaluated.reused_tokens >= len(prompt) - 1


def test_no_tools_or_tool_choice_none_count_nothing(runtime):
    settings = SamplingSettings()
    plain = runtime.inspect(CONVO, DRAFT, settings, OverflowPolicy.STOP).budget
    for tools in (None, ToolSet(parse_tools(TOOLS), "none"), ToolSet((), "auto")):
        budget = runtime.context_budget(CONVO, DRAFT, settings, OverflowPolicy.STOP, tools)
        assert budget == plain


def test_the_bar_shows_the_tool_definitions_as_their_own_segment(qtbot, runtime):
    tools = ToolSet(parse_tools(TOOLS), "required")
    budget = runtime.context_budget(CONVO, DRAFT, SamplingSettings(), OverflowPolicy.STOP, tools)
    bar = ContextBar()
    qtbot.addWidget(bar)
    bar_roles = [m.role for m in CONVO] + ["user"]
    bar.set_budget(budget, bar_roles, True)
    defs = [s for s in bar.segments if s.color == TOOLS_COLOR]
    assert [s.tokens for s in defs] == [budget.tool_tokens]
    index, start, end = budget.spans[budget.tools_in]
    holder = next(s for s in bar.segments if s.label == f"message {index + 1} ({bar_roles[index]})")
    assert holder.tokens == end - start - budget.tool_tokens > 0
    assert defs[0].label == f"tool definitions (in message {index + 1})"
    conversation = sum(s.tokens for s in bar.segments if s.label != "reserved for the reply")
    assert conversation == bar.used == budget.spans[-1][2]  # the segments still add up to what is used
    assert f"tool definitions {budget.tool_tokens:,}" in bar.note
