"""Hugging Face Hub search and repo listing for GGUF models: quant groups, split files, projectors, the token."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from engine.errors import IngleError

DEFAULT_ENDPOINT = "https://huggingface.co"
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


class HubError(IngleError):
    """The Hub could not give what was asked (not found, gated, network, bad data)."""


def endpoint() -> str:
    """HF_ENDPOINT read now, not at import: huggingface_hub.constants freezes it when first imported."""
    return os.environ.get("HF_ENDPOINT", DEFAULT_ENDPOINT).rstrip("/")


# ------------------------------------------------------------------ token
def token_path() -> Path:
    from engine.library import data_dir

    return data_dir() / "hf_token"


def save_token(token: str) -> Path:
    """Store the access token readable by this user only (0600); it is never logged or printed."""
    path = token_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(token.strip())
    os.chmod(path, 0o600)
    return path


def load_token() -> str | None:
    """The saved token, else HF_TOKEN from the environment, else None."""
    path = token_path()
    if path.exists():
        text = path.read_text().strip()
        if text:
            return text
    return os.environ.get("HF_TOKEN") or None


def clear_token() -> None:
    token_path().unlink(missing_ok=True)


def api(token: str | None = None):
    from huggingface_hub import HfApi

    return HfApi(endpoint=endpoint(), token=token if token is not None else load_token())


# ------------------------------------------------------------------ errors
def describe_hub_error(err: Exception, what: str) -> HubError:
    """A huggingface_hub / network exception -> one message a user can act on."""
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    status = getattr(getattr(err, "response", None), "status_code", None)
    if isinstance(err, GatedRepoError) or status == 401 and "gated" in str(err).lower():
        return HubError(
            f"{what} is gated: accept its terms on the Hub page, then give Ingle an access token "
            "(`ingle pull --token-file FILE` or the Token field in the download manager)."
        )
    if isinstance(err, RevisionNotFoundError):
        return HubError(f"{what}: that revision does not exist on the Hub.")
    if isinstance(err, RepositoryNotFoundError) or status == 401:
        return HubError(f"{what} was not found on the Hub (check the name; private repos need a token).")
    if isinstance(err, EntryNotFoundError) or status == 404:
        return HubError(
            f"{what} was not found on the Hub (the repo has no such file; list it with `ingle search`)."
        )
    if isinstance(err, HfHubHTTPError):
        return HubError(f"{what}: the Hub answered HTTP {status}. Try again later.")
    return HubError(
        f"{what}: could not reach {endpoint()} ({type(err).__name__}: {err}). Check the connection."
    )


def _network_errors() -> tuple[type[Exception], ...]:
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError

    return (HfHubHTTPError, httpx2.HTTPError, OSError)


# ------------------------------------------------------------------ search
@dataclass(frozen=True)
class RepoSummary:
    repo_id: str
    downloads: int = 0
    likes: int = 0
    last_modified: datetime | None = None
    gated: bool = False
    license: str = ""

    @classmethod
    def from_info(cls, info) -> RepoSummary:
        license_ = ""
        card = getattr(info, "card_data", None)
        if card is not None:
            license_ = str(card.get("license", "") or "") if hasattr(card, "get") else ""
        if not license_:
            license_ = next((t[8:] for t in info.tags or [] if t.startswith("license:")), "")
        return cls(
            repo_id=info.id,
            downloads=info.downloads or 0,
            likes=info.likes or 0,
            last_modified=info.last_modified or info.created_at,
            gated=bool(info.gated),
            license=license_,
        )


def search(
    query: str, sort: str = "downloads", limit: int = 30, token: str | None = None
) -> list[RepoSummary]:
    """Models with GGUF files matching `query`, sorted by 'downloads', 'likes' or 'recent'."""
    if sort not in SORTS:
        raise HubError(f"sort must be one of {', '.join(SORTS)}, not '{sort}'.")
    try:
        found = api(token).list_models(
            search=query or None,
            filter="gguf",
            sort=SORTS[sort],
            limit=limit,
            expand=["downloads", "likes", "lastModified", "gated", "tags", "cardData", "createdAt"],
        )
        return [RepoSummary.from_info(m) for m in found]
    except _network_errors() as err:
        raise describe_hub_error(err, f"Searching for '{query}'") from None


# ------------------------------------------------------------------ repo files
@dataclass(frozen=True)
class HubFile:
    path: str
    size: int
    sha256: str  # from the Hub's LFS metadata; "" for non-LFS files


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
        if not models:
            raise HubError(f"{self.summary.repo_id} has no GGUF model files.")
        if want is None:
            raise HubError(
                f"Say which quant of {self.summary.repo_id}: " + ", ".join(o.quant for o in models)
            )
        for o in self.options:
            if want in {f.path for f in o.files} or want == o.label:
                return o
        hits = [o for o in models if o.quant.upper() == want.upper()]
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            raise HubError(
                f"{want} matches several files: " + ", ".join(o.label for o in hits) + "; name one."
            )
        raise HubError(
            f"{self.summary.repo_id} has no '{want}'. Available: "
            + ", ".join(f"{o.quant} ({o.label})" for o in models)
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
    try:
        info = api(token).model_info(repo_id, revision=revision, files_metadata=True)
    except _network_errors() as err:
        raise describe_hub_error(err, repo_id) from None
    files = [
        HubFile(s.rfilename, (s.lfs.size if s.lfs else s.size) or 0, s.lfs.sha256 if s.lfs else "")
        for s in info.siblings or []
    ]
    return RepoFiles(RepoSummary.from_info(info), info.sha or revision or "main", tuple(group_files(files)))


def parse_spec(spec: str) -> tuple[str, str | None]:
    """'owner/repo[:QUANT|FILE]' -> (repo_id, quant-or-file-or-None)."""
    repo, _, want = spec.partition(":")
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise HubError(f"'{spec}' is not a Hub model: write owner/name, optionally :QUANT or :FILE.")
    return repo, want or None
