"""The engine's exception hierarchy: every message says what was wrong, where, and what to do."""

from __future__ import annotations


class IngleError(Exception):
    """Base of every error Ingle shows to a user. `str(err)` is the whole user-facing message."""


class ModelFileError(IngleError):
    """A file given as a model or adapter cannot be used (missing, corrupt, wrong kind, unsupported)."""


class SettingsError(IngleError):
    """A setting is out of range or of the wrong type; the message names the field."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.detail = message

    def __reduce__(self):  # keeps the field when the error crosses the host process boundary
        return (SettingsError, (self.field, self.detail))


class LibraryError(IngleError):
    """The model library cannot do what was asked (unknown name, name taken, disk problem)."""


class EngineError(IngleError):
    """The llama.cpp runtime failed (load failure, decode failure, no model loaded)."""


class ContextFullError(EngineError):
    """The conversation does not fit in the context and the overflow policy is 'stop'."""


class EngineDied(EngineError):
    """The engine child process ended unexpectedly (crash, abort, kill, out of memory)."""

    def __init__(self, message: str, exitcode: int | None = None, stderr_tail: str = ""):
        super().__init__(message)
        self.exitcode = exitcode
        self.stderr_tail = stderr_tail

    def __reduce__(self):
        return (type(self), (str(self), self.exitcode, self.stderr_tail))

    @property
    def signal(self) -> int | None:
        """The signal number that ended the child, or None when it exited with a code."""
        return -self.exitcode if self.exitcode is not None and self.exitcode < 0 else None


class EngineHung(EngineDied):
    """The engine child stopped answering and was killed after the timeout."""


class RpcError(EngineError):
    """llama.cpp's RPC backend is not built here, or a worker cannot be reached before loading."""


class RpcWorkerLost(EngineDied):
    """An RPC worker holding part of the model went away; llama.cpp ends the engine process with it."""


class DocsError(IngleError):
    """A document collection or its index cannot do what was asked (unknown collection, wrong embedding model)."""


class Cancelled(IngleError):
    """Work was cancelled by the user."""
