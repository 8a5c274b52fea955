"""`ingle chat`: a conversation on the terminal, with /help, /system, /reset, /save and /exit; an engine that
dies is started again and the conversation goes on."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from engine.cli import CancelOnInterrupt, how_it_died, loaded_lines, open_loaded_engine, stream_reply
from engine.cli_flags import settings_from_args, valid_text
from engine.errors import EngineDied, IngleError, SettingsError
from engine.events import Message
from engine.settings import OverflowPolicy, SamplingSettings
from engine.text import printable

CHAT_HELP = """commands:
  /help          this list
  /system TEXT   set the system prompt (the conversation goes on); /system alone shows it
  /reset         forget the conversation (the system prompt stays)
  /save FILE     write the conversation to FILE as JSON ({"messages": [...]}, the chat format `ingle train` reads)
  /exit, /quit   leave (also Ctrl+D); Ctrl+C stops a reply, or leaves at the prompt
  //TEXT         send a message that starts with /"""


def _save_conversation(history: list[Message], target: str) -> str:
    from engine.library import atomic_write_bytes

    if not target:
        raise SettingsError("save", "give a file: /save FILE")
    path = Path(target).expanduser()
    if not path.parent.is_dir():  # a typo in the folder must not create a tree of folders
        raise SettingsError("save", f"cannot write {path}: the folder {path.parent} does not exist")
    if path.is_dir():
        raise SettingsError("save", f"cannot write {path}: it is a folder; give a file name")
    record = {"messages": [{"role": m.role, "content": m.content} for m in history]}
    try:
        atomic_write_bytes(path, (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))
    except OSError as err:
        raise SettingsError("save", f"cannot write {path}: {err.strerror}") from None
    return str(path)


def chat_command(line: str, history: list[Message]) -> tuple[str, list[Message]]:
    """A /command typed in the chat -> (what to print, the history after it). '/exit' prints 'exit'."""
    name, _, rest = line.strip().partition(" ")
    rest = rest.strip()
    system = history[0].content if history and history[0].role == "system" else None
    body = history[1:] if system is not None else history
    if name in ("/exit", "/quit"):
        return "exit", history
    if name in ("/help", "/?"):
        return CHAT_HELP, history
    if name == "/reset":
        if system is None:
            return "conversation reset", []
        return "conversation reset (system prompt kept)", history[:1]
    if name == "/system":
        if rest:
            return "system prompt set", [Message("system", rest), *body]
        return (
            f"system prompt: {system}" if system else "no system prompt; set one with /system TEXT",
            history,
        )
    if name == "/save":
        return f"saved {len(history)} messages to {_save_conversation(history, rest)}", history
    hint = "/help lists the commands (start with // to send a line beginning with /)"
    return f"unknown command {name}: {hint}", history


def _not_utf8(line: str) -> int | None:
    """The first byte that was not UTF-8 in a line read from stdin (Python carries such bytes as lone
    surrogates, which nothing downstream can encode), or None."""
    for ch in line:
        if "\udc80" <= ch <= "\udcff":
            return ord(ch) - 0xDC00
    return None


class Resumed:
    """`ingle chat --resume CONVERSATION`: a conversation of the app's store, its saved KV cache reused when it
    matches (only the new message is evaluated), new messages stored in it, the cache saved again on leaving."""

    def __init__(self, which: str):
        from engine.conversations import ConversationStore
        from engine.kv_store import StateFolder
        from engine.session import ChatSession

        self.store = ConversationStore()
        self.cid = self._find(which)
        self.session = ChatSession(self.store, self.cid)
        self.folder = StateFolder()
        self.path = self.folder.path_for(self.cid)

    def _find(self, which: str) -> int:
        found = [c for c in self.store.conversations() if str(c.id) == which or c.title == which]
        if not found:
            raise SettingsError(
                "resume",
                f"no conversation '{printable(which)}'; give its number or exact title (the app lists them)",
            )
        return found[0].id

    def restore(self, engine) -> list[Message]:
        history = self.session.engine_messages()
        restored = engine.restore_state(str(self.path), history)
        title = printable(self.store.get(self.cid).title)
        cache = (
            f"{restored.tokens} tokens from its saved cache in {restored.seconds * 1000:.0f} ms"
            if restored.tokens
            else f"no saved cache used ({printable(restored.reason)})"
        )
        print(f"resumed “{title}”: {len(history)} messages; {cache}.", file=sys.stderr)
        return history

    def send(self, engine, line: str, sampling, policy, show_stats: bool):
        turn = self.session.send(line)
        events = engine.chat(list(turn.messages), sampling, policy, turn.continue_last)
        try:
            done = stream_reply(self._tee(events), show_stats)
        except BaseException:
            self.session.fail()
            raise
        if self.session.phase.name == "STREAMING":
            self.session.stopped_without_reply()
        return done

    def _tee(self, events):
        for event in events:
            self.session.on_event(event)
            yield event

    def save(self, engine) -> None:
        try:
            saved = engine.save_state(str(self.path), self.session.engine_messages())
        except IngleError as err:
            print(f"ingle: the conversation's cache was not saved: {err}", file=sys.stderr)
            return
        self.folder.evict(keep=self.path)
        if saved.tokens:
            print(f"saved its cache ({saved.tokens} tokens) for an instant reopen.", file=sys.stderr)


def cmd_chat(args) -> int:
    if args.system:
        args.system = valid_text(args.system, "system prompt")
    sampling = settings_from_args(args, SamplingSettings)
    policy = OverflowPolicy(args.policy)
    resumed = Resumed(valid_text(args.resume, "--resume")) if getattr(args, "resume", None) else None
    if resumed is not None and args.system:
        raise SettingsError(
            "system", "a resumed conversation keeps its own system prompt; leave out --system"
        )
    engine, loaded = open_loaded_engine(args)
    for line in loaded_lines(loaded, args.rope_scaling):
        print(line, file=sys.stderr)
    from engine.cli import open_tools_for

    tools = open_tools_for(args, engine, True)
    approve = None
    if tools is not None:
        from engine.tools_cli import approver

        approve = approver(args)
    print("Type /help for commands, /exit to leave.", file=sys.stderr)
    history: list[Message] = [Message("system", args.system)] if args.system else []
    if resumed is not None:
        history = resumed.restore(engine)
    if hasattr(sys.stdin, "reconfigure"):  # a line that is not UTF-8 is refused alone (see _not_utf8)
        sys.stdin.reconfigure(errors="surrogateescape")
    try:
        while True:
            try:
                line = input("> ")
            except EOFError:
                print(file=sys.stderr)
                break
            if not line.strip():
                continue
            bad = _not_utf8(line)
            if bad is not None:
                print(
                    f"ingle: that line is not valid UTF-8 (byte 0x{bad:02x}); type it again", file=sys.stderr
                )
                continue
            if line.startswith("//"):
                line = line[1:]
            elif line.startswith("/"):
                if resumed is not None and line.split()[0] in ("/reset", "/system"):
                    print("ingle: a resumed conversation is changed in the app; /reset and /system are off here",
                          file=sys.stderr)  # fmt: skip
                    continue
                try:
                    said, history = chat_command(line, history)
                except IngleError as err:
                    print(f"ingle: {err}", file=sys.stderr)
                    continue
                if said == "exit":
                    break
                print(said, file=sys.stderr)
                continue
            if args.docs:  # the sources stay in the history: follow-up questions can cite them too
                from engine.docs.cli import docs_prompt

                try:
                    line, _ = docs_prompt(engine, args, line)
                except IngleError as err:
                    print(f"ingle: {err}", file=sys.stderr)
                    continue
            history.append(Message("user", line))
            kept = len(history) - 1  # a failed reply leaves the history as it was before the message
            with CancelOnInterrupt(engine):
                try:
                    if tools is not None:
                        _reply_with_tools(args, engine, tools, history, approve, sampling, policy)
                        continue
                    if resumed is not None:
                        done = resumed.send(engine, line, sampling, policy, args.stats)
                    else:
                        done = stream_reply(engine.chat(history, sampling, policy), args.stats)
                except EngineDied as err:  # the conversation is kept: a fresh engine takes it up again
                    del history[kept:]
                    print(
                        f"ingle: the engine stopped ({how_it_died(err)}); starting it again…",
                        file=sys.stderr,
                    )
                    engine.close()
                    engine, loaded = open_loaded_engine(args)
                    print("ingle: ready again; send your message once more.", file=sys.stderr)
                    continue
                except IngleError as err:
                    del history[kept:]
                    print(f"ingle: {err}", file=sys.stderr)
                    continue
            if done is not None:
                history.append(Message("assistant", done.text))
    except KeyboardInterrupt:  # Ctrl+C at the prompt leaves, with the shell's convention for it
        print(file=sys.stderr)
        return 130
    finally:
        if resumed is not None:
            resumed.save(engine)
        engine.close()
        if tools is not None:
            tools.close()
    return 0


def _reply_with_tools(args, engine, tools, history, approve, sampling, policy) -> None:
    """One reply with --mcp: tokens on stdout, each call and its result (first line) on stderr."""
    from engine.events import ReplyDone, Token
    from engine.tool_loop import reply_with_tools
    from engine.tools_cli import show_call

    done = None
    for event in reply_with_tools(engine, history, tools, args.tool_choice, approve, sampling, policy,
                                  args.max_tool_calls):  # fmt: skip
        if isinstance(event, Token):
            sys.stdout.write(event.text)
            sys.stdout.flush()
        elif isinstance(event, ReplyDone):
            done = event
        else:
            show_call(event)
    sys.stdout.write("\n")
    if args.stats and done:
        print("stats: " + done.stats.describe(), file=sys.stderr)
