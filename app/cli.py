"""The `ingle` command: opens the GUI with no arguments; subcommands come from each layer's cli module."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from engine.errors import IngleError

# Each module has register(subparsers). A module that is not installed is skipped; none may import torch at
# module level (training imports it lazily inside its commands).
COMMAND_MODULES = (
    "engine.cli",
    "engine.hub_cli",
    "engine.inspect_cli",
    "engine.eval_context_cli",
    "engine.server_cli",
    "engine.worker_cli",
    "engine.docs.cli",
    "training.cli",
    "app.bench_cli",
)


class OneLineParser(argparse.ArgumentParser):
    """Usage mistakes print one line (what is wrong and where to look), like every other Ingle error."""

    def error(self, message: str):
        self.exit(2, f"ingle: error: {message} (see: {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="ingle", description="Local chat with quantized language models.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log details (including llama.cpp's)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    gui = sub.add_parser("gui", help="open the app (the default)")
    gui.add_argument(
        "--smoke-prompt", metavar="TEXT", help="load the starter model, send TEXT, print the reply, exit"
    )
    gui.set_defaults(func=run_gui)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if not (name == err.name or name.startswith(f"{err.name}.")):
                raise  # the module exists but something it needs is missing: a real error
            continue
        module.register(sub)
    return parser


def run_gui(args) -> int:
    from app.platform_check import display_problem

    problem = display_problem(os.environ)
    if problem:  # Qt would abort the process with a long message; say what to do in one line instead
        print(f"ingle: error: {problem}", file=sys.stderr)
        return 2
    from app.start import run

    return run(smoke_prompt=getattr(args, "smoke_prompt", None))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--engine-host"]:  # the frozen app starting its own engine child
        from engine.host import child_main

        child_main(argv[1])
        return 0
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.ERROR, format="%(name)s: %(message)s")
    func = getattr(args, "func", run_gui)
    try:
        return func(args) or 0
    except IngleError as err:
        print(f"ingle: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ingle: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
