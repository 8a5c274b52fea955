"""Tool calls through the API server, driven by the official openai and ollama clients against the real server
(uvicorn on 127.0.0.1, the engine in its child process) on the starter model, and the prompt formats of
engine/tools.py rendered through real templates."""

from __future__ import annotations

import json

import jsonschema
import ollama
import openai
import pytest

from engine.chat_template import BUILTIN_TEMPLATES, ChatTemplate
from engine.cli import load_model
from engine.errors import EngineError, SettingsError
from engine.events import Message, ToolCall
from engine.host import EngineHost
from engine.server import Scheduler, ServerConfig
from engine.server.runner import ServerThread
from engine.server_cli import bind
from engine.settings import LoadSettings, SamplingSettings
from engine.tools import (
    HERMES,
    LLAMA3,
    MISTRAL,
    ToolSet,
    nine_char_ids,
    parse_reply,
    parse_tools,
    style_for,
    toolset,
)

KEY = "tools-key-0123456789"
WEATHER = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 40},
                                            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
           "required": ["city", "unit"], "additionalProperties": False}  # fmt: skip
ADD = {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
       "required": ["a", "b"], "additionalProperties": False}  # fmt: skip
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "The weather in a city.",
                                      "parameters": WEATHER}},
    {"type": "function", "function": {"name": "add", "description": "Add two integers.", "parameters": ADD}},
]  # fmt: skip
SCHEMAS = {"get_weather": WEATHER, "add": ADD}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def server(starter_model):
    engine = EngineHost()
    load = LoadSettings(n_ctx=2048)
    loaded = load_model(engine, starter_model, load)
    engine.start_slots(1, loaded.n_ctx)  # the server decodes in the engine's slots

    def reload(engine) -> None:
        engine.restart()
        load_model(engine, starter_model, load)
        engine.start_slots(1, load.n_ctx)

    config = ServerConfig(model_name="starter", model_info=loaded.info, n_ctx=loaded.n_ctx, api_key=KEY)
    srv = ServerThread(config, Scheduler(engine, reload), bind("127.0.0.1", 0)).start()
    yield srv
    srv.stop()
    engine.close()


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=600)


def check_call(call) -> dict:
    """A tool call from the API: a known tool, JSON arguments that validate against its schema."""
    assert call.type == "function" and call.id.startswith("call_")
    args = json.loads(call.function.arguments)
    jsonschema.validate(args, SCHEMAS[call.function.name])
    return args


REQUIRED = dict(
    model="starter", messages=ASK, tools=TOOLS, tool_choice="required", temperature=0, max_tokens=120
)


@pytest.fixture(scope="module")
def required_reply(server):
    """One greedy `required` reply, shared: the starter takes a while per call on a busy machine."""
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=600)
    return client.chat.completions.create(**REQUIRED)


# ------------------------------------------------------------------ through the server, the starter model
def test_required_returns_a_call_that_validates(required_reply):
    reply = required_reply
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls" and len(choice.message.tool_calls) == 1
    check_call(choice.message.tool_calls[0])
    assert reply.usage.completion_tokens > 10


def test_named_tool_choice_calls_that_tool(client):
    reply = client.chat.completions.create(
        model="starter", messages=ASK, tools=TOOLS, temperature=0, max_tokens=120,
        tool_choice={"type": "function", "function": {"name": "add"}},
    )  # fmt: skip
    call = reply.choices[0].message.tool_calls[0]
    assert call.function.name == "add"  # not the weather tool the question is about
    args = check_call(call)
    assert isinstance(args["a"], int) and isinstance(args["b"], int)


def test_none_answers_in_text(client):
    reply = client.chat.completions.create(model="starter", messages=ASK, tools=TOOLS, tool_choice="none",
                                           temperature=0, max_tokens=8)  # fmt: skip
    choice = reply.choices[0]
    assert choice.message.tool_calls is None and choice.message.content
    assert choice.finish_reason in ("stop", "length")


def test_streamed_deltas_assemble_into_the_same_call(client, required_reply):
    whole = required_reply.choices[0].message.tool_calls[0]
    chunks = list(client.chat.completions.create(**REQUIRED, stream=True))
    calls: dict[int, dict] = {}
    for chunk in chunks:
        for delta in chunk.choices[0].delta.tool_calls or []:
            entry = calls.setdefault(delta.index, {"id": None, "name": "", "arguments": ""})
            entry["id"] = delta.id or entry["id"]
            if delta.function and delta.function.name:
                entry["name"] += delta.function.name
            if delta.function and delta.function.arguments:
                entry["arguments"] += delta.function.arguments
    assert list(calls) == [0]
    assert calls[0]["id"].startswith("call_")
    assert (calls[0]["name"], json.loads(calls[0]["arguments"])) == (
        whole.function.name, json.loads(whole.function.arguments))  # fmt: skip
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_a_tool_result_fed_back_gets_an_answer_that_saw_it(client):
    call = {"id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'}}  # fmt: skip
    history = [*ASK, {"role": "assistant", "content": None, "tool_calls": [call]}]
    result = {"role": "tool", "tool_call_id": "call_1", "content": '{"temperature": 21, "sky": "sunny"}'}
    with_result = client.chat.completions.create(model="starter", messages=[*history, result], tools=TOOLS,
                                                 tool_choice="none", temperature=0, max_tokens=8)  # fmt: skip
    assert with_result.choices[0].message.content and with_result.choices[0].message.tool_calls is None
    # the call and its result are in the prompt: without the result the prompt is shorter by its tokens
    bare = client.chat.completions.create(model="starter", messages=ASK, tools=TOOLS, tool_choice="none",
                                          temperature=0, max_tokens=1)  # fmt: skip
    assert with_result.usage.prompt_tokens > bare.usage.prompt_tokens + 20


def test_ollama_chat_returns_calls_with_object_arguments(server):
    client = ollama.Client(host=server.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=300)
    reply = client.chat(
        model="starter", messages=ASK, tools=TOOLS, options={"temperature": 0, "num_predict": 120}
    )
    calls = reply.message.tool_calls
    assert calls, reply.message.content
    assert isinstance(calls[0].function.arguments, dict)
    jsonschema.validate(dict(calls[0].function.arguments), SCHEMAS[calls[0].function.name])


@pytest.mark.parametrize(
    ("extra", "param"),
    [({"tools": {"name": "x"}}, "tools"),
     ({"tools": [{"type": "retrieval"}]}, "tools[0].type"),
     ({"tools": [{"type": "function", "function": {"name": "ok", "parameters": {"type": "array"}}}]},
      "tools[0].function.parameters"),
     ({"tools": [{"type": "function", "function": {"name": "ok", "parameters": {"type": "object",
       "properties": {"a": {"type": "frobnicate"}}}}}]}, "tools[0].function.parameters.properties.a.type"),
     ({"tools": [TOOLS[0], TOOLS[0]]}, "tools[1].function.name"),
     ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
      "tool_choice.function.name"),
     ({"tool_choice": "required"}, "tool_choice"),
     ({"tools": TOOLS, "tool_choice": "sometimes"}, "tool_choice"),
     ({"tools": TOOLS, "response_format": {"type": "json_object"}}, "tools"),
     # a pattern C++'s std::regex refuses would abort the engine: refused before it gets there
     ({"grammar": 'root ::= "a"', "grammar_triggers": ["(?P<x>a)"]}, "grammar_triggers")],
)  # fmt: skip
def test_bad_tools_are_400_naming_the_field(client, extra, param):
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="starter", messages=ASK, max_tokens=4, extra_body=extra)
    assert err.value.body["param"] == param and param in err.value.body["message"], err.value.body


def test_bad_tool_messages_are_400(client):
    bad_args = {"id": "c", "type": "function", "function": {"name": "add", "arguments": "{not json"}}
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="starter", max_tokens=4, messages=[
            *ASK, {"role": "assistant", "tool_calls": [bad_args]}, {"role": "tool", "tool_call_id": "c", "content": "3"}])  # fmt: skip
    assert err.value.body["param"] == "messages[1].tool_calls[0].function.arguments"


# ------------------------------------------------------------------ formats, without a model
def test_a_template_that_reads_tools_gets_them_natively():
    template = ChatTemplate(
        "{%- if tools %}<tools>{% for t in tools %}{{ t.function.name }};{% endfor %}</tools>{% endif %}"
        "{%- for m in messages %}<{{ m.role }}>{{ m.content }}"
        "{%- for c in m.tool_calls or [] %}<call>{{ c.function.name }}{{ c.function.arguments | tojson }}</call>"
        "{%- endfor %}{% if m.role == 'tool' %}[{{ m.tool_call_id }}]{% endif %}{% endfor %}",
        "test",
    )  # fmt: skip
    assert template.uses_tools and not ChatTemplate(BUILTIN_TEMPLATES["gemma"], "gemma").uses_tools
    call = ToolCall("call_9", "add", '{"a": 1, "b": 2}')
    text = template.render(
        [Message("user", "sum"), Message("assistant", "", (call,)), Message("tool", "3", tool_call_id="call_9")],
        True, [t.to_openai() for t in parse_tools(TOOLS)])  # fmt: skip
    assert (
        text
        == '<tools>get_weather;add;</tools><user>sum<assistant><call>add{"a": 1, "b": 2}</call><tool>3[call_9]'
    )


def test_the_generic_format_goes_through_a_template_without_tools():
    from engine.tools import generic_messages

    template = ChatTemplate(BUILTIN_TEMPLATES["gemma"], "gemma")
    call = ToolCall("call_9", "add", '{"a": 1, "b": 2}')
    msgs = generic_messages([Message("user", "sum"), Message("assistant", "", (call,)),
                             Message("tool", "3", tool_call_id="call_9", name="add")], parse_tools(TOOLS))  # fmt: skip
    text = template.render(msgs, True)
    assert (
        '{"type": "function", "function": {"name": "get_weather"' in text
    )  # the tool list, in the system turn
    assert (
        '<start_of_turn>model\n<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>'
        in text
    )
    assert '<start_of_turn>user\n<tool_response>\n{"name": "add", "content": "3"}\n</tool_response>' in text


def test_call_styles_are_recognised_and_parsed():
    assert style_for("{% if tools %}<tool_call>{% endif %}", True) is HERMES
    assert style_for("[TOOL_CALLS] {{ tools }}", True) is MISTRAL
    assert style_for("<|start_header_id|>{{ tools }}", True) is LLAMA3
    assert style_for("<|start_header_id|>", False) is HERMES  # no tools in the template: the generic format
    tools = ToolSet(parse_tools(TOOLS), "auto")
    assert (
        parse_reply('[TOOL_CALLS][{"name": "add", "arguments": {"a": 1, "b": 2}}]', tools, MISTRAL)
        .calls[0]
        .name
        == "add"
    )
    got = parse_reply(' {"name": "add", "parameters": {"a": 1, "b": 2}}', tools, LLAMA3).calls[0]
    assert json.loads(got.arguments) == {"a": 1, "b": 2}
    plain = parse_reply("It is sunny.", tools, HERMES)
    assert plain == type(plain)("It is sunny.", ())


@pytest.mark.parametrize(
    ("text", "why"),
    [('<tool_call>\n{"name": "add", "arguments": {"a": 1}}', "do not match its schema"),
     ('<tool_call>\n{"name": "rm", "arguments": {}}', "not one of"),
     ("<tool_call>\n{broken", "not valid JSON"),
     ("no call at all", "no tool call")],
)  # fmt: skip
def test_an_invalid_call_is_a_clear_error(text, why):
    tools = ToolSet(parse_tools(TOOLS), "required")
    with pytest.raises(SettingsError) as err:
        parse_reply(text, tools, HERMES)
    assert err.value.field == "tool_call" and why in str(err.value)


def test_tool_choice_none_means_no_tools():
    assert toolset(TOOLS, "none") is None and toolset(None, None) is None
    assert toolset(TOOLS, None).choice == "auto"


@pytest.mark.parametrize(
    ("style", "pieces", "shown"),
    [(HERMES, ["It is", " sunny <", "b>!"], ["It is", " sunny ", "<b>!"]),  # a '<' that was no marker: shown
     (HERMES, ["Let me look. <tool", "_call>\n{", '"name"'], ["Let me look. ", "", ""]),
     (LLAMA3, [' {"na', 'me": "add"'], ["", ""]),
     (LLAMA3, ["Hello", ' {"name"'], ["Hello", ' {"name"'])],  # llama3 calls only at the start
)  # fmt: skip
def test_streamed_text_stops_where_a_call_may_begin(style, pieces, shown):
    from engine.tool_chat import _Holdback

    held = _Holdback(style)
    assert [held.feed(p) for p in pieces] == shown


@pytest.mark.parametrize("pattern", ["(?P<x>a)", "a{", "\\Aa", "[]a]", "(", "(?i)a"])
def test_trigger_patterns_outside_what_both_regex_engines_read_alike_are_refused(pattern):
    with pytest.raises(SettingsError) as err:
        SamplingSettings(grammar='root ::= "a"', grammar_triggers=(pattern,))
    assert err.value.field == "grammar_triggers"


def test_the_call_styles_triggers_are_accepted():
    for style in (HERMES, MISTRAL, LLAMA3):
        assert SamplingSettings(grammar='root ::= "a"', grammar_triggers=(style.trigger,)).grammar_triggers


@pytest.mark.parametrize(
    ("template_file", "style"),
    [("Qwen-Qwen2.5-7B-Instruct.jinja", HERMES), ("NousResearch-Hermes-3-Llama-3.1-8B-tool_use.jinja", HERMES),
     ("meta-llama-Llama-3.1-8B-Instruct.jinja", LLAMA3), ("mistralai-Mistral-Nemo-Instruct-2407.jinja", MISTRAL)],
)  # fmt: skip
def test_published_templates_get_tools_calls_and_results_natively(template_file, style):
    from pathlib import Path

    from engine.tools import format_call

    text = (Path(__file__).parent / "data" / "templates" / template_file).read_text(encoding="utf-8")
    template = ChatTemplate(text, template_file, "<s>", "</s>")
    assert template.uses_tools and style_for(text, True) is style
    call = ToolCall("call123456", "get_weather", '{"city": "Paris", "unit": "celsius"}')
    messages = [Message("user", "Weather in Paris?"), Message("assistant", "", (call,)),
                Message("tool", "21 degrees and sunny", tool_call_id="call123456", name="get_weather")]  # fmt: skip
    if style is MISTRAL:  # its template demands 9-character ids; the engine shortens them (see tool_chat)
        with pytest.raises(EngineError, match="length 9"):
            template.render(messages, True, [t.to_openai() for t in parse_tools(TOOLS)])
        messages = nine_char_ids(messages)
    prompt = template.render(messages, True, [t.to_openai() for t in parse_tools(TOOLS)])
    assert "get_weather" in prompt and "The weather in a city." in prompt  # the tool list
    assert '"Paris"' in prompt and "21 degrees and sunny" in prompt  # the call and its result
    # what the model writes in its style parses back into the same call
    tools = ToolSet(parse_tools(TOOLS), "required")
    parsed = parse_reply(format_call(call, style), tools, style).calls[0]
    assert (parsed.name, json.loads(parsed.arguments)) == (
        "get_weather",
        {"city": "Paris", "unit": "celsius"},
    )
