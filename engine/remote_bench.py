"""`ingle bench --remote URL`: what the remote engine costs on top of the server it talks to.

Each repetition streams the same greedy completion request twice, in turn: once through RemoteEngine.complete (SSE parsing,
event objects, log-probability mapping) and once "directly": the identical request body sent with httpx and its
server-sent events read with the least work that still reads every chunk. Decode speed is measured the same way
for both, on the client: tokens after the first over the time from the first to the last content chunk. The
server does the same work for both, so the difference is the client's. A plain completion (not a chat) keeps a
base model such as the starter writing to the end under any server's chat template.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

from engine.events import ReplyDone, Token
from engine.remote import RemoteEngine, RemoteError
from engine.settings import SamplingSettings

PROMPT = (
    "The lighthouse keeper climbed the stairs as the storm came in. It was the longest night of his life, and"
)


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
    # this process's CPU time per token (µs): the client's own cost, which a busy machine does not blur
    direct_cpu_us: list[float] = field(default_factory=list)
    engine_cpu_us: list[float] = field(default_factory=list)

    @property
    def overhead(self) -> float:
        """The remote engine's decode cost over the direct client, as a fraction: the median of each repetition's
        paired ratio (the two runs of a repetition follow each other, so they share the machine's load)."""
        return 1.0 - statistics.median(e / d for e, d in zip(self.engine, self.direct, strict=True) if d)

    def to_dict(self) -> dict:
        return {
            "host": self.host, "model": self.model, "server_kind": self.server_kind,
            "gen_tokens": self.gen_tokens, "reps": self.reps, "direct_tok_s": self.direct,
            "engine_tok_s": self.engine, "tokens": self.tokens, "overhead": self.overhead,
            "direct_cpu_us_per_token": self.direct_cpu_us, "engine_cpu_us_per_token": self.engine_cpu_us,
        }  # fmt: skip

    def markdown(self) -> str:
        d, e = statistics.median(self.direct), statistics.median(self.engine)
        return "\n".join([
            f"Remote engine overhead on {self.host} ({self.model}, server: {self.server_kind or 'unknown'}), "
            f"{self.reps} reps of {statistics.median(self.tokens):.0f} tokens, medians:",
            "",
            "| client | decode tok/s | client CPU µs/token |",
            "|---|---:|---:|",
            f"| direct (httpx + SSE) | {d:.1f} | {statistics.median(self.direct_cpu_us):.0f} |",
            f"| RemoteEngine.complete | {e:.1f} | {statistics.median(self.engine_cpu_us):.0f} |",
            "",
            f"Overhead: {self.overhead * 100:+.1f}% of decode speed (median of the paired per-repetition "
            "ratios; target: under 5%). The client's own extra CPU per token: "
            f"{statistics.median(self.engine_cpu_us) - statistics.median(self.direct_cpu_us):+.0f} µs.",
        ])  # fmt: skip


def _rate(stamps: list[float]) -> float:
    """tok/s over the chunks after the first (the first carries the prefill)."""
    if len(stamps) < 3 or stamps[-1] <= stamps[0]:
        raise RemoteError("The server streamed fewer than 3 tokens: nothing to time. Raise --gen-tokens.")
    return (len(stamps) - 1) / (stamps[-1] - stamps[0])


def direct_run(client: httpx.Client, engine: RemoteEngine, body: dict) -> float:
    """The same request with httpx alone: each `data:` line parsed, content chunks time-stamped."""
    stamps: list[float] = []
    url = engine.url + "/completions"
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
                if choice.get("text"):
                    stamps.append(time.perf_counter())
    return _rate(stamps)


def engine_run(engine: RemoteEngine, sampling: SamplingSettings) -> tuple[float, int]:
    stamps: list[float] = []
    done = None
    for ev in engine.complete(PROMPT, sampling):
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
    """Interleaved repetitions (engine and direct, in alternating order) on a loaded RemoteEngine, so a noisy
    machine slows both alike."""
    sampling = SamplingSettings(temperature=0.0, max_tokens=gen_tokens, seed=1)
    body = engine.request_fields(sampling, chat=False)
    body.update(prompt=PROMPT, model=engine.model,
                stream=True, stream_options={"include_usage": True})  # fmt: skip
    result = RemoteBench(engine.host, engine.model, engine.server_kind, gen_tokens, reps)
    with httpx.Client(timeout=httpx.Timeout(300.0, connect=10.0)) as client:
        for i in range(warmup + reps):
            runs = {}
            for which in ("engine", "direct") if i % 2 else ("direct", "engine"):  # no side always goes first
                cpu = time.process_time()
                if which == "engine":
                    rate, tokens = engine_run(engine, sampling)
                else:
                    direct = direct_run(client, engine, body)
                runs[which] = time.process_time() - cpu
            engine_cpu = runs["engine"] / max(tokens, 1) * 1e6
            direct_cpu = runs["direct"] / max(tokens, 1) * 1e6
            if i < warmup:
                continue
            result.engine.append(rate)
            result.direct.append(direct)
            result.tokens.append(tokens)
            result.engine_cpu_us.append(engine_cpu)
            result.direct_cpu_us.append(direct_cpu)
            log(
                f"rep {i - warmup + 1}/{reps}: engine {rate:.1f} tok/s, direct {direct:.1f} tok/s ({tokens} tokens)"
            )
    return result
