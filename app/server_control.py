"""Starts and stops the API server on the chat window's loaded model, in this process (a ServerThread), with the
chat window's engine child as its engine: no second copy of the weights, and no llama.cpp in the GUI process."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

from PySide6.QtCore import QObject, Signal

from app.bridge import EngineBridge
from engine.errors import EngineError, SettingsError
from engine.events import ModelLoaded
from engine.server.config import ServerConfig
from engine.server.request_log import RequestLog
from engine.server.runner import ServerThread
from engine.server.scheduler import Scheduler
from engine.server_cli import bind, check_exposure, is_loopback
from engine.text import name_from

MAX_SLOTS = 16


@dataclass(frozen=True)
class ServerOptions:
    host: str = "127.0.0.1"
    port: int = 8080
    slots: int = 1
    api_key: str | None = None  # required of every request when set
    insecure: bool = False  # serve beyond this machine without a key
    log_prompts: bool = False


def base_url(host: str, port: int) -> str:
    """What a client on this machine connects to (an any-address server is reached through loopback)."""
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/v1"


class ServerControl(QObject):
    """One API server at a time. Signals arrive on the GUI thread: `started(base_url)`, `stopped(why)`,
    `logged(LoggedRequest)`."""

    started = Signal(str)
    stopped = Signal(str)
    logged = Signal(object)
    _stopped = Signal(str)  # from the thread that stopped the server

    def __init__(self, bridge: EngineBridge, parent: QObject | None = None):
        super().__init__(parent)
        self.bridge = bridge
        self.thread: ServerThread | None = None
        self.scheduler: Scheduler | None = None
        self.options = ServerOptions()
        self.model_name = ""
        self.url = ""
        self.warning = ""
        self.stopping = False
        self._log_prompts = False  # read by the server thread for each request
        self._stopper: threading.Thread | None = None
        self._stopped.connect(self._finish_stop)

    @property
    def running(self) -> bool:
        return self.thread is not None

    def set_log_prompts(self, on: bool) -> None:
        """Takes effect from the next request."""
        self._log_prompts = bool(on)

    def start(self, options: ServerOptions, loaded: ModelLoaded | None) -> str:
        """Start serving `loaded`; returns the base URL. Raises SettingsError/EngineError with the message."""
        if self.running or self.stopping:
            raise EngineError("The server is still running; stop it first.")
        if not 1 <= options.slots <= MAX_SLOTS:
            raise SettingsError("slots", f"use 1 to {MAX_SLOTS}")
        self.warning = check_exposure(options.host, options.api_key, options.insecure) or ""
        if loaded is None:
            raise EngineError("Load a model in the chat window first; the server serves the loaded model.")
        try:
            sock = bind(options.host, options.port)
        except SettingsError as err:  # its words name the CLI's flag
            raise SettingsError(err.field, err.detail.replace("with --port", "in the Port box")) from None
        try:
            config = ServerConfig(
                model_name=name_from(Path(loaded.path).stem), model_info=loaded.info, n_ctx=loaded.n_ctx,
                api_key=options.api_key, created=int(time.time()),
            )  # fmt: skip
            # the chat window's engine child decodes the API requests in slots of their own (one more llama.cpp
            # context on the same weights), batched together and beside the chat window's own reply
            host = self.bridge.host
            host.start_slots(options.slots, loaded.n_ctx)
            scheduler = Scheduler(host, self._reload, max_queue=config.max_queue, slots=options.slots)
            thread = ServerThread(config, scheduler, sock)
            thread.app.add_middleware(
                RequestLog, state=thread.state, sink=self.logged.emit, log_prompts=lambda: self._log_prompts
            )
            thread.start()
        except BaseException:
            sock.close()
            self._stop_slots()
            raise
        self.thread, self.scheduler = thread, scheduler
        self.options, self.model_name = options, config.model_name
        self.set_log_prompts(options.log_prompts)
        self.url = base_url(options.host, sock.getsockname()[1])
        self.started.emit(self.url)
        return self.url

    @staticmethod
    def _reload(_engine) -> None:
        # the chat window owns the engine child: after a crash it restarts it, and the server is stopped
        raise EngineError("The engine stopped; restart it in the chat window, then start the server again.")

    def stop(self, why: str = "The server was stopped.") -> None:
        """End the server's requests with `why`, then stop listening (off the GUI thread: open streams end
        first); `stopped(why)` follows."""
        if self.thread is None:
            return
        thread, self.thread = self.thread, None
        self.stopping = True

        def finish() -> None:
            self._stop_slots()  # the requests still running end now (their clients get an error)
            thread.stop()
            self._stopped.emit(why)

        self._stopper = threading.Thread(target=finish, name="ingle-api-server-stop", daemon=True)
        self._stopper.start()

    def _stop_slots(self) -> None:
        host = self.bridge.host
        if host.alive:
            try:
                host.stop_slots()
            except EngineError:  # the engine child is gone: so are its slots
                pass

    def _finish_stop(self, why: str) -> None:
        self.stopping = False
        self.scheduler = None
        self.stopped.emit(why)

    def stop_now(self, why: str) -> None:
        """Stop and wait for the port to be closed (the window is closing: the engine child goes next)."""
        self.stop(why)
        if self._stopper is not None:
            self._stopper.join(15)

    def slot_usage(self) -> tuple[int, int, int]:
        """(busy slots, slots, requests waiting), 0s when stopped."""
        s = self.scheduler
        return (s.busy, s.slots, s.waiting) if s is not None and self.running else (0, self.options.slots, 0)

    @staticmethod
    def exposed(host: str) -> bool:
        return not is_loopback(host)
