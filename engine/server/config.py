"""What a server serves and how it guards itself: the model's name, limits, key and default settings."""

from __future__ import annotations

from dataclasses import dataclass, field

from engine.settings import SamplingSettings

DEFAULT_MAX_BODY = 8 << 20  # 8 MiB of JSON is a very long conversation; more is a mistake or an attack
DEFAULT_MAX_TOKENS_CAP = 8192
DEFAULT_MAX_QUEUE = 16


@dataclass(frozen=True)
class ServerConfig:
    model_name: str  # the one name requests may ask for (the library name of the loaded model)
    model_info: dict = field(default_factory=dict)  # ModelLoaded.info, for /v1/models and /api/show
    n_ctx: int = 0
    api_key: str | None = None
    cors_origins: tuple[str, ...] = ()
    max_body: int = DEFAULT_MAX_BODY
    max_tokens_cap: int = DEFAULT_MAX_TOKENS_CAP
    max_queue: int = DEFAULT_MAX_QUEUE  # requests waiting for the engine beyond the running one(s)
    defaults: SamplingSettings = field(default_factory=SamplingSettings)  # sampler defaults (CLI flags)
    created: int = 0  # when the model was loaded (unix time), as OpenAI's `created`
    eog_tokens: tuple[int, ...] = ()  # the model's end-of-generation tokens, banned by `ignore_eos`

    def accepts(self, name: str | None) -> bool:
        """Whether a request's model name means the served model (Ollama tools append ':latest')."""
        if not name:
            return True  # a client that names no model gets the one that is loaded
        return name in (self.model_name, f"{self.model_name}:latest")
