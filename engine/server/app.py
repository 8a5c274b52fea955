"""The Starlette app: guards (API key, body size, CORS), error rendering, and the routes of both APIs."""

from __future__ import annotations

import dataclasses
import hmac
import json
import logging
import time
from collections import deque
from collections.abc import Callable
from contextlib import AsyncExitStack
from typing import Any

import anyio
from sse_starlette.sse import EventSourceResponse
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from engine.events import PromptEvaluated, ReplyDone
from engine.server.config import ServerConfig
from engine.server.errors import ApiError, from_engine_error
from engine.server.scheduler import Job, QueueFull, Scheduler

log = logging.getLogger("ingle.server")
REQUEST_LOG_SIZE = 500


def is_ollama(path: str) -> bool:
    return path.startswith("/api/")


def error_response(err: ApiError, path: str) -> JSONResponse:
    body = err.ollama() if is_ollama(path) else err.openai()
    return JSONResponse(body, status_code=err.status, headers=err.headers)


class AuthMiddleware:
    """Every request carries the key (`Authorization: Bearer KEY` or `x-api-key: KEY`), compared in constant
    time. The key is never logged; a refusal says only that the key was missing or wrong."""

    def __init__(self, app, key: str | None):
        self.app = app
        self.key = key.encode("utf-8") if key else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or self.key is None:
            return await self.app(scope, receive, send)
        headers = Headers(scope=scope)
        auth = headers.get("authorization", "")
        given = auth[7:].strip() if auth[:7].lower() == "bearer " else headers.get("x-api-key", "")
        if not given:
            err = ApiError(401, "Missing API key: send 'Authorization: Bearer KEY'.", code="missing_api_key")
        elif not hmac.compare_digest(given.encode("utf-8"), self.key):
            err = ApiError(401, "Incorrect API key.", code="invalid_api_key")
        else:
            return await self.app(scope, receive, send)
        err.headers = {"WWW-Authenticate": "Bearer"}
        await error_response(err, scope["path"])(scope, receive, send)


async def read_json(request: Request, config: ServerConfig) -> dict:
    """The request body as a JSON object, refusing bodies past the size cap before reading them whole."""
    length = request.headers.get("content-length")
    too_big = ApiError(413, f"The request body is larger than this server's limit of {config.max_body:,} bytes "
                            "(raise it with --max-body).", code="request_too_large")  # fmt: skip
    if length is not None and length.isdigit() and int(length) > config.max_body:
        raise too_big
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > config.max_body:
            raise too_big
        chunks.append(chunk)
    raw = b"".join(chunks)
    try:
        body = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ApiError(400, "The request body is not UTF-8 text.", code="invalid_json") from None
    except json.JSONDecodeError as err:
        raise ApiError(400, f"The request body is not valid JSON ({err.msg} at line {err.lineno}, column "
                            f"{err.colno}).", code="invalid_json") from None  # fmt: skip
    if not isinstance(body, dict):
        raise ApiError(400, "The request body must be a JSON object.", code="invalid_json")
    return body


class Generation:
    """A request's hold on the engine: its slot, the running job, and the events read ahead.

    `start()` waits for a slot and for the prompt to be evaluated, so errors found before the first token
    (context too small, a schema that makes no grammar) become proper HTTP errors even for streams.
    """

    def __init__(self, stack: AsyncExitStack, job: Job, ahead: list):
        self._stack = stack
        self.job = job
        self._ahead = ahead
        self.done: ReplyDone | None = None
        self.error: ApiError | None = None

    @classmethod
    async def start(cls, scheduler: Scheduler, call) -> Generation:
        stack = AsyncExitStack()
        try:
            await stack.enter_async_context(scheduler.slot())
        except QueueFull:
            raise ApiError(503, f"The server is busy ({scheduler.waiting} requests are waiting); try again "
                                "shortly.", kind="server_error", code="server_busy",
                           headers={"Retry-After": "1"}) from None  # fmt: skip
        except Exception as err:  # the engine died earlier and could not be started again
            raise ApiError(503, f"The engine could not be restarted: {err}", kind="server_error",
                           code="engine_unavailable", headers={"Retry-After": "5"}) from None  # fmt: skip
        ahead: list = []
        try:
            job = Job(scheduler, call)
            stack.push_async_callback(job.aclose)
            async for event in job:
                ahead.append(event)
                if isinstance(event, PromptEvaluated | ReplyDone):
                    break
        except BaseException as err:
            with anyio.CancelScope(shield=True):
                await stack.aclose()
            if isinstance(err, Exception):
                raise from_engine_error(err) from None
            raise
        return cls(stack, job, ahead)

    async def events(self):
        """Every event to the end; an engine error ends the stream and is kept in `self.error`."""
        try:
            while self._ahead:
                event = self._ahead.pop(0)
                if isinstance(event, ReplyDone):
                    self.done = event
                yield event
            async for event in self.job:
                if isinstance(event, ReplyDone):
                    self.done = event
                yield event
        except Exception as err:
            self.error = from_engine_error(err)

    async def close(self) -> None:
        with anyio.CancelScope(shield=True):
            await self._stack.aclose()
        # a stream the client left: its ReplyDone (stop reason "cancelled", tokens made) is still queued
        for item in self.job.unread():
            if isinstance(item, ReplyDone):
                self.done = item

    async def collect(self, request: Request) -> tuple[list, ReplyDone]:
        """Run to the end (non-streaming); a client that hangs up cancels the generation. The slot is
        released before returning."""

        async def watch() -> None:  # the body has been read: the next message is the disconnect
            while (await request.receive())["type"] != "http.disconnect":
                pass
            self.job.cancel()

        try:
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(watch)
                events = [e async for e in self.events()]
                tasks.cancel_scope.cancel()
        finally:
            await self.close()
        if self.error:
            raise self.error
        if self.done is None:
            raise ApiError(500, "The engine ended the reply without finishing it.", kind="server_error")
        return events, self.done


class _ClosesGeneration:
    """A streaming response that cancels its generation when the stream ends for any reason (the client left)."""

    generation: Generation

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.generation.close()


class ClosingSSE(_ClosesGeneration, EventSourceResponse):
    """Server-sent events (OpenAI's streaming format)."""

    def __init__(self, content, generation: Generation, **kw):
        super().__init__(content, sep="\n", **kw)
        self.generation = generation


class ClosingNDJSON(_ClosesGeneration, StreamingResponse):
    """Newline-delimited JSON (Ollama's streaming format)."""

    def __init__(self, content, generation: Generation):
        super().__init__(content, media_type="application/x-ndjson")
        self.generation = generation


class ServerState:
    """What the routes share: the config, the scheduler and the request log (never keys or prompt text)."""

    def __init__(self, config: ServerConfig, scheduler: Scheduler):
        self.config = config
        self.scheduler = scheduler
        self.log: deque[dict[str, Any]] = deque(maxlen=REQUEST_LOG_SIZE)
        self.listeners: list[Callable[[dict[str, Any]], None]] = []  # told of each entry (the GUI's log)

    def record(self, path: str, status: int, started: float, done: ReplyDone | None = None, **extra) -> None:
        entry = {"time": time.time(), "path": path, "model": self.config.model_name, "status": status,
                 "seconds": round(time.monotonic() - started, 3)}  # fmt: skip
        if done is not None:
            entry.update(prompt_tokens=done.stats.prompt_tokens, completion_tokens=done.stats.generated_tokens,
                         stop_reason=done.stats.stop_reason.value, tok_s=round(done.stats.decode_tok_s, 1))  # fmt: skip
        entry.update(extra)
        self.log.append(entry)
        for listener in self.listeners:
            listener(entry)
        log.info("%s %s %s", path, status, {k: v for k, v in entry.items() if k not in ("time", "path")})


def create_app(config: ServerConfig, scheduler: Scheduler) -> Starlette:
    from engine.server import embedding_routes, ollama_routes, openai_routes

    state = ServerState(config, scheduler)

    async def api_error(request: Request, err: ApiError):
        return error_response(err, request.url.path)

    async def unexpected(request: Request, err: Exception):
        log.exception("request failed")
        return error_response(from_engine_error(err), request.url.path)

    middleware = []
    if config.cors_origins:
        middleware.append(Middleware(CORSMiddleware, allow_origins=list(config.cors_origins),
                                     allow_methods=["GET", "POST", "OPTIONS"],
                                     allow_headers=["Authorization", "Content-Type", "X-Api-Key"]))  # fmt: skip
    middleware.append(Middleware(AuthMiddleware, key=config.api_key))

    async def health(request: Request):
        """Liveness and the slots: which are busy, how many tokens each holds, how many requests wait."""
        try:
            slots = await anyio.to_thread.run_sync(scheduler.engine.slot_states)
        except Exception:  # the engine died: the next request restarts it
            return JSONResponse(
                {"status": "engine_unavailable", "waiting": scheduler.waiting}, status_code=503
            )
        return JSONResponse({"status": "ok", "model": config.model_name, "waiting": scheduler.waiting,
                             "slots": [dataclasses.asdict(s) for s in slots]})  # fmt: skip

    app = Starlette(
        routes=[
            Route("/health", health, methods=["GET"]),
            *openai_routes.routes(state),
            *ollama_routes.routes(state),
            *embedding_routes.routes(state),
        ],  # fmt: skip
        middleware=middleware,
        exception_handlers={ApiError: api_error, Exception: unexpected},
    )
    app.state.server = state
    return app
