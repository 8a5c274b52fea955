"""`ingle bench`: Ingle's engine against a minimal llama.cpp loop, on the same model, threads and settings.

Modes (issue 8): (1) reference loop on llama.cpp's low-level API, (2) the engine in-process, (3) the engine
through its child-process host, (4) a multi-turn chat (prefix reuse), (5) chat window streaming (hook),
(6) load time and the GUI's resident memory, (7) LoRA training tokens/s (hook). Modes 1-3 run interleaved,
one repetition of each in turn, so a shared, noisy machine slows them alike.

The modes themselves are in app/bench_modes.py, the Markdown report in app/bench_report.py.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Callable
from dataclasses import dataclass, field

from app.bench_modes import (
    DEFAULT_MODES,
    MODES,
    TIMED_MODES,
    BenchConfig,
    exact_prompt,
    no_progress,
    parse_modes,
    run_chat,
    run_gui_memory,
    run_streaming,
    run_timed_modes,
    run_training,
)
from app.bench_report import markdown

# The names app/bench_cli.py, the tests and the README use, whichever module now holds them.
__all__ = [
    "DEFAULT_MODES",
    "MODES",
    "TIMED_MODES",
    "BenchConfig",
    "BenchResult",
    "exact_prompt",
    "machine_summary",
    "markdown",
    "parse_modes",
    "run_bench",
    "run_streaming",
]


@dataclass
class BenchResult:
    config: dict
    machine: dict
    modes: dict
    ratios: dict
    chat: dict = field(default_factory=dict)
    streaming: dict = field(default_factory=dict)
    load: dict = field(default_factory=dict)
    gui: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)
    under_load: dict = field(default_factory=dict)  # decode with a competing load (app/bench_load.py)
    speculation: dict = field(
        default_factory=dict
    )  # draft, lookup_* (app/bench_spec.py) and reopen (bench_load)
    sampling: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def machine_summary() -> dict:
    from engine.hardware import detect

    hw = detect()
    import psutil

    return {
        "description": hw.describe(),
        "cpu": platform.processor() or platform.machine(),
        "physical_cores": hw.physical_cores,
        "amx": hw.has_amx,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "cpu_percent_before": psutil.cpu_percent(interval=0.5),
    }


def run_bench(
    cfg: BenchConfig, log: Callable[[str], None] = lambda _m: None, progress: Callable = no_progress
) -> BenchResult:
    """The modes of `cfg.modes`; those not chosen are left out of the result (empty blocks)."""
    from engine.gguf_info import inspect_gguf

    inspect_gguf(cfg.model)  # a clear ModelFileError for a bad file before anything else
    machine = machine_summary()
    chosen = [m for m in MODES if m in cfg.modes]
    steps = [m for m in chosen if m not in TIMED_MODES]
    if cfg.timed_modes:
        steps.insert(0, "timed")
    step_of = {m: i for i, m in enumerate(steps, 1)}

    def announce(mode: str, what: str) -> None:
        log(f"[{step_of[mode]}/{len(steps)}] {what}")

    modes, loads, ratios = {}, {}, {}
    if cfg.timed_modes:
        numbers = ", ".join(f"({MODES.index(m) + 1}) {m}" for m in cfg.timed_modes)
        announce("timed", f"modes {numbers}, interleaved: {cfg.warmup} warm-up + {cfg.reps} reps")
        modes, loads = run_timed_modes(cfg, log, progress)
    if "reference" in modes:
        ref = modes["reference"]
        ratios = {
            m: {k: (modes[m][k] / ref[k] if ref[k] else 0.0) for k in ("prefill_tok_s", "decode_tok_s")}
            for m in ("engine", "host")
            if m in modes
        }
    chat = streaming = gui = training = {}
    if "chat" in cfg.modes:
        announce("chat", f"mode (4) multi-turn chat, {cfg.turns} turns")
        chat = run_chat(cfg)
    if "streaming" in cfg.modes:
        announce("streaming", "mode (5) chat window streaming")
        streaming = run_streaming(cfg)
    if "gui" in cfg.modes:
        announce("gui", "mode (6) GUI memory")
        gui = run_gui_memory()
    if "training" in cfg.modes:
        announce(
            "training", "mode (7) LoRA training (starts a training process; about a minute on the starter)"
        )
        training = run_training(cfg)
    under_load, speculation, sampling = {}, {}, {}
    if "under_load" in cfg.modes:
        from app.bench_load import run_under_load

        announce("under_load", "mode (8) decoding under a competing load (one busy process per CPU but one)")
        under_load = run_under_load(cfg, log)
    if "speculation" in cfg.modes:
        announce("speculation", "mode (10) speculative decoding: a draft pair, prompt lookup on two prompts")
        from app.bench_spec import run_speculation

        speculation.update(run_speculation(cfg, log))
    if "reopen" in cfg.modes:
        from app.bench_load import run_reopen

        announce(
            "reopen",
            "mode (9) reopening a 3,000-token conversation after a restart, with and without its cache",
        )
        speculation["reopen"] = run_reopen(cfg, log)
    if "sampling" in cfg.modes:
        announce("sampling", "mode (11) sampling's share: engine decode against llama-bench tg")
        from app.bench_spec import run_sampling

        sampling = run_sampling(cfg, log)
    machine["load_average_after"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    config = {
        "model": str(cfg.model),
        "threads": cfg.threads,
        "prompt_tokens": cfg.prompt_tokens,
        "gen_tokens": cfg.gen_tokens,
        "reps": cfg.reps,
        "warmup": cfg.warmup,
        "turns": cfg.turns,
        "n_ctx": cfg.load_settings().n_ctx,
        "modes": list(chosen),
        "interleaved": True,  # one rep of each mode in turn, the order rotating by rep
    }
    return BenchResult(
        config,
        machine,
        modes,
        ratios,
        chat,
        streaming,
        loads,
        gui,
        training,
        under_load,
        speculation,
        sampling,
    )
