"""The engine host: a child process that owns llama.cpp, and a client with the same API as the in-process Runtime."""

from __future__ import annotations

import atexit
import logging
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Iterator, Sequence
from multiprocessing.connection import Client, Listener
from pathlib import Path
from typing import Any

from engine.child_process import STDERR_TAIL_BYTES, die_with_parent, keep_crash_log, new_log
from engine.errors import EngineDied, EngineError, EngineHung, IngleError
from engine.events import Event, Message, PromptEvaluated
from engine.hardware import Hardware
from engine.interface import METHODS, STREAMING, Embeddings, Inspection, KVState
from engine.settings import LoadSettings, OverflowPolicy, SamplingSettings
from engine.tools import ToolSet
from engine.visual import ContextBudget, PreviewStage, TokenPiece

log = logging.getLogger("ingle.host")


def engine_command() -> list[str]:
    """How to start the child: `python -m engine.host`, or the frozen app binary with --engine-host."""
    if getattr(sys, "frozen", False):
        return [sys.executable, "--engine-host"]
    return [sys.executable, "-m", "engine.host"]


def child_main(address: str) -> None:
    """Entry point of the engine child: serve requests until shutdown or until the parent goes away."""
    die_with_parent()
    # Ctrl+C in a terminal reaches the whole process group: the parent turns it into a cancel; killed by it here,
    # the child would take the loaded model with it
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    conn = Client(address, authkey=bytes.fromhex(os.environ.pop("INGLE_HOST_AUTHKEY")))
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(name)s: %(message)s")
    from engine.runtime import Runtime

    runtime = Runtime()
    send_lock = threading.Lock()

    def send(msg: tuple) -> None:
        with send_lock:
            conn.send(msg)

    last_beat = [0.0]

    def heartbeat() -> None:
        now = time.monotonic()
        if now - last_beat[0] > 1.0:
            last_beat[0] = now
            send(("alive",))

    runtime.heartbeat = heartbeat
    requests: list = []
    ready = threading.Condition()

    def reader() -> None:
        # Cancels must land while the main thread is busy generating, so a thread reads the pipe.
        while True:
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                os._exit(0)  # the parent is gone
            if msg[0] == "cancel":
                runtime.cancel()
                continue
            with ready:
                requests.append(msg)
                ready.notify()

    threading.Thread(target=reader, name="ingle-host-reader", daemon=True).start()
    while True:
        with ready:
            while not requests:
                ready.wait()
            msg = requests.pop(0)
        if msg[0] == "shutdown":
            runtime.unload()
            send(("bye",))
            os._exit(0)
        _, method, args, kwargs = msg
        try:
            if method not in METHODS:  # the wire carries Engine methods and nothing else
                raise EngineError(f"Internal engine error: '{method}' is not an engine method.")
            result = getattr(runtime, method)(*args, **kwargs)
            if method in STREAMING:
                for event in result:
                    send(("event", event))
                send(("end",))
            else:
                send(("result", result))
        except IngleError as err:
            send(("error", err))
        except Exception as err:  # a bug, not a user error: keep the trace in the log, say it plainly
            traceback.print_exc()
            send(("error", EngineError(f"Internal engine error: {type(err).__name__}: {err}")))


class EngineHost:
    """Client of an engine child process. Methods mirror Runtime; events and errors are the same types.

    One request at a time (like Runtime); `cancel()` is safe from any thread.
    """

    def __init__(self, hang_timeout: float = 120.0, start: bool = True):
        self.hang_timeout = hang_timeout
        self._proc: subprocess.Popen | None = None
        self._conn = None
        self._stderr_path: str | None = None
        self.crash_log: Path | None = None  # the kept log of the last child that died, if any
        self._crash_tail = ""
        self._send_lock = threading.Lock()
        self._busy = False
        if start:
            self.start()
        atexit.register(self.close)

    # ------------------------------------------------------------ process
    def start(self) -> None:
        """Start a fresh child (after a crash, call this, then load again)."""
        self.close()
        self._crash_tail = ""
        authkey = secrets.token_bytes(32)
        family = "AF_PIPE" if sys.platform == "win32" else "AF_UNIX"
        listener = Listener(family=family, authkey=authkey)
        # the parent's pid in the log's name lets a later start tell a dead parent's log from a live one
        self._stderr_path = str(new_log())
        env = dict(os.environ, INGLE_HOST_AUTHKEY=authkey.hex())
        # an abort's native backtrace would attach a debugger to the child: slow, and nothing a user can act on
        env.setdefault("GGML_NO_BACKTRACE", "1")
        with open(self._stderr_path, "wb") as stderr:
            self._proc = subprocess.Popen(
                [*engine_command(), listener.address],
                stdin=subprocess.DEVNULL,
                stdout=stderr,
                stderr=stderr,
                env=env,
            )
        self._conn = self._accept(listener)
        self._busy = False

    def _accept(self, listener: Listener):
        """Wait for the child to connect back, noticing if it dies first (bad install, import error)."""
        result: dict = {}
        thread = threading.Thread(target=lambda: result.setdefault("conn", listener.accept()), daemon=True)
        thread.start()
        deadline = time.monotonic() + self.hang_timeout
        while thread.is_alive() and self._proc.poll() is None and time.monotonic() < deadline:
            thread.join(0.05)
        listener.close()
        if "conn" not in result:
            if self._proc.poll() is None:
                self._proc.kill()
            raise self._died()
        return result["conn"]

    restart = start

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def alive(self) -> bool:
        return bool(self._proc and self._proc.poll() is None)

    def close(self) -> None:
        """Orderly shutdown; a child that does not leave within 5 s is killed."""
        proc, conn = self._proc, self._conn
        self._proc = self._conn = None
        if proc is None:
            return
        if proc.poll() is None and conn is not None:
            try:
                with self._send_lock:
                    conn.send(("shutdown",))
            except (OSError, ValueError):
                pass
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if conn is not None:
            conn.close()
        if self._stderr_path:
            Path(self._stderr_path).unlink(missing_ok=True)

    def stderr_tail(self) -> str:
        """The last few KB the child wrote (llama.cpp's messages, an abort's reason)."""
        if not self._stderr_path or not Path(self._stderr_path).exists():
            return self._crash_tail
        with open(self._stderr_path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - STDERR_TAIL_BYTES))
            return fh.read().decode("utf-8", errors="replace")

    def _keep_log(self) -> None:
        """A dead child's log is evidence: move it out of the way of the cleanup and keep it."""
        if not self._stderr_path:
            return
        self._crash_tail = self.stderr_tail()
        self.crash_log = keep_crash_log(self._stderr_path, self.pid)
        self._stderr_path = None

    def _died(self) -> EngineDied:
        proc = self._proc
        code = None
        if proc is not None:
            try:
                code = proc.wait(2)
            except subprocess.TimeoutExpired:
                pass
        if code is not None:
            self._keep_log()
        tail = self.stderr_tail() or self._crash_tail
        if code is not None and code < 0:
            try:
                how = f"was killed by signal {signal.Signals(-code).name}"
            except ValueError:
                how = f"was killed by signal {-code}"
        else:
            how = f"exited with code {code}"
        hint = " (out of memory?)" if code == -signal.SIGKILL else ""
        where = f" Its log: {self.crash_log}." if self.crash_log else ""
        return EngineDied(f"The engine process {how}{hint}. Restart the engine to go on.{where}", code, tail)

    # ------------------------------------------------------------ requests
    def _send(self, msg: tuple) -> None:
        if self._conn is None or not self.alive:
            raise self._died() if self._proc else EngineError("The engine is not running; restart it.")
        try:
            with self._send_lock:
                self._conn.send(msg)
        except (OSError, ValueError):
            raise self._died() from None

    def _receive(self) -> tuple:
        deadline = time.monotonic() + self.hang_timeout
        while True:
            try:
                if self._conn.poll(0.2):
                    msg = self._conn.recv()
                    if msg[0] == "alive":
                        deadline = time.monotonic() + self.hang_timeout
                        continue
                    return msg
            except (EOFError, OSError):
                raise self._died() from None
            if self._proc.poll() is not None:
                raise self._died()
            if time.monotonic() > deadline:
                self._proc.kill()
                died = self._died()
                raise EngineHung(
                    f"The engine stopped answering for {self.hang_timeout:.0f} s and was stopped. "
                    "Restart the engine to go on.", died.exitcode, died.stderr_tail,
                )  # fmt: skip

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Call an Engine method in the child; streaming methods return an iterator of events."""
        if method in STREAMING:
            return self._stream(method, args, kwargs)
        if self._busy:
            raise EngineError("The engine is busy with another request.")
        self._send(("call", method, args, kwargs))
        kind, payload = self._receive()
        if kind == "error":
            raise payload
        return payload

    def _stream(self, method: str, args: tuple, kwargs: dict) -> Iterator[Any]:
        if self._busy:
            raise EngineError("The engine is busy with another request.")
        self._busy = True
        self._send(("call", method, args, kwargs))
        finished = False
        try:
            while True:
                msg = self._receive()
                if msg[0] == "event":
                    yield msg[1]
                elif msg[0] == "end":
                    finished = True
                    return
                elif msg[0] == "error":
                    finished = True
                    raise msg[1]
        finally:
            if not finished and self.alive:
                # the caller stopped iterating early: cancel and drain so the next request starts clean
                self.cancel()
                self._drain()
            self._busy = False

    def _drain(self) -> None:
        try:
            while self._receive()[0] not in ("end", "error"):
                pass
        except EngineDied:
            pass

    def cancel(self) -> None:
        if self._conn is not None and self.alive:
            try:
                with self._send_lock:
                    self._conn.send(("cancel",))
            except (OSError, ValueError):
                pass

    # ------------------------------------------------------------ the Engine interface
    def load(
        self,
        path: str | Path,
        settings: LoadSettings | None = None,
        adapters: Sequence[tuple[str, float]] = (),
        chat_template: str | None = None,
    ) -> Iterator[Event]:
        return self._call("load", str(path), settings, tuple(adapters), chat_template)

    def unload(self) -> None:
        self._call("unload")

    def chat(
        self,
        messages: Sequence[Message],
        sampling: SamplingSettings | None = None,
        policy: OverflowPolicy = OverflowPolicy.STOP,
        continue_last: bool = False,
    ) -> Iterator[Event]:
        return self._call("chat", list(messages), sampling, policy, continue_last)

    def chat_tools(
        self,
        messages: Sequence[Message],
        tools: ToolSet | None,
        sampling: SamplingSettings | None = None,
        policy: OverflowPolicy = OverflowPolicy.STOP,
    ) -> Iterator[Event]:
        return self._call("chat_tools", list(messages), tools, sampling, policy)

    def embed(self, texts: Sequence[str], model: str | None = None) -> Embeddings:
        return self._call("embed", list(texts), model)

    def complete(
        self,
        prompt: str,
        sampling: SamplingSettings | None = None,
        policy: OverflowPolicy = OverflowPolicy.STOP,
    ) -> Iterator[Event]:
        return self._call("complete", prompt, sampling, policy)

    def tokenize(self, text: str, add_special: bool = False, parse_special: bool = True) -> list[int]:
        return self._call("tokenize", text, add_special, parse_special)

    def detokenize(self, tokens: Sequence[int], special: bool = False) -> str:
        return self._call("detokenize", list(tokens), special)

    def render_tokens(
        self, messages: Sequence[Message], add_generation_prompt: bool = True, continue_last: bool = False
    ) -> list[int]:
        return self._call("render_tokens", list(messages), add_generation_prompt, continue_last)

    def piece(self, token: int) -> str:
        return self._call("piece", token)

    def evaluate(self, tokens: Sequence[int]) -> PromptEvaluated:
        return self._call("evaluate", list(tokens))

    def evaluate_text(self, text: str, chat: bool = False) -> PromptEvaluated:
        return self._call("evaluate_text", text, chat)

    def evaluation_count(self) -> int:
        return self._call("evaluation_count")

    def inspect(
        self, messages: Sequence[Message], draft: str, sampling: SamplingSettings, policy: OverflowPolicy,
        top_n: int = 12,
    ) -> Inspection:  # fmt: skip
        return self._call("inspect", list(messages), draft, sampling, policy, top_n)

    def preview(self, sampling: SamplingSettings, top_n: int = 20) -> list[PreviewStage]:
        return self._call("preview", sampling, top_n)

    def kv_state(self) -> KVState:
        return self._call("kv_state")

    def token_pieces(self, text: str, parse_special: bool = True) -> list[TokenPiece]:
        return self._call("token_pieces", text, parse_special)

    def context_budget(
        self, messages: Sequence[Message], draft: str, sampling: SamplingSettings, policy: OverflowPolicy
    ) -> ContextBudget:
        return self._call("context_budget", list(messages), draft, sampling, policy)

    def hardware(self) -> Hardware:
        return self._call("hardware")

    def __enter__(self) -> EngineHost:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


if __name__ == "__main__":
    child_main(sys.argv[1])
