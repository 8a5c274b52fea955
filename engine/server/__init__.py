"""Ingle's local HTTP API: OpenAI- and Ollama-compatible endpoints over one loaded engine.

`create_app(config, scheduler)` builds the Starlette app; `engine.server_cli` adds `ingle serve`. Requests reach
the engine only through `Scheduler`: `--parallel N` slots of the engine (continuous batching,
`engine.slots`), a fair bounded queue in front of them.
"""

from engine.server.app import create_app
from engine.server.config import ServerConfig
from engine.server.scheduler import Scheduler

__all__ = ["ServerConfig", "Scheduler", "create_app"]
