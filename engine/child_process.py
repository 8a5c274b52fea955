"""Child processes that run llama.cpp (or torch): their logs (kept on a crash, removed when their parent is
gone), dying with the parent, how an exit is described, and one-off calls in a child (`call_in_child`)."""

from __future__ import annotations

import logging
import os
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from engine.errors import EngineDied, EngineError, IngleError

log = logging.getLogger("ingle.child")

STDERR_TAIL_BYTES = 4000
LOG_PREFIX = "ingle-engine-"
CRASH_LOGS_KEPT = 10


def log_dir() -> Path:
    """Where engine logs live: a per-user folder (INGLE_HOME/logs when set, else the platform's log folder).

    Falls back to the temp folder when that cannot be created (a read-only home must not stop the engine)."""
    home = os.environ.get("INGLE_HOME")
    if home:
        folder = Path(home).expanduser() / "logs"
    else:
        from platformdirs import user_log_dir

        folder = Path(user_log_dir("Ingle", appauthor=False))
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if os.access(folder, os.W_OK):
            return folder
    except OSError:
        pass
    return Path(tempfile.gettempdir())


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # someone else's process: alive, and not ours to judge
    return True


def clean_stale_logs(folder: Path) -> list[Path]:
    """Delete the logs of engines whose parent process is gone (killed before it could tidy up).

    A live engine's log is named `ingle-engine-<parent pid>-<random>.log`; crash logs kept for the user
    (`ingle-engine-crash-*.log`) are pruned to the newest CRASH_LOGS_KEPT. Returns what was deleted."""
    removed = []
    try:
        logs = list(folder.glob(f"{LOG_PREFIX}*.log"))
    except OSError:
        return removed
    crashes = []
    for path in logs:
        rest = path.name[len(LOG_PREFIX) :]
        if rest.startswith("crash-"):
            crashes.append(path)
            continue
        pid = rest.partition("-")[0]
        if pid.isdigit() and not _pid_alive(int(pid)):
            try:
                path.unlink()
                removed.append(path)
            except OSError:
                pass
    crashes.sort(key=lambda p: p.name, reverse=True)  # the name starts with a sortable timestamp
    for path in crashes[CRASH_LOGS_KEPT:]:
        try:
            path.unlink()
            removed.append(path)
        except OSError:
            pass
    return removed


def die_with_parent() -> None:
    """Linux: the kernel kills us when the parent dies, even by SIGKILL (no orphans)."""
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except OSError:
            pass


def new_log() -> Path:
    """A fresh log file for a child process, named after this (parent) process; stale ones are cleaned first."""
    folder = log_dir()
    clean_stale_logs(folder)
    fd, path = tempfile.mkstemp(prefix=f"{LOG_PREFIX}{os.getpid()}-", suffix=".log", dir=folder)
    os.close(fd)
    return Path(path)


def native_stderr_to(log_path: str | os.PathLike) -> None:
    """Child side: what llama.cpp (or any C library) writes to stderr goes to the log, while Python's
    sys.stderr stays on the terminal (progress lines); an abort attaches no debugger and prints no backtrace."""
    os.environ.setdefault("GGML_NO_BACKTRACE", "1")
    terminal = os.dup(2)
    log_fd = os.open(log_path, os.O_WRONLY | os.O_APPEND)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    sys.stderr = open(terminal, "w", buffering=1, errors="backslashreplace")  # lives as long as the child


def keep_crash_log(log_path: str | os.PathLike, pid: int | None) -> Path | None:
    """A dead child's log is evidence: renamed out of reach of the stale-log cleanup (which keeps the newest
    CRASH_LOGS_KEPT) and returned, to be named in the error."""
    src = Path(log_path)
    dest = src.with_name(f"{LOG_PREFIX}crash-{time.strftime('%Y%m%d-%H%M%S')}-{pid or 0}.log")
    try:
        os.replace(src, dest)
    except OSError:
        return None
    return dest


def describe_exit(code: int | None) -> str:
    """'signal SIGABRT' or 'exit code 3'."""
    if code is not None and code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


def _call_child(conn, log_path: str, function, args: tuple, kwargs: dict) -> None:
    """Child side of call_in_child: the result or the IngleError goes back over the pipe."""
    die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl+C and ends us
    native_stderr_to(log_path)
    try:
        result = ("result", function(*args, **kwargs))
    except IngleError as err:
        result = ("error", err)
    except (
        Exception
    ) as err:  # a bug, not a user error: the trace goes to the log, the message says it plainly
        with open(log_path, "a") as log_file:
            traceback.print_exc(file=log_file)
        result = ("error", EngineError(f"Internal error: {type(err).__name__}: {err}"))
    conn.send(result)
    conn.close()


def call_in_child(function, *args: Any, what: str = "llama.cpp", **kwargs: Any) -> Any:
    """Run `function(*args, **kwargs)` (a module-level function) in a child process and return its result.

    For commands that load a user's model with llama.cpp outside the engine host (evaluation, exports): a file
    that makes llama.cpp abort ends the child, and this raises EngineDied naming the kept log instead."""
    import multiprocessing as mp

    log_path = new_log()
    ctx = mp.get_context("spawn")
    receiver, sender = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_call_child, args=(sender, str(log_path), function, args, kwargs), daemon=True)
    proc.start()
    sender.close()
    kept = None
    try:
        try:
            kind, payload = receiver.recv()  # EOFError when the child dies without answering
        except (EOFError, OSError):
            proc.join(5)
            kept = keep_crash_log(log_path, proc.pid)
            tail = kept.read_bytes()[-STDERR_TAIL_BYTES:].decode("utf-8", "replace") if kept else ""
            raise EngineDied(
                f"llama.cpp crashed during the {what} ({describe_exit(proc.exitcode)}): the model file is damaged "
                "or uses settings this llama.cpp cannot handle. Use another file"
                + (f"; llama.cpp's messages are in {kept}." if kept else "."), proc.exitcode, tail,
            ) from None  # fmt: skip
        proc.join(5)
        if kind == "error":
            raise payload
        return payload
    finally:
        receiver.close()
        if proc.is_alive():
            proc.kill()
            proc.join(5)
        if kept is None:
            log_path.unlink(missing_ok=True)
