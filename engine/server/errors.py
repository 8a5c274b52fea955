"""API errors: one exception type the routes raise, rendered as OpenAI's or Ollama's error object."""

from __future__ import annotations

from engine.errors import ContextFullError, EngineDied, IngleError, LibraryError, SettingsError


class ApiError(Exception):
    """An HTTP error with the fields of OpenAI's error object ({"error": {message, type, param, code}})."""

    def __init__(
        self,
        status: int,
        message: str,
        kind: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind
        self.param = param
        self.code = code
        self.headers = headers or {}

    def openai(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}

    def ollama(self) -> dict:
        return {"error": self.message}


def bad_field(field: str, message: str) -> ApiError:
    """400 naming the request field that is wrong."""
    return ApiError(400, f"{field}: {message}", param=field, code="invalid_value")


def from_engine_error(err: BaseException) -> ApiError:
    """The API's answer to an error raised by the engine or the settings."""
    if isinstance(err, ApiError):
        return err
    if isinstance(err, SettingsError):
        return ApiError(400, str(err), param=err.field, code="invalid_value")
    if isinstance(err, ContextFullError):
        # the engine's first sentence has both numbers; its advice is for the chat window, not for an API
        first = str(err).split(". ")[0].rstrip(".")
        return ApiError(400, f"{first}. Shorten the prompt or max_tokens, or serve the model with a larger "
                             "--ctx-size.", param="messages", code="context_length_exceeded")  # fmt: skip
    if isinstance(err, EngineDied):
        return ApiError(
            503,
            "The engine process stopped while serving this request; it restarts for the next one. "
            "Try the request again.",
            kind="server_error",
            code="engine_restarting",
            headers={"Retry-After": "2"},
        )
    if isinstance(err, LibraryError):
        return ApiError(404, str(err), param="model", code="model_not_found")
    if isinstance(err, IngleError):
        return ApiError(500, str(err), kind="server_error", code="engine_error")
    return ApiError(500, f"Internal server error: {type(err).__name__}", kind="server_error")
