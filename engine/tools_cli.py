"""`ingle tools add|list|rm` (MCP servers in the config), and the --mcp, --tool-choice and --allow-tools flags
of run and chat: the terminal asks before each call."""

from __future__ import annotations

import argparse
import json
import sys

from engine.errors import SettingsError
from engine.events import ToolCall
from engine.mcp_client import McpClient, ServerSpec, add_server, load_servers, pick_servers, remove_server
from engine.text import printable
from engine.tool_loop import (
    NO_TERMINAL,
    Approval,
    Approver,
    ToolCallCut,
    ToolCallFinished,
    ToolCallStarted,
    allow_all,
)


def cmd_tools(args) -> int:
    if args.action == "add":
        rest = list(args.rest)
        cut = rest.index("--") if "--" in rest else len(rest)
        try:
            opts = _ADD.parse_args(rest[:cut])
        except _Refused as err:
            raise SettingsError("tools add", str(err)) from None
        if not opts.name:
            raise SettingsError(
                "tools add", "give the server a NAME: ingle tools add NAME -- COMMAND [ARGS...]"
            )
        args.name, args.url, args.env, command = opts.name, opts.url, opts.env, rest[cut + 1 :]
        if bool(args.url) == bool(command):
            raise SettingsError(
                "tools add",
                "give either -- COMMAND [ARGS...] (a stdio server) or --url URL (streamable HTTP)",
            )
        env = {}
        for item in args.env or []:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise SettingsError("--env", f"'{printable(item)}' is not KEY=VALUE")
            env[key] = value
        if args.url and env:
            raise SettingsError("--env", "applies to a stdio server (a command), not to --url")
        spec = (
            ServerSpec(args.name, url=args.url)
            if args.url
            else ServerSpec(args.name, command[0], tuple(command[1:]), env)
        )
        path = add_server(spec)
        print(f"Added MCP server {spec.name}: {printable(spec.describe())} (in {path}).")
        print(
            f"Check it with `ingle tools list`; use it with `ingle chat --mcp {spec.name}`.", file=sys.stderr
        )
    elif args.action == "rm":
        spec = remove_server(args.name)
        print(f"Removed MCP server {spec.name}.")
    else:
        return _list(args)
    return 0


def _list(args) -> int:
    servers = load_servers()
    if args.name:
        servers = {s.name: s for s in pick_servers(args.name)}
    if not servers:
        print("No MCP servers; add one with `ingle tools add NAME -- COMMAND [ARGS...]` or `--url URL`.")
        return 0
    out = []
    for spec in servers.values():  # one client per server: a tool's name is its own, not a clash-renamed one
        entry = {"name": spec.name, **spec.to_json(), "tools": [], "error": ""}
        if not args.offline:
            with McpClient([spec]) as client:
                for t in client.tools():
                    params = json.loads(t.tool.parameters)
                    entry["tools"].append(
                        {"name": t.name, "description": t.tool.description, "parameters": params}
                    )
                entry["error"] = "; ".join(client.problems.values())
        out.append(entry)
    if args.json:
        print(json.dumps(out, indent=2, ensure_ascii=False))
        return 0
    for entry, spec in zip(out, servers.values(), strict=True):
        print(f"{spec.name}: {printable(spec.describe())}")
        if entry["error"]:
            print(f"  error: {printable(entry['error'])}")
        for t in entry["tools"]:
            params = ", ".join(t["parameters"].get("properties", {}))
            first = (t["description"] or "").strip().splitlines()[:1]
            print(f"  {printable(t['name'])}({printable(params)})  {printable(first[0] if first else '')}")
    return 0


class _Refused(Exception):
    pass


class _AddParser(argparse.ArgumentParser):
    def error(self, message: str):
        raise _Refused(message)


_ADD = _AddParser(prog="ingle tools add", add_help=False)
_ADD.add_argument("name", nargs="?")
_ADD.add_argument("--url", help="a streamable HTTP server's URL")
_ADD.add_argument(
    "--env", action="append", metavar="KEY=VALUE", help="environment of a stdio server (repeatable)"
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tools", help="MCP servers whose tools the model may use (add, list, rm)")
    tsub = p.add_subparsers(dest="action")
    ap = tsub.add_parser("add", help="add a server: NAME -- COMMAND [ARGS...] (stdio) or NAME --url URL",
                         usage="ingle tools add NAME [--env KEY=VALUE]... -- COMMAND [ARGS...]\n"
                               "       ingle tools add NAME --url URL")  # fmt: skip
    # everything after NAME is read by _ADD (argparse cannot mix options with a `--`-led command reliably)
    ap.add_argument("rest", nargs=argparse.REMAINDER)
    lp = tsub.add_parser("list", help="the servers and their tools (starts each server)")
    lp.add_argument("name", nargs="*", help="only these servers")
    lp.add_argument("--json", action="store_true")
    lp.add_argument("--offline", action="store_true", help="do not start the servers (no tool lists)")
    rp = tsub.add_parser("rm", help="remove a server")
    rp.add_argument("name")
    p.set_defaults(func=cmd_tools, action="list", name=[], json=False, offline=False)


# ------------------------------------------------------------------------------------------ run / chat
def add_tool_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("tools (MCP)")
    g.add_argument(
        "--mcp",
        action="append",
        metavar="NAME",
        help="let the model use this MCP server's tools (repeatable)",
    )
    g.add_argument("--tool-choice", choices=["auto", "required", "none"], default="auto",
                   help="auto: the model decides; required: it must call a tool first; none: no calls")  # fmt: skip
    g.add_argument("--allow-tools", action="store_true", help="run every call without asking")
    g.add_argument("--max-tool-calls", type=int, default=8, metavar="N", help="calls per reply (stops loops)")


def open_tools(args) -> McpClient | None:
    """The MCP client for --mcp, its servers started and their tools listed (problems printed), or None."""
    if not getattr(args, "mcp", None):
        return None
    if args.max_tool_calls < 1:
        raise SettingsError("--max-tool-calls", "must be 1 or more")
    client = McpClient(pick_servers(dict.fromkeys(args.mcp)))
    tools = client.tools()
    for problem in client.problems.values():
        print(f"ingle: warning: {printable(problem)}", file=sys.stderr)
    if not tools:
        client.close()
        raise SettingsError("--mcp", "none of the servers gave any tools (see the warnings above)")
    names = ", ".join(t.tool.name for t in tools)
    print(f"tools: {printable(names)}", file=sys.stderr)
    return client


def approver(args):
    """How calls are approved: --allow-tools runs them all; a terminal asks; anything else denies."""
    if args.allow_tools:
        return Approver(allow_all)
    if not sys.stdin.isatty():
        return lambda call, server: NO_TERMINAL
    return Approver(ask_on_terminal)


def ask_on_terminal(call: ToolCall, server: str) -> Approval:
    print(f"\nallow tool call {printable(call.name)} ({printable(server)}) with {printable(call.arguments)}?",
          file=sys.stderr)  # fmt: skip
    while True:
        try:
            answer = input("[o]nce, [a]lways for this tool, [d]eny: ").strip().lower()
        except EOFError:
            return Approval.DENY
        if answer in ("o", "once", "y", "yes"):
            return Approval.ONCE
        if answer in ("a", "always"):
            return Approval.ALWAYS
        if answer in ("d", "deny", "n", "no"):
            return Approval.DENY


def show_call(event, quiet: bool = False) -> None:
    """A call on stderr as it happens: its arguments, then its result (the first line, collapsed)."""
    if quiet:
        return
    if isinstance(event, ToolCallStarted):
        print(f"\n[tool {printable(event.call.name)} {printable(event.call.arguments)}]", file=sys.stderr)
    elif isinstance(event, ToolCallCut):
        print(f"\n[{event.message('-n (--max-tokens)')}]", file=sys.stderr)
    elif isinstance(event, ToolCallFinished):
        first = event.result.text.strip().splitlines()[:1]
        more = " …" if len(event.result.text.strip().splitlines()) > 1 else ""
        status = "error" if event.result.is_error else "result"
        print(f"[{status}: {printable(first[0] if first else '')[:200]}{more}]", file=sys.stderr)
