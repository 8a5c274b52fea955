"""`ingle bench [MODEL]`: Ingle's engine against raw llama.cpp, plus chat, load and GUI figures. Registered by app.cli."""

from __future__ import annotations

import json
import signal
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
        help="modes to run, by name or number, e.g. reference,engine,host or 1-3,5: "
        "1 reference, 2 engine, 3 host, 4 chat, 5 streaming, 6 gui, 7 training (default: 1-7), 8 under_load, "
        "9 reopen, 10 speculation, 11 sampling",
    )
    p.add_argument(
        "--draft",
        metavar="MODEL",
        help="mode 10: draft model for MODEL (default: MODEL drafts for an F16 copy)",
    )
    p.add_argument("--llama-bench", metavar="PATH", help="modes 10, 11: llama-bench to compare with (tg)")
    server = p.add_argument_group("server mode (Ingle's API server against llama.cpp's llama-server)")
    server.add_argument(
        "--server", action="store_true", help="measure concurrent streams through the HTTP API instead"
    )
    server.add_argument(
        "--llama-server",
        metavar="PATH",
        help="also measure this llama-server (packaging/build_llama_tools.sh)",
    )
    server.add_argument(
        "--streams", default="1,2,4,8", metavar="LIST", help="concurrent stream counts (1,2,4,8)"
    )
    server.add_argument("--tokens", type=int, default=64, metavar="N", help="tokens per stream (64)")
    from engine.remote_cli import add_remote_flags

    add_remote_flags(
        p
    )  # `--remote URL|NAME`: the remote engine's overhead over the same server called directly
    p.set_defaults(func=cmd_bench)


def _check(name: str, value: int, low: int, high: int) -> int:
    if not low <= value <= high:
        raise SettingsError(name, f"{value} is outside {low}..{high}")
    return value


def cmd_bench(args) -> int:
    from app.bench import DEFAULT_MODES, BenchConfig, markdown, parse_modes, run_bench
    from engine.hardware import default_threads
    from engine.library import Library
    from engine.progress import Progress

    if args.remote:
        return cmd_bench_remote(args)
    if args.server:
        return cmd_bench_server(args)
    if args.llama_server:
        raise SettingsError("llama-server", "is a server-mode option: add --server")
    modes = parse_modes(args.modes) if args.modes else DEFAULT_MODES
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
        write_json(args.json, result.to_dict())
    return 0


def write_json(path: str, data: dict) -> None:
    from engine.library import atomic_write_bytes

    text = json.dumps(data, indent=2, default=str) + "\n"
    try:
        atomic_write_bytes(Path(path), text.encode("utf-8"))
    except OSError as err:
        raise SettingsError("json", f"cannot write {path}: {err.strerror or err}") from None


def _interrupt(_signum, _frame) -> None:
    raise KeyboardInterrupt


def cmd_bench_server(args) -> int:
    from app.bench import machine_summary
    from app.bench_server import ServerBenchConfig, check_llama_server, parse_streams, run_server_bench
    from app.bench_server_report import markdown
    from engine.gguf_info import inspect_gguf
    from engine.hardware import default_threads
    from engine.library import Library

    llama_server = check_llama_server(args.llama_server) if args.llama_server else None
    path = Path(Library().resolve(args.model))
    inspect_gguf(path)  # a clear ModelFileError for a bad file before any server starts
    cfg = ServerBenchConfig(
        model=path,
        threads=_check("threads", args.threads, 0, 512) or default_threads(),
        streams=parse_streams(args.streams),
        tokens=_check("tokens", args.tokens, 2, 4096),
        prompt_words=_check("prompt_tokens", args.prompt_tokens, 2, 8192),
        reps=_check("reps", args.reps, 1, 1000),
        llama_server=llama_server,
    )
    if llama_server is None:
        print("bench: llama-server column skipped: no --llama-server given", file=sys.stderr)
    # a `kill` ends the run like Ctrl+C: the servers it started are stopped on the way out
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        result = run_server_bench(cfg, lambda msg: print(f"bench: {msg}", file=sys.stderr, flush=True))
    finally:
        signal.signal(signal.SIGTERM, previous)
    result["machine"] = machine_summary()
    print(markdown(result))
    if args.json:
        write_json(args.json, {"server": result})
    return 0


def cmd_bench_remote(args) -> int:
    """`ingle bench --remote URL`: decode tok/s through RemoteEngine against the same requests sent directly."""
    from engine.remote_bench import bench_remote
    from engine.remote_cli import open_remote

    gen_tokens = _check("gen_tokens", args.gen_tokens, 3, 8192)
    reps, warmup = _check("reps", args.reps, 1, 1000), _check("warmup", args.warmup, 0, 100)
    args.adapter = args.template = None
    engine, _loaded = open_remote(args)
    with engine:
        result = bench_remote(
            engine,
            gen_tokens=gen_tokens,
            reps=reps,
            warmup=warmup,
            log=lambda msg: print(f"bench: {msg}", file=sys.stderr, flush=True),
        )
    print(result.markdown())
    if args.json:
        write_json(args.json, result.to_dict())
    return 0
