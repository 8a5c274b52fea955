"""The modes of `ingle bench`, each measured on its own: what is run and timed (app/bench.py runs them all).

Modes (issue 8): (1) reference loop on llama.cpp's low-level API, (2) the engine in-process, (3) the engine
through its child-process host, (4) a multi-turn chat (prefix reuse), (5) chat window streaming (hook),
(6) load time and the GUI's resident memory, (7) LoRA training tokens/s (hook). Modes 1-3 run interleaved,
one repetition of each in turn, so a shared, noisy machine slows them alike.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from engine.errors import SettingsError
from engine.events import Message, PromptEvaluated, ReplyDone, Token
from engine.reference import Reference, eog_tokens, rates
from engine.settings import LoadSettings, SamplingSettings

TIMED_MODES = ("reference", "engine", "host")
# Every mode by name; its number (1-7) is its place here. `--modes` picks among them.
MODES = (
    *TIMED_MODES,
    "chat",
    "streaming",
    "gui",
    "training",
    "under_load",
    "reopen",
    "speculation",
    "sampling",
)
# Without --modes: 1-7. Under load (it starts busy processes on purpose), reopen, speculation and sampling run
# when asked for.
DEFAULT_MODES = MODES[:7]


def parse_modes(text: str) -> tuple[str, ...]:
    """'reference,engine,host' or '1-3,7' or '2 5' -> the modes, in the order of MODES."""
    chosen: set[str] = set()
    for part in text.replace(",", " ").split():
        low, sep, high = part.partition("-")
        if sep and low.isdigit() and high.isdigit():
            numbers = range(int(low), int(high) + 1)
        elif part.isdigit():
            numbers = [int(part)]
        elif part.lower() in MODES:
            chosen.add(part.lower())
            continue
        else:
            numbers = [0]
        for n in numbers:
            if not 1 <= n <= len(MODES):
                known = ", ".join(f"{i} {m}" for i, m in enumerate(MODES, 1))
                raise SettingsError("modes", f"'{part}' is not a mode; choose names or numbers among {known}")
            chosen.add(MODES[n - 1])
    if not chosen:
        raise SettingsError("modes", "choose at least one mode (e.g. --modes reference,engine,host)")
    return tuple(m for m in MODES if m in chosen)


# Words whose " word" form is one token in most vocabularies; the prompt is built from them.
WORDS = (
    "the quick brown fox jumps over a lazy dog while seven old men watch from the river bank and talk about "
    "rain wind snow sun light time day night water house tree stone road city field bird fish horse "
    "green blue red white black small great long short new first last good high little own other"
).split()


@dataclass(frozen=True)
class BenchConfig:
    model: Path
    threads: int
    prompt_tokens: int = 256
    gen_tokens: int = 64
    reps: int = 5
    warmup: int = 1
    turns: int = 4
    modes: tuple[str, ...] = DEFAULT_MODES
    draft: Path | None = None  # (10): the draft model of the pair, the model being the target
    llama_bench: str | None = None  # (10), (11): llama-bench's path (default: DEFAULT_LLAMA_BENCH)

    @property
    def timed_modes(self) -> tuple[str, ...]:
        return tuple(m for m in TIMED_MODES if m in self.modes)

    def load_settings(self) -> LoadSettings:
        n_ctx = max(512, 64 * math.ceil((self.prompt_tokens + self.gen_tokens + 16) / 64))
        n_batch = max(512, self.prompt_tokens)  # one llama_decode for the whole prompt in every mode
        return LoadSettings(n_ctx=max(n_ctx, 2048), n_threads=self.threads, n_batch=n_batch, n_ubatch=512)


def spread(values: Sequence[float]) -> dict:
    """Median and spread of repeated measurements."""
    vals = sorted(values)
    return {
        "median": statistics.median(vals),
        "min": vals[0],
        "max": vals[-1],
        "stdev": statistics.stdev(vals) if len(vals) > 1 else 0.0,
        "n": len(vals),
        "values": vals,
    }


# ----------------------------------------------------------------------------- prompt
def exact_prompt(tokenize: Callable[[str], list[int]], n_tokens: int) -> tuple[str, list[int]]:
    """A text that tokenizes (BOS included, as `complete` does it) to exactly `n_tokens` tokens."""
    words: list[str] = []
    i = 0
    text, tokens = "", tokenize("")
    while len(tokens) < n_tokens:
        words.append(WORDS[i % len(WORDS)])
        i += 1
        text = " ".join(words)
        tokens = tokenize(text)
    # overshoot: drop the last word and pad with single letters, which are one token in SPM and BPE vocabularies
    while len(tokens) > n_tokens and words:
        words.pop()
        text = " ".join(words)
        tokens = tokenize(text)
    for pad in ("a", "I", "o", "x", "y", "z"):
        while len(tokens) < n_tokens:
            trial = tokenize(text + " " + pad)
            if len(trial) > n_tokens or len(trial) == len(tokens):
                break
            text, tokens = text + " " + pad, trial
    if len(tokens) != n_tokens:
        raise ValueError(f"could not build a prompt of exactly {n_tokens} tokens (got {len(tokens)})")
    return text, tokens


def cpu_clock(engine) -> Callable[[], float]:
    """CPU seconds used so far by the process(es) doing the work: this one, plus the host's child if any."""
    pid = getattr(engine, "pid", None)
    if pid is None:
        return time.process_time
    import psutil

    child = psutil.Process(pid)

    def clock() -> float:
        t = child.cpu_times()
        return time.process_time() + t.user + t.system

    return clock


# ----------------------------------------------------------------------------- (2), (3) engine
def run_engine(engine, prompt: str, tokens: Sequence[int], sampling: SamplingSettings) -> dict:
    """One completion through Runtime or EngineHost (same API), timed as the client sees the events arrive."""
    # Evaluating one token that differs from the prompt's first empties the cache, so the prefill really runs.
    engine.evaluate([tokens[1] if tokens[0] != tokens[1] else tokens[0] + 1])
    token_times: list[float] = []
    generated: list[int] = []
    evaluated = done = None
    clock = cpu_clock(engine)
    cpu_times: list[float] = []
    t0 = time.perf_counter()
    prefill_s = 0.0
    for event in engine.complete(prompt, sampling):
        now = time.perf_counter()
        if isinstance(event, PromptEvaluated):
            evaluated, prefill_s = event, now - t0
        elif isinstance(event, Token) and event.token_id >= 0:
            token_times.append(now)
            if len(token_times) == 1 or len(token_times) == sampling.max_tokens:
                cpu_times.append(clock())
            generated.append(event.token_id)
        elif isinstance(event, ReplyDone):
            done = event
    decode_s = token_times[-1] - token_times[0] if len(token_times) > 1 else 0.0
    cpu_decode_s = cpu_times[-1] - cpu_times[0] if len(cpu_times) > 1 else 0.0
    result = rates(evaluated.evaluated_tokens, prefill_s, len(generated), decode_s, generated, cpu_decode_s)
    result["reused_tokens"] = evaluated.reused_tokens
    result["engine_prefill_tok_s"] = done.stats.prefill_tok_s  # as measured inside the engine
    result["engine_decode_tok_s"] = done.stats.decode_tok_s
    return result


def bench_sampling(cfg: BenchConfig, banned: Sequence[int]) -> SamplingSettings:
    """Greedy, penalties off, end-of-generation banned: the reference loop's settings."""
    return SamplingSettings(
        temperature=0.0,
        repeat_penalty=1.0,
        penalty_last_n=0,
        seed=0,
        max_tokens=cfg.gen_tokens,
        logit_bias=tuple((t, -math.inf) for t in banned),
    )


def no_progress(_label: str, _total: int):
    return lambda _done, _detail="": None


def run_timed_modes(
    cfg: BenchConfig, log: Callable[[str], None], progress: Callable = no_progress
) -> tuple[dict, dict]:
    """The chosen modes of 1-3, interleaved per repetition in a rotating order; returns (modes, load figures).
    The reference is always loaded (it tokenizes the prompt and finds the tokens to ban); it is timed when chosen.
    `progress(label, total)` returns an update(done, detail) for the repetitions."""
    from engine.host import EngineHost
    from engine.runtime import Runtime

    timed = cfg.timed_modes
    settings = cfg.load_settings()
    loads: dict = {}
    # the reference loads first, from a possibly cold page cache; the others then read warm pages
    reference = Reference(cfg.model, settings)
    loads["reference_load_seconds"] = reference.load_seconds
    banned = eog_tokens(reference.vocab, reference.n_vocab)
    reference.banned = banned
    reference.close()
    reference = Reference(cfg.model, settings, banned)
    loads["reference_reload_seconds"] = reference.load_seconds
    runtime = host = None
    try:
        if "engine" in timed:
            runtime = Runtime()
            t = time.perf_counter()
            for _ in runtime.load(cfg.model, settings):
                pass
            loads["engine_load_seconds"] = time.perf_counter() - t
        if "host" in timed:
            t = time.perf_counter()
            host = EngineHost()
            loads["host_start_seconds"] = time.perf_counter() - t
            t = time.perf_counter()
            for _ in host.load(cfg.model, settings):
                pass
            loads["host_load_seconds"] = time.perf_counter() - t
        prompt, tokens = exact_prompt(reference.tokenize, cfg.prompt_tokens)
        if runtime is not None and runtime.tokenize(prompt, add_special=True, parse_special=False) != tokens:
            raise RuntimeError("the engine tokenizes the benchmark prompt differently from the reference")
        sampling = bench_sampling(cfg, banned)
        runs = {
            "reference": lambda: reference.run(tokens, cfg.gen_tokens),
            "engine": lambda: run_engine(runtime, prompt, tokens, sampling),
            "host": lambda: run_engine(host, prompt, tokens, sampling),
        }
        samples: dict[str, list[dict]] = {m: [] for m in timed}
        update = progress(", ".join(timed), cfg.warmup + cfg.reps)
        for rep in range(cfg.warmup + cfg.reps):
            warm = rep < cfg.warmup
            # rotate the order too, so no mode always runs right after the host (its idle threads may still spin)
            k = rep % len(timed)
            for mode in timed[k:] + timed[:k]:
                result = runs[mode]()
                if not warm:
                    samples[mode].append(result)
            if warm:
                update(rep + 1, f"warm-up {rep + 1}/{cfg.warmup}")
            else:
                reps = ", ".join(f"{m} {_fmt_rep(samples[m][-1])}" for m in timed)
                update(rep + 1, f"rep {rep - cfg.warmup + 1}/{cfg.reps} (prefill/decode tok/s): {reps}")
        modes = {m: _summarize(samples[m]) for m in timed}
        others = [m for m in ("engine", "host") if m in timed]
        if "reference" in timed:
            for m in others:
                # each rep's engine run sat right next to its reference run: a ratio per rep shrugs off slow spells
                modes[m]["paired_ratio"] = {
                    k: statistics.median(
                        s[k] / r[k] for s, r in zip(samples[m], samples["reference"], strict=True) if r[k]
                    )
                    for k in ("prefill_tok_s", "decode_tok_s")
                }
            modes["agreement"] = {
                m: samples[m][-1]["tokens"] == samples["reference"][-1]["tokens"] for m in others
            }
        return modes, loads
    finally:
        if host is not None:
            host.close()
        if runtime is not None:
            runtime.unload()
        reference.close()


def _fmt_rep(r: dict) -> str:
    return f"{r['prefill_tok_s']:.0f}/{r['decode_tok_s']:.1f}"


def _summarize(samples: list[dict]) -> dict:
    out = {
        "prefill_tok_s": statistics.median(s["prefill_tok_s"] for s in samples),
        "decode_tok_s": statistics.median(s["decode_tok_s"] for s in samples),
        "prefill": spread([s["prefill_tok_s"] for s in samples]),
        "cpu_decode_tok_s": statistics.median(s["cpu_decode_tok_s"] for s in samples),
        "decode": spread([s["decode_tok_s"] for s in samples]),
        "prompt_tokens": samples[-1]["prompt_tokens"],
        "generated_tokens": samples[-1]["generated_tokens"],
    }
    if "engine_decode_tok_s" in samples[-1]:
        out["engine_internal"] = {
            "prefill_tok_s": statistics.median(s["engine_prefill_tok_s"] for s in samples),
            "decode_tok_s": statistics.median(s["engine_decode_tok_s"] for s in samples),
        }
    return out


# ----------------------------------------------------------------------------- (4) multi-turn chat
_CHAT_TURNS = (
    "Tell me about the river near the old town.",
    "What birds live there in winter?",
    "And which fish can you catch in spring?",
    "Summarise all of that in two sentences.",
    "Now give the walk a name.",
    "What should I bring with me?",
)


def run_chat(cfg: BenchConfig) -> dict:
    """K turns of a chat in one Runtime: per turn, the history's size and the tokens actually evaluated."""
    from engine.runtime import Runtime

    runtime = Runtime()
    for _ in runtime.load(cfg.model, cfg.load_settings()):
        pass
    try:
        banned = eog_tokens(runtime.vocab, runtime.n_vocab)
        sampling = bench_sampling(cfg, banned).replace(max_tokens=min(cfg.gen_tokens, 32))
        messages: list[Message] = [Message("system", "You are a helpful local guide.")]
        turns = []
        prev_history = prev_cached = 0
        for k in range(cfg.turns):
            messages.append(Message("user", _CHAT_TURNS[k % len(_CHAT_TURNS)]))
            done = None
            for event in runtime.chat(messages, sampling):
                if isinstance(event, ReplyDone):
                    done = event
            s = done.stats
            turns.append(
                {
                    "turn": k + 1,
                    "history_tokens": s.prompt_tokens,
                    "reused_tokens": s.reused_tokens,
                    "evaluated_tokens": s.evaluated_tokens,
                    # what the cache could not have: the history minus what the last turn left in the cache
                    "new_tokens": s.prompt_tokens - prev_cached,
                    "previous_history_tokens": prev_history,
                    "generated_tokens": s.generated_tokens,
                    "prefill_seconds": s.prefill_seconds,
                }
            )
            prev_history, prev_cached = s.prompt_tokens, s.n_past
            messages.append(Message("assistant", done.text))
        total_history = sum(t["history_tokens"] for t in turns)
        total_evaluated = sum(t["evaluated_tokens"] for t in turns)
        return {
            "turns": turns,
            "total_history_tokens": total_history,
            "total_evaluated_tokens": total_evaluated,
            # turn k >= 2 must not re-evaluate what turn k-1 already had in its prompt
            "prefix_reuse_ok": all(t["reused_tokens"] >= t["previous_history_tokens"] for t in turns[1:]),
        }
    finally:
        runtime.unload()


# ----------------------------------------------------------------------------- (5) chat window streaming
# app.hooks.bench_stream(model_path, prompt, max_tokens, threads) streams one reply into the real chat window on
# the running QApplication and returns "tokens_shown" and the time.perf_counter() values "stream_started" (send),
# "first_token" and "stream_ended" (reply stored). The bench runs a 1 ms timer on the event loop: the longest
# gap between ticks while the reply streams is the longest stall; window start-up and model load are reported
# apart (setup).

_STREAM_SCRIPT = r"""
import json, sys, time
from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QApplication
app = QApplication([])
from app.hooks import bench_stream as hook
ticks = [time.perf_counter()]
timer = QTimer(); timer.setInterval(1); timer.timeout.connect(lambda: ticks.append(time.perf_counter())); timer.start()
t0 = time.perf_counter()
out = hook(sys.argv[1], "Tell me a story about a river.", int(sys.argv[2]), int(sys.argv[3]))
timer.stop()
def longest(a, b):  # longest gap between ticks (or the window's edges) inside [a, b], in ms
    inside = [a] + [t for t in ticks if a < t < b] + [b]
    return max((y - x for x, y in zip(inside, inside[1:])), default=0.0) * 1000
start, end, shown = out["stream_started"], out["stream_ended"], out["tokens_shown"]
print(json.dumps({"tokens_shown": shown, "seconds": end - start, "tokens_shown_per_s": shown / (end - start),
                  "first_token_seconds": out["first_token"] - start if out.get("first_token") else None,
                  "longest_stall_ms": round(longest(start, end), 1),
                  "setup_seconds": start - t0, "longest_setup_stall_ms": round(longest(t0, start), 1),
                  "ticks": sum(1 for t in ticks if start < t < end)}), flush=True)
import os; os._exit(0)  # skip interpreter teardown: PySide6 6.12 can abort in its final GC (bool_dealloc)
"""


def run_streaming(cfg: BenchConfig) -> dict:
    out = _run_child(_STREAM_SCRIPT, [str(cfg.model), str(cfg.gen_tokens), str(cfg.threads)])
    out["available"] = True
    out["stall_target_ms"] = 50
    return out


# ----------------------------------------------------------------------------- (6) GUI memory
_GUI_SCRIPT = r"""
import importlib, json, pkgutil, sys, time
t0 = time.perf_counter()
from PySide6.QtWidgets import QApplication
import psutil
import app as pkg
for mod in pkgutil.iter_modules(pkg.__path__):
    if not mod.name.startswith("bench"):
        importlib.import_module("app." + mod.name)
qapp = QApplication([])
from app.main import MainWindow
window, source = MainWindow(), "app.main.MainWindow"
window.show()
for _ in range(5):
    qapp.processEvents()
print(json.dumps({"rss_bytes": psutil.Process().memory_info().rss, "startup_seconds": time.perf_counter() - t0,
                  "window": source, "llama_cpp_loaded": "llama_cpp" in sys.modules}), flush=True)
window.close()  # the main window shuts its engine child down
import os; os._exit(0)  # skip interpreter teardown: PySide6 6.12 can abort in its final GC (bool_dealloc)
"""


def _run_child(script: str, args: Sequence[str] = ()) -> dict:
    env = dict(os.environ, QT_QPA_PLATFORM=os.environ.get("QT_QPA_PLATFORM", "offscreen"))
    root = Path(__file__).resolve().parents[1]
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-c", script, *args], capture_output=True, text=True, env=env, cwd=root, timeout=300
    )
    if proc.returncode != 0:
        return {
            "error": (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
        }
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_gui_memory() -> dict:
    return _run_child(_GUI_SCRIPT)


# ----------------------------------------------------------------------------- (7) LoRA training
# Contract for training: `training.bench.lora_tokens_per_second(model_path: str, threads: int) -> dict` with at
# least "tokens_per_s"; it runs a few optimizer steps on the model and returns the measured rate.
def run_training(cfg: BenchConfig) -> dict:
    if importlib.util.find_spec("torch") is None:
        return {"available": False, "reason": "torch is not installed (pip install -e '.[train]')"}
    try:
        module = importlib.import_module("training.bench")
    except ModuleNotFoundError as err:
        return {"available": False, "reason": f"training has not landed ({err.name} missing)"}
    if not hasattr(module, "lora_tokens_per_second"):
        return {"available": False, "reason": "training.bench has no lora_tokens_per_second()"}
    out = dict(module.lora_tokens_per_second(str(cfg.model), cfg.threads))
    out["available"] = True
    return out
