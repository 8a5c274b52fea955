"""Checks that a download is the file the Hub announced: its size, the server's length, the sidecar of a .part,
and its sha256 or git blob sha1 (computed in one pass)."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from pathlib import Path

from engine.download_job import DownloadRejected, Expected, Job, NeedsConsent, Stopped
from engine.hub import (
    SHA1_RE,
    SHA256_RE,
    FileMeta,
    HubError,
    HubFile,
)
from engine.library import atomic_write_bytes
from engine.text import printable

_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


def expected_of(job: Job, f: HubFile, meta: FileMeta) -> Expected:
    """The size and hashes the file must have, from the repo listing and the file's HEAD."""
    what = f"{printable(job.repo_id)}/{printable(f.path)}"
    if meta.size is not None and f.size and meta.size != f.size:
        raise HubError(f"{what}: the Hub lists {f.size} bytes but serves {meta.size}; try again later.")
    etag = meta.etag.lower()
    sha256, git_sha1 = f.sha256.lower(), f.git_sha1.lower()
    for kind, listed, pattern in (("sha256", sha256, SHA256_RE), ("git sha1", git_sha1, SHA1_RE)):
        if listed and pattern.fullmatch(etag) and etag != listed:
            raise DownloadRejected(
                f"{what}: the Hub's file listing gives {kind} {listed[:16]}... but the file's etag is "
                f"{etag[:16]}...; the two disagree, so the file cannot be trusted. Nothing was downloaded."
            )
    sha256 = sha256 or (etag if SHA256_RE.fullmatch(etag) else "")
    git_sha1 = git_sha1 or (etag if SHA1_RE.fullmatch(etag) else "")
    expected = Expected(f.size or meta.size, sha256, git_sha1)
    if expected.size is None:  # nothing would bound what a server streams into the part
        raise DownloadRejected(
            f"{what}: the Hub announces no size for this file, so the download could be neither bounded nor "
            "checked. Nothing was downloaded; use the Hub itself or another mirror."
        )
    if expected.check == "size" and not job.allow_unverified:
        raise NeedsConsent(
            f"{what} cannot be verified: the Hub gives no sha256 or git hash for it (only its size can be "
            "checked). Nothing was downloaded. To take it anyway, run the same `ingle pull` with "
            "--allow-unverified, or answer 'Download anyway' in the download window."
        )
    job._expected[f.path] = expected
    return expected


def check_length(response, offset: int, expected: Expected, what: str) -> None:
    """A server that announces another length than the Hub's is refused before a byte is written."""
    if expected.size is None:
        return
    if response.status_code == 206:
        m = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", "").strip())
        if m and (int(m.group(1)) != offset or (m.group(3) != "*" and int(m.group(3)) != expected.size)):
            raise DownloadRejected(
                f"{what}: the server answered range {printable(m.group(0))} for a file of {expected.size} "
                f"bytes from byte {offset}. The download was deleted; nothing was added to the library."
            )
        return
    length = response.headers.get("Content-Length")
    encoded = response.headers.get("Content-Encoding", "identity").lower() not in ("identity", "")
    if length is not None and length.isdigit() and not encoded and int(length) != expected.size:
        raise DownloadRejected(
            f"{what}: the server sends {int(length)} bytes but the Hub announced {expected.size}. "
            "The download was deleted; nothing was added to the library."
        )


def check_sidecar(part: Path, f: HubFile, job: Job, meta: FileMeta) -> None:
    """A .part from another version of the file is thrown away rather than resumed."""
    sidecar = part.with_suffix(".json")
    want = {"sha256": f.sha256, "size": f.size, "etag": meta.etag, "revision": job.revision,
            "repo_id": job.repo_id, "name": job.name, "allow_unverified": job.allow_unverified,
            "files": [[g.path, g.size, g.sha256, g.git_sha1] for g in job.files]}  # fmt: skip
    if sidecar.exists():
        try:
            have = json.loads(sidecar.read_text("utf-8"))
            have = have if isinstance(have, dict) else {}
        except (OSError, ValueError):
            have = {}
        etag = have.get("etag")
        if have.get("sha256") != f.sha256 or have.get("size") != f.size or (etag and etag != meta.etag):
            part.unlink(missing_ok=True)
    elif part.exists():
        part.unlink()
    atomic_write_bytes(sidecar, json.dumps(want).encode())


def verify(job: Job, part_of: Callable[[Job, HubFile], Path]) -> None:
    """Every file of the job has the announced size and the Hub's hashes; sets `job.check` (what was checked)."""
    checks = set()
    for f in job.files:
        expected = job._expected[f.path]
        part = part_of(job, f)
        what = f"{printable(f.path)} from {printable(job.repo_id)}"
        size = part.stat().st_size
        if expected.size is not None and size != expected.size:
            raise DownloadRejected(
                f"{what} has {size} bytes, the Hub announced {expected.size}. The download was deleted "
                "and nothing was added to the library. Try again; if it repeats, the server is broken."
            )
        sha256, git_sha1 = digests(part, job, git=bool(expected.git_sha1))
        for kind, want, got in (
            ("sha256", expected.sha256, sha256),
            ("git sha1", expected.git_sha1, git_sha1),
        ):
            if want and got != want:
                raise DownloadRejected(
                    f"{what} failed verification: its {kind} is {got[:16]}..., the Hub says {want[:16]}.... "
                    "The download was deleted and nothing was added to the library. Try again; if it "
                    "repeats, the file on the Hub is broken."
                )
        if f is job.files[0]:
            job._sha256 = sha256  # the entry's sha256, whichever hash the Hub gave
        checks.add(expected.check)
    job.check = "size" if "size" in checks else "git-sha1" if "git-sha1" in checks else "sha256"


def digests(path: Path, job: Job, git: bool) -> tuple[str, str]:
    """sha256 of the file and, when asked, its git blob sha1 (sha1 of "blob <size>\0" + bytes), in one pass."""
    sha256 = hashlib.sha256()
    sha1 = hashlib.sha1(f"blob {path.stat().st_size}\0".encode()) if git else None
    with open(path, "rb") as fh:
        while chunk := fh.read(8 << 20):
            if job._stop:
                raise Stopped
            sha256.update(chunk)
            if sha1 is not None:
                sha1.update(chunk)
    return sha256.hexdigest(), sha1.hexdigest() if sha1 is not None else ""
