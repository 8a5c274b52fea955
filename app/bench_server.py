"""`ingle bench --server`: Ingle's API server against llama.cpp's llama-server, N concurrent streams over HTTP.

For each stream count N, each server is started on its own (one at a time, so they never share the CPU) with
N slots, the same model, threads and per-slot context, on a free 127.0.0.1 port. N streaming clients
(httpx, SSE, /v1/completions, `ignore_eos` so every stream generates exactly the requested tokens) then
measure aggregate decode tok/s (tokens per second while all N streams decode: from the last stream's first
token to the first stream's last), end-to-end tok/s (every token / from the first request sent to the last
token, prompts included), time to first token alone, and, on the server with the most slots, time to
first token while 4 other streams are decoding. The report is in app/bench_server_report.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from app.bench_modes import WORDS  # one token each in most vocabularies
from engine.errors import EngineError, SettingsError
from engine.text import printable

INGLE, LLAMA = "ingle", "llama-server"


@dataclass(frozen=True)
class ServerBenchConfig:
    model: Path
    threads: int
    streams: tuple[int, ...] = (1, 2, 4, 8)
    tokens: int = 64  # generated per stream (EOS ignored)
    prompt_words: int = 128  # about as many prompt tokens; the servers' own counts are reported
    reps: int = 3  # rounds of N concurrent streams per stream count
    busy: int = 4  # streams decoding while time to first token is measured "busy"
    llama_server: Path | None = None
    start_timeout: float = 300.0  # a busy 2-core machine loads even a small model slowly

    @property
    def slot_ctx(self) -> int:
        """Context per slot: a prompt (a word may be two tokens) plus a busy stream's longer reply."""
        need = 2 * self.prompt_words + 3 * self.tokens + 64
        return max(512, 256 * -(-need // 256))


def parse_streams(text: str) -> tuple[int, ...]:
    """'1,2,4,8' -> (1, 2, 4, 8); each 1..64."""
    out = set()
    for part in text.replace(",", " ").split():
        if not part.isdigit() or not 1 <= int(part) <= 64:
            raise SettingsError(
                "streams", f"'{printable(part)}' is not a stream count from 1 to 64 (e.g. 1,2,4,8)"
            )
        out.add(int(part))
    if not out:
        raise SettingsError("streams", "give at least one stream count (e.g. 1,2,4,8)")
    return tuple(sorted(out))


def check_llama_server(path: str) -> Path:
    p = Path(path).expanduser()
    if not p.is_file() or not os.access(p, os.X_OK):
        raise SettingsError(
            "llama-server",
            f"{printable(path)} is not an executable file; build llama.cpp's server with "
            "packaging/build_llama_tools.sh PREFIX and pass PREFIX/bin/llama-server (README, Benchmark)",
        )
    return p.resolve()


def prompt(i: int, words: int) -> str:
    """Prompt i: a different first word and rotation per request, so no server answers it from its cache."""
    body = " ".join(WORDS[(i * 7 + k) % len(WORDS)] for k in range(words))
    return f"Request {i}: {body}"


def _amx() -> bool:
    """Ingle loads without weight repacking on AMX CPUs, where llama.cpp's repacked matmul crashes (DESIGN.md
    section 4); llama-server is started the same way there."""
    from engine.hardware import cpu_has_amx

    return cpu_has_amx()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------------------- servers
class Server:
    """One server child on 127.0.0.1: started with N slots, ready when its health URL answers 200."""

    def __init__(self, kind: str, cfg: ServerBenchConfig, parallel: int):
        self.kind, self.cfg, self.parallel = kind, cfg, parallel
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.accepted = parallel
        self.note = ""
        self.proc: subprocess.Popen | None = None
        self.log = tempfile.TemporaryFile()
        self.argv: list[str] = []

    def command(self, with_parallel: bool = True) -> list[str]:
        c, n = self.cfg, self.parallel
        ctx, t = str(c.slot_ctx * n), str(c.threads)
        if self.kind == LLAMA:
            return [str(c.llama_server), "-m", str(c.model), "--host", "127.0.0.1", "--port", str(self.port),
                    "-np", str(n), "-kvu", "-c", ctx, "-t", t, "-tb", t, "-b", "512", "-ub", "512",
                    "-ngl", "0", "--cache-ram", "0", "--no-webui"] + (["--no-repack"] if _amx() else [])  # fmt: skip
        argv = [sys.executable, "-m", "app.cli", "serve", str(c.model), "--port", str(self.port), "-c", ctx,
                "-t", t, "--n-threads-batch", t, "--max-queue", "64"]  # fmt: skip
        return argv + (["--parallel", str(n)] if with_parallel else [])

    def start(self) -> Server:
        if self.kind == INGLE and not self._launch(self.command()):
            tail = self._log_tail(20)
            if "--parallel" in tail and "unrecognized arguments" in tail:
                # this `ingle serve` has no --parallel yet: it serves one request at a time
                self.accepted, self.note = 1, "ingle serve has no --parallel: one request at a time"
                if self._launch(self.command(with_parallel=False)):
                    return self
            self._failed()
        elif self.kind == LLAMA and not self._launch(self.command()):
            self._failed()
        if self.kind == LLAMA:
            slots = re.findall(r"n_slots = (\d+)", self._log_tail(400))
            self.accepted = int(slots[-1]) if slots else self.parallel
        return self

    def _launch(self, argv: list[str]) -> bool:
        """Start `argv`; True once ready, False if it exited first."""
        self.argv = argv
        self.log.seek(0)
        self.log.truncate()
        env = dict(os.environ)
        root = Path(__file__).resolve().parents[1]
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log, env=env,
                                     cwd=root)  # fmt: skip
        health = f"{self.url}/health" if self.kind == LLAMA else f"{self.url}/v1/models"
        deadline = time.monotonic() + self.cfg.start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            with contextlib.suppress(httpx.HTTPError), httpx.Client(trust_env=False) as client:
                if client.get(health, timeout=2).status_code == 200:
                    return True
            time.sleep(0.2)
        self.stop()
        raise EngineError(f"{self.kind} did not answer on {self.url} within {self.cfg.start_timeout:.0f} s.")

    def _log_tail(self, lines: int) -> str:
        self.log.seek(0)
        return "\n".join(self.log.read().decode("utf-8", "replace").splitlines()[-lines:])

    def _failed(self) -> None:
        lines = [ln for ln in self._log_tail(20).splitlines() if ln.strip()]
        why = printable(lines[-1])[:300] if lines else f"exit status {self.proc.returncode}"
        self.stop()
        raise EngineError(
            f"{self.kind} stopped before it was ready ({why}); command: {printable(' '.join(self.argv))}"
        )

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


# ----------------------------------------------------------------------------- clients
async def stream(
    client: httpx.AsyncClient, url: str, text: str, max_tokens: int, seen: asyncio.Event | None = None
) -> dict:
    """One streaming /v1/completions request: when it was sent, its first and last token, how many tokens.
    `seen` is set when the first token arrives."""
    body = {"prompt": text, "max_tokens": max_tokens, "temperature": 0, "stream": True, "ignore_eos": True,
            "stream_options": {"include_usage": True}}  # fmt: skip
    sent = time.perf_counter()
    first = last = None
    chunks, usage, times = 0, None, []
    async with client.stream("POST", f"{url}/v1/completions", json=body) as response:
        if response.status_code != 200:
            detail = (await response.aread()).decode("utf-8", "replace")[:200]
            raise EngineError(f"{url} answered {response.status_code}: {printable(detail)}")
        async for line in response.aiter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            obj = json.loads(data)
            if "error" in obj:
                raise EngineError(f"{url} sent an error mid-stream: {printable(obj['error'])[:200]}")
            usage = obj.get("usage") or usage
            if any(choice.get("text") for choice in obj.get("choices") or ()):
                last = time.perf_counter()
                first = first or last
                chunks += 1
                times.append(last)
                if seen is not None:
                    seen.set()
    tokens = usage["completion_tokens"] if usage else chunks
    return {"sent": sent, "first": first, "last": last, "tokens": tokens, "chunks": chunks, "times": times,
            "prompt_tokens": usage.get("prompt_tokens") if usage else None}  # fmt: skip


def _overlap(results: list[dict]) -> int:
    """The most streams that were between their first and last token at the same moment."""
    edges = sorted(
        [(r["first"], 1) for r in results] + [(r["last"], -1) for r in results], key=lambda e: (e[0], e[1])
    )
    most = now = 0
    for _, step in edges:
        now += step
        most = max(most, now)
    return most


def decode_rate(results: list[dict]) -> tuple[float, float]:
    """Aggregate decode tok/s while every stream decodes (from the last stream's first token to the first
    stream's last) and that window's seconds. Prompt evaluation stays out (servers schedule it differently: one
    gives the first stream its first token early, another gives all of them late; that is time to first
    token). Streams that never all decode at once fall back to the span from the first token to the last."""
    start, end = max(r["first"] for r in results), min(r["last"] for r in results)
    if end > start:
        tokens = sum(1 for r in results for t in r["times"] if start < t <= end)
    else:
        start, end = min(r["first"] for r in results), max(r["last"] for r in results)
        tokens = sum(len(r["times"]) - 1 for r in results)
    return (tokens / (end - start) if end > start else 0.0), end - start


def round_figures(results: list[dict]) -> dict:
    last = max(r["last"] for r in results)
    per_stream = [(r["tokens"] - 1) / (r["last"] - r["first"]) for r in results if r["last"] > r["first"]]
    decode, window = decode_rate(results)
    return {
        "aggregate_tok_s": decode,
        "decode_window_s": window,
        # what clients get in all: every token over the time from the first request sent to the last token
        "end_to_end_tok_s": sum(r["tokens"] for r in results) / (last - min(r["sent"] for r in results)),
        "per_stream_tok_s": statistics.median(per_stream) if per_stream else 0.0,
        "ttft_ms": [1000 * (r["first"] - r["sent"]) for r in results],
        "tokens": [r["tokens"] for r in results],
        "prompt_tokens": results[0]["prompt_tokens"],
        "decoding_at_once": _overlap(results),
        "wall_seconds": last - min(r["sent"] for r in results),
    }


def _client(limits: httpx.Limits | None = None) -> httpx.AsyncClient:
    # trust_env off: a proxy from the environment must not sit between the bench and 127.0.0.1
    return httpx.AsyncClient(
        timeout=httpx.Timeout(600, connect=30), limits=limits or httpx.Limits(), trust_env=False
    )


async def _concurrent(url: str, cfg: ServerBenchConfig, n: int, start: int) -> list[dict]:
    limits = httpx.Limits(max_connections=n + 8)
    async with _client(limits) as client:
        jobs = [stream(client, url, prompt(start + i, cfg.prompt_words), cfg.tokens) for i in range(n)]
        return list(await asyncio.gather(*jobs))


async def _busy_ttft(url: str, cfg: ServerBenchConfig, slots: int, start: int) -> dict:
    """Time to first token of one request sent while `cfg.busy` streams decode (or, beyond the server's slots,
    wait for one: then the new request waits too, which is what a client would see)."""
    async with _client() as client:
        seen = [asyncio.Event() for _ in range(cfg.busy)]
        busy = [asyncio.ensure_future(stream(client, url, prompt(start + i, cfg.prompt_words), 3 * cfg.tokens, e))
                for i, e in enumerate(seen)]  # fmt: skip
        try:
            want = min(cfg.busy, slots)
            while sum(e.is_set() for e in seen) < want and not all(b.done() for b in busy):
                await asyncio.sleep(0.01)
            for b in busy:
                if b.done() and b.exception() is not None:
                    raise b.exception()
            probe = await stream(client, url, prompt(start + cfg.busy, cfg.prompt_words), 2)
            decoding = sum(1 for e, b in zip(seen, busy, strict=True) if e.is_set() and not b.done())
        finally:
            for b in busy:
                b.cancel()
            await asyncio.gather(*busy, return_exceptions=True)
    return {
        "ttft_ms": 1000 * (probe["first"] - probe["sent"]),
        "busy_streams_decoding_at_probe_end": decoding,
    }


async def _idle_ttft(url: str, cfg: ServerBenchConfig, start: int) -> list[float]:
    async with _client() as client:
        out = []
        for i in range(cfg.reps):
            r = await stream(client, url, prompt(start + i, cfg.prompt_words), 2)
            out.append(1000 * (r["first"] - r["sent"]))
        return out


def measure(server: Server, cfg: ServerBenchConfig, with_busy: bool, log: Callable[[str], None]) -> dict:
    """Idle time to first token, `cfg.reps` rounds of N concurrent streams, and (when asked) busy TTFT."""
    n, url = server.parallel, server.url
    asyncio.run(_concurrent(url, cfg, 1, 10_000))  # warm-up: the first request pays for lazy set-up
    idle = asyncio.run(_idle_ttft(url, cfg, 20_000))
    rounds = []
    for rep in range(cfg.reps):
        rounds.append(round_figures(asyncio.run(_concurrent(url, cfg, n, 1000 * (rep + 1)))))
        log(f"{server.kind}, {n} stream(s), round {rep + 1}/{cfg.reps}: "
            f"{rounds[-1]['aggregate_tok_s']:.1f} tok/s aggregate")  # fmt: skip
    agg = [r["aggregate_tok_s"] for r in rounds]
    out = {
        "streams": n,
        "parallel_requested": n,
        "parallel_accepted": server.accepted,
        "note": server.note,
        "command": [Path(server.argv[0]).name, *server.argv[1:]],
        "aggregate_tok_s": statistics.median(agg),
        "aggregate_min_max": [min(agg), max(agg)],
        "end_to_end_tok_s": statistics.median(r["end_to_end_tok_s"] for r in rounds),
        "per_stream_tok_s": statistics.median(r["per_stream_tok_s"] for r in rounds),
        "ttft_ms": statistics.median(t for r in rounds for t in r["ttft_ms"]),
        "ttft_idle_ms": statistics.median(idle),
        "decoding_at_once": max(r["decoding_at_once"] for r in rounds),
        "prompt_tokens": rounds[-1]["prompt_tokens"],
        "tokens_per_stream": sorted({t for r in rounds for t in r["tokens"]}),
        "rounds": rounds,
    }
    if with_busy:
        busy = [asyncio.run(_busy_ttft(url, cfg, server.accepted, 30_000 + 100 * i)) for i in range(cfg.reps)]
        out["busy"] = {
            "streams": cfg.busy,
            "ttft_ms": statistics.median(b["ttft_ms"] for b in busy),
            "ttft_ms_all": [b["ttft_ms"] for b in busy],
            "decoding_at_probe_end": min(b["busy_streams_decoding_at_probe_end"] for b in busy),
        }
    return out


def run_server_bench(cfg: ServerBenchConfig, log: Callable[[str], None] = lambda _m: None) -> dict:
    """Every stream count on Ingle's server, then (when given) on llama-server; ratios and targets."""
    kinds = [INGLE] + ([LLAMA] if cfg.llama_server else [])
    figures: dict[str, dict[str, dict]] = {k: {} for k in kinds}
    for n in cfg.streams:
        for kind in kinds:
            log(f"starting {kind} with {n} slot(s) (context {cfg.slot_ctx} per slot)")
            server = Server(kind, cfg, n).start()
            try:
                figures[kind][str(n)] = measure(server, cfg, n == cfg.streams[-1], log)
            finally:
                server.stop()
    from app.bench_server_report import ratios_and_targets

    out = {
        "config": {
            "model": str(cfg.model),
            "threads": cfg.threads,
            "streams": list(cfg.streams),
            "tokens": cfg.tokens,
            "prompt_words": cfg.prompt_words,
            "reps": cfg.reps,
            "busy": cfg.busy,
            "slot_ctx": cfg.slot_ctx,
            "llama_server": str(cfg.llama_server) if cfg.llama_server else None,
            "endpoint": "/v1/completions (stream, temperature 0, ignore_eos)",
        },  # fmt: skip
        "results": figures,
        "skipped": None if cfg.llama_server else "no --llama-server given",
    }
    out.update(ratios_and_targets(out))
    return out
