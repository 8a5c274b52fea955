"""`ingle eval-context`: needle-in-a-haystack and perplexity at several context lengths, in the engine child,
printed as a length x depth heatmap (base and stretched RoPE settings side by side with --compare)."""

from __future__ import annotations

import argparse
import sys

from engine.cli import add_engine_flags, how_it_died, open_engine
from engine.cli_flags import add_settings_flags, parse_adapter, settings_from_args
from engine.errors import EngineDied, EngineError, SettingsError
from engine.eval_context import (
    DEFAULT_DEPTHS,
    base_settings,
    heatmap_lines,
    needed_context,
    parse_depths,
    parse_lengths,
    run_eval,
    save_json,
    side_by_side,
)
from engine.settings import LoadSettings, RopeScaling
from engine.text import printable


def cmd_eval_context(args) -> int:
    from engine.library import Library

    lengths = parse_lengths(args.lengths)
    depths = parse_depths(args.depths)
    path = Library().resolve(args.model)
    settings = settings_from_args(args, LoadSettings)
    if args.n_ctx is None:
        settings = settings.replace(n_ctx=needed_context(lengths))
    if (
        args.swa_full is None
    ):  # keep every position of sliding-window layers so each depth reuses the haystack
        settings = settings.replace(swa_full=True)
    if args.compare and settings.rope_scaling in (RopeScaling.MODEL, RopeScaling.NONE):
        raise SettingsError(
            "compare", "--compare needs stretched settings: add --rope-scaling linear or yarn"
        )
    runs = (
        [("base", base_settings(settings)), ("stretched", settings)] if args.compare else [("run", settings)]
    )
    adapters = [parse_adapter(a) for a in args.adapter or []]
    engine = open_engine(in_process=args.in_process)
    last = [""]

    def progress(fraction: float, text: str) -> None:
        if sys.stderr.isatty():
            print(f"\r{fraction:4.0%} {text:<60}", end="", file=sys.stderr, flush=True)
        elif text.split(":")[0] != last[0]:
            last[0] = text.split(":")[0]
            print(f"eval-context: {last[0]}", file=sys.stderr)

    try:
        report = run_eval(engine, path, runs, lengths, depths, adapters, progress)
    except EngineDied as err:
        log = getattr(engine, "crash_log", None)
        where = f"; llama.cpp's messages are in {log}" if log else ""
        raise EngineError(f"llama.cpp crashed during the context eval ({how_it_died(err)}): try shorter lengths "
                          f"or other load settings{where}.") from None  # fmt: skip
    finally:
        engine.close()
        if sys.stderr.isatty():
            print("\r" + " " * 70 + "\r", end="", file=sys.stderr, flush=True)
    report["model"] = printable(report["model"])
    if args.json:
        save_json(report, args.json)
    colour = sys.stdout.isatty()
    for line in side_by_side([heatmap_lines(run, colour) for run in report["runs"]]):
        print(line)
    print(
        "cells: ✓/✗ the greedy answer contains the needle; the figure is the needle's probability per token."
    )
    if args.json:
        print(f"saved {printable(args.json)}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval-context",
        help="needle-in-a-haystack and perplexity at several context lengths (RoPE scaling's effect)",
    )
    p.add_argument("model", nargs="?", help="a path or library name (default: the starter)")
    p.add_argument("--lengths", default="1k,2k,4k", help="haystack lengths in tokens, e.g. 512,1k,2k,4k")
    p.add_argument("--depths", default=",".join(map(str, DEFAULT_DEPTHS)),
                   help="where the needle sits, percent of the haystack before it")  # fmt: skip
    p.add_argument("--json", metavar="FILE", help="also save the results as JSON (written atomically)")
    p.add_argument("--compare", action="store_true",
                   help="run the model's own positions and the given RoPE scaling side by side")  # fmt: skip
    p.add_argument(
        "--adapter", action="append", metavar="FILE[:SCALE]", help="apply a LoRA adapter (repeatable)"
    )
    add_engine_flags(p)
    add_settings_flags(p, LoadSettings, "model loading (RoPE scaling included)")
    p.set_defaults(func=cmd_eval_context)
