"""Request bodies -> engine arguments: OpenAI and Ollama fields mapped onto SamplingSettings and Messages.

Every SamplingSettings field is also accepted under its own name (OpenAI: a top-level extra field; Ollama:
inside `options`), so Ingle's samplers (min_p, top_k, dry_*, xtc_*, mirostat ...) are reachable from any
client. A wrong value is a 400 naming the request field.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

from engine import tools
from engine.errors import SettingsError
from engine.events import Message, ToolCall
from engine.server.config import ServerConfig
from engine.server.errors import ApiError, bad_field
from engine.settings import SamplingSettings
from engine.tools import ToolSet

SAMPLING_FIELDS = {f.name for f in dataclasses.fields(SamplingSettings)}

# OpenAI request fields that change nothing here (bookkeeping, or options of features a local model lacks)
OPENAI_IGNORED = {"model", "stream", "stream_options", "user", "metadata", "store", "service_tier",
                  "parallel_tool_calls", "prompt_cache_key", "safety_identifier", "reasoning_effort",
                  "modalities", "verbosity", "prediction", "audio", "web_search_options"}  # fmt: skip
# Ollama options that set up the model (context, GPU, threads): the server's model is already loaded
OLLAMA_LOAD_OPTIONS = {"num_ctx", "num_gpu", "num_thread", "num_batch", "main_gpu", "use_mmap", "use_mlock",
                       "numa", "low_vram", "f16_kv", "vocab_only", "num_keep", "penalize_newline"}  # fmt: skip
OLLAMA_RENAMES = {"num_predict": "max_tokens", "repeat_last_n": "penalty_last_n"}
ROLES = {"system", "user", "assistant", "developer", "tool"}


def settings(config: ServerConfig, values: dict[str, Any], names: dict[str, str]) -> SamplingSettings:
    """The server's defaults with `values` (SamplingSettings names) on top; `names` maps each back to the
    request field it came from, so an error names what the client sent."""
    cap = config.max_tokens_cap
    if "max_tokens" in values:
        mt = values["max_tokens"]
        if isinstance(mt, int) and not isinstance(mt, bool) and mt > cap:
            raise bad_field(
                names.get("max_tokens", "max_tokens"), f"{mt} is above this server's cap of {cap}"
            )
    merged = config.defaults.to_dict()
    merged["max_tokens"] = min(merged["max_tokens"], cap)
    merged.update(values)
    try:
        return SamplingSettings.from_dict(merged)
    except SettingsError as err:
        field = names.get(err.field, err.field)
        raise bad_field(field, err.detail) from None


def _number(body: dict, key: str) -> Any:
    value = body[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise bad_field(key, f"expected a number, got {json.dumps(value)[:40]}")
    return value


def _stop(value: Any, field: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(s, str) for s in value):
        return value
    raise bad_field(field, "expected a string or a list of strings")


def _response_format(value: Any) -> dict[str, Any]:
    """OpenAI's response_format (and Ollama's `format`) -> json_schema for the engine's grammar."""
    if value is None or value == "":
        return {}
    if value == "json":  # Ollama
        return {"json_schema": json.dumps({"type": "object"})}
    if not isinstance(value, dict):
        raise bad_field("response_format", 'expected an object such as {"type": "json_object"}')
    kind = value.get("type")
    if kind == "text":
        return {}
    if kind == "json_object":
        return {"json_schema": json.dumps({"type": "object"})}
    if kind == "json_schema":
        spec = value.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("schema", {}), dict):
            raise bad_field("response_format.json_schema", 'expected {"name": ..., "schema": {...}}')
        return {"json_schema": json.dumps(spec.get("schema") or {"type": "object"})}
    if "type" not in value and value:  # Ollama: `format` is the schema itself
        return {"json_schema": json.dumps(value)}
    raise bad_field("response_format.type", f"must be text, json_object or json_schema, not {kind!r}")


def _ignore_eos(config: ServerConfig, value: Any, field: str, values: dict, names: dict) -> None:
    """`ignore_eos: true` (llama.cpp's server field): generate max_tokens, banning every end-of-generation token."""
    if not isinstance(value, bool):
        raise bad_field(field, "expected true or false")
    if not value:
        return
    if not config.eog_tokens:
        raise bad_field(field, "this server does not know the model's end-of-generation tokens")
    bias = dict(values.get("logit_bias") or {})
    bias.update((token, -math.inf) for token in config.eog_tokens)
    values["logit_bias"] = bias
    names.setdefault("logit_bias", field)


def openai_settings(config: ServerConfig, body: dict, chat: bool) -> SamplingSettings:
    """An OpenAI chat or completions body -> SamplingSettings (n, tools and the like checked here too)."""
    values: dict[str, Any] = {}
    names: dict[str, str] = {}
    handled = set(OPENAI_IGNORED) | {"messages" if chat else "prompt"}

    def put(field: str, value: Any, source: str) -> None:
        values[field] = value
        names[field] = source

    n = body.get("n", 1)
    handled.add("n")
    if n != 1:
        raise bad_field("n", "this server makes one choice per request; send n=1 (or leave it out)")
    for key in ("max_tokens", "max_completion_tokens"):
        handled.add(key)
        if body.get(key) is not None:
            put("max_tokens", _number(body, key), key)
    for key in ("temperature", "top_p", "presence_penalty", "frequency_penalty", "seed"):
        handled.add(key)
        if body.get(key) is not None:
            put(key, _number(body, key), key)
    handled.add("stop")
    if body.get("stop") is not None:
        put("stop", _stop(body["stop"], "stop"), "stop")
    handled.add("logit_bias")
    if body.get("logit_bias") is not None:
        bias = body["logit_bias"]
        if not isinstance(bias, dict):
            raise bad_field("logit_bias", "expected an object of token id -> bias")
        for tok, value in bias.items():
            if not str(tok).lstrip("-").isdigit():
                raise bad_field("logit_bias", f"{tok!r} is not a token id")
            if isinstance(value, bool) or not isinstance(value, int | float) or not -100 <= value <= 100:
                raise bad_field("logit_bias", f"the bias of token {tok} must be a number from -100 to 100")
        put("logit_bias", {int(k): float(v) for k, v in bias.items()}, "logit_bias")
    handled.add("ignore_eos")
    if body.get("ignore_eos") is not None:
        _ignore_eos(config, body["ignore_eos"], "ignore_eos", values, names)
    handled |= {"logprobs", "top_logprobs"}
    if chat:
        if body.get("logprobs") is not None:
            if not isinstance(body["logprobs"], bool):
                raise bad_field("logprobs", "expected true or false")
            put("logprobs", body["logprobs"], "logprobs")
        if body.get("top_logprobs") is not None:
            if not body.get("logprobs"):
                raise bad_field("top_logprobs", "needs logprobs: true")
            put("top_logprobs", _number(body, "top_logprobs"), "top_logprobs")
    elif body.get("logprobs") is not None:  # completions: an int, the number of alternatives
        top = _number(body, "logprobs")
        put("logprobs", True, "logprobs")
        put("top_logprobs", top, "logprobs")
    handled.add("response_format")
    for key, value in _response_format(body.get("response_format")).items():
        put(key, value, "response_format")
    handled |= {"tools", "tool_choice"}  # read by tool_set()
    for key in ("functions", "function_call"):
        handled.add(key)
        if body.get(key) not in (None, [], "none"):
            raise bad_field(key, "the legacy functions API is not supported; send `tools` and `tool_choice`")
    for key in ("echo", "suffix", "best_of"):
        handled.add(key)
        if body.get(key) not in (None, False, "", 1):
            raise bad_field(key, "is not supported by this server")
    for key, value in body.items():
        if key in handled:
            continue
        if key in SAMPLING_FIELDS and key not in values:  # Ingle's own samplers as extra fields
            put(key, value, key)
        elif key not in SAMPLING_FIELDS:
            raise bad_field(key, "unknown field (Ingle's extra samplers use SamplingSettings names such as "
                                 "min_p, top_k, dry_multiplier, xtc_probability)")  # fmt: skip
    if "seed" in values and values["seed"] is not None and values["seed"] < 0:
        values["seed"] = -1  # OpenAI clients may send any integer; negative means "pick one"
    return settings(config, values, names)


def ollama_settings(config: ServerConfig, body: dict) -> SamplingSettings:
    """An Ollama body's `options` (and `format`) -> SamplingSettings."""
    options = body.get("options") or {}
    if not isinstance(options, dict):
        raise bad_field("options", "expected an object")
    values: dict[str, Any] = {}
    names: dict[str, str] = {}
    for key, value in options.items():
        if key in OLLAMA_LOAD_OPTIONS or value is None:
            continue
        if key == "ignore_eos":  # after the loop: it adds to a logit_bias option wherever that comes
            continue
        field = OLLAMA_RENAMES.get(key, key)
        if field not in SAMPLING_FIELDS:
            raise bad_field(f"options.{key}", "unknown option")
        if field == "max_tokens" and isinstance(value, int) and value < 0:
            continue  # Ollama's -1 (generate until done): the server's default, capped
        if field == "stop":
            value = _stop(value, "options.stop")
        values[field] = value
        names[field] = f"options.{key}"
    if options.get("ignore_eos") is not None:
        _ignore_eos(config, options["ignore_eos"], "options.ignore_eos", values, names)
    for key, value in _response_format(body.get("format")).items():
        values[key] = value
        names[key] = "format"
    return settings(config, values, names)


def _text_content(content: Any, where: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for i, part in enumerate(content):
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
                parts.append(part["text"])
            else:
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise bad_field(f"{where}[{i}]", f"only text parts are supported, not {kind!r}")
        return "".join(parts)
    raise bad_field(where, "expected a string or a list of text parts")


def tool_set(body: dict) -> ToolSet | None:
    """The request's `tools` and `tool_choice` (OpenAI; Ollama sends tools only), validated; None: text only."""
    try:
        return tools.toolset(body.get("tools"), body.get("tool_choice"))
    except SettingsError as err:
        raise bad_field(err.field, err.detail) from None


def _tool_calls(raw: Any, where: str) -> tuple[ToolCall, ...]:
    """An assistant message's tool_calls: OpenAI's arguments are JSON text, Ollama's an object."""
    if not isinstance(raw, list):
        raise bad_field(where, "expected a list of tool calls")
    calls = []
    for j, call in enumerate(raw):
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise bad_field(f"{where}[{j}].function", 'expected {"name": ..., "arguments": ...}')
        args = fn.get("arguments", {})
        if isinstance(args, str):
            try:
                args = json.loads(args or "{}")
            except json.JSONDecodeError as err:
                raise bad_field(f"{where}[{j}].function.arguments", f"is not JSON ({err.msg})") from None
        if not isinstance(args, dict):
            raise bad_field(f"{where}[{j}].function.arguments", "expected a JSON object")
        ident = call.get("id") or f"call_{j}"
        calls.append(ToolCall(str(ident), fn["name"], json.dumps(args, ensure_ascii=False)))
    return tuple(calls)


def messages(body: dict, field: str = "messages") -> list[Message]:
    """OpenAI/Ollama messages -> engine Messages (text, tool calls and tool results; `developer` is OpenAI's
    new name for system)."""
    raw = body.get(field)
    if not isinstance(raw, list) or not raw:
        raise bad_field(field, "expected a non-empty list of messages")
    out: list[Message] = []
    call_names: dict[str, str] = {}  # tool_call_id -> the tool's name, for results that do not repeat it
    for i, msg in enumerate(raw):
        if not isinstance(msg, dict):
            raise bad_field(f"{field}[{i}]", "expected an object with role and content")
        role = msg.get("role")
        if role not in ROLES:
            raise bad_field(f"{field}[{i}].role", f"{role!r} is not one of system, user, assistant, tool")
        if msg.get("images"):
            raise bad_field(f"{field}[{i}].images", "images are not supported by this model server yet")
        content = _text_content(msg.get("content"), f"{field}[{i}].content")
        calls: tuple[ToolCall, ...] = ()
        if msg.get("tool_calls"):
            if role != "assistant":
                raise bad_field(f"{field}[{i}].tool_calls", "only assistant messages carry tool calls")
            calls = _tool_calls(msg["tool_calls"], f"{field}[{i}].tool_calls")
            call_names.update((c.id, c.name) for c in calls)
        if role == "tool":
            ident = msg.get("tool_call_id") or ""
            name = msg.get("name") or msg.get("tool_name") or call_names.get(ident, "")
            if not isinstance(ident, str) or not isinstance(name, str):
                raise bad_field(f"{field}[{i}].tool_call_id", "expected a string")
            out.append(Message("tool", content, tool_call_id=ident, name=name))
            continue
        out.append(Message("system" if role == "developer" else role, content, tool_calls=calls))
    if out[-1].role == "assistant":
        raise bad_field(field, "the conversation must end with a user (or system, or tool) message")
    return out


def require_model(config: ServerConfig, body: dict) -> None:
    name = body.get("model")
    if name is not None and not isinstance(name, str):
        raise bad_field("model", "expected a model name")
    if not config.accepts(name):
        raise ApiError(
            404,
            f"The model '{name}' is not served here; this server serves '{config.model_name}'.",
            param="model",
            code="model_not_found",
        )
