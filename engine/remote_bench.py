"""`ingle bench --remote URL`: what the remote engine costs on top of the server it talks to.

Each repetition streams the same greedy chat request twice, in turn: once through RemoteEngine.chat (SSE parsing,
event objects, log-probability mapping) and once "directly": the identical request body sent with httpx and its
server-sent events read with the least work that still reads every chunk. Decode speed is measured the same way
for both, on the client: tokens after the first over the time from the first to the last content chunk. The
server does the same work for both, so the difference is the client's.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

from engine.events import Message, ReplyDone, Token
from engine.remote import RemoteEngine, RemoteError
from engine.settings import SamplingSettings

PROMPT = "Write a long story about a lighthouse keeper and a storm. Do not stop early."


@dataclass
class RemoteBench:
    host: str
    model: str
    server_kind: str
    gen_tokens: int
    reps: int
    direct: list[float] = field(default_factory=list)  # decode tok/s per repetition
    engine: list[float] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)  # tokens generated per repetition (engine)

    @property
    def overhead(self) -> float:
        """The remote engine's decode cost over the direct client, as a fraction (medians)."""
        direct = statistics.median(self.direct)
        return (direct - statistics.median(self.engine)) / direct if direct else 0.0

    def to_dict(self) -> dict:
        return {
            "host": self.host, "model": self.model, "server_kind": self.server_kind,
            "gen_tokens": self.gen_tokens, "reps": self.reps, "direct_tok_s": self.direct,
            "engine_tok_s": self.engine, "tokens": self.tokens, "overhead": self.overhead,
        }  # fmt: skip

    def markdown(self) -> str:
        d, e = statistics.median(self.direct), statistics.median(self.engine)
        return "\n".join([
            f"Remote engine overhead on {self.host} ({self.model}, server: {self.server_kind or 'unknown'}), "
            f"{self.reps} reps of {statistics.median(self.tokens):.0f} tokens, medians:",
            "",
            "| client | decode tok/s |",
            "|---|---:|",
            f"| direct (httpx + SSE) | {d:.1f} |",
            f"| RemoteEngine.chat | {e:.1f} |",
            "",
            f"Overhead: {self.overhead * 100:+.1f}% of decode speed (target: under 5%).",
        ])  # fmt: skip


def _rate(stamps: list[float]) -> float:
    """tok/s over the chunks after the first (the first carries the prefill)."""
    if len(stamps) < 3 or stamps[-1] <= stamps[0]:
        raise RemoteError("The server streamed fewer than 3 tokens: nothing to time. Raise --gen-tokens.")
    return (len(stamps) - 1) / (stamps[-1] - stamps[0])


def direct_run(client: httpx.Client, engine: RemoteEngine, body: dict) -> float:
    """The same request with httpx alone: each `data:` line parsed, content chunks time-stamped."""
    stamps: list[float] = []
    url = engine.url + "/chat/completions"
    with client.stream("POST", url, json=body, headers=engine._headers(url)) as response:
        if response.status_code >= 400:
            raise RemoteError(
                f"The server at {engine.host} answered the direct request with {response.status_code}."
            )
        for line in response.iter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            try:
                choices = json.loads(data).get("choices") or ()
            except (ValueError, AttributeError):
                raise RemoteError(
                    f"The server at {engine.host} streamed something that is not JSON."
                ) from None
            for choice in choices:
                if (choice.get("delta") or {}).get("content"):
                    stamps.append(time.perf_counter())
    return _rate(stamps)


def engine_run(
    engine: RemoteEngine, messages: list[Message], sampling: SamplingSettings
) -> tuple[float, int]:
    stamps: list[float] = []
    done = None
    for ev in engine.chat(messages, sampling):
        if isinstance(ev, Token) and ev.text:
            stamps.append(time.perf_counter())
        elif isinstance(ev, ReplyDone):
            done = ev
    return _rate(stamps), done.stats.generated_tokens if done else len(stamps)


def bench_remote(
    engine: RemoteEngine,
    gen_tokens: int = 64,
    reps: int = 5,
    warmup: int = 1,
    log: Callable[[str], None] = print,
) -> RemoteBench:
    """Interleaved repetitions (engine, then direct) on a loaded RemoteEngine, so a noisy machine slows both alike."""
    messages = [Message("user", PROMPT)]
    sampling = SamplingSettings(temperature=0.0, max_tokens=gen_tokens, seed=1)
    body = engine.request_fields(sampling, chat=True)
    body.update(messages=[{"role": m.role, "content": m.content} for m in messages], model=engine.model,
                stream=True, stream_options={"include_usage": True})  # fmt: skip
    result = RemoteBench(engine.host, engine.model, engine.server_kind, gen_tokens, reps)
    with httpx.Client(timeout=httpx.Timeout(300.0, connect=10.0)) as client:
        for i in range(warmup + reps):
            rate, tokens = engine_run(engine, messages, sampling)
            direct = direct_run(client, engine, body)
            if i < warmup:
                continue
            result.engine.append(rate)
            result.direct.append(direct)
            result.tokens.append(tokens)
            log(
                f"rep {i - warmup + 1}/{reps}: engine {rate:.1f} tok/s, direct {direct:.1f} tok/s ({tokens} tokens)"
            )
    return result
