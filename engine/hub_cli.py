"""`ingle search QUERY` and `ingle pull REPO[:QUANT|FILE]`: Hub search and resumable, verified downloads."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from engine import fit, hub, units
from engine.errors import Cancelled, IngleError
from engine.text import printable


def register(sub) -> None:
    p = sub.add_parser("search", help="search the Hugging Face Hub for GGUF models")
    p.add_argument("query")
    p.add_argument("--sort", choices=sorted(hub.SORTS), default="downloads")
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--files", action="store_true", help="also list each repo's quants with fit verdicts")
    p.add_argument("--ctx", type=int, default=4096, help="context length for the fit estimate")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("pull", help="download a GGUF model from the Hub into the library (resumable)")
    p.add_argument("spec", metavar="REPO[:QUANT|FILE]")
    p.add_argument("--name", help="library name (default: the file name)")
    p.add_argument("--ctx", type=int, default=4096, help="context length for picking the quant that fits")
    p.add_argument("--revision", default=None)
    p.add_argument(
        "--token-file", type=Path, help="read a Hub access token from this file and save it (0600)"
    )
    p.add_argument(
        "--allow-unverified",
        action="store_true",
        help="accept a file the Hub gives no sha256 or git hash for (its size is still checked); "
        "its library entry is marked 'not verified'",
    )
    p.set_defaults(func=cmd_pull)


def print_options(files: hub.RepoFiles, ctx: int) -> hub.QuantOption | None:
    best = fit.recommend(files.options, ctx)
    for o in files.options:
        if o.projector:
            print(
                f"    {o.quant:<8} {units.size(o.size):>11}  {printable(o.label)}  [projector for images, not a chat model]"
            )
            continue
        f = fit.estimate(o.size, o.quant, ctx)
        mark = "*" if o is best else " "
        split = f" ({len(o.files)} parts)" if o.split else ""
        print(
            f"  {mark} {o.quant:<8} {units.size(o.size):>11}  {f.verdict.value:<9}  {printable(o.label)}{split}"
        )
    return best


def cmd_search(args) -> int:
    found = hub.search(args.query, sort=args.sort, limit=args.limit)
    if not found:
        print(f"No GGUF models match '{printable(args.query)}'.")
        return 0
    for r in found:
        updated = r.last_modified.date().isoformat() if r.last_modified else "?"
        gated = "  gated" if r.gated else ""
        license_ = printable(r.license or "?")
        print(
            f"{printable(r.repo_id):<50} {r.downloads:>9} dl {r.likes:>6} likes  {updated}  {license_}{gated}"
        )
        if args.files:
            try:
                files = hub.repo_files(r.repo_id)
            except (
                hub.HubRefused
            ) as err:  # one repo the Hub will not list (gated, gone, a bad name): say so, go on
                print(f"    (files not listed: {err})")
                continue
            print_options(files, args.ctx)
    return 0


def _bar(job) -> str:
    width = 30
    filled = int(job.fraction * width)
    eta = units.duration(job.eta) if job.eta is not None else "--"
    speed = f"{units.mib(job.speed, 1)}/s" if job.speed else "--"
    return (f"\r[{'#' * filled}{'.' * (width - filled)}] {job.fraction * 100:5.1f}% "
            f"{units.size(job.done_bytes)}/{units.size(job.total_bytes)} {speed} ETA {eta} ")  # fmt: skip


def cmd_pull(args) -> int:
    from engine.downloads import DownloadManager, State

    if args.token_file:
        try:
            text = args.token_file.read_text("utf-8")
        except (OSError, ValueError) as err:
            reason = getattr(err, "strerror", None) or "it is not text"
            raise IngleError(f"Cannot read the token file {printable(args.token_file)}: {reason}.") from None
        hub.save_token(text)
    repo_id, want = hub.parse_spec(args.spec)
    files = hub.repo_files(repo_id, revision=args.revision)
    option = files.pick(want) if want else fit.recommend(files.options, args.ctx)
    if option is None:
        raise hub.HubError(f"{repo_id} has no GGUF model files.")
    if option.projector:
        raise hub.HubError(
            f"{option.label} is a vision projector (mmproj), not a chat model; pick a model file."
        )
    print(
        f"{repo_id}: {printable(option.label)} ({option.quant}, {units.size(option.size)})", file=sys.stderr
    )
    tty = sys.stderr.isatty()
    last = [0.0]

    def progress(job) -> None:
        now = time.monotonic()
        if job.state is State.RUNNING and (tty or now - last[0] > 1.0):
            last[0] = now
            print(_bar(job), end="" if tty else "\n", file=sys.stderr, flush=True)

    manager = DownloadManager(concurrency=1, token=hub.load_token(), on_update=progress)
    resumable = manager.partial_bytes(repo_id, option.files)
    if resumable:
        print(f"resuming from {units.size(resumable)} already downloaded", file=sys.stderr)
    job = manager.add(
        repo_id, option.files, revision=files.revision, name=args.name, allow_unverified=args.allow_unverified
    )
    try:
        while not manager.wait(job.id, 0.2)._finished.is_set():
            pass
    except KeyboardInterrupt:
        manager.pause(job.id)
        manager.wait(job.id, 5)
        raise Cancelled(
            "Download paused; the partial file is kept. Run the same `ingle pull` to resume."
        ) from None
    print(file=sys.stderr)
    if job.state is not State.DONE:
        raise hub.HubError(job.error or f"Download {job.state.value}.")
    how = {
        "sha256": "sha256 verified",
        "git-sha1": "verified by its git hash",
        "size": "NOT verified: the Hub gave no hash, only its size was checked",
    }[job.check]
    print(f"added '{job.entry.name}' to the library: {printable(job.entry.path)} ({how})")
    return 0
