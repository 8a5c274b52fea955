"""`ingle bench [MODEL]`: Ingle's engine against raw llama.cpp, plus chat, load and GUI figures. Registered by app.cli."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from engine.errors import SettingsError


def register(subparsers) -> None:
    p = subparsers.add_parser("bench", help="benchmark the engine against a minimal llama.cpp loop")
    p.add_argument("model", nargs="?", help="model path or library name (default: the starter model)")
    p.add_argument(
        "-t", "--threads", type=int, default=0, help="CPU threads for every mode (default: physical cores)"
    )
    p.add_argument(
        "--prompt-tokens", type=int, default=256, metavar="N", help="prompt length for prefill (256)"
    )
    p.add_argument("--gen-tokens", type=int, default=64, metavar="M", help="tokens generated greedily (64)")
    p.add_argument("--reps", type=int, default=5, help="timed repetitions of each mode (5)")
    p.add_argument("--warmup", type=int, default=1, help="untimed repetitions first (1)")
    p.add_argument("--turns", type=int, default=4, metavar="K", help="turns of the multi-turn chat (4)")
    p.add_argument("--json", metavar="FILE", help="also write every figure to FILE as JSON")
    p.add_argument(
        "--modes",
        default=None,
        metavar="LIST",
        help="modes to run, by name or number, e.g. reference,engine,host or 1-3,5 (default: all): "
        "1 reference, 2 engine, 3 host, 4 chat, 5 streaming, 6 gui, 7 training, 8 speculation, 9 sampling",
    )
    p.add_argument(
        "--draft",
        metavar="MODEL",
        help="mode 8: draft model for MODEL (default: MODEL drafts for an F16 copy)",
    )
    p.add_argument("--llama-bench", metavar="PATH", help="modes 8, 9: llama-bench to compare with (tg)")
    p.set_defaults(func=cmd_bench)


def _check(name: str, value: int, low: int, high: int) -> int:
    if not low <= value <= high:
        raise SettingsError(name, f"{value} is outside {low}..{high}")
    return value


def cmd_bench(args) -> int:
    from app.bench import MODES, BenchConfig, markdown, parse_modes, run_bench
    from engine.hardware import default_threads
    from engine.library import Library
    from engine.progress import Progress

    modes = parse_modes(args.modes) if args.modes else MODES
    path = Library().resolve(args.model)
    cfg = BenchConfig(
        model=Path(path),
        threads=_check("threads", args.threads, 0, 512) or default_threads(),
        prompt_tokens=_check("prompt_tokens", args.prompt_tokens, 2, 8192),
        gen_tokens=_check("gen_tokens", args.gen_tokens, 2, 8192),
        reps=_check("reps", args.reps, 1, 1000),
        warmup=_check("warmup", args.warmup, 0, 100),
        turns=_check("turns", args.turns, 1, 100),
        modes=modes,
        draft=Path(Library().resolve(args.draft)) if args.draft else None,
        llama_bench=args.llama_bench,
    )
    bars: list[Progress] = []

    def progress(label: str, total: int):
        bars.append(Progress(f"bench: {label}", total, "reps"))
        return bars[-1].update

    try:
        result = run_bench(cfg, lambda msg: print(f"bench: {msg}", file=sys.stderr, flush=True), progress)
    finally:
        for bar in bars:
            bar.close()
    print(markdown(result))
    if args.json:
        from engine.library import atomic_write_bytes

        text = json.dumps(result.to_dict(), indent=2, default=str) + "\n"
        try:
            atomic_write_bytes(Path(args.json), text.encode("utf-8"))
        except OSError as err:
            raise SettingsError("json", f"cannot write {args.json}: {err.strerror or err}") from None
    return 0
