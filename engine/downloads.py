"""The download queue: resumable HTTP Range downloads from the Hub, sha256-verified, moved into the library.

Partial files live in <library>/downloads as `<repo>--<file>.part` with a JSON sidecar naming the expected
sha256 and size, so they survive a restart and resume where they stopped. Each job runs in its own thread;
at most `concurrency` run at once. Pause and cancel are seen within one chunk (and a stalled connection is
closed from the caller's thread), so they take effect within a second.
"""

from __future__ import annotations

import enum
import hashlib
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from engine.errors import IngleError, ModelFileError
from engine.hub import HubError, HubFile, describe_hub_error, endpoint
from engine.library import Entry, Library, atomic_write_bytes

log = logging.getLogger(__name__)
CHUNK = 64 * 1024
DISK_MARGIN = 64 << 20


class State(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "downloading"
    PAUSED = "paused"
    VERIFYING = "verifying"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (State.DONE, State.FAILED, State.CANCELLED)


class _Stop(Exception):
    """Raised inside a worker when the user paused or cancelled."""


@dataclass
class Job:
    id: int
    repo_id: str
    revision: str
    files: tuple[HubFile, ...]
    name: str
    state: State = State.QUEUED
    done_bytes: int = 0
    resumed_from: int = 0
    speed: float = 0.0  # bytes/s, smoothed
    error: str = ""
    entry: Entry | None = None
    _stop: str = field(default="", repr=False)  # "pause" or "cancel"
    _response: object = field(default=None, repr=False)
    _finished: threading.Event = field(default_factory=threading.Event, repr=False)

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def eta(self) -> float | None:
        left = self.total_bytes - self.done_bytes
        return left / self.speed if self.speed > 0 else None

    @property
    def fraction(self) -> float:
        return self.done_bytes / self.total_bytes if self.total_bytes else 0.0


def free_disk_bytes(path: Path) -> int:
    """Free bytes where `path` lives (its nearest existing parent)."""
    while not path.exists():
        path = path.parent
    return shutil.disk_usage(path).free


def part_path(folder: Path, repo_id: str, file: str) -> Path:
    return folder / f"{repo_id.replace('/', '--')}--{file.replace('/', '--')}.part"


class DownloadManager:
    """Queue of Hub downloads. `on_update(job)` is called from worker threads on every change."""

    def __init__(self, library: Library | None = None, *, concurrency: int = 2, token: str | None = None,
                 on_update: Callable[[Job], None] | None = None, retries: int = 4, backoff: float = 1.0,
                 timeout: float = 10.0):  # fmt: skip
        self.library = library or Library()
        self.folder = self.library.root / "downloads"
        self.concurrency = concurrency
        self.__token = token  # private: never in a repr, a log line or a message
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
    def add(self, repo_id: str, files, revision: str = "main", name: str | None = None) -> Job:
        files = tuple(files)
        if not files:
            raise HubError(f"Nothing to download from {repo_id}.")
        # a split model keeps its first part's name: llama.cpp finds the other parts by it
        name = Path(files[0].path).stem if len(files) > 1 else name or _library_name(files[0].path)
        if any(e.name == name for e in self.library.entries()):
            raise HubError(
                f"The library already has '{name}'. Remove it first or download under another name."
            )
        with self._lock:
            job = Job(self._next_id, repo_id, revision, files, name)
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

    def resume(self, job_id: int) -> None:
        job = self._jobs[job_id]
        if job.state in (State.PAUSED, State.FAILED):
            job._stop, job.error, job.state = "", "", State.QUEUED
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
                if how == "cancel":
                    self._discard(job)
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

    # ------------------------------------------------------------ work
    def _run(self, job: Job) -> None:
        self._notify(job)
        try:
            self._check_disk(job)
            for f in job.files:
                self._fetch_with_retries(job, f)
            job.state = State.VERIFYING
            self._notify(job)
            self._verify(job)
            job.entry = self._import(job)
            job.state = State.DONE
        except _Stop:
            job.state = State.CANCELLED if job._stop == "cancel" else State.PAUSED
            if job.state is State.CANCELLED:
                self._discard(job)
        except IngleError as err:
            job.state, job.error = State.FAILED, str(err)
        except Exception as err:  # a bug must not kill the queue silently
            log.exception("download %s failed", job.name)
            job.state, job.error = State.FAILED, f"Download of {job.name} failed: {type(err).__name__}: {err}"
        finally:
            job._response = None
            job.speed = 0.0
            job._finished.set()
            self._notify(job)
            self._pump()

    def _part(self, job: Job, f: HubFile) -> Path:
        return part_path(self.folder, job.repo_id, f.path)

    def _check_disk(self, job: Job) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        have = sum(self._part(job, f).stat().st_size for f in job.files if self._part(job, f).exists())
        need = job.total_bytes - have
        free = free_disk_bytes(self.folder)
        if free < need + DISK_MARGIN:
            raise HubError(
                f"Not enough disk space for {job.name}: it needs {need / 2**30:.2f} GiB more, "
                f"{free / 2**30:.2f} GiB are free in {self.folder}. Free some space and resume."
            )

    def _fetch_with_retries(self, job: Job, f: HubFile) -> None:
        import httpx2

        for attempt in range(self.retries + 1):
            try:
                return self._fetch(job, f)
            except httpx2.TransportError as err:
                if job._stop:
                    raise _Stop from None
                if attempt == self.retries:
                    got = self._part(job, f).stat().st_size if self._part(job, f).exists() else 0
                    raise HubError(
                        f"The connection to {endpoint()} was lost while downloading {f.path} "
                        f"({got / 2**20:.1f} of {f.size / 2**20:.1f} MiB, tried {self.retries + 1} times: "
                        f"{type(err).__name__}). The partial file is kept; resume to continue."
                    ) from None
                delay = self.backoff * 2**attempt
                log.info("retrying %s in %.1fs after %s", f.path, delay, type(err).__name__)
                deadline = time.monotonic() + delay
                while time.monotonic() < deadline:  # stay responsive to pause/cancel while backing off
                    if job._stop:
                        raise _Stop from None
                    time.sleep(0.05)

    def _fetch(self, job: Job, f: HubFile) -> None:
        """Download one file into its .part, continuing from the bytes already there."""
        import httpx2
        from huggingface_hub import get_hf_file_metadata, hf_hub_url
        from huggingface_hub.errors import HfHubHTTPError
        from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

        part = self._part(job, f)
        sidecar = part.with_suffix(".json")
        self._check_sidecar(part, sidecar, f, job)
        ep = endpoint()
        url = hf_hub_url(job.repo_id, f.path, revision=job.revision, endpoint=ep)
        try:
            meta = get_hf_file_metadata(url, token=self.__token, endpoint=ep)
            if meta.size is not None and f.size and meta.size != f.size:
                raise HubError(
                    f"{f.path}: the Hub lists {f.size} bytes but serves {meta.size}; try again later."
                )
            offset = part.stat().st_size if part.exists() else 0
            previous = sum(self._part(job, g).stat().st_size for g in job.files[: job.files.index(f)])
            job.done_bytes = previous + offset
            if f.size and offset >= f.size:
                return
            headers = build_hf_headers(token=self.__token)
            headers["Accept-Encoding"] = "identity"
            if offset:
                headers["Range"] = f"bytes={offset}-"
                job.resumed_from = previous + offset
            timeout = httpx2.Timeout(self.timeout, connect=self.timeout)
            with get_session().stream("GET", meta.location, headers=headers, timeout=timeout,
                                      follow_redirects=True) as response:  # fmt: skip
                job._response = response
                if response.status_code == 416:
                    return
                hf_raise_for_status(response)
                if offset and response.status_code != 206:  # the server ignored Range: start over
                    offset, job.done_bytes = 0, previous
                self._stream(job, response, part, append=offset > 0)
        except HfHubHTTPError as err:
            raise describe_hub_error(err, f"{job.repo_id}/{f.path}") from None
        except httpx2.TransportError:
            if job._stop:
                raise _Stop from None
            raise
        finally:
            job._response = None
        got = part.stat().st_size
        if f.size and got < f.size:
            raise httpx2.RemoteProtocolError(f"connection closed after {got} of {f.size} bytes")

    def _stream(self, job: Job, response, part: Path, append: bool) -> None:
        window_t, window_b = time.monotonic(), 0
        last_notify = 0.0
        with open(part, "ab" if append else "wb") as fh:
            for chunk in response.iter_bytes(CHUNK):
                if job._stop:
                    raise _Stop
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
            raise _Stop

    @staticmethod
    def _check_sidecar(part: Path, sidecar: Path, f: HubFile, job: Job) -> None:
        """A .part from another version of the file is thrown away rather than resumed."""
        want = {"sha256": f.sha256, "size": f.size, "revision": job.revision, "repo_id": job.repo_id,
                "name": job.name, "files": [[g.path, g.size, g.sha256] for g in job.files]}  # fmt: skip
        if sidecar.exists():
            try:
                have = json.loads(sidecar.read_text())
            except (OSError, json.JSONDecodeError):
                have = {}
            if have.get("sha256") != f.sha256 or have.get("size") != f.size:
                part.unlink(missing_ok=True)
        elif part.exists():
            part.unlink()
        atomic_write_bytes(sidecar, json.dumps(want).encode())

    def _verify(self, job: Job) -> None:
        for f in job.files:
            part = self._part(job, f)
            if not f.sha256:
                continue
            digest = _sha256(part, job)
            if digest != f.sha256:
                self._discard(job)
                raise HubError(
                    f"{f.path} from {job.repo_id} failed verification: its sha256 is {digest[:16]}..., the Hub's "
                    f"LFS metadata says {f.sha256[:16]}.... The download was deleted and nothing was added to the "
                    "library. Try again; if it repeats, the file on the Hub is broken."
                )

    def _import(self, job: Job) -> Entry:
        """Move the verified parts into the library; a split model keeps its part names side by side."""
        first = job.files[0]
        sha = first.sha256
        try:
            entry = self.library.import_file(self._part(job, first), move=True, name=job.name,
                                             source=f"hub:{job.repo_id}", sha256=sha,
                                             extra={"hub_file": first.path, "revision": job.revision,
                                                    "parts": [Path(f.path).name for f in job.files]})  # fmt: skip
        except ModelFileError as err:
            self._discard(job)
            raise HubError(
                f"{first.path} from {job.repo_id} downloaded and verified, but Ingle cannot use it: {err} "
                "The file was deleted; nothing was added to the library."
            ) from None
        for f in job.files[1:]:  # the other parts of a split model go beside the first
            os.replace(self._part(job, f), entry.file.parent / Path(f.path).name)
        for f in job.files:
            self._part(job, f).with_suffix(".json").unlink(missing_ok=True)
        return entry

    def _discard(self, job: Job) -> None:
        for f in job.files:
            part = self._part(job, f)
            part.unlink(missing_ok=True)
            part.with_suffix(".json").unlink(missing_ok=True)

    def restore(self) -> list[Job]:
        """Partial downloads left by an earlier run, as paused jobs (resume() continues them)."""
        known = {(j.repo_id, j.name) for j in self.jobs()}
        restored = []
        for sidecar in sorted(self.folder.glob("*.json")) if self.folder.exists() else []:
            try:
                data = json.loads(sidecar.read_text())
                files = tuple(HubFile(p, int(n), str(sha)) for p, n, sha in data["files"])
                key = (data["repo_id"], data["name"])
            except (OSError, ValueError, KeyError, TypeError):
                continue
            if key in known:
                continue
            known.add(key)
            with self._lock:
                job = Job(self._next_id, key[0], data.get("revision", "main"), files, key[1], State.PAUSED)
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


def _sha256(path: Path, job: Job) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(8 << 20):
            if job._stop:
                raise _Stop
            digest.update(chunk)
    return digest.hexdigest()


def _library_name(path: str) -> str:
    return Path(path).name.removesuffix(".gguf")
