"""Ollama-compatible routes: /api/tags, /api/version, /api/show, /api/chat, /api/generate (NDJSON streams)."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from engine.events import Message, ReplyDone, StopReason, Token, ToolCallsMade
from engine.server import mapping
from engine.server.app import ClosingNDJSON, Generation, ServerState, read_json
from engine.server.errors import ApiError, bad_field

# The Ollama API version these routes follow; tools check it before using newer fields.
OLLAMA_API_VERSION = "0.9.0"
DONE_REASON = {StopReason.EOS: "stop", StopReason.STOP_STRING: "stop", StopReason.MAX_TOKENS: "length",
               StopReason.CONTEXT_FULL: "length", StopReason.CANCELLED: "stop"}  # fmt: skip


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)


def routes(state: ServerState) -> list[Route]:
    config, scheduler = state.config, state.scheduler
    info = config.model_info

    def details() -> dict:
        params = info.get("parameters") or 0
        return {"parent_model": "", "format": "gguf", "family": str(info.get("architecture", "")),
                "families": [str(info.get("architecture", ""))],
                "parameter_size": f"{params / 1e9:.1f}B" if params >= 1e8 else f"{params / 1e6:.1f}M",
                "quantization_level": str(info.get("file_type", ""))}  # fmt: skip

    async def tags(request: Request):
        modified = (
            datetime.fromtimestamp(config.created or time.time(), UTC).isoformat().replace("+00:00", "Z")
        )
        return JSONResponse({"models": [{
            "name": config.model_name, "model": config.model_name, "modified_at": modified,
            "size": int(info.get("file_size") or 0), "digest": "", "details": details(),
        }]})  # fmt: skip

    async def version(request: Request):
        return JSONResponse({"version": OLLAMA_API_VERSION})

    async def show(request: Request):
        body = await read_json(request, config)
        name = body.get("model") or body.get("name")
        _model(body | {"model": name})
        return JSONResponse({
            "modelfile": "", "parameters": "", "template": "", "details": details(),
            "model_info": {"general.architecture": info.get("architecture", ""),
                           "general.parameter_count": info.get("parameters", 0),
                           "context_length": config.n_ctx},
            "capabilities": ["completion", "tools"],
            "modified_at": _now(),
        })  # fmt: skip

    def _model(body: dict) -> None:
        name = body.get("model")
        if not name:
            raise bad_field("model", "name the model (GET /api/tags lists it)")
        try:
            mapping.require_model(config, body)
        except ApiError as err:
            err.message = f"model '{name}' not found"  # Ollama's own wording, which its tools recognise
            raise

    async def chat(request: Request):
        body = await read_json(request, config)
        _model(body)
        tools = mapping.tool_set(body)
        messages = mapping.messages(body)
        if tools is None and not any(m.role == "tool" or m.tool_calls for m in messages):
            return await _run(request, body, lambda engine, s: engine.slot_chat(messages, s), "message")
        return await _run(
            request, body, lambda engine, s: engine.slot_chat_tools(messages, tools, s), "message"
        )

    async def generate(request: Request):
        body = await read_json(request, config)
        _model(body)
        prompt = body.get("prompt") or ""
        if not isinstance(prompt, str):
            raise bad_field("prompt", "expected a string")
        for key in ("images", "template", "suffix", "context"):
            if body.get(key):
                raise bad_field(key, "is not supported by this server")
        if not prompt:  # Ollama's way to load a model: it is loaded already
            return JSONResponse({"model": config.model_name, "created_at": _now(), "response": "",
                                 "done": True, "done_reason": "load"})  # fmt: skip
        if body.get("raw"):
            return await _run(request, body, lambda engine, s: engine.slot_complete(prompt, s), "response")
        system = body.get("system")
        if system is not None and not isinstance(system, str):
            raise bad_field("system", "expected a string")
        msgs = ([Message("system", system)] if system else []) + [Message("user", prompt)]
        return await _run(request, body, lambda engine, s: engine.slot_chat(msgs, s), "response")

    async def _run(request: Request, body: dict, call, field: str):
        """Run `call` and answer in Ollama's shape; tool calls come as `message.tool_calls`, arguments as
        objects, in one chunk before the last (the engine holds back the text that may be a call)."""
        started = time.monotonic()
        path = request.url.path
        stream = body.get("stream", True)  # Ollama streams unless told not to
        if not isinstance(stream, bool):
            raise bad_field("stream", "expected true or false")
        sampling = mapping.ollama_settings(config, body)
        try:
            generation = await Generation.start(scheduler, lambda engine: call(engine, sampling))
        except ApiError as err:
            state.record(path, err.status, started, error=err.code)
            raise

        def piece(text: str, made: ToolCallsMade | None = None) -> dict:
            content = {"role": "assistant", "content": text} if field == "message" else text
            if made is not None and made.calls:
                content["tool_calls"] = [{"function": {"name": c.name, "arguments": json.loads(c.arguments)}}
                                         for c in made.calls]  # fmt: skip
            return {"model": config.model_name, "created_at": _now(), field: content, "done": False}

        def final(done: ReplyDone, text: str = "") -> dict:
            s = done.stats
            out = piece(text)
            out.update(done=True, done_reason=DONE_REASON[s.stop_reason],
                       total_duration=_ns(time.monotonic() - started), load_duration=0,
                       prompt_eval_count=s.prompt_tokens, prompt_eval_duration=_ns(s.prefill_seconds),
                       eval_count=s.generated_tokens, eval_duration=_ns(s.decode_seconds))  # fmt: skip
            return out

        if not stream:
            events, done = await generation.collect(request)
            cancelled = generation.job.cancelled  # the client hung up: nobody reads this reply
            state.record(path, 499 if cancelled else 200, started, done, cancelled=cancelled)
            made = next((e for e in events if isinstance(e, ToolCallsMade)), None)
            out = final(done, done.text if made is None else made.content)
            if made is not None and made.calls:
                out[field] = piece(made.content, made)[field]
            return JSONResponse(out)

        async def lines():
            finished = False
            sent = ""  # the text streamed so far
            try:
                async for event in generation.events():
                    if isinstance(event, ToolCallsMade):
                        rest = event.content[len(sent) :] if event.content.startswith(sent) else ""
                        if rest or event.calls:
                            yield json.dumps(piece(rest, event), ensure_ascii=False) + "\n"
                    elif isinstance(event, Token) and event.text:
                        sent += event.text
                        yield json.dumps(piece(event.text), ensure_ascii=False) + "\n"
                if generation.error is not None:
                    state.record(path, generation.error.status, started, error=generation.error.code)
                    yield json.dumps(generation.error.ollama()) + "\n"
                elif generation.done is not None:
                    state.record(path, 200, started, generation.done)
                    yield json.dumps(final(generation.done)) + "\n"
                finished = True
            finally:
                if not finished:
                    await generation.close()
                    state.record(path, 499, started, generation.done, cancelled=True)

        return ClosingNDJSON(lines(), generation)

    return [
        Route("/api/tags", tags, methods=["GET"]),
        Route("/api/version", version, methods=["GET"]),
        Route("/api/show", show, methods=["POST"]),
        Route("/api/chat", chat, methods=["POST"]),
        Route("/api/generate", generate, methods=["POST"]),
    ]
