"""`ingle serve`: the loaded model as a local OpenAI- and Ollama-compatible HTTP API. Registered by app.cli."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import socket
import sys
import time
from pathlib import Path

from engine.cli import load_model
from engine.cli_flags import add_settings_flags, parse_adapter, resolve_draft, settings_from_args
from engine.errors import SettingsError
from engine.interface import MAX_SLOTS
from engine.server.config import DEFAULT_MAX_BODY, DEFAULT_MAX_QUEUE, DEFAULT_MAX_TOKENS_CAP
from engine.settings import LoadSettings, SamplingSettings
from engine.text import printable

KEY_ENV = "INGLE_API_KEY"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def api_key(args) -> str | None:
    """The key from --api-key-file, --api-key or $INGLE_API_KEY (a file or the environment keep it out of
    the process list)."""
    if args.api_key and args.api_key_file:
        raise SettingsError("api-key", "give --api-key or --api-key-file, not both")
    key = args.api_key
    if args.api_key_file:
        try:
            key = Path(args.api_key_file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as err:
            why = getattr(err, "strerror", None) or "it is not UTF-8 text"
            raise SettingsError(
                "api-key-file", f"cannot read {printable(args.api_key_file)}: {why}"
            ) from None
    if key is None:
        key = os.environ.get(KEY_ENV) or None
    if key is not None:
        key = key.strip()
        if len(key) < 8 or any(c.isspace() or not c.isprintable() for c in key):
            raise SettingsError("api-key", "use at least 8 printable characters without spaces")
    return key


def check_exposure(host: str, key: str | None, insecure: bool) -> str | None:
    """Refuse to listen beyond this machine without a key; with --insecure, the warning to print."""
    if is_loopback(host):
        return None
    if key is None and not insecure:
        raise SettingsError(
            "host",
            f"listening on {printable(host)} makes the model reachable from other machines: give an API key "
            f"(--api-key-file FILE or ${KEY_ENV}), or pass --insecure to serve without one",
        )
    if key is None:
        return (f"warning: serving on {printable(host)} without an API key (--insecure): anyone who can reach "
                "this port can use the model")  # fmt: skip
    return None


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, opened here so a port in use is one clear line, not a server's traceback."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as err:
        raise SettingsError("host", f"cannot use {printable(host)}: {err.strerror}") from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as err:
        sock.close()
        raise SettingsError("port", f"cannot listen on {printable(host)}:{port}: {err.strerror} (is another "
                                    "server using it? choose another with --port)") from None  # fmt: skip
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def served_name(model: str | None, path: Path) -> str:
    """The one name clients use: the library name, or for a file the library-style name of its stem."""
    from engine.library import STARTER_NAME
    from engine.text import name_from

    if model is None:
        return STARTER_NAME
    if os.sep in model or model.endswith(".gguf") or Path(model).exists():
        return name_from(path.stem)
    return model


def eog_tokens(path: Path) -> tuple[int, ...]:
    """The model's end-of-generation tokens, for requests that ask for `ignore_eos` (benchmarks)."""
    from engine.reference import model_eog_tokens

    return model_eog_tokens(path)


def cmd_serve(args) -> int:
    import uvicorn

    from engine.cli import open_engine
    from engine.library import Library
    from engine.server import Scheduler, ServerConfig, create_app

    key = api_key(args)
    warning = check_exposure(args.host, key, args.insecure)
    if args.max_body < 1024:
        raise SettingsError(
            "max-body", f"{args.max_body} bytes is too small for any request; use 1024 or more"
        )
    if args.max_tokens_cap < 1:
        raise SettingsError("max-tokens-cap", "must be at least 1")
    if args.max_queue < 0:
        raise SettingsError("max-queue", "must be 0 or more")
    if not 1 <= args.parallel <= MAX_SLOTS:
        raise SettingsError("parallel", f"use 1 to {MAX_SLOTS} requests at once")
    defaults = settings_from_args(args, SamplingSettings)
    load = settings_from_args(args, LoadSettings)
    adapters = [parse_adapter(a) for a in args.adapter or []]
    sock = bind(args.host, args.port)  # before anything slow: a port in use fails at once
    engine = None
    try:
        path = Library().resolve(args.model)
        load = resolve_draft(load, Library())
        if args.n_ctx is None:  # as `ingle run`: never past what the model was trained on
            from engine.gguf_info import inspect_gguf

            trained = inspect_gguf(path).context_length
            if 0 < trained < load.n_ctx:
                load = load.replace(n_ctx=trained)
        # requests run in the slots' own context (args.parallel x the context each); the engine's ordinary
        # context serves no request here, so it stays small
        own = load.replace(n_ctx=min(load.n_ctx, 256))
        engine = open_engine()
        loaded = load_model(engine, path, own, adapters, args.template)
        engine.start_slots(args.parallel, load.n_ctx)

        def reload(engine) -> None:
            engine.restart()
            load_model(engine, path, own, adapters, args.template)
            engine.start_slots(args.parallel, load.n_ctx)

        config = ServerConfig(
            model_name=served_name(args.model, path), model_info=loaded.info, n_ctx=load.n_ctx, api_key=key,
            cors_origins=tuple(args.cors_origin or ()), max_body=args.max_body,
            max_tokens_cap=args.max_tokens_cap, max_queue=args.max_queue, defaults=defaults,
            created=int(time.time()), eog_tokens=eog_tokens(path),
        )  # fmt: skip
        app = create_app(config, Scheduler(engine, reload, max_queue=args.max_queue, slots=args.parallel))
        if warning:
            print(f"ingle: {warning}", file=sys.stderr)
        if loaded.template_warning:
            print(f"ingle: warning: {printable(loaded.template_warning)}", file=sys.stderr)
        if loaded.fit_note:  # --fit: what was chosen and why
            print(f"ingle: {loaded.fit_note}", file=sys.stderr)
        port = sock.getsockname()[1]
        shown = f"[{args.host}]" if ":" in args.host else args.host
        print(f"Serving {printable(config.model_name)} ({args.parallel} x context {load.n_ctx}) at http://{shown}:{port}/v1 "
              f"(OpenAI) and http://{shown}:{port}/api (Ollama){'; API key required' if key else ''}. "
              "Ctrl+C stops.", file=sys.stderr, flush=True)  # fmt: skip
        verbose = logging.getLogger().isEnabledFor(logging.INFO)
        server = uvicorn.Server(uvicorn.Config(app, log_level="info" if verbose else "warning",
                                               access_log=verbose, lifespan="off",
                                               timeout_graceful_shutdown=5))  # fmt: skip
        try:
            server.run(sockets=[sock])
        except KeyboardInterrupt:  # uvicorn stops gracefully, then passes Ctrl+C on: the normal way to stop
            pass
        print("ingle: server stopped.", file=sys.stderr)
    finally:
        sock.close()
        if engine is not None:
            engine.close()
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve a model over an OpenAI- and Ollama-compatible HTTP API")
    p.add_argument("model", nargs="?", help="library name or GGUF file (default: the starter model)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    p.add_argument(
        "--port", type=int, default=8080, help="port to listen on (0 picks a free one; default %(default)s)"
    )
    p.add_argument("--api-key", help=f"require this key (Authorization: Bearer KEY); ${KEY_ENV} also works")
    p.add_argument("--api-key-file", metavar="FILE", help="read the key from FILE (keeps it out of `ps`)")
    p.add_argument("--insecure", action="store_true",
                   help="allow listening beyond this machine without a key (prints a warning)")  # fmt: skip
    p.add_argument("--cors-origin", action="append", metavar="URL",
                   help="allow browser pages from this origin (repeatable; default: none)")  # fmt: skip
    p.add_argument("--max-body", type=int, default=DEFAULT_MAX_BODY, metavar="BYTES",
                   help=f"largest request body (default {DEFAULT_MAX_BODY})")  # fmt: skip
    p.add_argument("--max-tokens-cap", type=int, default=DEFAULT_MAX_TOKENS_CAP, metavar="N",
                   help=f"largest max_tokens a request may ask for (default {DEFAULT_MAX_TOKENS_CAP})")  # fmt: skip
    p.add_argument("--parallel", type=int, default=1, metavar="N",
                   help="requests decoded at once, batched (each with the full --ctx-size; default 1)")  # fmt: skip
    p.add_argument("--max-queue", type=int, default=DEFAULT_MAX_QUEUE, metavar="N",
                   help="requests that may wait for the engine; more get 503 (default %(default)s)")  # fmt: skip
    p.add_argument(
        "--adapter", action="append", metavar="FILE[:SCALE]", help="apply a LoRA adapter (repeatable)"
    )
    p.add_argument(
        "--template", help="chat template: a built-in (gemma, chatml, llama3, mistral) or .jinja file"
    )
    add_settings_flags(p, LoadSettings, "model loading")
    add_settings_flags(p, SamplingSettings, "sampling defaults (a request's own fields win)")
    p.set_defaults(func=cmd_serve)
