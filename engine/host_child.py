"""The engine child's side of the host's wire: serve Engine calls by id, ordinary ones one at a time on the main
thread and slot calls on threads of their own. Started as `python -m engine.host` (or the frozen app's
--engine-host)."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
import traceback
from multiprocessing.connection import Client
from typing import Any

from engine.child_process import die_with_parent
from engine.errors import EngineError, IngleError
from engine.interface import METHODS, SLOT_CALLS, STREAMING


def child_main(address: str) -> None:
    """Entry point of the engine child: serve requests until shutdown or until the parent goes away.

    Every call carries an id and its answers go back tagged with it. Ordinary calls run one at a time on the
    main thread; slot calls (interface.SLOT_CALLS) run on threads of their own, beside them and each other.
    """
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
    calls = threading.Lock()  # guards the three below
    cancelled: set[int] = set()  # ids cancelled before or while they run
    current: list[int | None] = [None]  # the ordinary call the main thread runs
    streams: dict[int, Any] = {}  # the running slot calls' streams

    def cancel(call_id: int) -> None:
        with calls:
            if call_id in streams:
                streams[call_id].cancel()
                return
            cancelled.add(call_id)  # kept: a cancel that arrives before its call must not be lost
            if current[0] == call_id:
                runtime.cancel()

    def serve(call_id: int, method: str, args: tuple, kwargs: dict, ordinary: bool) -> None:
        try:
            if method not in METHODS:  # the wire carries Engine methods and nothing else
                raise EngineError(f"Internal engine error: '{method}' is not an engine method.")
            result = getattr(runtime, method)(*args, **kwargs)
            if method in STREAMING:
                if not ordinary:
                    with calls:
                        streams[call_id] = result
                        if call_id in cancelled:
                            result.cancel()
                for event in result:
                    send(("event", call_id, event))
                    if ordinary and call_id in cancelled:
                        runtime.cancel()  # cancelled before it began: chat() clears an older Stop as it starts
                send(("end", call_id))
            else:
                send(("result", call_id, result))
        except IngleError as err:
            send(("error", call_id, err))
        except Exception as err:  # a bug, not a user error: keep the trace in the log, say it plainly
            traceback.print_exc()
            send(("error", call_id, EngineError(f"Internal engine error: {type(err).__name__}: {err}")))
        finally:
            with calls:
                streams.pop(call_id, None)
                cancelled.discard(call_id)

    def reader() -> None:
        # Cancels must land while the main thread is busy generating, so a thread reads the pipe.
        while True:
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                os._exit(0)  # the parent is gone
            if msg[0] == "cancel":
                cancel(msg[1])
            elif msg[0] == "call" and msg[2] in SLOT_CALLS:
                args = (*msg[1:], False)
                threading.Thread(target=serve, args=args, name="ingle-slot-call", daemon=True).start()
            else:
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
        _, call_id, method, args, kwargs = msg
        with calls:
            current[0] = call_id
        try:
            serve(call_id, method, args, kwargs, True)
        finally:
            with calls:
                current[0] = None
