"""Training commands for the `ingle` CLI: train, export, eval. torch is imported only when a command runs."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from engine.errors import SettingsError

_BAR = 30


def _bar(done: int, total: int) -> str:
    filled = int(_BAR * done / max(1, total))
    return "[" + "#" * filled + "." * (_BAR - filled) + f"] {done}/{total}"


def _status(line: str) -> None:
    print("\r" + line.ljust(110)[:160], end="", file=sys.stderr, flush=True)


def _settings(args):
    from training.lora import TrainSettings

    values = {}
    if args.config:
        try:
            values = json.loads(Path(args.config).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise SettingsError("config", f"cannot read {args.config}: {err}") from None
        if not isinstance(values, dict):
            raise SettingsError("config", f"{args.config} must hold a JSON object of settings")
    values.update(_given(args, TrainSettings))
    return TrainSettings.from_dict(values)


def _given(args, cls) -> dict:
    import dataclasses

    return {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(cls)
        if getattr(args, f.name, None) is not None
    }


def _resolve(name: str) -> str:
    from engine.library import Library

    return str(Library().resolve(name))


def cmd_train(args) -> int:
    from training.events import CheckpointSaved, TrainDone, TrainStarted, TrainStep, ValLoss
    from training.runner import TrainingRun

    settings = _settings(args)
    options = {"resume": args.resume, "data_format": args.format, "skip_bad_lines": args.skip_bad_lines}
    with TrainingRun(_resolve(args.base), args.data, args.out, settings, **options) as run:
        try:
            for event in run.events():
                if isinstance(event, TrainStarted):
                    s = event.dataset_stats
                    print(f"training {event.trainable_params:,} LoRA parameters on {event.train_examples} examples "
                          f"({event.val_examples} validation, {s.get('target_tokens')} target tokens, "
                          f"{s.get('truncated')} truncated); bf16 {'on' if event.bf16 else 'off'}", file=sys.stderr)  # fmt: skip
                elif isinstance(event, TrainStep):
                    _status(f"{_bar(event.step, event.total_steps)} loss {event.loss:.4f} lr {event.learning_rate:.2e} "
                            f"{event.tokens_per_second:.0f} tok/s ETA {event.eta_seconds:.0f}s "
                            f"mem {event.memory_bytes / 2**20:.0f} MiB")  # fmt: skip
                elif isinstance(event, ValLoss):
                    print(f"\nstep {event.step}: validation loss {event.loss:.4f}", file=sys.stderr)
                elif isinstance(event, CheckpointSaved):
                    print(f"\ncheckpoint at step {event.step}: {event.path}", file=sys.stderr)
                elif isinstance(event, TrainDone):
                    print(f"\nwrote {event.adapter_path} after {event.steps} steps in {event.seconds:.1f}s "
                          f"(train loss {event.final_loss:.4f}"
                          + (f", validation loss {event.val_loss:.4f})" if event.val_loss is not None else ")"))  # fmt: skip
                    if not args.no_library:
                        _add_to_library(event.adapter_path, f"LoRA adapter trained on {Path(args.data).name}")
        except KeyboardInterrupt:
            run.cancel()
            raise
    return 0


def cmd_export(args) -> int:
    # llama.cpp (quantizing, evaluating) runs in child processes: a base model that makes it abort cannot
    # take the command down
    from engine.host import call_in_child
    from training.evaluate import export_report
    from training.export import export

    args.base = _resolve(args.base)
    outs = {}
    args.quant = args.quant or ["F16"]
    for q in args.quant:
        out = (
            Path(args.out)
            if len(args.quant) == 1
            else Path(args.out).with_name(f"{Path(args.out).stem}-{q}.gguf")
        )
        print(f"exporting {q} -> {out}", file=sys.stderr)
        outs[q.upper()] = call_in_child(export, args.base, args.adapter, out, q, args.scale, what="export")
        if not args.no_library:
            _add_to_library(out, f"{Path(args.base).stem} merged with {Path(args.adapter).stem}, {q.upper()}")
    if args.data:
        if "F16" not in outs:
            f16 = Path(args.out).with_name(Path(args.out).stem + "-F16.gguf")
            outs = {"F16": call_in_child(export, args.base, args.adapter, f16, "F16", args.scale, what="export"),
                    **outs}  # fmt: skip
        report = call_in_child(export_report, args.base, args.adapter, outs, args.data, what="evaluation")
        _print_report(report, args.json)
    return 0


def _add_to_library(path, description: str) -> None:
    """Link an output into the library (so the GUI's pickers list it), where it was written."""
    from engine.library import Library

    entry = Library().register(path, source="training", description=description)
    print(f"in the library as '{entry.name}' (linked, not copied)", file=sys.stderr)


def _print_report(report: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(report, indent=2))
        return
    for name, row in report.items():
        extra = ""
        if "kl_divergence" in row:
            extra = f"  KL vs F16 {row['kl_divergence']:.5f}  top-1 agreement {row['top1_agreement']:.1%}"
        print(f"{name:>14}: perplexity {row['perplexity']:.3f} over {row['tokens']} tokens{extra}")


def _perplexity(model: str, adapters: list, n_ctx: int, data: str, skip_bad_lines: bool) -> dict:
    """cmd_eval's llama.cpp work, run in a child process (see call_in_child)."""
    from training.evaluate import evaluation_items, open_runtime, perplexity

    rt = open_runtime(model, adapters, n_ctx=n_ctx)
    try:
        return perplexity(rt, evaluation_items(rt, data, n_ctx, skip_bad_lines))
    finally:
        rt.close()


def cmd_eval(args) -> int:
    from engine.host import call_in_child

    adapters = []
    for spec in args.adapter or []:
        path, _, scale = spec.partition(":")
        adapters.append((path, float(scale) if scale else 1.0))
    result = call_in_child(_perplexity, _resolve(args.model), adapters, args.ctx, args.data, args.skip_bad_lines,
                           what="evaluation")  # fmt: skip
    _print_report({Path(args.model).name + (" + adapter" if adapters else ""): result}, args.json)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from engine.cli import add_settings_flags
    from training.lora import TrainSettings

    p = sub.add_parser("train", help="train a LoRA adapter on a GGUF base model (needs the train extra)")
    p.add_argument("base", help="base model GGUF (path or library name)")
    p.add_argument("data", help="dataset: JSONL (chat messages, Alpaca, ShareGPT, text) or a .txt file")
    p.add_argument("--out", required=True, help="adapter GGUF to write")
    p.add_argument("--config", help="JSON file of training settings (flags override it)")
    p.add_argument(
        "--format", choices=["chat", "alpaca", "sharegpt", "text"], help="override format detection"
    )
    p.add_argument("--skip-bad-lines", action="store_true", help="train on the good lines when some are bad")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint beside --out")
    p.add_argument("--no-library", action="store_true", help="do not link the adapter into the library")
    add_settings_flags(p, TrainSettings, "training settings")
    p.add_argument("--lr", dest="learning_rate", type=float, default=None, help="same as --learning-rate")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("export", help="merge an adapter into its base and write F16 or quantized GGUF")
    p.add_argument("base")
    p.add_argument("adapter")
    p.add_argument("--quant", action="append", default=None, metavar="TYPE",
                   help="F16, Q8_0, Q6_K, Q5_K_M, Q4_K_M, ... (repeatable)")  # fmt: skip
    p.add_argument("--out", required=True)
    p.add_argument("--scale", type=float, default=1.0, help="adapter scale to merge with")
    p.add_argument("--data", help="dataset to measure perplexity, KL and top-1 agreement of each export")
    p.add_argument("--json", action="store_true")
    p.add_argument("--no-library", action="store_true", help="do not link the exports into the library")
    p.set_defaults(func=cmd_export, quant=None)

    p = sub.add_parser(
        "eval", help="perplexity of a model (optionally with adapters) on a dataset, by llama.cpp"
    )
    p.add_argument("model")
    p.add_argument("data")
    p.add_argument("--adapter", action="append", metavar="FILE[:SCALE]")
    p.add_argument("--ctx", type=int, default=1024)
    p.add_argument("--skip-bad-lines", action="store_true")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_eval)
