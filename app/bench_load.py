"""Two modes of `ingle bench` (issue 19): decoding under a fixed competing load (the automatic thread choice
against every fixed thread count, engine and reference loop), and reopening a long conversation after a restart
with and without its saved KV cache."""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from app.bench_modes import BenchConfig, bench_sampling, exact_prompt
from engine.events import Message, ReplyDone, ThreadsChosen, Token
from engine.settings import LoadSettings, SamplingSettings

REOPEN_TOKENS = 3000  # the conversation's length for the reopen mode


# ----------------------------------------------------------------------------- under load
class CompetingLoad:
    """One busy process per CPU but one, each pinned to its CPU: a fixed load the engine has to live with."""

    def __init__(self, cpus: list[int]):
        self.cpus = cpus[1:]
        self.procs: list[subprocess.Popen] = []

    def __enter__(self) -> CompetingLoad:
        for cpu in self.cpus:
            # spins on its CPU; checks now and then that the bench is still there (a killed bench leaves none behind)
            code = (
                f"import os\nparent = os.getppid()\ntry: os.sched_setaffinity(0, {{{cpu}}})\nexcept OSError: pass\n"
                "while os.getppid() == parent:\n    for _ in range(1_000_000): pass"
            )
            self.procs.append(subprocess.Popen([sys.executable, "-c", code]))
        time.sleep(1.0)  # let the spinners take their CPUs, and the engine's CPU accounting see them
        return self

    def __exit__(self, *exc) -> None:
        for proc in self.procs:
            proc.kill()
        for proc in self.procs:
            proc.wait(10)


class _EngineRun:
    """One loaded engine in-process with `n_threads` (0: its automatic choice), run a reply at a time."""

    def __init__(self, cfg: BenchConfig, n_threads: int, prompt: str, sampling: SamplingSettings):
        from engine.runtime import Runtime

        self.rt = Runtime()
        list(self.rt.load(cfg.model, cfg.load_settings().replace(n_threads=n_threads, n_threads_batch=0)))
        self.prompt, self.sampling, self.n_threads = prompt, sampling, n_threads
        self.rates: list[float] = []
        self.chosen: ThreadsChosen | None = None

    def rep(self) -> None:
        time.sleep(0.15)  # a pause between replies, as in a chat: the automatic choice re-checks the cores
        for event in self.rt.complete(self.prompt, self.sampling):
            if isinstance(event, ThreadsChosen):
                self.chosen = event
            elif isinstance(event, ReplyDone):
                self.rates.append(event.stats.decode_tok_s)

    def result(self) -> dict:
        chosen = self.chosen
        return {"decode_tok_s": statistics.median(self.rates), "values": self.rates,
                "threads": chosen.threads if chosen else self.n_threads, "why": chosen.describe() if chosen else ""}  # fmt: skip

    def close(self) -> None:
        self.rt.close()


class _ReferenceRun:
    def __init__(self, cfg: BenchConfig, n_threads: int, tokens: list[int], banned):
        from engine.reference import Reference

        self.ref = Reference(
            cfg.model, cfg.load_settings().replace(n_threads=n_threads, n_threads_batch=0), banned
        )
        self.tokens, self.n_gen, self.n_threads = tokens, cfg.gen_tokens, n_threads
        self.rates: list[float] = []

    def rep(self) -> None:
        self.rates.append(self.ref.run(self.tokens, self.n_gen)["decode_tok_s"])

    def result(self) -> dict:
        return {
            "decode_tok_s": statistics.median(self.rates),
            "values": self.rates,
            "threads": self.n_threads,
        }

    def close(self) -> None:
        self.ref.close()


def _interleaved(runs: dict, reps: int, log: Callable[[str], None]) -> dict:
    """One repetition of each run in turn, the order rotating, so a machine whose load drifts slows them alike."""
    names = list(runs)
    for rep in range(reps):
        k = rep % len(names)
        for name in names[k:] + names[:k]:
            runs[name].rep()
        log(f"under load: rep {rep + 1}/{reps}: " + ", ".join(f"{n} {runs[n].rates[-1]:.1f}" for n in names))
    return {name: run.result() for name, run in runs.items()}


def run_under_load(cfg: BenchConfig, log: Callable[[str], None] = lambda _m: None) -> dict:
    """Decode tok/s of the engine (automatic threads and every fixed count) and of the reference loop (the same
    counts; for "auto" the count the engine chose) while one busy process runs on every CPU but one, all
    interleaved rep by rep; and, first, one thread on the machine as it is (what one idle core gives)."""
    from engine.reference import Reference, eog_tokens
    from engine.threads import allowed_cpus

    cpus = allowed_cpus()
    reps = max(1, min(cfg.reps, 3))
    probe = Reference(cfg.model, cfg.load_settings().replace(n_threads=1))
    banned = eog_tokens(probe.vocab, probe.n_vocab)
    prompt, tokens = exact_prompt(probe.tokenize, min(cfg.prompt_tokens, 64))
    probe.close()
    sampling = bench_sampling(cfg, banned)
    log(
        f"under load: one thread without the load first, then {len(cpus) - 1} busy process(es) on {len(cpus)} CPUs"
    )
    one = _EngineRun(cfg, 1, prompt, sampling)
    try:
        idle_one = _interleaved({"1 thread, no load": one}, reps, log)["1 thread, no load"]
    finally:
        one.close()
    counts = list(range(1, len(cpus) + 1))
    runs: dict = {}
    try:
        with CompetingLoad(cpus):
            runs["engine auto"] = _EngineRun(cfg, 0, prompt, sampling)
            for n in counts:
                runs[f"engine {n}"] = _EngineRun(cfg, n, prompt, sampling)
                runs[f"reference {n}"] = _ReferenceRun(cfg, n, tokens, banned)
            done = _interleaved(runs, reps, log)
    finally:
        for run in runs.values():
            run.close()
    engine = {"auto": done["engine auto"], **{str(n): done[f"engine {n}"] for n in counts}}
    reference = {str(n): done[f"reference {n}"] for n in counts}
    reference["auto"] = reference[str(min(engine["auto"]["threads"], len(cpus)))]
    log(f"under load: automatic choice: {engine['auto']['why']}")
    best = max(engine[str(n)]["decode_tok_s"] for n in counts)
    auto = engine["auto"]["decode_tok_s"]
    return {
        "cpus": len(cpus), "busy_processes": len(cpus) - 1, "reps": reps,
        "idle_one_thread_tok_s": idle_one["decode_tok_s"],
        "engine": engine, "reference": reference,
        "auto_vs_best_fixed": auto / best if best else 0.0,
        "auto_vs_idle_core": auto / idle_one["decode_tok_s"] if idle_one["decode_tok_s"] else 0.0,
    }  # fmt: skip


# ----------------------------------------------------------------------------- reopen
def long_conversation(tokens_of: Callable[[list[Message]], int], n_tokens: int) -> list[Message]:
    """User and assistant turns of plain text until the conversation renders to `n_tokens` tokens or a few more,
    ending with an assistant turn."""
    words = ("the river runs past seven old houses where people talk about rain and light and time "
             "while birds sing over the green fields near the long road to the city").split()  # fmt: skip
    messages: list[Message] = []
    i = 0
    while not messages or messages[-1].role == "user" or tokens_of(messages) < n_tokens:
        body = " ".join(words[(i + k) % len(words)] for k in range(60))
        messages.append(Message("user" if len(messages) % 2 == 0 else "assistant", f"Part {i}: {body}."))
        i += 1
    return messages


def _first_token(engine, messages: list[Message], sampling: SamplingSettings) -> tuple[float, list[int], int]:
    """Seconds to the first token of a reply, its tokens, and how many prompt tokens were evaluated."""
    t0 = time.perf_counter()
    ttft = 0.0
    done = None
    for event in engine.chat(messages, sampling):
        if isinstance(event, Token) and not ttft:
            ttft = time.perf_counter() - t0
        elif isinstance(event, ReplyDone):
            done = event
    return ttft, list(done.tokens), done.stats.evaluated_tokens


def run_reopen(cfg: BenchConfig, log: Callable[[str], None] = lambda _m: None) -> dict:
    """Time to first token on a ~3,000-token conversation after a restart (a new engine child), with its saved
    KV cache restored (restore time included) and without (the whole prompt read again); greedy, same tokens?"""
    from engine.host import EngineHost

    settings = LoadSettings(n_ctx=4096, n_batch=512)  # threads: the automatic choice, as the app runs
    sampling = SamplingSettings(temperature=0.0, max_tokens=min(cfg.gen_tokens, 16), seed=0)
    reps = max(1, min(cfg.reps, 3))
    with tempfile.TemporaryDirectory(prefix="ingle-bench-reopen-") as tmp:
        path = str(Path(tmp) / "conversation.ingle-kv")
        with EngineHost() as host:
            list(host.load(cfg.model, settings))
            conv = long_conversation(
                lambda m: len(host.render_tokens(m, add_generation_prompt=False)), REOPEN_TOKENS
            )
            history = host.render_tokens(conv, add_generation_prompt=False)
            host.evaluate(history)
            saved = host.save_state(path, conv)
        data = Path(path).read_bytes()
        ask = [*conv, Message("user", "Say in one line what the river runs past.")]
        with_state, without, same, restored_tokens = [], [], True, []
        for rep in range(reps):
            Path(path).write_bytes(data)
            with EngineHost() as host:  # a restart: nothing but the saved file carries over
                list(host.load(cfg.model, settings))
                t0 = time.perf_counter()
                restored = host.restore_state(path, conv)
                restore_s = time.perf_counter() - t0
                ttft, tokens_with, evaluated_with = _first_token(host, ask, sampling)
            with_state.append(restore_s + ttft)
            with EngineHost() as host:
                list(host.load(cfg.model, settings))
                ttft_without, tokens_without, evaluated_without = _first_token(host, ask, sampling)
            without.append(ttft_without)
            same = same and tokens_with == tokens_without
            restored_tokens.append(restored.tokens)
            note = (
                f"{restored.tokens} tokens restored"
                if restored.tokens
                else f"not restored: {restored.reason}"
            )
            log(f"reopen rep {rep + 1}/{reps}: {restore_s + ttft:.3f} s with the saved state ({note}), "
                f"{ttft_without:.3f} s without")  # fmt: skip
    med_with, med_without = statistics.median(with_state), statistics.median(without)
    return {
        "conversation_tokens": len(history), "state_bytes": saved.bytes, "reps": reps,
        "ttft_with_state_s": med_with, "ttft_without_state_s": med_without,
        "evaluated_with_state": evaluated_with, "evaluated_without_state": evaluated_without,
        "speedup": med_without / med_with if med_with else 0.0, "identical": same,
        "restored_tokens": restored_tokens,
    }  # fmt: skip


def markdown_sections(under_load: dict, reopen: dict) -> list[str]:
    lines: list[str] = []
    if under_load:
        u = under_load
        lines += ["", f"Under load: {u['busy_processes']} busy process(es) on {u['cpus']} CPUs (one spinning per "
                  f"CPU but one); one thread without that load: {u['idle_one_thread_tok_s']:.1f} tok/s.", "",
                  "| threads | engine decode tok/s | reference loop decode tok/s |", "|---|---|---|"]  # fmt: skip
        for key, e in u["engine"].items():
            r = u["reference"].get(key, {})
            label = f"auto ({e['threads']})" if key == "auto" else key
            lines.append(f"| {label} | {e['decode_tok_s']:.1f} | {r.get('decode_tok_s', 0.0):.1f} |")
        lines += ["", f"auto / best fixed: {u['auto_vs_best_fixed']:.2f}; auto / one idle core: "
                  f"{u['auto_vs_idle_core']:.2f}."]  # fmt: skip
    if reopen:
        r = reopen
        lines += ["", f"Reopen: a {r['conversation_tokens']}-token conversation after a restart: first token in "
                  f"{r['ttft_with_state_s'] * 1000:.0f} ms with its saved cache ({r['evaluated_with_state']} tokens "
                  f"evaluated) vs {r['ttft_without_state_s'] * 1000:.0f} ms without ({r['evaluated_without_state']}"
                  f"); speedup {r['speedup']:.1f}x, same tokens: {'yes' if r['identical'] else 'NO'}."]  # fmt: skip
    return lines
