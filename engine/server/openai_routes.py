"""OpenAI-compatible routes: /v1/models, /v1/chat/completions, /v1/completions (SSE stream or one JSON)."""

from __future__ import annotations

import json
import secrets
import time

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from engine.events import ReplyDone, StopReason, Token, ToolCall, ToolCallsMade
from engine.server import mapping
from engine.server.app import ClosingSSE, Generation, ServerState, read_json
from engine.server.errors import ApiError, bad_field

FINISH = {StopReason.EOS: "stop", StopReason.STOP_STRING: "stop", StopReason.MAX_TOKENS: "length",
          StopReason.CONTEXT_FULL: "length", StopReason.CANCELLED: "stop"}  # fmt: skip


def usage(done: ReplyDone) -> dict:
    """Exact counts: the prompt as the engine tokenized it, and the tokens it generated."""
    prompt, completion = done.stats.prompt_tokens, done.stats.generated_tokens
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _entry(token: str, logprob: float, token_id: int) -> dict:
    # `id` is an extra llama.cpp's server sends too: a remote Ingle shows token ids from it
    return {"id": token_id, "token": token, "logprob": logprob, "bytes": list(token.encode("utf-8"))}


def chat_logprobs(tokens: list[Token]) -> dict:
    """OpenAI chat logprobs: {"content": [{token, logprob, bytes, top_logprobs: [...]}]}."""
    return {"content": [
        {**_entry(t.piece, t.logprob, t.token_id),
         "top_logprobs": [_entry(a.piece, a.logprob, a.token_id) for a in t.alternatives]}
        for t in tokens if t.token_id >= 0 and t.logprob is not None
    ], "refusal": None}  # fmt: skip


def completion_logprobs(tokens: list[Token], offset: int = 0) -> dict:
    """The legacy completions format: parallel lists of tokens, logprobs, alternatives and text offsets."""
    out: dict = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for t in tokens:
        if t.token_id < 0 or t.logprob is None:
            continue
        out["tokens"].append(t.piece)
        out["token_logprobs"].append(t.logprob)
        out["top_logprobs"].append({a.piece: a.logprob for a in t.alternatives})
        out["text_offset"].append(offset)
        offset += len(t.piece)
    return out


def openai_call(call: ToolCall) -> dict:
    return {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}


def tool_call_deltas(made: ToolCallsMade) -> list[dict]:
    """A held-back reply as OpenAI streams it: its text, then per call the id and name, then the arguments."""
    out: list[dict] = [{"content": made.content}] if made.content else []
    for i, call in enumerate(made.calls):
        out.append({"tool_calls": [{"index": i, "id": call.id, "type": "function",
                                    "function": {"name": call.name, "arguments": ""}}]})  # fmt: skip
        out.append({"tool_calls": [{"index": i, "function": {"arguments": call.arguments}}]})
    return out


def _stream_flags(body: dict) -> tuple[bool, bool]:
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise bad_field("stream", "expected true or false")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise bad_field("stream_options", "expected an object")
    return stream, bool(options.get("include_usage")) and stream


def routes(state: ServerState) -> list[Route]:
    config, scheduler = state.config, state.scheduler

    async def list_models(request: Request):
        return JSONResponse({"object": "list", "data": [model_card()]})

    def model_card() -> dict:
        return {"id": config.model_name, "object": "model", "created": config.created, "owned_by": "ingle"}

    async def get_model(request: Request):
        name = request.path_params["name"]
        if not config.accepts(name):
            raise ApiError(404, f"The model '{name}' is not served here; this server serves "
                                f"'{config.model_name}'.", param="model", code="model_not_found")  # fmt: skip
        return JSONResponse(model_card())

    async def chat_completions(request: Request):
        return await _complete(request, chat=True)

    async def completions(request: Request):
        return await _complete(request, chat=False)

    async def _complete(request: Request, chat: bool):
        started = time.monotonic()
        path = request.url.path
        body = await read_json(request, config)
        mapping.require_model(config, body)
        stream, include_usage = _stream_flags(body)
        sampling = mapping.openai_settings(config, body, chat)
        tools = mapping.tool_set(body) if chat else None
        if chat:
            messages = mapping.messages(body)

            def call(engine):
                if tools is not None or any(m.role == "tool" or m.tool_calls for m in messages):
                    return engine.slot_chat_tools(messages, tools, sampling)
                return engine.slot_chat(messages, sampling)
        else:
            prompt = body.get("prompt")
            if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
                prompt = prompt[0]
            if not isinstance(prompt, str) or not prompt:
                raise bad_field("prompt", "expected one non-empty string")

            def call(engine):
                return engine.slot_complete(prompt, sampling)

        try:
            generation = await Generation.start(scheduler, call)
        except ApiError as err:
            if (
                err.param in ("json_schema", "grammar")
                and body.get("response_format")
                and not body.get(err.param)
            ):
                err.param = "response_format"  # the schema came from response_format: name what was sent
            state.record(path, err.status, started, error=err.code)
            raise
        ident = ("chatcmpl-" if chat else "cmpl-") + secrets.token_hex(12)
        created = int(time.time())
        kind = "chat.completion" if chat else "text_completion"
        want_logprobs = sampling.logprobs or sampling.top_logprobs > 0
        if not stream:
            events, done = await generation.collect(request)
            tokens = [e for e in events if isinstance(e, Token)]
            choice: dict = {"index": 0, "finish_reason": FINISH[done.stats.stop_reason]}
            made = next((e for e in events if isinstance(e, ToolCallsMade)), None)
            if chat and made is not None and made.calls:
                choice["message"] = {"role": "assistant", "content": made.content or None, "refusal": None,
                                     "tool_calls": [openai_call(c) for c in made.calls]}  # fmt: skip
                choice["finish_reason"] = "tool_calls"
                choice["logprobs"] = chat_logprobs(tokens) if want_logprobs else None
            elif chat:
                choice["message"] = {"role": "assistant", "content": done.text, "refusal": None}
                choice["logprobs"] = chat_logprobs(tokens) if want_logprobs else None
            else:
                choice["text"] = done.text
                choice["logprobs"] = completion_logprobs(tokens) if want_logprobs else None
            cancelled = generation.job.cancelled  # the client hung up: nobody reads this reply
            state.record(path, 499 if cancelled else 200, started, done, cancelled=cancelled)
            return JSONResponse({"id": ident, "object": kind, "created": created, "model": config.model_name,
                                 "choices": [choice], "usage": usage(done), "system_fingerprint": None})  # fmt: skip

        def chunk(delta_or_text, finish=None, logprobs=None) -> str:
            choice = {"index": 0, "finish_reason": finish, "logprobs": logprobs}
            if chat:
                choice["delta"] = delta_or_text
            else:
                choice["text"] = delta_or_text
            out = {"id": ident, "object": "chat.completion.chunk" if chat else "text_completion",
                   "created": created, "model": config.model_name, "choices": [choice]}  # fmt: skip
            if include_usage:
                out["usage"] = None
            return json.dumps(out, ensure_ascii=False)

        async def sse():
            offset = 0
            if chat:
                yield {"data": chunk({"role": "assistant", "content": ""})}
            finish = None
            async for event in generation.events():
                if isinstance(event, ToolCallsMade):  # the reply was held back: send it now, calls as deltas
                    for delta in tool_call_deltas(event):
                        yield {"data": chunk(delta)}
                    finish = "tool_calls" if event.calls else None
                    continue
                if (
                    tools is not None
                    or not isinstance(event, Token)
                    or (not event.text and event.logprob is None)
                ):
                    continue
                logprobs = None
                if want_logprobs and event.token_id >= 0:
                    logprobs = chat_logprobs([event]) if chat else completion_logprobs([event], offset)
                    offset += len(event.piece)
                yield {"data": chunk({"content": event.text} if chat else event.text, logprobs=logprobs)}
            if generation.error is not None:
                state.record(path, generation.error.status, started, error=generation.error.code)
                yield {"data": json.dumps(generation.error.openai())}
                return
            done = generation.done
            cancelled = generation.job.cancelled
            if done is not None:
                yield {"data": chunk({} if chat else "", finish=finish or FINISH[done.stats.stop_reason])}
                if include_usage:
                    yield {"data": json.dumps({"id": ident, "object": "chat.completion.chunk" if chat else
                                               "text_completion", "created": created, "model": config.model_name,
                                               "choices": [], "usage": usage(done)})}  # fmt: skip
            state.record(path, 200, started, done, cancelled=cancelled)
            yield {"data": "[DONE]"}

        return ClosingSSE(_recording(sse(), state, path, started, generation), generation)

    return [
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/models/{name:path}", get_model, methods=["GET"]),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
    ]


async def _recording(gen, state: ServerState, path: str, started: float, generation: Generation):
    """Pass a stream through; a stream cut short by the client is logged as cancelled (status 499)."""
    finished = False
    try:
        async for item in gen:
            yield item
        finished = True
    finally:
        if not finished:
            await generation.close()
            state.record(path, 499, started, generation.done, cancelled=True)
