"""Hub search and repo listing for GGUF models (quant groups, split files, projectors), over one HTTP path.

Every request to the Hub goes through `open_url`, which follows redirects by hand so that the access token is sent
only to the HF_ENDPOINT origin (a CDN, a mirror's storage or a `Link: next` page on another host never sees it),
makes one attempt (offline fails at once, without huggingface_hub's retry loop and its log lines) and reads
bounded answers. The token is kept by engine/hub_token.py; the errors and their messages are in engine/hub_errors.py.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from urllib.parse import quote, urljoin, urlsplit

from engine import units
from engine.hub_errors import (
    DEFAULT_ENDPOINT,
    HubError,
    HubRefused,
    describe_hub_error,
    endpoint,
    network_errors,
)
from engine.hub_token import check_token, clear_token, given_or_saved, load_token, save_token, token_path
from engine.text import printable

# Names the app, the CLIs and the tests use from here, whichever module holds them now.
__all__ = [
    "DEFAULT_ENDPOINT",
    "HubError",
    "HubRefused",
    "check_token",
    "clear_token",
    "describe_hub_error",
    "endpoint",
    "load_token",
    "save_token",
    "token_path",
]

SORTS = {"downloads": "downloads", "likes": "likes", "recent": "last_modified"}
SPLIT_RE = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$", re.IGNORECASE)
# Longest names first so "Q4_K_M" wins over "Q4_K" and "IQ4_XS" over "Q4".
_QUANTS = sorted(
    """IQ1_S IQ1_M IQ2_XXS IQ2_XS IQ2_S IQ2_M IQ3_XXS IQ3_XS IQ3_S IQ3_M IQ4_XS IQ4_NL TQ1_0 TQ2_0 MXFP4
    Q2_K Q2_K_S Q2_K_L Q3_K_S Q3_K_M Q3_K_L Q3_K_XL Q4_0 Q4_1 Q4_K_S Q4_K_M Q4_K_L Q4_K_XL Q5_0 Q5_1 Q5_K_S
    Q5_K_M Q5_K_L Q5_K_XL Q6_K Q6_K_L Q6_K_XL Q8_0 Q8_K_XL F16 BF16 F32""".split(),
    key=len,
    reverse=True,
)
QUANT_RE = re.compile(r"(?<![A-Za-z0-9])(" + "|".join(_QUANTS) + r")(?![A-Za-z0-9])", re.IGNORECASE)
# The Hub's own rule for owner and repo names: letters, digits, '-', '_', '.'; no '..' (checked separately).
REPO_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}")
SHA256_RE = re.compile(r"[0-9a-f]{64}")
SHA1_RE = re.compile(r"[0-9a-f]{40}")
MAX_REDIRECTS = 10
MAX_API_BYTES = 32 << 20  # a model_info of a repo with thousands of files is a few MiB
MAX_ERROR_BYTES = 64 << 10
API_TIMEOUT = 30.0  # seconds without a byte
API_DEADLINE = 120.0  # seconds for a whole API answer
CONNECT_TIMEOUT = 10.0
_DEFAULT_PORTS = {"http": 80, "https": 443}


# ------------------------------------------------------------------ HTTP
class _RedactQueries(logging.Filter):
    """httpx2 logs each request's full URL at INFO (`ingle -v`): the query of a CDN's signed URL is a short-lived
    download credential, so it is cut from the line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(_redact_query(a) for a in record.args)
        return True


def _redact_query(value):
    text = str(value)
    if "?" in text and text.lower().startswith(("http://", "https://")):
        return text.split("?", 1)[0] + "?<redacted>"
    return value


_REDACT = _RedactQueries()


def origin(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of a URL, with the scheme's default port filled in."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:  # a port that is not a number: no origin matches it
        return scheme, "", -1
    return scheme, (parts.hostname or "").lower(), port or _DEFAULT_PORTS.get(scheme, 0)


def token_allowed(url: str) -> bool:
    """The token belongs to the HF_ENDPOINT origin: a request anywhere else (CDN, other host, other port, plain
    http where the endpoint is https) is sent without it."""
    return origin(url) == origin(endpoint())


def headers_for(url: str, token: str | None, extra: dict[str, str] | None = None) -> dict[str, str]:
    """Request headers for `url`: huggingface_hub's user agent, `extra`, and the token only on the Hub's origin."""
    from huggingface_hub.utils import build_hf_headers

    # token=False: never the token huggingface_hub would find by itself (its cache, HF_TOKEN) behind our back
    headers = {k: v for k, v in build_hf_headers(token=False).items() if k.lower() != "authorization"}
    headers.update({k: v for k, v in (extra or {}).items() if k.lower() != "authorization"})
    if token and token_allowed(url):
        headers["authorization"] = f"Bearer {token}"
    return headers


@contextmanager
def open_url(method: str, url: str, *, token: str | None, params=None, headers: dict[str, str] | None = None,
             timeout: float = API_TIMEOUT, stay_on_hub: bool = False, stop=None) -> Iterator:  # fmt: skip
    """One streamed request, its redirects followed here (never by the HTTP client) so each hop gets its own
    headers: the token goes only to the Hub's origin. `stay_on_hub`: stop at a redirect that leaves the Hub and
    return that response; `stop(response)`: return the first redirect it accepts (a file's HEAD: its metadata
    is on the Hub's redirect). One attempt; no retries."""
    import httpx2
    from huggingface_hub.utils import get_session

    for name in ("httpx2", "httpcore2", "httpx", "httpcore"):
        if _REDACT not in logging.getLogger(name).filters:
            logging.getLogger(name).addFilter(_REDACT)
    session = get_session()
    limits = httpx2.Timeout(timeout, connect=min(timeout, CONNECT_TIMEOUT))
    for _ in range(MAX_REDIRECTS + 1):
        request = session.build_request(method, url, params=params, headers=headers_for(url, token, headers),
                                        timeout=limits)  # fmt: skip
        response = session.send(request, stream=True, follow_redirects=False)
        location = response.headers.get("Location") if response.is_redirect else None
        if not location:
            break
        target = urljoin(str(response.url), location)
        if (stay_on_hub and not token_allowed(target)) or (stop is not None and stop(response)):
            break
        response.close()
        if response.status_code == 303 and method != "HEAD":
            method = "GET"
        url, params = target, None  # the Location carries its own query
    else:
        response.close()
        raise HubError(
            f"{printable(url)}: more than {MAX_REDIRECTS} redirects; the Hub or a proxy is misconfigured."
        )
    try:
        yield response
    finally:
        response.close()


def raise_for_status(response) -> None:
    """huggingface_hub's typed HTTP errors for an error answer, reading at most MAX_ERROR_BYTES of its body (its
    own check reads a streamed error body whole, however large)."""
    if response.status_code < 400:
        return
    import httpx2
    from huggingface_hub.utils import hf_raise_for_status

    body = b""
    for chunk in response.iter_bytes():
        body += chunk
        if len(body) >= MAX_ERROR_BYTES:
            break
    skip = {"content-length", "content-encoding", "transfer-encoding"}
    headers = [(k, v) for k, v in response.headers.multi_items() if k.lower() not in skip]
    hf_raise_for_status(httpx2.Response(response.status_code, headers=headers, content=body[:MAX_ERROR_BYTES],
                                        request=response.request))  # fmt: skip
    response.raise_for_status()  # a status huggingface_hub lets through


def get_json(url: str, *, token: str | None, params=None, what: str):
    """GET a JSON answer of at most MAX_API_BYTES, read within API_DEADLINE seconds (a server trickling bytes
    cannot hold a search forever)."""
    deadline = time.monotonic() + API_DEADLINE
    with open_url("GET", url, token=token, params=params) as response:
        raise_for_status(response)
        body = bytearray()
        for chunk in response.iter_bytes():
            body += chunk
            if len(body) > MAX_API_BYTES:
                raise HubError(
                    f"{what}: the Hub's answer is larger than {units.mib(MAX_API_BYTES)}; "
                    f"{endpoint()} is not behaving like the Hub."
                )
            if time.monotonic() > deadline:
                raise HubError(
                    f"{what}: {endpoint()} took more than {API_DEADLINE:.0f} s to answer; try again later."
                )
    try:
        return json.loads(bytes(body))
    except ValueError:
        raise HubError(f"{what}: the answer from {endpoint()} is not JSON; check HF_ENDPOINT.") from None


@dataclass(frozen=True)
class FileMeta:
    """What a file's HEAD on the Hub says: where to GET it, its etag (sha256 for LFS files, the git blob sha1
    for small ones on the real Hub) and size."""

    location: str
    etag: str
    size: int | None
    commit: str = ""


def file_metadata(repo_id: str, path: str, revision: str, token: str | None) -> FileMeta:
    """HEAD of /{repo}/resolve/{revision}/{path}, following redirects only while they stay on the Hub."""
    from huggingface_hub import hf_hub_url

    url = hf_hub_url(repo_id, path, revision=revision, endpoint=endpoint())

    def linked(response) -> bool:  # the Hub's answer about an LFS file, wherever the redirect goes next
        return "X-Linked-Size" in response.headers or "X-Linked-Etag" in response.headers

    with open_url("HEAD", url, token=token, headers={"Accept-Encoding": "identity"}, stay_on_hub=True,
                  stop=linked) as r:  # fmt: skip
        raise_for_status(r)
        etag = r.headers.get("X-Linked-Etag") or r.headers.get("ETag") or ""
        moved = r.headers.get("Location") if r.is_redirect else None
        size = r.headers.get("X-Linked-Size") or (None if moved else r.headers.get("Content-Length"))
        location = urljoin(str(r.url), moved) if moved else str(r.url)
        commit = r.headers.get("X-Repo-Commit", "")
    etag = etag.removeprefix("W/").strip('"').strip()
    try:
        size_ = int(size) if size is not None else None
    except ValueError:
        size_ = None
    if size_ is not None and size_ < 0:
        size_ = None
    return FileMeta(location, etag, size_, commit)


# ------------------------------------------------------------------ search
# Hub tags (or pipeline tags) of sentence-embedding models: such a repo is for document search, not chat
EMBEDDING_TAGS = frozenset({"sentence-similarity", "feature-extraction", "sentence-transformers"})


@dataclass(frozen=True)
class RepoSummary:
    repo_id: str
    downloads: int = 0
    likes: int = 0
    last_modified: datetime | None = None
    gated: bool = False
    license: str = ""
    embedding: bool = False  # tagged as a sentence-embedding model on the Hub

    @classmethod
    def from_info(cls, info) -> RepoSummary:
        license_ = ""
        card = getattr(info, "card_data", None)
        if card is not None:
            license_ = str(card.get("license", "") or "") if hasattr(card, "get") else ""
        if not license_:
            license_ = next(
                (t[8:] for t in info.tags or [] if isinstance(t, str) and t.startswith("license:")), ""
            )
        modified = info.last_modified or info.created_at
        tags = {t for t in info.tags or [] if isinstance(t, str)}
        pipeline = getattr(info, "pipeline_tag", None)
        embedding = bool(EMBEDDING_TAGS & (tags | ({pipeline} if isinstance(pipeline, str) else set())))
        return cls(
            repo_id=str(info.id),
            downloads=_count(info.downloads),
            likes=_count(info.likes),
            last_modified=modified if isinstance(modified, datetime) else None,
            gated=bool(info.gated),
            license=license_,
            embedding=embedding,
        )


def _count(value) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def _model_info(item, what: str):
    """huggingface_hub's ModelInfo from one JSON object of the Hub, or a HubError when it is malformed."""
    from huggingface_hub.hf_api import ModelInfo

    try:
        if not isinstance(item, dict) or not isinstance(item.get("id"), str):
            raise TypeError("not a model")
        return ModelInfo(**item)
    except (TypeError, ValueError, KeyError, AttributeError) as err:
        raise HubError(
            f"{what}: the answer from {endpoint()} is malformed ({printable(err)}); check HF_ENDPOINT."
        ) from None


def search(
    query: str, sort: str = "downloads", limit: int = 30, token: str | None = None
) -> list[RepoSummary]:
    """Models with GGUF files matching `query`, sorted by 'downloads', 'likes' or 'recent'."""
    if sort not in SORTS:
        raise HubError(f"sort must be one of {', '.join(SORTS)}, not '{printable(sort)}'.")
    what = f"Searching for '{query}'"
    # the parameters HfApi.list_models sends; one page only (its pagination follows `Link: next` to any host)
    params: dict = {"filter": ["gguf"], "sort": SORTS[sort], "limit": limit,
                    "expand": ["downloads", "likes", "lastModified", "gated", "tags", "cardData", "createdAt",
                               "pipeline_tag"]}  # fmt: skip
    if query:
        params["search"] = query
    try:
        found = get_json(
            f"{endpoint()}/api/models", token=given_or_saved(token), params=params, what=printable(what)
        )
    except network_errors() as err:
        raise describe_hub_error(err, what) from None
    if not isinstance(found, list):
        raise HubError(
            f"{printable(what)}: the answer from {endpoint()} is not a list of models; check HF_ENDPOINT."
        )
    return [RepoSummary.from_info(_model_info(m, printable(what))) for m in found[: max(limit, 0)]]


# ------------------------------------------------------------------ repo files
@dataclass(frozen=True)
class HubFile:
    path: str
    size: int
    sha256: str  # from the Hub's LFS metadata; "" for non-LFS files
    git_sha1: str = ""  # non-LFS files: the git blob id the Hub lists (sha1 of "blob <size>\0" + bytes)


@dataclass(frozen=True)
class QuantOption:
    """One downloadable model: a quant type, as one file or as the parts of a split GGUF."""

    quant: str
    files: tuple[HubFile, ...]
    projector: bool = False

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def label(self) -> str:
        name = Path(self.files[0].path).name
        return SPLIT_RE.sub(".gguf", name) if len(self.files) > 1 else name

    @property
    def split(self) -> bool:
        return len(self.files) > 1


@dataclass(frozen=True)
class RepoFiles:
    summary: RepoSummary
    revision: str
    options: tuple[QuantOption, ...] = field(default_factory=tuple)

    @property
    def models(self) -> list[QuantOption]:
        return [o for o in self.options if not o.projector]

    @property
    def projectors(self) -> list[QuantOption]:
        return [o for o in self.options if o.projector]

    def pick(self, want: str | None) -> QuantOption:
        """`want`: a quant name (Q4_K_M), a file path in the repo, or None (caller decides)."""
        models = self.models
        repo = printable(self.summary.repo_id)
        if not models:
            raise HubError(f"{repo} has no GGUF model files.")
        if want is None:
            raise HubError(f"Say which quant of {repo}: " + ", ".join(o.quant for o in models))
        for o in self.options:
            if want in {f.path for f in o.files} or want == o.label:
                return o
        hits = [o for o in models if o.quant.upper() == want.upper()]
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            raise HubError(
                f"{printable(want)} matches several files: "
                + ", ".join(printable(o.label) for o in hits)
                + "; name one."
            )
        raise HubError(
            f"{repo} has no '{printable(want)}'. Available: "
            + ", ".join(f"{o.quant} ({printable(o.label)})" for o in models)
        )


def quant_of(path: str) -> str:
    """The quant type named in a file path (Q4_K_M, IQ3_XS, F16, ...), or '?' when none is named."""
    hits = QUANT_RE.findall(path)
    return hits[-1].upper() if hits else "?"


def is_projector(path: str) -> bool:
    return "mmproj" in Path(path).name.lower()


def group_files(files: list[HubFile]) -> list[QuantOption]:
    """GGUF files -> options: split parts joined into one, projectors flagged; sorted by size."""
    singles: list[QuantOption] = []
    splits: dict[tuple[str, str], list[HubFile]] = {}
    for f in files:
        if not f.path.lower().endswith(".gguf"):
            continue
        m = SPLIT_RE.search(f.path)
        if m:
            splits.setdefault((f.path[: m.start()], m.group(2)), []).append(f)
        else:
            singles.append(QuantOption(quant_of(f.path), (f,), is_projector(f.path)))
    for (_prefix, _count), parts in splits.items():
        parts.sort(key=lambda f: f.path)
        singles.append(QuantOption(quant_of(parts[0].path), tuple(parts), is_projector(parts[0].path)))
    return sorted(singles, key=lambda o: (o.projector, o.size))


def repo_files(repo_id: str, revision: str | None = None, token: str | None = None) -> RepoFiles:
    """A repo's GGUF files with sizes and LFS sha256 (model_info with files_metadata)."""
    check_repo_id(repo_id)
    url = f"{endpoint()}/api/models/{repo_id}"
    if revision is not None:
        url += f"/revision/{quote(revision, safe='')}"
    try:
        data = get_json(url, token=given_or_saved(token), params={"blobs": True}, what=repo_id)
    except network_errors() as err:
        raise describe_hub_error(err, repo_id) from None
    info = _model_info(data, repo_id)
    try:
        files = [_hub_file(s) for s in info.siblings or []]
    except (TypeError, ValueError, AttributeError) as err:
        raise HubError(f"{repo_id}: the Hub's file list is malformed ({printable(err)}).") from None
    commit = info.sha if isinstance(info.sha, str) and SHA1_RE.fullmatch(info.sha) else None
    return RepoFiles(RepoSummary.from_info(info), commit or revision or "main", tuple(group_files(files)))


def _hub_file(sibling) -> HubFile:
    """One sibling of model_info as a HubFile; sizes and hashes from the Hub are checked for type and form."""
    if not isinstance(sibling.rfilename, str) or not sibling.rfilename:
        raise ValueError("a file without a name")
    lfs = sibling.lfs
    size = (lfs.size if lfs else sibling.size) or 0
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ValueError(f"{printable(sibling.rfilename)} has size {printable(size)}")
    sha256 = str(lfs.sha256 or "").lower() if lfs else ""
    if sha256 and not SHA256_RE.fullmatch(sha256):
        raise ValueError(f"{printable(sibling.rfilename)} has sha256 '{printable(sha256)[:80]}'")
    blob = str(sibling.blob_id or "").lower() if not lfs else ""  # an LFS file's blob id hashes its pointer
    return HubFile(sibling.rfilename, size, sha256, blob if SHA1_RE.fullmatch(blob) else "")


def check_repo_id(repo_id: str, spec: str | None = None) -> str:
    """A Hub repo id is 'owner/name' in the Hub's characters; anything else never reaches a URL."""
    if not isinstance(repo_id, str) or not REPO_ID_RE.fullmatch(repo_id) or ".." in repo_id:
        raise HubRefused(
            f"'{printable(spec or repo_id)}' is not a Hub model: write owner/name "
            "(letters, digits, '-', '_', '.'), optionally :QUANT or :FILE."
        )
    return repo_id


def parse_spec(spec: str) -> tuple[str, str | None]:
    """'owner/repo[:QUANT|FILE]' -> (repo_id, quant-or-file-or-None)."""
    repo, _, want = spec.partition(":")
    return check_repo_id(repo, spec), want or None
