"""`ingle worker`: serve this machine's GPUs (else its CPU) as a llama.cpp RPC worker for `--rpc HOST:PORT`."""

from __future__ import annotations

import argparse
import resource
import sys
import threading
from pathlib import Path

from engine.errors import RpcError, SettingsError
from engine.rpc_split import DEFAULT_PORT, SplitError, parse_endpoint
from engine.text import printable

INSECURE_WARNING = (
    "ingle: warning: ggml's RPC protocol has no authentication or encryption: anyone who can reach {where} can "
    "use this machine's CPU and memory and read or change what it holds. Bind 127.0.0.1 and reach it through an "
    "SSH tunnel instead (README, 'RPC workers')."
)
DATA_SLACK = 256 << 20  # threads' stacks and the server's own buffers, on top of --mem


def _vm_data() -> int:
    """This process's private data now (what RLIMIT_DATA counts), from /proc."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmData:"):
            return int(line.split()[1]) * 1024
    return 0


def limit_memory(mb: int) -> None:
    """--mem: cap the memory the worker can allocate for model data (Linux counts it in RLIMIT_DATA), so an
    oversized split fails to load on the client instead of pushing this machine into swap."""
    if not Path("/proc/self/status").exists():
        raise RpcError("--mem works on Linux only; leave it out here.")
    cap = _vm_data() + DATA_SLACK + (mb << 20)
    resource.setrlimit(resource.RLIMIT_DATA, (cap, cap))


def cmd_worker(args) -> int:
    from engine import rpc, rpc_build
    from engine.hardware import default_threads

    if args.build is not None:
        path = rpc_build.build(Path(args.build) if args.build else None)
        print(f"built: {path}")
        return 0
    try:
        endpoint = parse_endpoint(f"{args.host}:{args.port}")
    except SplitError as err:
        raise SettingsError("--host/--port", str(err)) from None
    if args.threads is not None and args.threads < 1:
        raise SettingsError("--threads", f"{args.threads} is not a thread count; give 1 or more")
    if args.mem is not None and args.mem < 1:
        raise SettingsError("--mem", f"{args.mem} MB is too little; give the MB of model data to hold")
    threads = args.threads or default_threads()
    devices = rpc.served_devices()  # loads the backend: a clear error when it is not built
    description = rpc.describe_devices(devices)
    if not endpoint.loopback:
        print(INSECURE_WARNING.format(where=printable(str(endpoint))), file=sys.stderr)
    if args.mem:
        limit_memory(args.mem)
    failed: list[BaseException] = []

    def run() -> None:
        try:
            rpc.serve(endpoint.host, endpoint.port, threads, devices)
        except BaseException as err:
            failed.append(err)

    server = threading.Thread(target=run, name="ingle-rpc-worker", daemon=True)
    server.start()
    server.join(0.5)
    if server.is_alive():
        mem = f", at most {args.mem} MB of model data" if args.mem else ""
        print(f"ingle worker: serving {printable(description)} on {endpoint} with {threads} threads{mem}; "
              "Ctrl-C stops it.", flush=True)  # fmt: skip
    while server.is_alive():
        server.join(0.5)  # the server never returns while it listens; Ctrl-C ends this loop
    if failed:
        raise failed[0]
    raise RpcError(f"the RPC worker could not listen on {endpoint} (is the port in use? try another --port).")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "worker", help="serve this machine's GPUs (else its CPU) as a llama.cpp RPC worker for --rpc"
    )
    p.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine)"
    )
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    p.add_argument("--threads", type=int, help="CPU threads for the work (default: the physical cores)")
    p.add_argument(
        "--mem", type=int, metavar="MB", help="most memory, in MB, the worker may hold for model data"
    )
    p.add_argument("--build", nargs="?", const="", metavar="SDIST_DIR",
                   help="build llama.cpp's RPC backend for the installed llama-cpp-python, then exit")  # fmt: skip
    p.set_defaults(func=cmd_worker)
