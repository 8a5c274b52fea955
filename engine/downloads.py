"""The download queue: resumable HTTP Range downloads from the Hub, verified, moved into the library.

Partial files live in <library>/downloads as `<repo>--<file>.part` with a JSON sidecar naming the expected
sha256, size and etag, so they survive a restart and resume where they stopped. Each job runs in its own thread;
at most `concurrency` run at once. Pause and cancel are seen within one chunk (and a stalled connection is
closed from the caller's thread), so they take effect within a second.

A running job holds an OS file lock on `<part>.lock` for each of its files, so two Ingle processes (the window
and `ingle pull`, or two windows) never write the same .part: the second is told the file is already being
downloaded, and deletes nothing. Every file is checked against the size the Hub announces (more or fewer bytes
are rejected) and against a hash wherever the Hub gives one: the LFS sha256, else an etag that is a sha256, else
the git blob sha1. A file with no hash at all is downloaded only when the user allows it (`allow_unverified`),
and its library entry says it was not verified. A download the Hub rules out for good (404, no access, failed
verification) removes its .part and sidecar, so it does not come back as a paused job at the next start.

The job, its states and its files' names are in engine/download_job.py; the size and hash checks in
engine/download_checks.py. This module is the queue and the transfer of each file.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from engine import units
from engine.download_checks import check_length, check_sidecar, expected_of, verify
from engine.download_job import (
    DownloadRejected,
    Expected,
    Job,
    NeedsConsent,
    State,
    Stopped,
    free_disk_bytes,
    library_names,
    part_number,
    part_path,
)
from engine.errors import IngleError, ModelFileError
from engine.hub import (
    HubError,
    HubFile,
    HubRefused,
    describe_hub_error,
    endpoint,
    file_metadata,
    open_url,
    raise_for_status,
)
from engine.library import Entry, Library
from engine.text import check_name, printable

# Names the app, the CLI and the tests import from here, whichever module holds them now.
__all__ = [
    "DownloadManager",
    "DownloadRejected",
    "Expected",
    "Job",
    "NeedsConsent",
    "State",
    "free_disk_bytes",
    "library_names",
    "part_path",
]

log = logging.getLogger(__name__)
CHUNK = 64 * 1024
DISK_MARGIN = 64 << 20


class DownloadManager:
    """Queue of Hub downloads. `on_update(job)` is called from worker threads on every change."""

    def __init__(self, library: Library | None = None, *, concurrency: int = 2, token: str | None = None,
                 on_update: Callable[[Job], None] | None = None, retries: int = 4, backoff: float = 1.0,
                 timeout: float = 10.0):  # fmt: skip
        self.library = library or Library()
        self.folder = self.library.root / "downloads"
        self.concurrency = concurrency
        self.__token = token  # private: never in a repr, a log line or a message; sent only to the Hub's host
        self.on_update = on_update
        self.retries = retries
        self.backoff = backoff
        self.timeout = timeout
        self._jobs: dict[int, Job] = {}
        self._lock = threading.Lock()
        self._next_id = 1

    def set_token(self, token: str | None) -> None:
        """Use this access token for downloads started from now on."""
        self.__token = token

    # ------------------------------------------------------------ queue
    def add(self, repo_id: str, files, revision: str = "main", name: str | None = None,
            allow_unverified: bool = False) -> Job:  # fmt: skip
        files = tuple(files)
        if not files:
            raise HubError(f"Nothing to download from {printable(repo_id)}.")
        if len(files) > 1:
            # in part order: a split model keeps its first part's name (llama.cpp finds the others by it)
            files = tuple(sorted(files, key=part_number))
            if name:
                raise HubError(
                    "A split model keeps the names of its parts (llama.cpp finds the parts by them); "
                    "download it without a new name."
                )
        name, part_names = library_names(files, name)
        if any(e.name == name for e in self.library.entries()):
            raise HubError(
                f"The library already has '{name}'. Remove it first or download under another name."
            )
        paths = {f.path for f in files}
        with self._lock:
            for other in self._jobs.values():
                if (other.repo_id == repo_id and paths & {f.path for f in other.files}
                        and other.state not in (State.DONE, State.CANCELLED)):  # fmt: skip
                    raise HubError(
                        f"{name} is already in the download queue ({other.status}); resume or cancel that one."
                    )
            job = Job(self._next_id, repo_id, revision, files, name, allow_unverified=allow_unverified,
                      part_names=part_names)  # fmt: skip
            self._next_id += 1
            self._jobs[job.id] = job
        self._notify(job)
        self._pump()
        return job

    def jobs(self) -> list[Job]:
        with self._lock:
            return list(self._jobs.values())

    def get(self, job_id: int) -> Job:
        return self._jobs[job_id]

    def pause(self, job_id: int) -> None:
        self._stop(job_id, "pause")

    def cancel(self, job_id: int) -> None:
        self._stop(job_id, "cancel")

    def resume(self, job_id: int, allow_unverified: bool = False) -> None:
        """Continue a paused or failed job; `allow_unverified` accepts a file the Hub gives no hash for."""
        job = self._jobs[job_id]
        if job.state in (State.PAUSED, State.FAILED):
            job.allow_unverified = job.allow_unverified or allow_unverified
            job._stop, job.error, job.needs_consent, job.state = "", "", False, State.QUEUED
            job._finished.clear()
            self._notify(job)
            self._pump()

    def wait(self, job_id: int, timeout: float | None = None) -> Job:
        job = self._jobs[job_id]
        job._finished.wait(timeout)
        return job

    def shutdown(self) -> None:
        """Pause everything still running (partial files are kept for next time)."""
        for job in self.jobs():
            if job.state in (State.QUEUED, State.RUNNING):
                self.pause(job.id)

    def _stop(self, job_id: int, how: str) -> None:
        job = self._jobs[job_id]
        with self._lock:
            if job.state is State.QUEUED or (job.state in (State.PAUSED, State.FAILED) and how == "cancel"):
                job.state, job.error = (State.PAUSED if how == "pause" else State.CANCELLED), ""
                if how == "cancel" and not self._discard(job):
                    job.error = "Its partial files were kept: another Ingle process is downloading them."
                job._finished.set()
                notify = True
            elif job.state in (State.RUNNING, State.VERIFYING):
                job._stop = how
                response, notify = job._response, False
                if response is not None:  # wake a worker blocked on a stalled socket
                    try:
                        response.close()
                    except Exception:  # closing from another thread may race the reader; it stops anyway
                        pass
            else:
                return
        if notify:
            self._notify(job)

    def _pump(self) -> None:
        with self._lock:
            running = sum(j.state in (State.RUNNING, State.VERIFYING) for j in self._jobs.values())
            for job in self._jobs.values():
                if running >= self.concurrency:
                    break
                if job.state is State.QUEUED:
                    job.state = State.RUNNING
                    running += 1
                    threading.Thread(
                        target=self._run, args=(job,), daemon=True, name=f"download-{job.id}"
                    ).start()

    def _notify(self, job: Job) -> None:
        if self.on_update:
            try:
                self.on_update(job)
            except Exception:
                log.exception("download progress callback failed")

    # ------------------------------------------------------------ locks
    def _part(self, job: Job, f: HubFile) -> Path:
        return part_path(self.folder, job.repo_id, f.path)

    def _acquire(self, job: Job) -> list:
        """Lock every file of the job (non-blocking), or raise HubError when another process holds one."""
        from filelock import FileLock, Timeout

        self.folder.mkdir(parents=True, exist_ok=True)
        held = []
        try:
            for f in job.files:  # always in the job's order, and never waiting: no two processes deadlock
                lock = FileLock(f"{self._part(job, f)}.lock")
                lock.acquire(timeout=0)
                held.append(lock)
        except Timeout:
            self._release(held)
            raise HubError(
                f"{job.name} is already being downloaded by another Ingle process (or window); it appears in "
                "the library when that download finishes. Nothing was changed here."
            ) from None
        return held

    @staticmethod
    def _release(held: list) -> None:
        for lock in reversed(held):
            try:
                lock.release()
            except Exception:  # an unlock that fails leaves the OS to drop the lock when the process ends
                log.exception("could not release a download lock")

    # ------------------------------------------------------------ work
    def _run(self, job: Job) -> None:
        self._notify(job)
        held: list = []
        try:
            held = self._acquire(job)
            if any(
                e.name == job.name for e in self.library.entries()
            ):  # finished by another process meanwhile
                raise HubRefused(
                    f"The library already has '{job.name}' (another Ingle process finished it, or a model was "
                    "added under that name); this download was dropped."
                )
            self._check_disk(job)
            for f in job.files:
                self._fetch_with_retries(job, f)
            job.state = State.VERIFYING
            self._notify(job)
            verify(job, self._part)
            job.entry = self._import(job)
            job.state = State.DONE
        except Stopped:
            job.state = State.CANCELLED if job._stop == "cancel" else State.PAUSED
            if job.state is State.CANCELLED:
                self._discard(job, locked=True)
        except HubRefused as err:
            job.state, job.error = State.FAILED, str(err)
            # for good: nothing to resume, and no sidecar may bring it back as a paused job at the next start;
            # only a partial file of a repo that now refuses the token is kept (a new token continues it)
            if not (err.auth and self.partial_bytes(job.repo_id, job.files)):
                self._discard(job, locked=True)
        except NeedsConsent as err:
            job.state, job.error, job.needs_consent = State.FAILED, str(err), True
        except IngleError as err:
            job.state, job.error = State.FAILED, str(err)
        except Exception as err:  # a bug must not kill the queue silently
            log.exception("download %s failed", job.name)
            job.state, job.error = State.FAILED, f"Download of {job.name} failed: {type(err).__name__}: {err}"
        finally:
            self._release(held)
            job._response = None
            job.speed = 0.0
            job._finished.set()
            self._notify(job)
            self._pump()

    def _check_disk(self, job: Job) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        have = sum(self._part(job, f).stat().st_size for f in job.files if self._part(job, f).exists())
        need = job.total_bytes - have
        free = free_disk_bytes(self.folder)
        if free < need + DISK_MARGIN:
            raise HubError(
                f"Not enough disk space for {job.name}: it needs {units.gib(need, 2)} more, "
                f"{units.gib(free, 2)} are free in {self.folder}. Free some space and resume."
            )

    def _fetch_with_retries(self, job: Job, f: HubFile) -> None:
        import httpx2

        for attempt in range(self.retries + 1):
            try:
                return self._fetch(job, f)
            except httpx2.TransportError as err:
                if job._stop:
                    raise Stopped from None
                if attempt == self.retries:
                    got = self._part(job, f).stat().st_size if self._part(job, f).exists() else 0
                    raise HubError(
                        f"The connection to {endpoint()} was lost while downloading {printable(f.path)} "
                        f"({units.size(got)} of {units.size(f.size)}, tried {self.retries + 1} times: "
                        f"{type(err).__name__}). The partial file is kept; resume to continue."
                    ) from None
                delay = self.backoff * 2**attempt
                log.info("retrying %s in %.1fs after %s", printable(f.path), delay, type(err).__name__)
                deadline = time.monotonic() + delay
                while time.monotonic() < deadline:  # stay responsive to pause/cancel while backing off
                    if job._stop:
                        raise Stopped from None
                    time.sleep(0.05)

    def _fetch(self, job: Job, f: HubFile) -> None:
        """Download one file into its .part, continuing from the bytes already there."""
        import httpx2
        from huggingface_hub.errors import HfHubHTTPError

        part = self._part(job, f)
        what = f"{printable(job.repo_id)}/{printable(f.path)}"
        try:
            meta = file_metadata(job.repo_id, f.path, job.revision, self.__token)
            expected = expected_of(job, f, meta)
            check_sidecar(part, f, job, meta)
            offset = part.stat().st_size if part.exists() else 0
            if expected.size is not None and offset > expected.size:  # longer than the file: not this file
                part.unlink()
                offset = 0
            previous = sum(self._part(job, g).stat().st_size for g in job.files[: job.files.index(f)])
            job.done_bytes = previous + offset
            if expected.size is not None and offset == expected.size:
                return
            headers = {"Accept-Encoding": "identity"}
            if offset:
                headers["Range"] = f"bytes={offset}-"
                job.resumed_from = previous + offset
            # the token goes with this GET only when the file is served from the Hub's own host, never to a CDN
            with open_url(
                "GET", meta.location, token=self.__token, headers=headers, timeout=self.timeout
            ) as r:
                job._response = r
                if r.status_code == 416:
                    raise DownloadRejected(
                        f"{what}: the server has fewer bytes than the {expected.size} the Hub announced "
                        f"(it refused the range from byte {offset}). The download was deleted; nothing was "
                        "added to the library."
                    )
                raise_for_status(r)
                if offset and r.status_code != 206:  # the server ignored Range: start over
                    offset, job.done_bytes = 0, previous
                check_length(r, offset, expected, what)
                self._stream(job, r, part, append=offset > 0, expected=expected, what=what)
        except HfHubHTTPError as err:
            raise describe_hub_error(err, f"{job.repo_id}/{f.path}") from None
        except httpx2.TransportError:
            if job._stop:
                raise Stopped from None
            raise
        finally:
            job._response = None
        got = part.stat().st_size
        if expected.size is not None and got < expected.size:
            raise httpx2.RemoteProtocolError(f"connection closed after {got} of {expected.size} bytes")

    def _stream(self, job: Job, response, part: Path, append: bool, expected: Expected, what: str) -> None:
        window_t, window_b = time.monotonic(), 0
        last_notify = 0.0
        with open(part, "ab" if append else "wb") as fh:
            room = None if expected.size is None else expected.size - fh.tell()
            for chunk in response.iter_bytes(CHUNK):
                if job._stop:
                    raise Stopped
                if room is not None:
                    if len(chunk) > room:  # never store a byte past the announced size
                        raise DownloadRejected(
                            f"{what}: the server sent more than the {expected.size} bytes the Hub announced. "
                            "The download was deleted; nothing was added to the library."
                        )
                    room -= len(chunk)
                fh.write(chunk)
                job.done_bytes += len(chunk)
                window_b += len(chunk)
                now = time.monotonic()
                if now - window_t >= 0.5:
                    rate = window_b / (now - window_t)
                    job.speed = rate if not job.speed else 0.6 * rate + 0.4 * job.speed
                    window_t, window_b = now, 0
                if now - last_notify >= 0.1:
                    last_notify = now
                    self._notify(job)
            fh.flush()
            os.fsync(fh.fileno())
        if job._stop:
            raise Stopped

    def _import(self, job: Job) -> Entry:
        """Move the verified parts into the library; a split model keeps its part names side by side."""
        first = job.files[0]
        others = list(zip(job.files[1:], job.part_names[1:], strict=True))
        for _f, name in others:  # never overwrite another model's file
            if (self.library.models_dir / name).exists():
                raise HubError(
                    f"{self.library.models_dir / name} already exists in the library folder; remove it and "
                    "resume the download."
                )
        extra = {"hub_file": first.path, "revision": job.revision, "parts": list(job.part_names),
                 "verified": job.check != "size", "check": job.check}  # fmt: skip
        try:
            entry = self.library.import_file(self._part(job, first), move=True, name=job.name,
                                             source=f"hub:{job.repo_id}", sha256=job._sha256,
                                             extra=extra)  # fmt: skip
        except ModelFileError as err:
            self._discard(job, locked=True)
            raise HubRefused(
                f"{printable(first.path)} from {printable(job.repo_id)} downloaded and verified, but Ingle "
                f"cannot use it: {err} The file was deleted; nothing was added to the library."
            ) from None
        for f, name in others:  # the other parts of a split model go beside the first
            os.replace(self._part(job, f), entry.file.parent / name)
        for f in job.files:
            self._part(job, f).with_suffix(".json").unlink(missing_ok=True)
        return entry

    def _discard(self, job: Job, locked: bool = False) -> bool:
        """Delete the job's partial files and sidecars; False (and nothing deleted) when another process holds
        them. `locked`: the caller already holds the job's locks."""
        held = []
        if not locked:
            try:
                held = self._acquire(job)
            except HubError:
                return False
        try:
            for f in job.files:
                part = self._part(job, f)
                part.unlink(missing_ok=True)
                part.with_suffix(".json").unlink(missing_ok=True)
        finally:
            self._release(held)
        return True

    def restore(self) -> list[Job]:
        """Partial downloads left by an earlier run, as paused jobs (resume() continues them)."""
        known = {(j.repo_id, j.name) for j in self.jobs()}
        restored = []
        for sidecar in sorted(self.folder.glob("*.json")) if self.folder.exists() else []:
            try:
                data = json.loads(sidecar.read_text("utf-8"))
                files = tuple(HubFile(str(p), int(n), str(sha), str(rest[0]) if rest else "")
                              for p, n, sha, *rest in data["files"])  # fmt: skip
                key = (str(data["repo_id"]), check_name(str(data["name"])))
                name, part_names = library_names(files)
                if not files or name != key[1]:
                    continue
            except (OSError, ValueError, KeyError, TypeError, IngleError):
                continue
            if key in known:
                continue
            known.add(key)
            with self._lock:
                job = Job(self._next_id, key[0], str(data.get("revision", "main")), files, key[1], State.PAUSED,
                          allow_unverified=data.get("allow_unverified") is True, part_names=part_names)  # fmt: skip
                job.done_bytes = self.partial_bytes(job.repo_id, files)
                job._finished.set()
                self._next_id += 1
                self._jobs[job.id] = job
            restored.append(job)
            self._notify(job)
        return restored

    def partial_bytes(self, repo_id: str, files) -> int:
        """Bytes already on disk for these files (what a resume will not fetch again)."""
        return sum(p.stat().st_size for f in files if (p := part_path(self.folder, repo_id, f.path)).exists())
