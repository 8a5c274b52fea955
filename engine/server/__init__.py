"""Ingle's local HTTP API: OpenAI- and Ollama-compatible endpoints over one loaded engine.

`create_app(config, scheduler)` builds the Starlette app; `engine.server_cli` adds `ingle serve`. Requests reach
the engine only through `Scheduler` (one slot today; a multi-slot engine replaces it without touching routes).
"""

from engine.server.app import create_app
from engine.server.config import ServerConfig
from engine.server.scheduler import Scheduler

__all__ = ["ServerConfig", "Scheduler", "create_app"]
