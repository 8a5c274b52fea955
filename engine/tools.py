"""Function tools for chat: validate OpenAI-style tools, put them in the prompt, constrain the call with a
grammar, and parse the call the model made. Pure Python (no llama.cpp): the API server validates with it; the
engine child renders and generates with it (engine/tool_chat.py).

Prompt. A chat template that reads the `tools` variable (Qwen, Llama 3.1+, Mistral, Hermes styles) gets the
tool list, the assistant's earlier calls and the tools' results as transformers passes them, and the call
format is the one its template teaches (recognised from the template's text):

    hermes   <tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>      (Qwen 2.5/3, Hermes; generic)
    mistral  [TOOL_CALLS][{"name": ..., "arguments": {...}}]
    llama3   {"name": ..., "parameters": {...}}                                 (Llama 3.1+ JSON tool calls)

Any other template gets the generic format, which is the Hermes one. The system turn (a new one when the
conversation has none) ends with:

    # Tools

    You may call one of the tools below. To call one, reply with nothing but
    <tool_call>
    {"name": <the tool's name>, "arguments": <an object that matches its parameters>}
    </tool_call>
    and you will get its result. Otherwise, answer normally.
    <tools>
    {"type": "function", "function": {"name": ..., "description": ..., "parameters": {...}}}   (one per line)
    </tools>

an assistant's earlier call is written in that same format, and tool results come back as one user turn of

    <tool_response>
    {"name": <the tool's name>, "content": <the result text>}
    </tool_response>

tool_choice. `none`: no tools in the prompt and no grammar (plain text). `required` or a named tool: a grammar
forces the call from the first token (one alternative per tool: {"name": const, "arguments": its JSON
schema}), so even a small model writes a call that parses and validates. `auto`: the same grammar, lazy:
llama.cpp switches it on when the model writes the call's opening marker (`<tool_call>`, `[TOOL_CALLS]`, or
`{"name"` at the start for llama3). Until then the model writes text freely; from the marker on, the call
must be valid. Generating freely and parsing afterwards would let a small model write a call that fails to
parse; the lazy grammar costs nothing until the marker.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import secrets
from dataclasses import dataclass
from typing import Any

from engine.errors import SettingsError
from engine.events import Message, ToolCall

NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # OpenAI's rule for function names
MAX_TOOLS = 128
MAX_SCHEMA_CHARS = 64_000


@dataclass(frozen=True)
class Tool:
    """One function tool. `parameters` is the JSON text of its arguments' JSON schema (an object schema)."""

    name: str
    description: str = ""
    parameters: str = '{"type": "object", "properties": {}}'

    def to_openai(self) -> dict:
        return {"type": "function", "function": {"name": self.name, "description": self.description,
                                                 "parameters": json.loads(self.parameters)}}  # fmt: skip


@dataclass(frozen=True)
class ToolSet:
    """The tools of one request and how the model may use them: choice is none, auto, required, or a tool name."""

    tools: tuple[Tool, ...]
    choice: str = "auto"

    @property
    def active(self) -> tuple[Tool, ...]:
        """The tools the model may call under this choice."""
        if self.choice == "none":
            return ()
        if self.choice in ("auto", "required"):
            return self.tools
        return tuple(t for t in self.tools if t.name == self.choice)

    @property
    def forced(self) -> bool:
        return self.choice not in ("none", "auto")


@dataclass(frozen=True)
class CallStyle:
    """How a model family writes a call: the text around it, the arguments' key, and whether it is a list."""

    name: str
    prefix: str
    suffix: str
    args_key: str = "arguments"
    in_list: bool = False
    trigger: str = ""  # a regex llama.cpp matches to switch the lazy grammar on (auto)


HERMES = CallStyle("hermes", "<tool_call>\n", "\n</tool_call>", trigger=r"[\s\S]*?(<tool_call>)[\s\S]*")
MISTRAL = CallStyle("mistral", "[TOOL_CALLS]", "", in_list=True, trigger=r"[\s\S]*?(\[TOOL_CALLS\])[\s\S]*")
LLAMA3 = CallStyle("llama3", "", "", args_key="parameters", trigger=r"\s*(\{\s*\"name\")[\s\S]*")


def style_for(template_text: str, native: bool) -> CallStyle:
    """The call format a template teaches; the generic (Hermes) one for templates without tools."""
    if native and "[TOOL_CALLS]" in template_text:
        return MISTRAL
    if native and "<tool_call>" not in template_text and "<|start_header_id|>" in template_text:
        return LLAMA3
    return HERMES


# ------------------------------------------------------------------------------------------ validation
_QUANTIFIER = re.compile(r"\{\d+(,\d*)?\}")
_ESCAPES = set("sSdDwWbBntrfv0")


def check_trigger_pattern(pattern: str) -> str:
    """Why a lazy-grammar trigger would not compile the same in llama.cpp (C++ std::regex, ECMAScript, which
    aborts the engine on a bad pattern) as in Python, or "" when it is fine: only the common subset passes."""
    if len(pattern) > 1000:
        return "is longer than 1000 characters"
    try:
        re.compile(pattern)
    except re.error as err:
        return f"is not a regular expression ({err})"
    in_class, i = False, 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            nxt = pattern[i + 1 : i + 2]
            if nxt.isalnum() and nxt not in _ESCAPES:
                return f"uses the escape \\{nxt}; allowed: \\s \\S \\d \\D \\w \\W \\b \\B \\n \\t \\r and escaped punctuation"
            i += 2
            continue
        if in_class:
            in_class = c != "]"
        elif c == "[":
            in_class = True
        elif c == "(" and pattern[i + 1 : i + 2] == "?" and pattern[i + 2 : i + 3] not in (":", "=", "!"):
            return "uses a group syntax other than (?:...), (?=...) or (?!...)"
        elif c == "{":
            m = _QUANTIFIER.match(pattern, i)
            if not m or i == 0 or pattern[i - 1] in "(|":
                return "has a '{' that is not a quantifier such as {2} or {1,3} (escape it as \\{)"
            i = m.end()
            continue
        elif c in "}]":
            return f"has an unescaped '{c}' (escape it as \\{c})"
        i += 1
    return ""


def parse_tools(raw: Any, field: str = "tools") -> tuple[Tool, ...]:
    """OpenAI (and Ollama) `tools` -> Tools; a bad one raises SettingsError naming the field."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise SettingsError(field, "expected a list of tools")
    if len(raw) > MAX_TOOLS:
        raise SettingsError(field, f"{len(raw)} tools is more than {MAX_TOOLS}")
    tools: list[Tool] = []
    for i, item in enumerate(raw):
        where = f"{field}[{i}]"
        if not isinstance(item, dict):
            raise SettingsError(where, 'expected an object {"type": "function", "function": {...}}')
        if item.get("type", "function") != "function":
            raise SettingsError(
                f"{where}.type", f"only 'function' tools are supported, not {item.get('type')!r}"
            )
        fn = item.get("function")
        if not isinstance(fn, dict):
            raise SettingsError(
                f"{where}.function", "expected an object with name, description and parameters"
            )
        name = fn.get("name")
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise SettingsError(
                f"{where}.function.name", f"{name!r} is not a name of 1-64 letters, digits, '_' or '-'"
            )
        if any(t.name == name for t in tools):
            raise SettingsError(f"{where}.function.name", f"'{name}' is given twice")
        description = fn.get("description") or ""
        if not isinstance(description, str):
            raise SettingsError(f"{where}.function.description", "expected a string")
        params = fn.get("parameters")
        params = {"type": "object", "properties": {}} if params is None else params
        _check_schema(params, f"{where}.function.parameters")
        tools.append(Tool(name, description, json.dumps(params, ensure_ascii=False)))
    return tuple(tools)


def _check_schema(schema: Any, where: str) -> None:
    if not isinstance(schema, dict):
        raise SettingsError(where, "expected a JSON schema object")
    if schema.get("type", "object") != "object":
        raise SettingsError(
            where, f'the arguments must be an object ("type": "object"), not {schema["type"]!r}'
        )
    if len(json.dumps(schema)) > MAX_SCHEMA_CHARS:
        raise SettingsError(where, f"the schema is longer than {MAX_SCHEMA_CHARS:,} characters")
    import jsonschema

    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as err:
        path = "".join(f".{p}" if isinstance(p, str) else f"[{p}]" for p in err.path)
        raise SettingsError(where + path, f"is not a valid JSON schema: {err.message}") from None


def parse_choice(raw: Any, tools: tuple[Tool, ...], field: str = "tool_choice") -> str:
    """OpenAI tool_choice -> none | auto | required | a tool's name."""
    if raw is None:
        return "auto" if tools else "none"
    if raw in ("none", "auto", "required"):
        if raw == "required" and not tools:
            raise SettingsError(field, "'required' needs at least one tool in `tools`")
        return raw
    if isinstance(raw, dict):
        fn = raw.get("function")
        name = fn.get("name") if isinstance(fn, dict) else None
        if raw.get("type") != "function" or not isinstance(name, str):
            raise SettingsError(field, 'expected {"type": "function", "function": {"name": ...}}')
        if not any(t.name == name for t in tools):
            raise SettingsError(f"{field}.function.name", f"no tool named '{name}' in `tools`")
        return name
    raise SettingsError(
        field, f"expected none, auto, required or a named function, not {json.dumps(raw)[:60]}"
    )


def toolset(raw_tools: Any, raw_choice: Any = None) -> ToolSet | None:
    """A request's tools and tool_choice, validated; None when the model is to answer in text only."""
    tools = parse_tools(raw_tools)
    choice = parse_choice(raw_choice, tools)
    return None if choice == "none" or not tools else ToolSet(tools, choice)


# ------------------------------------------------------------------------------------------ prompt
def generic_instructions(tools: tuple[Tool, ...]) -> str:
    lines = "\n".join(json.dumps(t.to_openai(), ensure_ascii=False) for t in tools)
    return (
        "# Tools\n\nYou may call one of the tools below. To call one, reply with nothing but\n"
        '<tool_call>\n{"name": <the tool\'s name>, "arguments": <an object that matches its parameters>}\n'
        "</tool_call>\nand you will get its result. Otherwise, answer normally.\n"
        f"<tools>\n{lines}\n</tools>"
    )


def format_call(call: ToolCall, style: CallStyle = HERMES) -> str:
    """A call as the model writes it in `style`."""
    body = json.dumps({"name": call.name, style.args_key: json.loads(call.arguments)}, ensure_ascii=False)
    return style.prefix + (f"[{body}]" if style.in_list else body) + style.suffix


def generic_messages(messages: list[Message], tools: tuple[Tool, ...]) -> list[Message]:
    """The conversation rewritten into the generic format for a template that knows nothing of tools."""
    out: list[Message] = []
    instructions = generic_instructions(tools) if tools else ""
    if instructions:
        if messages and messages[0].role == "system":
            out.append(Message("system", f"{messages[0].content}\n\n{instructions}"))
            messages = messages[1:]
        else:
            out.append(Message("system", instructions))
    for m in messages:
        if m.role == "assistant" and m.tool_calls:
            calls = "\n".join(format_call(c) for c in m.tool_calls)
            out.append(Message("assistant", f"{m.content}\n{calls}" if m.content else calls))
        elif m.role == "tool":
            result = json.dumps({"name": m.name, "content": m.content}, ensure_ascii=False)
            block = f"<tool_response>\n{result}\n</tool_response>"
            if out and out[-1].role == "user" and out[-1].content.endswith("</tool_response>"):
                out[-1] = Message("user", f"{out[-1].content}\n{block}")
            else:
                out.append(Message("user", block))
        else:
            out.append(Message(m.role, m.content))
    return out


def nine_char_ids(messages: list[Message]) -> list[Message]:
    """The conversation with its tool call ids made 9 letters and digits, as Mistral's templates demand (the
    same id always maps to the same short one, so calls and their results still match)."""

    def short(ident: str) -> str:
        return ident if len(ident) == 9 and ident.isalnum() else hashlib.sha1(ident.encode()).hexdigest()[:9]

    return [
        dataclasses.replace(
            m,
            tool_calls=tuple(dataclasses.replace(c, id=short(c.id)) for c in m.tool_calls),
            tool_call_id=short(m.tool_call_id) if m.tool_call_id else "",
        )
        for m in messages
    ]


# ------------------------------------------------------------------------------------------ grammar
MAX_STRING = 256  # characters of a string argument whose schema sets no maxLength (see bounded_strings)


def bounded_strings(schema: Any) -> Any:
    """The schema with a maxLength on every free string: a small model under the grammar can otherwise write
    one string forever ("24:0000000...") and never close the call."""
    if isinstance(schema, list):
        return [bounded_strings(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: bounded_strings(v) if isinstance(v, (dict, list)) and k not in ("enum", "const", "default",
                                                                             "examples") else v
           for k, v in schema.items()}  # fmt: skip
    free = not any(k in out for k in ("enum", "const", "pattern", "format", "maxLength"))
    if out.get("type") == "string" and free:
        out["maxLength"] = MAX_STRING
    return out


def call_schema(tools: tuple[Tool, ...], style: CallStyle) -> str:
    """The JSON schema of one call to any of `tools`: oneOf {name: const, arguments: the tool's schema}."""
    alternatives = [
        {"type": "object", "properties": {"name": {"const": t.name},
                                          style.args_key: bounded_strings(json.loads(t.parameters))},
         "required": ["name", style.args_key]}
        for t in tools
    ]  # fmt: skip
    return json.dumps(alternatives[0] if len(alternatives) == 1 else {"oneOf": alternatives})


def wrap_grammar(call_gbnf: str, style: CallStyle) -> str:
    """A GBNF grammar for the call with its markers around it, from the grammar of the call's JSON."""
    renamed = re.sub(r"^root ::=", "tool-call ::=", call_gbnf, count=1, flags=re.M)
    body = '"[" tool-call "]"' if style.in_list else "tool-call"
    parts = [json.dumps(p) for p in (style.prefix, style.suffix)]
    root = " ".join(
        x for x in (parts[0] if style.prefix else "", body, parts[1] if style.suffix else "") if x
    )
    return f"root ::= {root}\n{renamed}"


# ------------------------------------------------------------------------------------------ parsing
@dataclass(frozen=True)
class ParsedReply:
    """A reply split into its text and the calls in it."""

    content: str
    calls: tuple[ToolCall, ...]


def parse_reply(text: str, tools: ToolSet, style: CallStyle = HERMES) -> ParsedReply:
    """Find the call in a reply; text without a call is content. A call that does not parse or validate
    raises SettingsError("tool_call", why)."""
    start = _call_start(text, style)
    if start < 0:
        if tools.forced:
            raise SettingsError("tool_call", "the reply has no tool call although one was required")
        return ParsedReply(text, ())
    content = text[:start].strip()
    rest = text[start + len(style.prefix) :]
    try:
        # strict=False: control characters inside strings, which the grammar lets through, are kept as they are
        value, end = json.JSONDecoder(strict=False).raw_decode(rest.lstrip())
    except json.JSONDecodeError as err:
        raise SettingsError(
            "tool_call", f"the call is not valid JSON ({err.msg} at column {err.colno})"
        ) from None
    items = value if style.in_list and isinstance(value, list) else [value]
    calls = tuple(_validate_call(item, tools, style) for item in items)
    return ParsedReply(content, calls)


def _call_start(text: str, style: CallStyle) -> int:
    if style.prefix:
        return text.find(style.prefix.strip())
    m = re.match(r"\s*\{\s*\"name\"", text)
    return m.start() + (len(m.group(0)) - len(m.group(0).lstrip())) if m else -1


def _validate_call(item: Any, tools: ToolSet, style: CallStyle) -> ToolCall:
    if not isinstance(item, dict) or not isinstance(item.get("name"), str):
        raise SettingsError("tool_call", 'expected {"name": ..., "arguments": {...}}')
    name = item["name"]
    tool = next((t for t in tools.active if t.name == name), None)
    if tool is None:
        allowed = ", ".join(t.name for t in tools.active)
        raise SettingsError("tool_call", f"the model called '{name[:64]}', which is not one of: {allowed}")
    args = item.get(style.args_key, item.get("arguments", {}))
    if isinstance(args, str):  # some models write the arguments as a JSON string
        try:
            args = json.loads(args)
        except json.JSONDecodeError:
            pass
    if not isinstance(args, dict):
        raise SettingsError("tool_call", f"the arguments of '{name}' are not an object")
    import jsonschema

    try:
        jsonschema.validate(args, json.loads(tool.parameters))
    except jsonschema.ValidationError as err:
        raise SettingsError(
            "tool_call", f"the arguments of '{name}' do not match its schema: {err.message}"
        ) from None
    return ToolCall(new_call_id(), name, json.dumps(args, ensure_ascii=False))


def new_call_id() -> str:
    return "call_" + secrets.token_hex(12)
