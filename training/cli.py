"""Training commands for the `ingle` CLI: train, export, eval. torch is imported only when a command runs."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from engine import units
from engine.errors import SettingsError


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


def _callback(progress):
    """A (done, total) callback that drives `progress` and closes it when done."""

    def update(done: int, total: int) -> None:
        progress.update(done, total=total)
        if done >= total:
            progress.close()

    return update


def _plan(event) -> str:
    """'40 steps = 6.7 epochs of 6 steps': what the run will do, and which setting decided it."""
    steps = f"{event.steps_per_epoch:.1f}".removesuffix(".0")
    text = f"{event.total_steps} steps = {event.epochs:.1f} epochs of {steps} steps"
    if event.max_steps:
        text += f" (--max-steps {event.max_steps} sets the total, overriding --epochs; the data is cycled)"
    if event.start_step:
        text += f", resuming after step {event.start_step}"
    return text


def cmd_train(args) -> int:
    from engine.progress import Progress, say
    from training.events import CheckpointSaved, TrainDone, TrainPhase, TrainStarted, TrainStep, ValLoss
    from training.runner import TrainingRun

    settings = _settings(args)
    options = {"resume": args.resume, "data_format": args.format, "skip_bad_lines": args.skip_bad_lines}
    base = _resolve(args.base)
    steps = tokenizing = None
    phase = Progress(
        "train: starting the training process (importing torch takes a few seconds)", interval=30.0
    )
    phase.tick()
    with TrainingRun(base, args.data, args.out, settings, **options) as run:
        try:
            for event in run.events(heartbeats=True):
                if event is None:  # the child is alive: a long phase shows its time so far
                    if phase is not None:
                        phase.tick()
                    continue
                if phase is not None:
                    phase.close()
                    phase = None
                if isinstance(event, TrainPhase) and event.total:
                    tokenizing = tokenizing or Progress("train: tokenizing", unit="examples")
                    _callback(tokenizing)(event.done, event.total)
                elif isinstance(event, TrainPhase):
                    # loading and dequantizing a big model takes minutes: its time so far, every 30 s in a log
                    if steps is not None:
                        steps.close()  # the steps are done: the phase after them gets its own line
                    phase = Progress(f"train: {event.text}", interval=30.0)
                    phase.tick()
                elif isinstance(event, TrainStarted):
                    s = event.dataset_stats
                    say("train", f"{event.trainable_params:,} LoRA parameters on {event.train_examples} examples "
                        f"({event.val_examples} validation, {s.get('target_tokens')} target tokens, "
                        f"{s.get('truncated')} truncated); bf16 {'on' if event.bf16 else 'off'}")  # fmt: skip
                    say("train", _plan(event))
                    steps = Progress("train", event.total_steps, "steps")
                    steps.update(event.start_step)
                elif isinstance(event, TrainStep):
                    steps.update(event.step, f"loss {event.loss:.4f}, lr {event.learning_rate:.2e}, "
                                 f"{event.tokens_per_second:.0f} tok/s, mem {units.mib(event.memory_bytes)}",
                                 eta=event.eta_seconds)  # fmt: skip
                elif isinstance(event, ValLoss):
                    steps.note(f"step {event.step}: validation loss {event.loss:.4f}")
                elif isinstance(event, CheckpointSaved):
                    steps.note(f"checkpoint at step {event.step}: {event.path}")
                elif isinstance(event, TrainDone):
                    if steps is not None:
                        steps.close()
                    say("train", f"wrote {event.adapter_path} after {event.steps} steps in {units.clock(event.seconds)} "
                        f"(train loss {event.final_loss:.4f}"
                        + (f", validation loss {event.val_loss:.4f})" if event.val_loss is not None else ")"))  # fmt: skip
                    if not args.no_library:
                        _add_to_library(event.adapter_path, f"LoRA adapter trained on {Path(args.data).name}")
        except KeyboardInterrupt:
            for bar in (phase, steps):
                if bar is not None:
                    bar.close()
            return _stop(run)
        finally:
            for bar in (phase, tokenizing, steps):
                if bar is not None:
                    bar.close()
    return 0


def _stop(run) -> int:
    """Ctrl+C: the child finishes its step and saves a checkpoint to resume from; a second Ctrl+C stops at once."""
    from engine.errors import Cancelled
    from engine.progress import say
    from training.events import CheckpointSaved

    run.cancel()
    say("train", "stopping after this step and saving a checkpoint (Ctrl+C again stops at once, losing it)")
    saved = False
    try:
        for event in run.events():
            if isinstance(event, CheckpointSaved):
                saved = True
                say("train", f"checkpoint at step {event.step}: {event.path}")
    except Cancelled as err:
        print(f"ingle: {err}", file=sys.stderr)
    if saved:
        say("train", "to go on, run the same command with --resume")
    return 130


def _export(base: str, adapter: str, out: Path, q: str, scale: float, label: str) -> Path:
    """One merged export, run in a child process (see call_in_child); its progress goes to the terminal."""
    from engine.progress import Progress
    from training.export import export

    return export(base, adapter, out, q, scale, _callback(Progress(label, unit="tensors")))


def _export_report(base: str, adapter: str, outs: dict, data: str) -> dict:
    """cmd_export's measuring, run in a child process (see call_in_child); its progress goes to the terminal."""
    from engine.progress import Progress
    from training.evaluate import export_report

    return export_report(base, adapter, outs, data,
                         lambda what: _callback(Progress(f"export: measuring {what}", unit="examples")))  # fmt: skip


def cmd_export(args) -> int:
    # llama.cpp (quantizing, evaluating) runs in child processes: a base model that makes it abort ends the
    # child, and the command says so in one line
    from engine.child_process import call_in_child
    from engine.progress import Progress, say

    args.base = _resolve(args.base)
    outs = {}
    args.quant = args.quant or ["F16"]
    with Progress("export", len(args.quant), "files") as progress:
        for done, q in enumerate(args.quant):
            out = (
                Path(args.out)
                if len(args.quant) == 1
                else Path(args.out).with_name(f"{Path(args.out).stem}-{q}.gguf")
            )
            how = "merging the adapter in F16"
            if q.upper() != "F16":
                how += f", then quantizing to {q.upper()}"
            progress.note(f"{q.upper()} ({done + 1}/{len(args.quant)}): {how} -> {out}")
            outs[q.upper()] = call_in_child(_export, args.base, args.adapter, out, q, args.scale,
                                            f"export: {q.upper()} merge", what="export")  # fmt: skip
            if not args.no_library:
                description = f"{Path(args.base).stem} merged with {Path(args.adapter).stem}, {q.upper()}"
                _add_to_library(out, description, progress.note)
            progress.update(done + 1, f"{q.upper()} written")
    if args.data:
        if "F16" not in outs:
            say("export", "F16 merge as the reference for KL")
            reference = Path(args.out).with_name(Path(args.out).stem + "-F16.gguf")
            merged = call_in_child(_export, args.base, args.adapter, reference, "F16", args.scale,
                                   "export: F16 merge", what="export")  # fmt: skip
            outs = {"F16": merged, **outs}
        report = call_in_child(_export_report, args.base, args.adapter, outs, args.data, what="evaluation")
        _print_report(report, args.json)
    return 0


def _add_to_library(path, description: str, tell=None) -> None:
    """Link an output into the library (so the GUI's pickers list it), where it was written."""
    from engine.library import Library
    from engine.progress import say
    from engine.text import printable

    entry = Library().register(path, source="training", description=description)
    text = f"in the library as '{printable(entry.name)}' (linked, not copied)"
    if tell is not None:
        tell(text)
    else:
        say("train", text)


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
    """cmd_eval's llama.cpp work, run in a child process (see call_in_child); its progress goes to the terminal."""
    from engine.progress import Progress
    from training.evaluate import evaluation_items, open_runtime, perplexity

    rt = open_runtime(model, adapters, n_ctx=n_ctx)
    try:
        items = evaluation_items(rt, data, n_ctx, skip_bad_lines,
                                 _callback(Progress("eval: tokenizing", unit="examples")))  # fmt: skip
        return perplexity(rt, items, _callback(Progress("eval: perplexity", unit="examples")))
    finally:
        rt.close()


def cmd_eval(args) -> int:
    from engine.child_process import call_in_child
    from engine.cli_flags import parse_adapter
    from engine.progress import say
    from engine.text import printable

    adapters = [parse_adapter(spec) for spec in args.adapter or []]
    model = _resolve(args.model)
    with_adapters = f" with {len(adapters)} adapter(s)" if adapters else ""
    say("eval", f"loading {printable(Path(model).name)}{with_adapters}")
    # in a child process: a model that makes llama.cpp abort ends the child, not the command
    result = call_in_child(_perplexity, model, adapters, args.n_ctx, args.data, args.skip_bad_lines,
                           what="evaluation")  # fmt: skip
    _print_report({Path(args.model).name + (" + adapter" if adapters else ""): result}, args.json)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from engine.cli_flags import add_settings_flags
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
    p.add_argument("base", help="base model GGUF the adapter was trained on (path or library name)")
    p.add_argument("adapter", help="LoRA adapter GGUF to merge in")
    p.add_argument("--quant", action="append", default=None, metavar="TYPE",
                   help="F16, Q8_0, Q6_K, Q5_K_M, Q4_K_M, ... (repeatable; default F16)")  # fmt: skip
    p.add_argument("--out", required=True,
                   help="GGUF to write (with several --quant: NAME-TYPE.gguf beside it)")  # fmt: skip
    p.add_argument("--scale", type=float, default=1.0, help="adapter scale to merge with (default 1.0)")
    p.add_argument("--data", help="dataset to measure perplexity, KL and top-1 agreement of each export")
    p.add_argument("--json", action="store_true", help="print the measurements as JSON")
    p.add_argument("--no-library", action="store_true", help="do not link the exports into the library")
    p.set_defaults(func=cmd_export, quant=None)

    p = sub.add_parser(
        "eval", help="perplexity of a model (optionally with adapters) on a dataset, by llama.cpp"
    )
    p.add_argument("model", help="model GGUF (path or library name)")
    p.add_argument("data", help="dataset, in any format `train` reads; reply tokens are measured")
    p.add_argument("--adapter", action="append", metavar="FILE[:SCALE]",
                   help="apply a LoRA adapter (repeatable; scale default 1.0)")  # fmt: skip
    p.add_argument("-c", "--ctx-size", "--n-ctx", dest="n_ctx", type=int, default=1024, metavar="INT",
                   help="context size in tokens; longer examples are cut to it (default 1024)")  # fmt: skip
    # the first releases called it --ctx: still accepted, no longer shown
    p.add_argument("--ctx", dest="n_ctx", type=int, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    p.add_argument("--skip-bad-lines", action="store_true", help="measure the good lines when some are bad")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_eval)
