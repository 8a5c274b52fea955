"""Run the API server in a background thread (the GUI's Server panel and the tests); `ingle serve` runs it
in the main thread instead, where uvicorn handles Ctrl+C."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import uvicorn

from engine.errors import EngineError
from engine.server.app import create_app
from engine.server.config import ServerConfig
from engine.server.scheduler import Scheduler


class ServerThread:
    """uvicorn serving `create_app(config, scheduler)` on an already bound socket, in a daemon thread."""

    def __init__(self, config: ServerConfig, scheduler: Scheduler, sock: socket.socket):
        self.app = create_app(config, scheduler)
        self.state = self.app.state.server
        self.sock = sock
        self.server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning", lifespan="off"))
        self.thread = threading.Thread(target=self._run, name="ingle-api-server", daemon=True)
        self.loop: asyncio.AbstractEventLoop | None = None

    def _run(self) -> None:
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self.server.serve(sockets=[self.sock]))
        finally:  # end what the libraries left running (sse-starlette's shutdown watcher) before closing
            pending = asyncio.all_tasks(self.loop)
            for task in pending:
                task.cancel()
            self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            self.loop.close()

    @property
    def url(self) -> str:
        host, port = self.sock.getsockname()[:2]
        return f"http://{host}:{port}"

    def start(self, timeout: float = 30.0) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise EngineError(f"The API server did not start on {self.url}.")
            time.sleep(0.02)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)
        self.sock.close()
