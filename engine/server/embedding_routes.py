"""Embedding routes: OpenAI's POST /v1/embeddings and Ollama's POST /api/embed.

The served model embeds (mean-pooled unless its GGUF declares a pooling), or, when the request names an
embedding model in the library (a GGUF that declares a pooling type, or of an encoder architecture such as
BERT), that model, which the engine loads beside the chat model (one at a time). Models are chosen by library
name only, never by path.
"""

from __future__ import annotations

import base64
import struct
import time
from typing import Any

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from engine.errors import EngineDied, LibraryError, ModelFileError
from engine.gguf_info import inspect_gguf
from engine.interface import Embeddings
from engine.library import Library
from engine.server.app import ServerState, read_json
from engine.server.errors import ApiError, bad_field, from_engine_error
from engine.server.scheduler import QueueFull


def _inputs(value: Any, field: str = "input") -> list[str | list[int]]:
    """OpenAI's input: a string, a list of strings, a token array, or a list of token arrays."""
    if isinstance(value, str):
        if not value:
            raise bad_field(field, "is empty; give text to embed")
        return [value]
    if isinstance(value, list) and value:
        if all(isinstance(t, int) and not isinstance(t, bool) for t in value):
            return [value]
        out: list[str | list[int]] = []
        for i, item in enumerate(value):
            if item == "" or item == []:
                raise bad_field(f"{field}[{i}]", "is empty; give text to embed")
            if isinstance(item, str) or (
                isinstance(item, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in item)
            ):
                out.append(item)
            else:
                raise bad_field(f"{field}[{i}]", "expected a string or a list of token ids")
        return out
    raise bad_field(field, "expected a string, a list of strings, or token arrays")


def _vector(values: tuple[float, ...], encoding: str) -> list[float] | str:
    if encoding == "base64":  # little-endian float32, as OpenAI sends them
        return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode("ascii")
    return list(values)


def routes(state: ServerState) -> list[Route]:
    config, scheduler = state.config, state.scheduler

    def target(name: Any) -> str | None:
        """None for the served model, else the library path of the named embedding model."""
        if name is not None and not isinstance(name, str):
            raise bad_field("model", "expected a model name")
        if config.accepts(name):
            return None
        try:
            info = inspect_gguf(Library().get(name.removesuffix(":latest")).file)
        except (LibraryError, ModelFileError):
            raise ApiError(404, f"The model '{name}' is not served here and is no embedding model in the library; "
                                f"this server serves '{config.model_name}'.", param="model",
                           code="model_not_found") from None  # fmt: skip
        if not info.is_embedding:
            raise bad_field("model", f"'{name}' is not an embedding model (it declares no pooling)")
        return str(info.path)

    async def run(texts: list, path: str | None) -> Embeddings:
        try:
            async with scheduler.slot() as engine:
                return await anyio.to_thread.run_sync(engine.embed, texts, path)
        except QueueFull:
            raise ApiError(503, "The server is busy; try again shortly.", kind="server_error",
                           code="server_busy", headers={"Retry-After": "1"}) from None  # fmt: skip
        except EngineDied as err:
            scheduler.engine_died()
            raise from_engine_error(err) from None
        except Exception as err:
            raise from_engine_error(err) from None

    async def openai_embeddings(request: Request):
        started = time.monotonic()
        body = await read_json(request, config)
        path = target(body.get("model"))
        texts = _inputs(body.get("input"))
        encoding = body.get("encoding_format") or "float"
        if encoding not in ("float", "base64"):
            raise bad_field("encoding_format", f"must be float or base64, not {encoding!r}")
        for key in body:
            if key not in ("model", "input", "encoding_format", "dimensions", "user"):
                raise bad_field(key, "unknown field")
        try:
            result = await run(texts, path)
        except ApiError as err:
            state.record(request.url.path, err.status, started, error=err.code)
            raise
        dims = body.get("dimensions")
        if dims is not None and dims != len(result.vectors[0]):
            raise bad_field("dimensions", f"this model's embeddings have {len(result.vectors[0])} dimensions")
        total = sum(result.token_counts)
        state.record(request.url.path, 200, started, prompt_tokens=total)
        return JSONResponse({
            "object": "list",
            "data": [{"object": "embedding", "index": i, "embedding": _vector(v, encoding)}
                     for i, v in enumerate(result.vectors)],
            "model": body.get("model") or config.model_name,
            "usage": {"prompt_tokens": total, "total_tokens": total},
        })  # fmt: skip

    async def ollama_embed(request: Request):
        started = time.monotonic()
        body = await read_json(request, config)
        name = body.get("model")
        if not name:
            raise bad_field("model", "name the model (GET /api/tags lists it)")
        path = target(name)
        raw = body.get("input")
        if not (isinstance(raw, str) or (isinstance(raw, list) and all(isinstance(s, str) for s in raw))):
            raise bad_field("input", "expected a string or a list of strings")
        result = await run(_inputs(raw), path)
        total = sum(result.token_counts)
        state.record(request.url.path, 200, started, prompt_tokens=total)
        return JSONResponse({"model": name, "embeddings": [list(v) for v in result.vectors],
                             "total_duration": int((time.monotonic() - started) * 1e9), "load_duration": 0,
                             "prompt_eval_count": total})  # fmt: skip

    return [
        Route("/v1/embeddings", openai_embeddings, methods=["POST"]),
        Route("/api/embed", ollama_embed, methods=["POST"]),
    ]
