"""The engine host: a child process that owns llama.cpp, and a client with the same API as the in-process Runtime.

The child's side of the wire is engine.host_child (`child_main`, re-exported here for the frozen app)."""

from __future__ import annotations

import atexit
import itertools
import logging
import os
import queue
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from multiprocessing.connection import Listener
from pathlib import Path
from typing import Any

from engine.attention_map import MAX_TOKENS, AttentionMap
from engine.child_process import STDERR_TAIL_BYTES, keep_crash_log, new_log
from engine.embedding_space import Neighbours, Projection
from engine.errors import EngineDied, EngineError, EngineHung, IngleError, RpcWorkerLost
from engine.events import Event, Message, PromptEvaluated
from engine.hardware import Hardware
from engine.host_child import child_main
from engine.interface import SLOT_CALLS, STREAMING, Embeddings, Inspection, KVState, SlotState
from engine.kv_store import StateRestored, StateSaved
from engine.rpc_split import RPC_LOST_MARK
from engine.settings import LoadSettings, OverflowPolicy, SamplingSettings
from engine.tools import ToolSet
from engine.visual import ContextBudget, PreviewStage, TokenPiece

log = logging.getLogger("ingle.host")


def engine_command() -> list[str]:
    """How to start the child: `python -m engine.host`, or the frozen app binary with --engine-host."""
    if getattr(sys, "frozen", False):
        return [sys.executable, "--engine-host"]
    return [sys.executable, "-m", "engine.host"]


class EngineHost:
    """Client of an engine child process. Methods mirror Runtime; events and errors are the same types.

    Ordinary requests one at a time (like Runtime), `cancel()` safe from any thread; slot calls from many
    threads at once, beside an ordinary request. A receiver thread routes the child's tagged answers.
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
        self._ids = itertools.count(1)
        self._calls: dict[int, queue.Queue] = {}  # answers of the calls in flight, by id
        self._calls_lock = threading.Lock()
        self._death_lock = threading.Lock()
        self._ordinary: int | None = None  # id of the ordinary stream that cancel() stops
        self._dead: EngineDied | None = None  # set when the child died: every call then raises it
        self._last_heard = 0.0
        self._deferred_cancels: list[int] = []  # cancels of slot streams dropped unread, sent by the receiver
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
        self._ordinary = None
        self._dead = None
        with self._calls_lock:
            self._calls = {}
        self._last_heard = time.monotonic()
        threading.Thread(
            target=self._receive_loop, args=(self._conn, self._proc), name="ingle-host-receiver", daemon=True
        ).start()

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
        with self._calls_lock:  # calls still waiting (other threads' slot calls) end now
            stopped = EngineError("The engine was stopped while this request ran.")
            for waiting in self._calls.values():
                waiting.put(("dead", stopped))
            self._calls = {}
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

    def stderr_tail(self, max_bytes: int = STDERR_TAIL_BYTES) -> str:
        """The last `max_bytes` the child wrote (llama.cpp's messages, an abort's reason)."""
        if not self._stderr_path or not Path(self._stderr_path).exists():
            return self._crash_tail
        with open(self._stderr_path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - max_bytes))
            return fh.read().decode("utf-8", errors="replace")

    def _keep_log(self) -> None:
        """A dead child's log is evidence: move it out of the way of the cleanup and keep it."""
        if not self._stderr_path:
            return
        self._crash_tail = self.stderr_tail()
        self.crash_log = keep_crash_log(self._stderr_path, self.pid)
        self._stderr_path = None

    def _died(self) -> EngineDied:
        with self._death_lock:  # the receiver and a caller may both find the child dead
            return self._death()

    def _death(self) -> EngineDied:
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
        if code is not None and RPC_LOST_MARK in tail:
            message = (
                f"An RPC worker dropped the connection (it stopped, or has too little memory for its share) "
                f"and the engine process {how} with it; check the worker, then restart the engine to go on."
                f"{where}"
            )
            return RpcWorkerLost(message, code, tail)
        return EngineDied(f"The engine process {how}{hint}. Restart the engine to go on.{where}", code, tail)

    # ------------------------------------------------------------ requests
    def _receive_loop(self, conn, proc: subprocess.Popen) -> None:
        """Route the child's answers to the calls waiting for them; notice death and hangs for all of them."""
        error: EngineDied | None = None
        while error is None:
            while self._deferred_cancels:
                self._cancel_call(self._deferred_cancels.pop())
            try:
                if conn.poll(0.2):
                    msg = conn.recv()
                    self._last_heard = time.monotonic()
                    if msg[0] in ("alive", "bye"):
                        continue
                    with self._calls_lock:
                        waiting = self._calls.get(msg[1])
                    if waiting is not None:
                        waiting.put(msg)
                    continue
            except (EOFError, OSError):
                pass
            if self._proc is not proc:
                return  # closed or restarted: nobody waits on this child any more
            if proc.poll() is not None:
                error = self._died()
            elif self._calls and time.monotonic() - self._last_heard > self.hang_timeout:
                proc.kill()
                died = self._died()
                error = EngineHung(
                    f"The engine stopped answering for {self.hang_timeout:.0f} s and was stopped. "
                    "Restart the engine to go on.", died.exitcode, died.stderr_tail,
                )  # fmt: skip
        with self._calls_lock:
            self._dead = error
            for waiting in self._calls.values():
                waiting.put(("dead", error))

    def _send(self, msg: tuple) -> None:
        if self._dead is not None:
            raise self._dead
        if self._conn is None or not self.alive:
            raise self._died() if self._proc else EngineError("The engine is not running; restart it.")
        try:
            with self._send_lock:
                self._conn.send(msg)
        except (OSError, ValueError):
            raise self._died() from None

    def _open(
        self, method: str, args: tuple, kwargs: dict, call_id: int | None = None
    ) -> tuple[int, queue.Queue]:
        """Send a call; its answers arrive on the returned queue."""
        call_id = call_id or next(self._ids)
        answers: queue.Queue = queue.Queue()
        with self._calls_lock:
            if self._dead is not None:
                raise self._dead
            self._calls[call_id] = answers
            if len(self._calls) == 1:  # the hang clock runs while calls wait for an answer
                self._last_heard = time.monotonic()
        try:
            self._send(("call", call_id, method, args, kwargs))
        except BaseException:
            self._forget(call_id)
            raise
        return call_id, answers

    def _forget(self, call_id: int) -> None:
        with self._calls_lock:
            self._calls.pop(call_id, None)

    def _answer(self, answers: queue.Queue) -> tuple:
        msg = answers.get()
        if msg[0] == "dead":
            answers.put(msg)  # a later read sees the death too
            raise msg[1]
        if msg[0] == "error":
            raise msg[2]
        return msg

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Call an Engine method in the child; streaming methods return an iterator of events."""
        if method in SLOT_CALLS and method in STREAMING:
            return _SlotStream(self, *self._open(method, args, kwargs))
        if method in STREAMING:
            if self._busy:
                raise EngineError("The engine is busy with another request.")
            self._ordinary = next(self._ids)  # known now, so a cancel() before the first event finds it
            return self._stream(self._ordinary, method, args, kwargs)
        if self._busy and method not in SLOT_CALLS:
            raise EngineError("The engine is busy with another request.")
        call_id, answers = self._open(method, args, kwargs)
        try:
            return self._answer(answers)[2]
        finally:
            self._forget(call_id)

    def _stream(self, call_id: int, method: str, args: tuple, kwargs: dict) -> Iterator[Any]:
        if self._busy:
            raise EngineError("The engine is busy with another request.")
        self._busy = True
        finished = False
        answers: queue.Queue = queue.Queue()
        try:
            _, answers = self._open(method, args, kwargs, call_id)
            while True:
                msg = self._answer(answers)
                if msg[0] == "end":
                    finished = True
                    return
                yield msg[2]
        except IngleError:
            finished = True
            raise
        finally:
            if not finished and self.alive and self._dead is None:
                # the caller stopped iterating early: cancel and drain so the next request starts clean
                self._cancel_call(call_id)
                try:
                    while self._answer(answers)[0] != "end":
                        pass
                except IngleError:
                    pass
            self._forget(call_id)
            if self._ordinary == call_id:
                self._ordinary = None
            self._busy = False

    def _cancel_call(self, call_id: int) -> None:
        if self._conn is not None and self.alive:
            try:
                with self._send_lock:
                    self._conn.send(("cancel", call_id))
            except (OSError, ValueError):
                pass

    def cancel(self) -> None:
        """Stop the running ordinary request (chat, complete, load); slot calls are cancelled by their iterator."""
        if self._ordinary is not None:
            self._cancel_call(self._ordinary)

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
        top_n: int = 12, tools: ToolSet | None = None,
    ) -> Inspection:  # fmt: skip
        return self._call("inspect", list(messages), draft, sampling, policy, top_n, tools)

    def preview(self, sampling: SamplingSettings, top_n: int = 20) -> list[PreviewStage]:
        return self._call("preview", sampling, top_n)

    def kv_state(self) -> KVState:
        return self._call("kv_state")

    def token_pieces(self, text: str, parse_special: bool = True) -> list[TokenPiece]:
        return self._call("token_pieces", text, parse_special)

    def context_budget(
        self, messages: Sequence[Message], draft: str, sampling: SamplingSettings, policy: OverflowPolicy,
        tools: ToolSet | None = None,
    ) -> ContextBudget:  # fmt: skip
        return self._call("context_budget", list(messages), draft, sampling, policy, tools)

    def hardware(self) -> Hardware:
        return self._call("hardware")

    def attention(self, text_or_tokens: str | Sequence[int], max_tokens: int = MAX_TOKENS) -> AttentionMap:
        data = text_or_tokens if isinstance(text_or_tokens, str) else list(text_or_tokens)
        return self._call("attention", data, max_tokens)

    def token_neighbours(self, token: int | str, k: int = 20) -> Neighbours:
        return self._call("token_neighbours", token, k)

    def embedding_projection(self, tokens: Sequence[int] | None = None) -> Projection:
        return self._call("embedding_projection", None if tokens is None else list(tokens))

    def eval_context(
        self, lengths: Sequence[int], depths: Sequence[int], perplexity: bool = True
    ) -> Iterator:
        return self._call("eval_context", list(lengths), list(depths), perplexity)

    def save_state(self, path: str, messages: Sequence[Message] | None = None) -> StateSaved:
        return self._call("save_state", str(path), None if messages is None else list(messages))

    def restore_state(self, path: str, messages: Sequence[Message] | None = None) -> StateRestored:
        return self._call("restore_state", str(path), None if messages is None else list(messages))

    def start_slots(self, n_slots: int, n_ctx: int) -> None:
        self._call("start_slots", n_slots, n_ctx)

    def slot_chat(
        self, messages: Sequence[Message], sampling: SamplingSettings | None = None
    ) -> Iterator[Event]:
        return self._call("slot_chat", list(messages), sampling)

    def slot_chat_tools(
        self, messages: Sequence[Message], tools: ToolSet | None, sampling: SamplingSettings | None = None
    ) -> Iterator[Event]:
        return self._call("slot_chat_tools", list(messages), tools, sampling)

    def slot_complete(self, prompt: str, sampling: SamplingSettings | None = None) -> Iterator[Event]:
        return self._call("slot_complete", prompt, sampling)

    def slot_states(self) -> list[SlotState]:
        return self._call("slot_states")

    def stop_slots(self) -> None:
        self._call("stop_slots")

    def __enter__(self) -> EngineHost:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _SlotStream:
    """The events of one slot call in the child. `cancel()` (any thread) ends that request alone; `close()`
    cancels and stops reading."""

    def __init__(self, host: EngineHost, call_id: int, answers: queue.Queue):
        self._host = host
        self._id = call_id
        self._answers = answers
        self._finished = False

    def __iter__(self) -> _SlotStream:
        return self

    def __next__(self) -> Event:
        if self._finished:
            raise StopIteration
        try:
            msg = self._host._answer(self._answers)
        except BaseException:
            self._end()
            raise
        if msg[0] == "end":
            self._end()
            raise StopIteration
        return msg[2]

    def _end(self) -> None:
        self._finished = True
        self._host._forget(self._id)

    def cancel(self) -> None:
        if not self._finished:
            self._host._cancel_call(self._id)

    def close(self) -> None:
        if not self._finished:
            self.cancel()
            self._end()

    def __del__(self) -> None:
        # the collector may run this inside the host's own send (holding its lock): the receiver sends it
        if not self._finished:
            self._finished = True
            self._host._forget(self._id)
            self._host._deferred_cancels.append(self._id)


if __name__ == "__main__":
    child_main(sys.argv[1])
