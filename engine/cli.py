"""Engine commands for the `ingle` CLI: info, models, system, run, chat. Registered by app.cli."""

from __future__ import annotations

import argparse
import dataclasses
import json
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

from engine.errors import IngleError, SettingsError
from engine.events import ContextTrimmed, LoadProgress, Message, ReplyDone, Token
from engine.settings import LoadSettings, OverflowPolicy, SamplingSettings
from engine.text import printable

# Short aliases users know from llama.cpp's own tools.
_ALIASES = {"n_ctx": ["-c", "--ctx-size"], "n_threads": ["-t", "--threads"], "n_gpu_layers": ["-ngl", "--gpu-layers"],
            "max_tokens": ["-n"], "temperature": ["--temp"]}  # fmt: skip


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_settings_flags(parser: argparse.ArgumentParser, cls, title: str) -> None:
    """One flag per settings field, typed from the dataclass; values are validated by the settings class."""
    group = parser.add_argument_group(title)
    for f in dataclasses.fields(cls):
        flags = [_flag(f.name), *_ALIASES.get(f.name, [])]
        helptext = f.metadata.get("help", "")
        if f.type == "bool":
            group.add_argument(
                *flags, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=helptext
            )
        elif f.type.startswith("tuple[str"):
            group.add_argument(
                *flags, dest=f.name, action="append", metavar="TEXT", help=helptext + " (repeatable)"
            )
        elif f.type.startswith("tuple[tuple"):
            group.add_argument(
                *flags, dest=f.name, action="append", metavar="ID=BIAS", help=helptext + " (repeatable)"
            )
        else:
            kind = {"int": int, "float": float}.get(f.type, str)
            group.add_argument(
                *flags, dest=f.name, type=kind, default=None, metavar=f.type.upper(), help=helptext
            )


def settings_from_args(args: argparse.Namespace, cls):
    values = {}
    for f in dataclasses.fields(cls):
        value = getattr(args, f.name, None)
        if value is None:
            continue
        if f.type.startswith("tuple[tuple"):
            value = [_parse_bias(item) for item in value]
        elif f.name in ("grammar", "json_schema") and value.startswith("@"):
            value = _read_text(value[1:], f.name)
        values[f.name] = value
    return cls.from_dict(values)


def _parse_bias(item: str) -> tuple[int, float]:
    tok, sep, bias = item.partition("=")
    try:
        return int(tok), float(bias if sep else "nan")
    except ValueError:
        raise SettingsError("logit_bias", f"'{item}' is not ID=BIAS (e.g. 42=-100)") from None


def _read_text(path: str, field: str) -> str:
    try:
        return Path(path).read_text("utf-8")
    except OSError as err:
        raise SettingsError(field, f"cannot read {path}: {err.strerror}") from None


def parse_adapter(spec: str) -> tuple[str, float]:
    """'FILE[:SCALE]' -> (path, scale)."""
    path, sep, scale = spec.rpartition(":")
    if sep and path and not Path(spec).exists():
        try:
            return path, float(scale)
        except ValueError:
            pass
    return spec, 1.0


# ---------------------------------------------------------------------------- commands
def cmd_info(args) -> int:
    from engine.gguf_info import inspect_gguf, sha256_file

    info = inspect_gguf(args.file, expect="any")
    summary = info.summary()
    if args.sha256:
        summary["sha256"] = sha256_file(info.path)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    width = max(len(k) for k in summary)
    for key, value in summary.items():
        if key == "quant_mix":
            total = sum(value.values()) or 1
            value = ", ".join(f"{t} {n / total:.1%}" for t, n in value.items())
        elif key in ("parameters", "file_size"):
            value = f"{value:,}"
        print(f"{key.replace('_', ' '):<{width}}  {value}")
    return 0


def cmd_models(args) -> int:
    from engine.library import Library

    lib = Library()
    if args.action == "import":
        entry = lib.import_file(args.file, link=args.link, name=args.name)
        print(
            f"Imported {entry.name} ({entry.kind}, {entry.architecture} {entry.quant}, {'linked' if entry.linked else 'copied'})."
        )
    elif args.action == "rm":
        entry = lib.remove(args.name)
        print(
            f"Removed {entry.name}" + (" (the linked original file was left alone)." if entry.linked else ".")
        )
    else:
        lib.ensure_starter()
        entries = lib.entries()
        if args.json:
            print(json.dumps([dataclasses.asdict(e) for e in entries], indent=2))
            return 0
        for e in entries:
            missing = "" if e.present else "  [file missing]"
            print(
                f"{e.name:<40} {e.kind:<8} {e.architecture:<10} {e.quant:<8} {e.total_size / 2**20:>9.1f} MiB{missing}"
            )
    return 0


def cmd_system(args) -> int:
    from engine.hardware import detect

    print(detect().describe())
    return 0


class _CancelOnInterrupt:
    """Ctrl+C during a reply cancels it (the reply ends cleanly) instead of killing the program."""

    def __init__(self, engine):
        self.engine = engine
        self.hit = False

    def __enter__(self):
        self._old = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, *_):
        self.hit = True
        self.engine.cancel()

    def __exit__(self, *exc):
        signal.signal(signal.SIGINT, self._old)


def _open_engine(args):
    from engine.library import Library

    if getattr(args, "host", False):
        from engine.host import EngineHost

        engine = EngineHost()
    else:
        from engine.runtime import Runtime

        engine = Runtime()
    path = Library().resolve(args.model)
    load = settings_from_args(args, LoadSettings)
    adapters = [parse_adapter(a) for a in args.adapter or []]
    for event in engine.load(path, load, adapters, args.template):
        if isinstance(event, LoadProgress) and sys.stderr.isatty():
            print(f"\rloading {event.fraction:4.0%}", end="", file=sys.stderr, flush=True)
    if sys.stderr.isatty():
        print("\r" + " " * 20 + "\r", end="", file=sys.stderr, flush=True)
    if event.template_warning:
        print(f"ingle: warning: {printable(event.template_warning)}", file=sys.stderr)
    return engine, event


def _stream(events: Iterator, show_stats: bool) -> ReplyDone | None:
    done = None
    for event in events:
        if isinstance(event, Token):
            sys.stdout.write(event.text)
            sys.stdout.flush()
        elif isinstance(event, ContextTrimmed):
            print(f"\n[{event.description}]", file=sys.stderr)
        elif isinstance(event, ReplyDone):
            done = event
    sys.stdout.write("\n")
    if show_stats and done:
        print("stats: " + done.stats.describe(), file=sys.stderr)
    return done


def cmd_run(args) -> int:
    if len(args.words) == 1:
        args.model, prompt = None, args.words[0]
    elif len(args.words) == 2:
        args.model, prompt = args.words
    else:
        raise SettingsError("run", "give [MODEL] PROMPT (quote the prompt)")
    sampling = settings_from_args(args, SamplingSettings)
    policy = OverflowPolicy(args.policy)
    engine, loaded = _open_engine(args)
    # chat when the model has a template of its own (even a broken one we replaced) or one was chosen
    own = loaded.template_source == "gguf" or bool(loaded.template_warning) or bool(args.template)
    use_chat = args.chat if args.chat is not None else own
    with _CancelOnInterrupt(engine):
        if use_chat:
            messages = ([Message("system", args.system)] if args.system else []) + [Message("user", prompt)]
            events = engine.chat(messages, sampling, policy)
        else:
            events = engine.complete(prompt, sampling, policy)
        _stream(events, args.stats)
    engine.close()
    return 0


def cmd_chat(args) -> int:
    sampling = settings_from_args(args, SamplingSettings)
    policy = OverflowPolicy(args.policy)
    engine, loaded = _open_engine(args)
    info = loaded.info
    print(f"{info['name']} ({info['architecture']} {info['file_type']}), context {loaded.n_ctx}, "
          f"template: {loaded.template_source}. Type /exit to leave, /reset to start over.", file=sys.stderr)  # fmt: skip
    history: list[Message] = [Message("system", args.system)] if args.system else []
    while True:
        try:
            line = input("> ")
        except (EOFError, KeyboardInterrupt):
            print(file=sys.stderr)
            break
        if line.strip() in ("/exit", "/quit"):
            break
        if line.strip() == "/reset":
            history = history[:1] if args.system else []
            continue
        if not line.strip():
            continue
        history.append(Message("user", line))
        with _CancelOnInterrupt(engine):
            try:
                done = _stream(engine.chat(history, sampling, policy), args.stats)
            except IngleError as err:
                history.pop()
                print(f"ingle: {err}", file=sys.stderr)
                continue
        if done is not None:
            history.append(Message("assistant", done.text))
    engine.close()
    return 0


def _add_generation_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--stats", action="store_true", help="print prompt/cache/TTFT/tok-s figures after the reply"
    )
    p.add_argument("--policy", choices=[x.value for x in OverflowPolicy], default=OverflowPolicy.STOP.value,
                   help="what to do when the conversation outgrows the context")  # fmt: skip
    p.add_argument(
        "--adapter", action="append", metavar="FILE[:SCALE]", help="apply a LoRA adapter (repeatable)"
    )
    p.add_argument(
        "--template", help="chat template: a built-in (gemma, chatml, llama3, mistral) or .jinja file"
    )
    p.add_argument("--system", help="system prompt")
    p.add_argument("--host", action="store_true", help="run llama.cpp in a child process, as the GUI does")
    add_settings_flags(p, LoadSettings, "model loading")
    add_settings_flags(p, SamplingSettings, "sampling")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="show a GGUF file's metadata without loading it")
    p.add_argument("file")
    p.add_argument("--json", action="store_true")
    p.add_argument("--sha256", action="store_true", help="also hash the file")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("models", help="list, import or remove models and adapters in the library")
    msub = p.add_subparsers(dest="action")
    lp = msub.add_parser("list")
    lp.add_argument("--json", action="store_true")
    ip = msub.add_parser("import")
    ip.add_argument("file")
    ip.add_argument("--link", action="store_true", help="link to the file instead of copying it")
    ip.add_argument("--name")
    rp = msub.add_parser("rm")
    rp.add_argument("name")
    p.set_defaults(func=cmd_models, action="list", json=False)

    p = sub.add_parser("system", help="what llama.cpp can use on this machine (CPU features, GPUs, memory)")
    p.set_defaults(func=cmd_system)

    p = sub.add_parser(
        "run", help="generate a reply to PROMPT (MODEL: a path or library name; default: starter)"
    )
    p.add_argument("words", nargs="+", metavar="[MODEL] PROMPT")
    p.add_argument("--chat", action=argparse.BooleanOptionalAction, default=None,
                   help="wrap the prompt in the chat template (default: when the model has its own template)")  # fmt: skip
    _add_generation_flags(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("chat", help="interactive chat in the terminal")
    p.add_argument("model", nargs="?")
    _add_generation_flags(p)
    p.set_defaults(func=cmd_chat)
