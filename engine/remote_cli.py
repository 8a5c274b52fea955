"""The CLI of remote engines: `--remote URL|NAME` on run and chat, and `ingle models remote add|list|rm`."""

from __future__ import annotations

import argparse
import json
import sys

from engine.errors import SettingsError
from engine.text import printable


def add_remote_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("remote server (an OpenAI-compatible server instead of a local model)")
    g.add_argument("--remote", metavar="URL|NAME",
                   help="use the model of this server (a base URL, or a name saved with `ingle models remote add`)")  # fmt: skip
    g.add_argument("--api-key-file", metavar="FILE", help="the server's API key, read from FILE")
    g.add_argument(
        "--remote-model", metavar="NAME", help="which of the server's models (default: its only/first)"
    )


def open_remote(args, model: str | None = None):
    """A RemoteEngine for `--remote`, loaded (checked against the server); returns (engine, ModelLoaded)."""
    from engine.remote import RemoteEngine
    from engine.remotes import get_remote, load_key, read_key_file

    local_only = [flag for flag, on in (("--adapter", args.adapter), ("--template", args.template)) if on]
    if local_only:
        raise SettingsError(local_only[0], "applies to local models; a remote server uses its own")
    key = read_key_file(args.api_key_file) if args.api_key_file else None
    if "://" in args.remote:
        url, wanted = args.remote, ""
    else:
        saved = get_remote(args.remote)
        url, wanted = saved.url, saved.model
        key = key or load_key(saved.name)
    engine = RemoteEngine(url, key, args.remote_model or model or wanted)
    try:
        loaded = list(engine.load())[-1]
    except BaseException:
        engine.close()
        raise
    args.starter_adapter = False
    return engine, loaded


def cmd_models_remote(args) -> int:
    from engine.remote import RemoteEngine, RemoteError
    from engine.remotes import add_remote, list_remotes, load_key, read_key_file, remove_remote

    if args.remote_action == "add":
        key = read_key_file(args.api_key_file) if args.api_key_file else None
        remote = add_remote(args.name, args.url, key, args.model or "")
        with RemoteEngine(remote.url, key, remote.model) as engine:  # say now if it is unreachable or wrong
            try:
                names = [m["id"] for m in engine.list_models()]
                reach = f"it serves {len(names)} model(s): " + ", ".join(printable(n) for n in names[:5])
            except RemoteError as err:  # saved anyway: the server may simply be down right now
                reach = f"not reachable now ({err})"
        print(f"Saved remote {printable(remote.name)} at {printable(remote.url)}"
              f"{' with its key' if key else ''}; {reach}.")  # fmt: skip
    elif args.remote_action == "rm":
        remove_remote(args.name)
        print(f"Removed remote {printable(args.name)} and its key.")
    else:
        remotes = list_remotes()
        if args.json:
            rows = [{"name": r.name, "url": r.url, "model": r.model, "has_key": load_key(r.name) is not None}
                    for r in remotes]  # fmt: skip
            print(json.dumps(rows, indent=2))
            return 0
        if not remotes:
            print(
                "No remote servers saved. Add one with `ingle models remote add NAME URL`.", file=sys.stderr
            )
        for r in remotes:
            key = "key saved" if load_key(r.name) is not None else "no key"
            print(
                f"{printable(r.name):<20} {printable(r.url):<40} {printable(r.model) or '(first model)':<24} {key}"
            )
    return 0


def register_models_remote(msub: argparse._SubParsersAction) -> None:
    p = msub.add_parser("remote", help="saved OpenAI-compatible servers: add, list, rm")
    rsub = p.add_subparsers(dest="remote_action")
    ap = rsub.add_parser("add", help="save a server under NAME (its key kept readable by you only)")
    ap.add_argument("name")
    ap.add_argument("url", help="the server's base URL, e.g. http://gpu-box:8080/v1")
    ap.add_argument("--api-key-file", metavar="FILE", help="read the server's API key from FILE")
    ap.add_argument("--model", help="which of the server's models to use (default: its only/first)")
    lp = rsub.add_parser("list")
    lp.add_argument("--json", action="store_true")
    rp = rsub.add_parser("rm")
    rp.add_argument("name")
    p.set_defaults(func=cmd_models_remote, remote_action="list", json=False)
