"""A remote engine: the Engine interface over any OpenAI-compatible HTTP server.

llama.cpp's llama-server, vLLM, Ollama's /v1, LM Studio, llama-cpp-python's server and another Ingle all speak
`GET /v1/models`, `POST /v1/chat/completions` and `POST /v1/completions` with server-sent events. Chat,
streaming, stop, sampling and log-probabilities map onto those; what needs the model's own logits or KV cache
(the visualizers) raises `NeedsLocalModel`, which says so plainly.

Trust: the server is untrusted input. Its replies are parsed defensively (garbage is a clear error, never a
traceback); the API key goes only to the origin the user configured: redirects are followed here, hop by hop, and
a hop to another origin goes without the key. A stream cut midway keeps what arrived and ends with
StopReason.INTERRUPTED.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx

from engine.errors import EngineError, SettingsError
from engine.events import (
    Event,
    Message,
    ModelLoaded,
    PromptEvaluated,
    ReplyDone,
    ReplyStats,
    StopReason,
    Token,
    TokenAlternative,
)
from engine.remotes import check_key, check_url
from engine.settings import LoadSettings, OverflowPolicy, SamplingSettings
from engine.text import printable

MAX_REDIRECTS = 5
DEFAULTS = SamplingSettings()
# OpenAI's own request fields, mapped from SamplingSettings; everything else is an extra field
STANDARD = {"temperature", "top_p", "max_tokens", "stop", "seed", "presence_penalty", "frequency_penalty",
            "logit_bias", "logprobs", "top_logprobs", "json_schema"}  # fmt: skip
NOT_SENT = {"grammar"}  # a GBNF grammar: llama.cpp-only, sent as `grammar` to servers known to take it
# servers known to honour llama.cpp's sampler fields as extra request fields (from /v1/models' owned_by)
LLAMA_CPP_SERVERS = {"llamacpp", "ingle"}
ALWAYS_SENT = {
    "top_k",
    "min_p",
    "repeat_penalty",
}  # the chain's core: a server's own defaults differ from Ingle's
UNKNOWN_ID = -2  # a token whose id the server did not say (Token.token_id -1 is the held-back-text marker)


class RemoteError(EngineError):
    """The remote server could not be reached, refused the request, or answered something unusable."""


class NeedsLocalModel(EngineError):
    """A feature that needs the model's logits or KV cache, which a remote server does not share."""


def origin(url: str) -> tuple[str, str, int]:
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return parts.scheme, (parts.hostname or "").lower(), port


def _error_message(response: httpx.Response) -> str:
    """The server's own words from an error body (OpenAI's error object, Ollama's or FastAPI's shapes)."""
    try:
        body = json.loads(response.read().decode("utf-8", errors="replace") or "null")
    except (ValueError, httpx.HTTPError):
        return ""
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict):
        err = err.get("message")
    if err is None and isinstance(body, dict):
        err = body.get("detail") or body.get("message")
    return printable(json.dumps(err) if not isinstance(err, str) else err)[:300]


class RemoteEngine:
    """One model on one OpenAI-compatible server. Like Runtime, one request at a time; `cancel()` from any thread."""

    def __init__(self, url: str, api_key: str | None = None, model: str = "", read_timeout: float = 300.0):
        self.url = check_url(url)
        self._key = check_key(api_key, "the API key given") if api_key else None
        self._origin = origin(self.url)
        self.host = urlsplit(self.url).netloc
        self.model = model
        self.server_kind = ""  # owned_by of the model: "llamacpp", "ingle", "vllm", "library" (Ollama) ...
        self.n_ctx = 0
        self.notices: list[str] = []  # settings sent that the server may ignore, and the like
        self._client = httpx.Client(timeout=httpx.Timeout(read_timeout, connect=10.0))
        self._cancel = threading.Event()
        self._response: httpx.Response | None = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ HTTP
    def _headers(self, url: str) -> dict[str, str]:
        headers = {"Accept": "application/json, text/event-stream", "User-Agent": "ingle"}
        if self._key and origin(url) == self._origin:
            headers["Authorization"] = f"Bearer {self._key}"
        return headers

    def _open(self, method: str, path: str, body: dict | None = None) -> httpx.Response:
        """Send a request, following redirects by hand so the key never leaves its server; returns the final
        response (streamed: the caller reads and closes it). Connection problems become RemoteError."""
        url = self.url + path
        for _ in range(MAX_REDIRECTS + 1):
            request = self._client.build_request(method, url, json=body, headers=self._headers(url))
            try:
                response = self._client.send(request, stream=True, follow_redirects=False)
            except httpx.ConnectError:
                raise RemoteError(
                    f"Cannot reach the server at {self.host}: the connection was refused or the host is unknown. "
                    "Check that it is running and the address is right."
                ) from None
            except httpx.TimeoutException:
                raise RemoteError(
                    f"The server at {self.host} did not answer in time. It may be overloaded; try again."
                ) from None
            except httpx.HTTPError as err:
                raise RemoteError(f"Talking to the server at {self.host} failed: {printable(err)}.") from None
            location = response.headers.get("Location") if response.is_redirect else None
            if not location:
                return response
            response.close()
            url = urljoin(url, location)
            if urlsplit(url).scheme not in ("http", "https"):
                raise RemoteError(
                    f"The server at {self.host} redirected to a non-HTTP address; not followed."
                )
            if response.status_code == 303:
                method, body = "GET", None
        raise RemoteError(
            f"The server at {self.host} redirected more than {MAX_REDIRECTS} times; not followed."
        )

    def _checked(self, response: httpx.Response, what: str) -> httpx.Response:
        if response.status_code < 400:
            return response
        detail = _error_message(response)
        response.close()
        said = f": {detail}" if detail else ""
        code = response.status_code
        if code in (401, 403):
            raise RemoteError(
                f"The server at {self.host} refused the API key ({code}){said}. Give the right key with "
                "--api-key-file (or `ingle models remote add NAME URL --api-key-file F`)."
            )
        if code == 404:
            raise RemoteError(f"The server at {self.host} has no {what} ({code}){said}.")
        if code < 500:
            rejected = [f for f in self._extras_sent if f in detail]
            hint = (
                f" It does not take the setting {', '.join(rejected)}: reset it to its default."
                if rejected
                else ""
            )
            raise RemoteError(f"The server at {self.host} rejected the {what} ({code}){said}.{hint}")
        raise RemoteError(
            f"The server at {self.host} failed ({code}){said}. Try again; if it keeps failing, see the server's log."
        )

    def _get_json(self, path: str, what: str) -> Any:
        response = self._checked(self._open("GET", path), what)
        try:
            return json.loads(response.read())
        except (ValueError, httpx.HTTPError):
            raise RemoteError(
                f"The server at {self.host} answered {path} with something that is not JSON; is it an "
                "OpenAI-compatible server?"
            ) from None
        finally:
            response.close()

    # ------------------------------------------------------------------ loading
    def list_models(self) -> list[dict]:
        data = self._get_json("/models", "model list")
        items = data.get("data") if isinstance(data, dict) else None
        if not isinstance(items, list):
            raise RemoteError(
                f"The server at {self.host} sent a model list without a `data` array; is it OpenAI-compatible?"
            )
        return [m for m in items if isinstance(m, dict) and isinstance(m.get("id"), str)]

    def load(
        self,
        path: str | Path = "",
        settings: LoadSettings | None = None,
        adapters: Sequence[tuple[str, float]] = (),
        chat_template: str | None = None,
    ) -> Iterator[Event]:
        """Check the server and pick its model (`path` or the constructor's model; else the only/first one)."""
        if adapters:
            raise SettingsError(
                "adapter", "a remote server applies its own adapters; load them on the server"
            )
        if chat_template:
            raise SettingsError("template", "a remote server renders its own chat template")
        started = time.perf_counter()
        models = self.list_models()
        want = str(path or self.model)
        names = [m["id"] for m in models]
        if want and want not in names:
            shown = ", ".join(printable(n) for n in names[:10]) or "none"
            raise RemoteError(f"The server at {self.host} has no model {printable(want)!r}; it has: {shown}.")
        if not models:
            raise RemoteError(f"The server at {self.host} lists no models.")
        chosen = next(m for m in models if m["id"] == (want or names[0]))
        self.model = chosen["id"]
        self.server_kind = str(chosen.get("owned_by") or "")
        meta = chosen.get("meta") if isinstance(chosen.get("meta"), dict) else {}
        trained = meta.get("n_ctx_train") if isinstance(meta.get("n_ctx_train"), int) else 0
        self.n_ctx = self._server_context() or trained
        info = {"path": f"{self.url} {self.model}", "kind": "remote", "architecture": "remote",
                "name": self.model, "file_type": f"on {self.host}", "context_length": trained,
                "remote_host": self.host, "server_kind": self.server_kind}  # fmt: skip
        yield ModelLoaded(
            f"{self.url} {self.model}", info, self.n_ctx, 0, time.perf_counter() - started,
            template_source=f"the server's ({self.host})",
        )  # fmt: skip

    def _server_context(self) -> int:
        """llama-server tells its context size at /props; other servers have no such endpoint."""
        root = self.url[: -len("/v1")] if self.url.endswith("/v1") else self.url
        try:
            request = self._client.build_request("GET", root + "/props", headers=self._headers(root))
            response = self._client.send(request, follow_redirects=False)
            settings = (
                response.json().get("default_generation_settings", {}) if response.status_code == 200 else {}
            )
            n_ctx = settings.get("n_ctx", 0)
            return n_ctx if isinstance(n_ctx, int) and n_ctx > 0 else 0
        except (httpx.HTTPError, ValueError, AttributeError):
            return 0

    def unload(self) -> None:
        self.model = ""

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> RemoteEngine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ requests
    @property
    def takes_llama_fields(self) -> bool:
        return self.server_kind in LLAMA_CPP_SERVERS

    _extras_sent: tuple[str, ...] = ()

    def request_fields(self, sampling: SamplingSettings, chat: bool) -> dict[str, Any]:
        """SamplingSettings as request fields: OpenAI's own always, llama.cpp's extras where they differ from
        Ingle's defaults (a server that does not know them ignores or rejects them: `notices` says which)."""
        s = sampling
        body: dict[str, Any] = {"temperature": s.temperature, "top_p": s.top_p, "max_tokens": s.max_tokens}
        if s.stop:
            body["stop"] = list(s.stop)
        if s.seed >= 0:
            body["seed"] = s.seed
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(s, name):
                body[name] = getattr(s, name)
        if s.logit_bias:
            body["logit_bias"] = {str(tok): bias for tok, bias in s.logit_bias}
        if s.logprobs or s.top_logprobs:
            if chat:
                body["logprobs"], body["top_logprobs"] = True, s.top_logprobs
            else:
                body["logprobs"] = max(1, s.top_logprobs)
        if s.json_schema:
            body["response_format"] = {
                "type": "json_schema", "json_schema": {"name": "reply", "schema": json.loads(s.json_schema)},
            }  # fmt: skip
        extras = []
        for f in fields(SamplingSettings):
            if f.name in STANDARD or f.name in NOT_SENT:
                continue
            value = getattr(s, f.name)
            if f.name in ALWAYS_SENT or value != getattr(DEFAULTS, f.name):
                body[f.name] = list(value) if isinstance(value, tuple) else value
                extras.append(f.name)
        if s.grammar:
            if not self.takes_llama_fields:
                raise SettingsError("grammar", f"the server at {self.host} does not take GBNF grammars")
            body["grammar"] = s.grammar
        self._extras_sent = tuple(extras)
        self.notices = (
            [f"Sent to {self.host} as extra fields it may ignore: {', '.join(extras)}."]
            if extras and not self.takes_llama_fields
            else []
        )
        return body

    def cancel(self) -> None:
        """Stop the reply in progress: the stream is closed and the reply ends as cancelled."""
        self._cancel.set()
        with self._lock:
            response = self._response
        if response is not None:
            try:
                response.close()
            except (httpx.HTTPError, RuntimeError, OSError):
                pass

    def chat(
        self,
        messages: Sequence[Message],
        sampling: SamplingSettings | None = None,
        policy: OverflowPolicy = OverflowPolicy.STOP,
        continue_last: bool = False,
    ) -> Iterator[Event]:
        if continue_last:
            raise RemoteError(
                f"Continuing a cut-off reply needs a local model; the server at {self.host} can only reply anew."
            )
        sampling = sampling or SamplingSettings()
        body = self.request_fields(sampling, chat=True)
        body["messages"] = [{"role": m.role, "content": m.content} for m in messages]
        return self._generate("/chat/completions", body, sampling, chat=True)

    def complete(
        self,
        prompt: str,
        sampling: SamplingSettings | None = None,
        policy: OverflowPolicy = OverflowPolicy.STOP,
    ) -> Iterator[Event]:
        sampling = sampling or SamplingSettings()
        body = self.request_fields(sampling, chat=False)
        body["prompt"] = prompt
        return self._generate("/completions", body, sampling, chat=False)

    def _generate(self, path: str, body: dict, sampling: SamplingSettings, chat: bool) -> Iterator[Event]:
        if not self.model:
            raise EngineError("No remote model chosen: load one first.")
        body.update(model=self.model, stream=True, stream_options={"include_usage": True})
        self._cancel.clear()
        started = time.perf_counter()
        response = self._open("POST", path, body)
        if response.status_code == 400 and self._extras_sent:
            # a strict server refuses fields it does not know: go on without them, and say so
            extras, detail = self._extras_sent, _error_message(response)
            response.close()
            for name in extras:
                body.pop(name, None)
            self._extras_sent = ()
            response = self._open("POST", path, body)
            if response.status_code < 400:
                self.notices = [f"The server at {self.host} refused the settings {', '.join(extras)} "
                                f"({detail or 'HTTP 400'}); the reply was made without them."]  # fmt: skip
        response = self._checked(response, "request")
        with self._lock:
            self._response = response
        parts: list[str] = []
        usage: dict = {}
        reason = StopReason.MAX_TOKENS
        first = decode_started = 0.0
        count = 0
        try:
            for chunk in self._events(response):
                usage = chunk.get("usage") or usage
                for choice in chunk.get("choices") or ():
                    text, logprob = self._delta(choice, chat)
                    if text or logprob:
                        if not parts:
                            first = time.perf_counter() - started
                            decode_started = time.perf_counter()
                            yield PromptEvaluated(int(usage.get("prompt_tokens") or 0), 0, 0, first)
                        parts.append(text)
                        count += 1
                        yield Token(*logprob) if logprob else Token(UNKNOWN_ID, text)
                    finished = choice.get("finish_reason")
                    if finished:
                        reason = {"stop": StopReason.EOS, "length": StopReason.MAX_TOKENS}.get(
                            finished, StopReason.EOS
                        )
        except _Interrupted:
            reason = StopReason.CANCELLED if self._cancel.is_set() else StopReason.INTERRUPTED
        finally:
            with self._lock:
                self._response = None
            response.close()
        text = "".join(parts)
        generated = int(usage.get("completion_tokens") or count)
        prompt_tokens = int(usage.get("prompt_tokens") or 0)
        stats = ReplyStats(
            prompt_tokens=prompt_tokens,
            reused_tokens=0,
            evaluated_tokens=prompt_tokens,
            generated_tokens=generated,
            ttft_seconds=first,
            prefill_seconds=first,
            decode_seconds=time.perf_counter() - decode_started if parts else 0.0,
            stop_reason=reason,
            n_ctx=self.n_ctx,
            n_past=prompt_tokens + generated,
            seed=sampling.seed,
        )
        yield ReplyDone(text, stats)

    def _events(self, response: httpx.Response) -> Iterator[dict]:
        """The JSON objects of a server-sent event stream. It ends with [DONE] (or at least a finish_reason); one
        that stops without either was cut (by the server or the network), and a cancel closes it: _Interrupted."""
        finished = False
        try:
            for line in response.iter_lines():
                if self._cancel.is_set():
                    raise _Interrupted()
                if not line.startswith("data:"):
                    continue  # comments, event names, keep-alives
                data = line[5:].strip()
                if data == "[DONE]":
                    return
                chunk = self._chunk(data)
                choices = chunk.get("choices")
                finished = finished or any(
                    isinstance(c, dict) and c.get("finish_reason") for c in choices or ()
                )
                yield chunk
        except (httpx.HTTPError, RuntimeError, OSError):  # closed by cancel() (StreamClosed), or cut
            raise _Interrupted() from None
        if not finished or self._cancel.is_set():
            raise _Interrupted()

    def _chunk(self, data: str) -> dict:
        try:
            chunk = json.loads(data)
        except ValueError:
            raise RemoteError(
                f"The server at {self.host} sent a stream event that is not JSON: {printable(data[:80])!r}."
            ) from None
        if not isinstance(chunk, dict) or not isinstance(chunk.get("choices", []), list):
            raise RemoteError(
                f"The server at {self.host} sent a stream event that is not a completion chunk."
            )
        if "error" in chunk:
            err = chunk["error"]
            detail = err.get("message") if isinstance(err, dict) else err
            raise RemoteError(f"The server at {self.host} stopped with an error: {printable(detail)[:300]}")
        return chunk

    def _delta(self, choice: dict, chat: bool) -> tuple[str, tuple | None]:
        """(text, Token fields when log-probabilities came with it)."""
        if chat:
            delta = choice.get("delta") if isinstance(choice.get("delta"), dict) else {}
            text = delta.get("content") or ""
        else:
            text = choice.get("text") or ""
        if not isinstance(text, str):
            raise RemoteError(f"The server at {self.host} sent reply text that is not a string.")
        lp = choice.get("logprobs")
        if not isinstance(lp, dict):
            return text, None  # (a token that completes no character yet still has its log-probability)
        content = lp.get("content")
        if chat and isinstance(content, list) and content and isinstance(content[0], dict):
            entry = content[0]
            alts = tuple(
                TokenAlternative(
                    int(a.get("id", UNKNOWN_ID)), str(a.get("token", "")), float(a.get("logprob", 0))
                )
                for a in entry.get("top_logprobs") or ()
                if isinstance(a, dict)
            )
            token_id = int(entry.get("id", UNKNOWN_ID)) if isinstance(entry.get("id"), int) else UNKNOWN_ID
            return text, (
                token_id,
                text,
                float(entry.get("logprob", 0.0)),
                alts,
                str(entry.get("token", text)),
            )
        tokens, logprobs = lp.get("tokens"), lp.get("token_logprobs")
        if isinstance(tokens, list) and isinstance(logprobs, list) and tokens and logprobs:
            top = lp.get("top_logprobs") or [{}]
            alts = tuple(
                TokenAlternative(UNKNOWN_ID, str(t), float(p))
                for t, p in (top[0] or {}).items()
                if isinstance(p, int | float)
            )
            return text, (UNKNOWN_ID, text, float(logprobs[0] or 0.0), alts, str(tokens[0]))
        return text, None

    # ------------------------------------------------------------------ what needs a local model
    def _local_only(self, what: str):
        raise NeedsLocalModel(
            f"{what} needs a local model: the server at {self.host} does not share its logits or KV cache."
        )

    def tokenize(self, text: str, add_special: bool = False, parse_special: bool = True) -> list[int]:
        self._local_only("Tokenizing")

    def detokenize(self, tokens: Sequence[int], special: bool = False) -> str:
        self._local_only("Detokenizing")

    def render_tokens(self, messages, add_generation_prompt: bool = True, continue_last: bool = False):
        self._local_only("Showing the rendered prompt")

    def piece(self, token: int) -> str:
        self._local_only("Showing a token")

    def evaluate(self, tokens):
        self._local_only("Evaluating tokens")

    def evaluate_text(self, text: str, chat: bool = False):
        self._local_only("Evaluating text")

    def evaluation_count(self) -> int:
        return 0

    def inspect(self, messages, draft, sampling, policy, top_n: int = 12, tools=None):
        self._local_only("The inspector")

    def preview(self, sampling, top_n: int = 20):
        self._local_only("The sampling preview")

    def kv_state(self):
        self._local_only("The KV cache view")

    def token_pieces(self, text: str, parse_special: bool = True):
        self._local_only("The token view")

    def context_budget(self, messages, draft, sampling, policy, tools=None):
        self._local_only("The context view")

    def hardware(self):
        self._local_only("The hardware report")

    def attention(self, text_or_tokens, max_tokens: int = 512):
        self._local_only("The attention view")

    def token_neighbours(self, token, k: int = 20):
        self._local_only("The embeddings view")

    def embedding_projection(self, tokens=None):
        self._local_only("The embeddings view")

    def eval_context(self, lengths, depths, perplexity: bool = True):
        self._local_only("The context-length eval")

    def save_state(self, path: str, messages=None):
        self._local_only("Saving the KV cache")

    def restore_state(self, path: str, messages=None):
        self._local_only("Restoring a saved KV cache")

    def embed(self, texts, model=None):
        self._local_only("Embedding text (document search)")

    def chat_tools(self, messages, tools, sampling=None, policy=OverflowPolicy.STOP):
        self._local_only("Calling tools")

    # the API server's parallel slots run on the engine child's model
    def start_slots(self, n_slots: int, n_ctx: int) -> None:
        self._local_only("Serving parallel slots")

    def stop_slots(self) -> None:
        return None

    def slot_states(self) -> list:
        return []

    def slot_chat(self, messages, sampling=None):
        self._local_only("Serving parallel slots")

    def slot_chat_tools(self, messages, tools, sampling=None):
        self._local_only("Serving parallel slots")

    def slot_complete(self, prompt: str, sampling=None):
        self._local_only("Serving parallel slots")


class _Interrupted(Exception):
    """The stream ended without [DONE]: cancelled here, or cut by the server or the network."""
