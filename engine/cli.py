"""Engine commands for the `ingle` CLI: info, models, system, run, chat. Registered by app.cli."""

from __future__ import annotations

import argparse
import dataclasses
import json
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

from engine import units
from engine.cli_flags import add_settings_flags, parse_adapter, resolve_draft, settings_from_args, valid_text
from engine.errors import EngineDied, EngineError, RpcError, RpcWorkerLost, SettingsError
from engine.events import ContextTrimmed, LoadProgress, Message, ReplyDone, StopReason, ThreadsChosen, Token
from engine.remote_cli import add_remote_flags, register_models_remote
from engine.settings import LoadSettings, OverflowPolicy, SamplingSettings
from engine.text import printable
from engine.tools_cli import add_tool_flags


# ---------------------------------------------------------------------------- commands
def cmd_info(args) -> int:
    from engine.gguf_info import inspect_gguf, sha256_file
    from engine.library import Library

    # a library name, as `run` and `chat` take it; a file that exists is never looked up
    path = args.file if Path(args.file).exists() else Library().resolve(args.file)
    info = inspect_gguf(path, expect="any")
    summary = info.summary()
    if args.sha256:
        summary["sha256"] = sha256_file(info.path, hash_progress(info.path))
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
        print(f"{key.replace('_', ' '):<{width}}  {printable(value)}")  # names come from the file: inert
    return 0


def hash_progress(path):
    """Progress of hashing a file big enough to take a while (about 1 s per GiB on a fast disk, minutes on a
    slow one); None for a small one."""
    from engine.progress import Progress

    size = Path(path).stat().st_size
    if size < 256 << 20:
        return None
    progress = Progress("sha256", size // units.MIB, "MiB")

    def update(done: int, total: int) -> None:
        progress.update(done // units.MIB)
        if done >= total:
            progress.close()

    return update


def cmd_models(args) -> int:
    from engine.library import Library

    lib = Library()
    if args.action == "import":
        entry = lib.import_file(args.file, link=args.link, name=args.name)
        print(
            f"Imported {printable(entry.name)} ({entry.kind}, {printable(entry.architecture)} {printable(entry.quant)}, "
            f"{'linked' if entry.linked else 'copied'})."
        )
    elif args.action == "rm":
        entry = lib.remove(args.name)
        print(
            f"Removed {printable(entry.name)}"
            + (" (the linked original file was left alone)." if entry.linked else ".")
        )
    else:
        lib.ensure_starter()
        entries = lib.entries()
        if args.json:
            print(json.dumps([dataclasses.asdict(e) for e in entries], indent=2))
            return 0
        for e in entries:
            missing = "" if e.present else "  [file missing]"
            kind = "embedding" if e.kind == "model" and e.is_embedding else e.kind  # for docs, not for chat
            print(
                f"{printable(e.name):<40} {kind:<9} {printable(e.architecture):<10} {printable(e.quant):<8} "
                f"{units.mib(e.total_size, 1):>13}{missing}"
            )
    return 0


def cmd_system(args) -> int:
    from engine.hardware import detect

    print(detect().describe())
    return 0


class CancelOnInterrupt:
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


def open_engine(in_process: bool = False):
    """The engine for a command that loads a user's model: llama.cpp in a child process, so that a file that
    makes llama.cpp abort (GGML_ASSERT) ends that child, not the command. `in_process` is for debugging."""
    if in_process:
        from engine.runtime import Runtime

        return Runtime()
    from engine.host import EngineHost

    return EngineHost()


def load_model(engine, path, load: LoadSettings, adapters=(), template: str | None = None, progress=None):
    """Load through `engine`, turning a crash of the engine child into one line that says what to do."""
    event = None
    try:
        for event in engine.load(path, load, adapters, template):
            if progress:
                progress(event)
    except EngineDied as err:
        raise _crashed(engine, err, f"while loading {printable(path)}", "the file is damaged or uses settings "
                       "this llama.cpp cannot handle. Use another file") from None  # fmt: skip
    return event


def _crashed(engine, err: EngineDied, when: str, advice: str = "try again") -> EngineError:
    """One line for a crash of the engine child: when, how, what to do, and where its log was kept."""
    engine.close()
    log = getattr(engine, "crash_log", None)
    where = f"; llama.cpp's messages are in {log}" if log else ""
    if isinstance(err, RpcWorkerLost):
        return RpcError(f"an RPC worker dropped the connection {when} (it stopped, or has too little memory for "
                        f"its share: see its output), and llama.cpp ended with it{where}.")  # fmt: skip
    return EngineError(f"llama.cpp crashed {when} ({how_it_died(err)}): {advice}{where}.")


def how_it_died(err: EngineDied) -> str:
    if err.signal:
        try:
            return f"signal {signal.Signals(err.signal).name}"
        except ValueError:
            return f"signal {err.signal}"
    return f"exit code {err.exitcode}"


def open_loaded_engine(args):
    if getattr(args, "remote", None):
        from engine.remote_cli import open_remote

        return open_remote(args, getattr(args, "model", None))
    from engine.library import Library

    library = Library()
    path = library.resolve(args.model)
    load = resolve_draft(settings_from_args(args, LoadSettings), library)
    if getattr(args, "n_ctx", None) is None:  # no --ctx-size: never past what the model was trained on
        from engine.gguf_info import inspect_gguf

        trained = inspect_gguf(path).context_length
        if 0 < trained < load.n_ctx:
            load = load.replace(n_ctx=trained)
    adapters = [parse_adapter(a) for a in args.adapter or []]
    starter_adapter = library.starter_adapter() if args.model is None and not args.no_adapter else None
    if starter_adapter is not None:  # the starter chats through its bundled adapter unless told not to
        adapters.insert(0, (str(starter_adapter.file), 1.0))
    args.starter_adapter = starter_adapter is not None
    engine = open_engine(in_process=args.in_process)

    def progress(event) -> None:
        if isinstance(event, LoadProgress) and sys.stderr.isatty():
            print(f"\rloading {event.fraction:4.0%}", end="", file=sys.stderr, flush=True)

    try:
        event = load_model(engine, path, load, adapters, args.template, progress)
    except BaseException:
        engine.close()
        raise
    finally:
        if sys.stderr.isatty():
            print("\r" + " " * 20 + "\r", end="", file=sys.stderr, flush=True)
    if event.template_warning:
        print(f"ingle: warning: {printable(event.template_warning)}", file=sys.stderr)
    return engine, event


def stream_reply(events: Iterator, show_stats: bool) -> ReplyDone | None:
    done = threads = None
    for event in events:
        if isinstance(event, Token):
            sys.stdout.write(event.text)
            sys.stdout.flush()
        elif isinstance(event, ContextTrimmed):
            print(f"\n[{event.description}]", file=sys.stderr)
        elif isinstance(event, ReplyDone):
            done = event
        elif isinstance(event, ThreadsChosen):
            threads = event
    sys.stdout.write("\n")
    if done and done.stats.stop_reason == StopReason.INTERRUPTED:
        print("ingle: the server's stream was cut midway; the reply above is incomplete.", file=sys.stderr)
    if show_stats and done:
        print("stats: " + done.stats.describe(), file=sys.stderr)
        if threads is not None:
            print("threads: " + threads.describe(), file=sys.stderr)
    return done


def cmd_run(args) -> int:
    if len(args.words) == 1:
        args.model, prompt = None, args.words[0]
    elif len(args.words) == 2:
        args.model, prompt = args.words
    else:
        raise SettingsError("run", "give [MODEL] PROMPT (quote the prompt)")
    prompt = valid_text(prompt, "prompt")
    if args.json and not (args.mcp or args.docs):
        raise SettingsError("--json", "applies to a reply with tools (--mcp NAME) or documents (--docs NAME)")
    if args.system:
        args.system = valid_text(args.system, "system prompt")
    sampling = settings_from_args(args, SamplingSettings)
    policy = OverflowPolicy(args.policy)
    engine, loaded = open_loaded_engine(args)
    for line in loaded_lines(loaded, args.rope_scaling)[
        1:
    ]:  # adapters and warnings; stdout holds only the reply
        print(line, file=sys.stderr)
    # chat when the model has a template of its own (even a broken one we replaced) or one was chosen
    own = loaded.template_source == "gguf" or bool(loaded.template_warning) or bool(args.template)
    own = own or args.starter_adapter or bool(args.remote)  # the starter's adapter taught it the turn format
    use_chat = args.chat if args.chat is not None else own
    hits = []
    if args.docs:  # retrieved passages go in as numbered sources the reply cites
        from engine.docs.cli import docs_prompt

        prompt, hits = docs_prompt(engine, args, prompt)
    tools = open_tools_for(args, engine, use_chat)
    with CancelOnInterrupt(engine) as interrupt:
        if tools is not None:
            try:
                run_with_tools(args, engine, tools, prompt, sampling, policy)
            except EngineDied as err:
                raise _crashed(engine, err, "while generating the reply") from None
            finally:
                tools.close()
        elif use_chat:
            messages = ([Message("system", args.system)] if args.system else []) + [Message("user", prompt)]
            events = engine.chat(messages, sampling, policy)
        else:
            events = engine.complete(prompt, sampling, policy)
        try:
            if tools is None and args.json:
                from engine.docs.cli import print_json_reply

                print_json_reply(events, hits)
            elif tools is None:
                stream_reply(events, args.stats)
        except EngineDied as err:
            raise _crashed(engine, err, "while generating the reply") from None
    for notice in getattr(engine, "notices", ()):  # a remote server: settings it may ignore or refused
        print(f"ingle: note: {printable(notice)}", file=sys.stderr)
    engine.close()
    return 130 if interrupt.hit else 0  # the reply was cut short by Ctrl+C: the shell's convention says so


def open_tools_for(args, engine, use_chat: bool):
    """The MCP client of `--mcp`, or None; tools need the chat template, so --no-chat refuses them."""
    if not getattr(args, "mcp", None):
        return None
    if not use_chat:
        engine.close()
        raise SettingsError("--mcp", "tools need the chat template; drop --no-chat")
    from engine.tools_cli import open_tools

    try:
        return open_tools(args)
    except BaseException:
        engine.close()
        raise


def run_with_tools(args, engine, tools, prompt: str, sampling, policy) -> None:
    """`run --mcp`: the reply with its calls (shown on stderr as they happen), or all of it as --json."""
    from engine.tool_loop import ToolCallCut, ToolCallFinished, call_record, reply_with_tools
    from engine.tools_cli import approver, show_call

    history = ([Message("system", args.system)] if args.system else []) + [Message("user", prompt)]
    events = reply_with_tools(engine, history, tools, args.tool_choice, approver(args), sampling, policy,
                              args.max_tool_calls)  # fmt: skip
    calls: list[dict] = []
    done = cut = None
    for event in events:
        if isinstance(event, Token) and not args.json:
            sys.stdout.write(event.text)
            sys.stdout.flush()
        elif isinstance(event, ToolCallFinished):
            calls.append(call_record(event))
        elif isinstance(event, ToolCallCut):
            cut = event
        elif isinstance(event, ReplyDone):
            done = event
        if not isinstance(event, (Token, ReplyDone)):
            show_call(event, quiet=False)
    reply = history[-1].content if history and history[-1].role == "assistant" else ""
    if args.json:
        out = {"tool_calls": calls, "reply": reply}
        if cut is not None:  # a call the reply began but could not finish
            out["tool_call_cut"] = {"text": cut.text, "message": cut.message("-n (--max-tokens)")}
        print(json.dumps(out, indent=2, ensure_ascii=False))
    else:
        sys.stdout.write("\n")
    if args.stats and done:
        print("stats: " + done.stats.describe(), file=sys.stderr)


def context_warning(loaded, rope_scaling: str = "model") -> str | None:
    """One line when the context is longer than the model was trained for and nothing stretches its positions
    (its replies degrade past the trained length)."""
    trained = int(loaded.info.get("context_length") or 0)
    if not trained or loaded.n_ctx <= trained or rope_scaling in ("linear", "yarn"):
        return None
    return (
        f"warning: context {loaded.n_ctx} is {loaded.n_ctx / trained:.3g}x the {trained} tokens this model was "
        "trained on; past that its replies degrade. Stretch its positions with RoPE scaling (--rope-scaling yarn "
        f"or linear, --rope-freq-scale), or use --ctx-size {trained} or less."
    )


def loaded_lines(loaded, rope_scaling: str = "model") -> list[str]:
    """What the user asked for and got: the model, its context, template, and every adapter with its scale."""
    from engine.text import printable

    info = loaded.info
    lines = [f"{printable(info['name'])} ({info['architecture']} {info['file_type']}), context {loaded.n_ctx}, "
             f"template: {printable(loaded.template_source)}."]  # fmt: skip
    for path, scale in loaded.adapters:
        lines.append(f"adapter {printable(Path(path).name)} at scale {scale:g} on")
    if getattr(loaded, "fit_note", ""):
        lines.append(loaded.fit_note)
    warning = context_warning(loaded, rope_scaling)
    if warning:
        lines.append(warning)
    return lines


def _add_generation_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--stats", action="store_true", help="print prompt/cache/TTFT/tok-s figures after the reply"
    )
    p.add_argument("--policy", choices=[x.value for x in OverflowPolicy], default=OverflowPolicy.STOP.value,
                   help="what to do when the conversation outgrows the context")  # fmt: skip
    p.add_argument(
        "--adapter", action="append", metavar="FILE[:SCALE]", help="apply a LoRA adapter (repeatable)"
    )
    p.add_argument("--no-adapter", action="store_true",
                   help="without MODEL: run the starter as the bare base model, without its chat adapter")  # fmt: skip
    p.add_argument(
        "--template", help="chat template: a built-in (gemma, chatml, llama3, mistral) or .jinja file"
    )
    p.add_argument("--system", help="system prompt")
    from engine.docs.cli import add_docs_flags

    add_docs_flags(p)
    add_engine_flags(p)
    add_remote_flags(p)
    add_tool_flags(p)
    add_settings_flags(p, LoadSettings, "model loading")
    add_settings_flags(p, SamplingSettings, "sampling")


def add_engine_flags(p: argparse.ArgumentParser) -> None:
    """llama.cpp runs in a child process by default (a model file that makes it abort cannot take the command
    down); --in-process is for debugging llama.cpp itself."""
    p.add_argument("--in-process", action="store_true",
                   help="run llama.cpp inside this process (debugging: a bad model file can then abort it)")  # fmt: skip
    p.add_argument(
        "--host", action="store_true", help=argparse.SUPPRESS
    )  # the default now; kept for old scripts


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
    register_models_remote(msub)
    p.set_defaults(func=cmd_models, action="list", json=False)

    p = sub.add_parser("system", help="what llama.cpp can use on this machine (CPU features, GPUs, memory)")
    p.set_defaults(func=cmd_system)

    p = sub.add_parser(
        "run", help="generate a reply to PROMPT (MODEL: a path or library name; default: starter)"
    )
    p.add_argument("words", nargs="+", metavar="[MODEL] PROMPT")
    p.add_argument("--chat", action=argparse.BooleanOptionalAction, default=None,
                   help="wrap the prompt in the chat template (default: when the model has its own template)")  # fmt: skip
    p.add_argument(
        "--json",
        action="store_true",
        help="with --mcp: the tool calls, their results and the reply as JSON; with --docs: the reply and the "
        "retrieved passages",
    )
    _add_generation_flags(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("chat", help="interactive chat in the terminal")
    p.add_argument("model", nargs="?")
    p.add_argument("--resume", metavar="CONVERSATION",
                   help="go on with a conversation of the app (its number or title), reusing its saved KV cache")  # fmt: skip
    _add_generation_flags(p)
    from engine.chat_cli import cmd_chat

    p.set_defaults(func=cmd_chat)

    from engine.tools_cli import register as register_tools

    register_tools(sub)
