"""The Hub's endpoint (HF_ENDPOINT) and its errors: HubError, HubRefused, and one line a user can act on for any
failed Hub request (engine/hub.py and engine/downloads.py raise them)."""

from __future__ import annotations

import os

from engine.errors import IngleError
from engine.text import printable

DEFAULT_ENDPOINT = "https://huggingface.co"


class HubError(IngleError):
    """The Hub could not give what was asked (not found, gated, network, bad data)."""


class HubRefused(HubError):
    """The Hub's answer rules the request out for good (no such repo or file, no access): retrying cannot help."""

    def __init__(self, message: str, auth: bool = False):
        super().__init__(message)
        self.auth = auth  # 401/403/gated: a new token may change the answer

    def __reduce__(self):
        return (type(self), (str(self), self.auth))


def endpoint() -> str:
    """HF_ENDPOINT read now, not at import: huggingface_hub.constants freezes it when first imported."""
    return os.environ.get("HF_ENDPOINT", DEFAULT_ENDPOINT).rstrip("/")


def describe_hub_error(err: Exception, what: str) -> HubError:
    """A huggingface_hub / network exception -> one message a user can act on."""
    import httpx2
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    what = printable(what)
    status = getattr(getattr(err, "response", None), "status_code", None)
    if isinstance(err, GatedRepoError) or status == 401 and "gated" in str(err).lower():
        return HubRefused(
            f"{what} is gated: accept its terms on the Hub page, then give Ingle an access token "
            "(`ingle pull --token-file FILE` or the Token field in the download manager).",
            auth=True,
        )
    if isinstance(err, RevisionNotFoundError):
        return HubRefused(f"{what}: that revision does not exist on the Hub.")
    if isinstance(err, RepositoryNotFoundError) or status == 401:
        return HubRefused(
            f"{what} was not found on the Hub (check the name; private repos need a token).", auth=True
        )
    if isinstance(err, EntryNotFoundError) or status in (404, 410):
        return HubRefused(
            f"{what} was not found on the Hub (the repo has no such file; list it with `ingle search`)."
        )
    if status == 403:
        return HubRefused(
            f"{what}: the Hub refused access (HTTP 403); check the token's permissions.", auth=True
        )
    if isinstance(err, HfHubHTTPError | httpx2.HTTPStatusError):
        return HubError(f"{what}: the Hub answered HTTP {status}. Try again later.")
    if isinstance(err, httpx2.ConnectError | httpx2.ConnectTimeout):
        return HubError(
            f"{what}: could not reach {endpoint()} ({_reason(err)}). Check the connection or HF_ENDPOINT."
        )
    return HubError(
        f"{what}: the connection to {endpoint()} failed ({type(err).__name__}: {_reason(err)}). Try again."
    )


def _reason(err: Exception) -> str:
    text = str(err).strip() or type(err).__name__
    return printable(text.splitlines()[-1] if text.splitlines() else text)[:200]


def network_errors() -> tuple[type[Exception], ...]:
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError

    return (HfHubHTTPError, httpx2.HTTPError, httpx2.InvalidURL, OSError)
