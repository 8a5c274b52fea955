"""MCP servers for the model's tools: the config file in the Ingle home, and a client (the official `mcp` SDK)
that starts servers on demand, lists their tools and calls them, turning every failure into a message.

The config is `mcp.json` in the Ingle home, in the shape other MCP clients use:

    {"mcpServers": {"time": {"command": "mcp-server-time", "args": [], "env": {}},
                    "web":  {"url": "http://127.0.0.1:8000/mcp"}}}

A call never raises: a timeout, a server that crashed or cannot start, a tool's own error, a result that is
not text or is too long all come back as a ToolResult whose text says what happened (the model reads it and
the user sees it), and a crashed server is started again on the next call.
"""

from __future__ import annotations

import asyncio
import json
import re
import tempfile
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import SettingsError
from engine.text import printable
from engine.tools import NAME_RE, Tool, parse_tools

CONFIG_NAME = "mcp.json"
START_TIMEOUT = 60.0  # seconds for a server to start and list its tools (uvx/npx may install on first start)
CALL_TIMEOUT = 60.0  # seconds for one call
MAX_RESULT_CHARS = 8000  # what the model reads of one result; the rest is cut with a note
SERVER_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


# ------------------------------------------------------------------------------------------ config
@dataclass(frozen=True)
class ServerSpec:
    """One configured MCP server: a stdio command (with args and env) or a streamable HTTP URL."""

    name: str
    command: str = ""
    args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    url: str = ""

    def describe(self) -> str:
        return self.url if self.url else " ".join([self.command, *self.args])

    def to_json(self) -> dict:
        if self.url:
            return {"url": self.url}
        return {"command": self.command, "args": list(self.args), "env": dict(self.env)}


def config_path(home: Path | None = None) -> Path:
    from engine.library import data_dir

    return (home or data_dir()) / CONFIG_NAME


def check_server_name(name: str) -> str:
    if not SERVER_NAME_RE.match(name or ""):
        raise SettingsError(
            "tools", f"'{printable(name)}' is not a server name: use 1-64 letters, digits, '_', '-' or '.'"
        )
    return name


def spec_from_json(name: str, raw: Any, where: str) -> ServerSpec:
    """A server's entry in the config -> ServerSpec; a bad one raises SettingsError naming the file and key."""
    if not isinstance(raw, dict):
        raise SettingsError(where, "expected an object with command (and args, env) or url")
    url, command = raw.get("url"), raw.get("command")
    if bool(url) == bool(command):
        raise SettingsError(where, "give either command (a stdio server) or url (a streamable HTTP server)")
    if url:
        if not isinstance(url, str) or not re.match(r"^https?://[^\s/]+", url):
            raise SettingsError(f"{where}.url", f"{printable(str(url))!r} is not an http:// or https:// URL")
        return ServerSpec(name, url=url)
    args, env = raw.get("args", []), raw.get("env", {})
    if not isinstance(command, str):
        raise SettingsError(f"{where}.command", "expected a string")
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise SettingsError(f"{where}.args", "expected a list of strings")
    if not isinstance(env, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in env.items()
    ):
        raise SettingsError(f"{where}.env", "expected an object of string values")
    return ServerSpec(name, command, tuple(args), dict(env))


def load_servers(home: Path | None = None) -> dict[str, ServerSpec]:
    """The configured servers by name (none when the file does not exist)."""
    path = config_path(home)
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SettingsError(str(path), f"cannot be read as JSON ({err}); fix or delete it") from None
    servers = data.get("mcpServers", {}) if isinstance(data, dict) else None
    if not isinstance(servers, dict):
        raise SettingsError(str(path), 'expected {"mcpServers": {NAME: {...}}}')
    return {
        name: spec_from_json(name, raw, f"{path}: mcpServers.{printable(name)}")
        for name, raw in servers.items()
    }


def save_servers(servers: dict[str, ServerSpec], home: Path | None = None) -> Path:
    from engine.library import atomic_write_bytes

    path = config_path(home)
    data = {"mcpServers": {name: spec.to_json() for name, spec in sorted(servers.items())}}
    atomic_write_bytes(path, (json.dumps(data, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))
    return path


def add_server(spec: ServerSpec, home: Path | None = None, replace: bool = False) -> Path:
    check_server_name(spec.name)
    spec_from_json(spec.name, spec.to_json(), f"server {spec.name}")  # the same checks as reading it back
    servers = load_servers(home)
    if spec.name in servers and not replace:
        raise SettingsError(
            "tools", f"a server named '{spec.name}' exists; remove it first (ingle tools rm {spec.name})"
        )
    servers[spec.name] = spec
    return save_servers(servers, home)


def remove_server(name: str, home: Path | None = None) -> ServerSpec:
    servers = load_servers(home)
    if name not in servers:
        known = ", ".join(servers) or "none"
        raise SettingsError("tools", f"no server named '{printable(name)}' (configured: {known})")
    spec = servers.pop(name)
    save_servers(servers, home)
    return spec


def pick_servers(names: Iterable[str], home: Path | None = None) -> list[ServerSpec]:
    servers = load_servers(home)
    picked = []
    for name in names:
        if name not in servers:
            known = ", ".join(servers) or "none; add one with `ingle tools add NAME -- COMMAND`"
            raise SettingsError("--mcp", f"no MCP server named '{printable(name)}' (configured: {known})")
        picked.append(servers[name])
    return picked


# ------------------------------------------------------------------------------------------ results
@dataclass(frozen=True)
class McpTool:
    """A tool of a server, under the name the model sees (unique across the servers of a conversation)."""

    server: str
    name: str  # what the server calls it
    tool: Tool  # what the model sees


@dataclass(frozen=True)
class ToolResult:
    """What a call gave: the text the model reads, and whether it failed (is_error)."""

    text: str
    is_error: bool = False


def result_text(result: Any, limit: int = MAX_RESULT_CHARS) -> ToolResult:
    """An MCP CallToolResult -> the text the model reads: text parts joined, other parts named, cut at `limit`."""
    parts: list[str] = []
    for item in getattr(result, "content", None) or []:
        kind = getattr(item, "type", "?")
        if kind == "text":
            parts.append(str(item.text))
        elif kind == "resource" and getattr(getattr(item, "resource", None), "text", None) is not None:
            parts.append(str(item.resource.text))
        else:
            parts.append(f"[{kind} content, which Ingle does not pass to the model]")
    structured = getattr(result, "structured_content", None)
    if not parts and structured is not None:
        parts.append(json.dumps(structured, ensure_ascii=False))
    text = "\n".join(parts)
    is_error = bool(getattr(result, "is_error", False))
    if not text.strip():
        text = "The tool failed and gave no message." if is_error else "The tool returned nothing."
    elif is_error:
        text = f"The tool reported an error: {text}"
    if len(text) > limit:
        text = (
            text[:limit] + f"\n[result cut: it was {len(text):,} characters; the first {limit:,} are shown]"
        )
    return ToolResult(text, is_error)


def model_name(server: str, name: str, taken: set[str]) -> str:
    """A tool's name as the model sees it: OpenAI's name rule, the server's name in front on a clash."""
    clean = re.sub(r"[^A-Za-z0-9_-]", "_", name)[:64] or "tool"
    if clean in taken or not NAME_RE.match(clean):
        clean = re.sub(r"[^A-Za-z0-9_-]", "_", f"{server}_{name}")[:64]
    n = 2
    base = clean
    while clean in taken:
        clean = f"{base[:60]}_{n}"
        n += 1
    return clean


# ------------------------------------------------------------------------------------------ client
class _Connection:
    """One running server: a task that holds its transport and session open until told to stop (the SDK's
    context managers must be left by the task that entered them)."""

    def __init__(self, spec: ServerSpec, errlog):
        self.spec = spec
        self.errlog = errlog
        self.session = None
        self.ready = asyncio.Event()
        self.stop = asyncio.Event()
        self.failure: BaseException | None = None
        self.task: asyncio.Task | None = None

    async def run(self) -> None:
        try:
            from mcp import ClientSession  # (a missing SDK is this connection's failure, said, not a hang)

            async with self._transport() as (read, write), ClientSession(read, write) as session:
                await session.initialize()
                self.session = session
                self.ready.set()
                await self.stop.wait()
        except BaseException as err:  # any failure of the server ends this connection
            self.failure = err
        finally:
            self.session = None
            self.ready.set()

    def _transport(self):
        if self.spec.url:
            from mcp.client.streamable_http import streamable_http_client

            return streamable_http_client(self.spec.url)
        from mcp import StdioServerParameters
        from mcp.client.stdio import stdio_client

        params = StdioServerParameters(
            command=self.spec.command, args=list(self.spec.args), env=self.spec.env
        )
        return stdio_client(params, errlog=self.errlog)


class McpClient:
    """The MCP servers of one conversation. Servers start on first use (tools() or call()) in a background
    event loop; close() stops them all. Methods are called from one thread at a time."""

    def __init__(self, specs: Iterable[ServerSpec], start_timeout: float = START_TIMEOUT,
                 call_timeout: float = CALL_TIMEOUT, max_result_chars: int = MAX_RESULT_CHARS):  # fmt: skip
        self.specs = {s.name: s for s in specs}
        self.start_timeout = start_timeout
        self.call_timeout = call_timeout
        self.max_result_chars = max_result_chars
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="mcp-client", daemon=True)
        self._thread.start()
        self._conns: dict[str, _Connection] = {}
        self._errlogs = {
            name: tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace") for name in self.specs
        }
        self._tools: list[McpTool] | None = None
        self.problems: dict[str, str] = {}  # server -> why its tools are missing

    def __enter__(self) -> McpClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _run(self, coro, timeout: float):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    # -- servers
    async def _session(self, name: str):
        conn = self._conns.get(name)
        if conn is None or conn.task is None or conn.task.done():
            log = self._errlogs[name]
            log.seek(0)
            log.truncate()  # the log of this process only: its tail explains this process's failure
            conn = _Connection(self.specs[name], log)
            conn.task = asyncio.ensure_future(conn.run())
            self._conns[name] = conn
        try:
            await asyncio.wait_for(conn.ready.wait(), self.start_timeout)
        except TimeoutError:
            await self._drop(name)
            raise McpFailure(f"the server '{name}' did not start within {self.start_timeout:g} s") from None
        if conn.session is None:
            self._conns.pop(name, None)
            raise McpFailure(f"the server '{name}' could not be started: {self._why(name, conn.failure)}")
        return conn.session

    async def _drop(self, name: str) -> None:
        conn = self._conns.pop(name, None)
        if conn and conn.task:
            conn.stop.set()
            try:
                await asyncio.wait_for(asyncio.shield(conn.task), 10)
            except (TimeoutError, asyncio.CancelledError):
                conn.task.cancel()

    def _why(self, name: str, err: BaseException | None) -> str:
        while isinstance(err, BaseExceptionGroup) and err.exceptions:
            err = err.exceptions[0]
        text = f"{type(err).__name__}: {err}" if err else "it exited"
        log = self._errlogs.get(name)
        if log:
            log.flush()
            log.seek(0)
            tail = [line for line in log.read()[-4000:].splitlines() if line.strip()][-3:]
            if tail:
                text += " (its last output: " + " | ".join(t.strip() for t in tail) + ")"
        return printable(text)[:600]

    # -- tools
    def tools(self) -> list[McpTool]:
        """Every tool of every server (started now if needed); a server that fails is left out and its
        reason kept in `problems`."""
        if self._tools is None:
            self._tools = self._run(self._list_all(), self.start_timeout * max(1, len(self.specs)) + 30)
        return self._tools

    async def _list_all(self) -> list[McpTool]:
        found: list[McpTool] = []
        taken: set[str] = set()
        for name in self.specs:
            try:
                session = await self._session(name)
                listed = await asyncio.wait_for(session.list_tools(), self.call_timeout)
            except McpFailure as err:
                self.problems[name] = str(err)
                continue
            except Exception as err:  # a server's failure must not end the others
                self.problems[name] = f"the server '{name}' failed to list its tools: {self._why(name, err)}"
                await self._drop(name)
                continue
            for t in listed.tools:
                shown = model_name(name, t.name, taken)
                schema = t.input_schema or {"type": "object", "properties": {}}
                raw = {"type": "function", "function": {"name": shown, "description": t.description or "",
                                                        "parameters": schema}}  # fmt: skip
                try:
                    (tool,) = parse_tools([raw], f"{name}.{t.name}")
                except SettingsError as err:
                    self.problems[f"{name}.{t.name}"] = f"tool '{t.name}' of '{name}' left out: {err}"
                    continue
                taken.add(shown)
                found.append(McpTool(name, t.name, tool))
        return found

    def call(self, tool_name: str, arguments: str) -> ToolResult:
        """Call a tool by the name the model knows; every failure comes back as an error result."""
        entry = next((t for t in self.tools() if t.tool.name == tool_name), None)
        if entry is None:
            return ToolResult(f"There is no tool named '{tool_name}'.", True)
        try:
            args = json.loads(arguments) if arguments else {}
        except json.JSONDecodeError as err:
            return ToolResult(f"The arguments are not valid JSON ({err.msg}).", True)
        try:
            return self._run(self._call(entry, args), self.call_timeout + self.start_timeout + 30)
        except TimeoutError:
            return ToolResult(f"The tool '{tool_name}' did not answer in time.", True)

    async def _call(self, entry: McpTool, args: dict) -> ToolResult:
        name = entry.server
        try:
            session = await self._session(name)
        except McpFailure as err:
            return ToolResult(f"The tool '{entry.tool.name}' could not run: {err}.", True)
        try:
            result = await asyncio.wait_for(session.call_tool(entry.name, args), self.call_timeout)
        except TimeoutError:
            # the server may be stuck for good: start it afresh on the next call
            await self._drop(name)
            return ToolResult(
                f"The tool '{entry.tool.name}' did not answer within {self.call_timeout:g} s and was stopped.",
                True,
            )
        except Exception as err:  # a crash or protocol error is reported, not raised
            await self._drop(name)
            return ToolResult(
                f"The tool '{entry.tool.name}' gave no result: the server '{name}' failed or stopped "
                f"({self._why(name, err)}); it will be started again on the next call.",
                True,
            )
        try:
            return result_text(result, self.max_result_chars)
        except Exception as err:  # a result the SDK accepted but we cannot read
            return ToolResult(
                f"The tool '{entry.tool.name}' returned a result Ingle cannot read: {err}", True
            )

    def close(self) -> None:
        """Stop every server and the background loop."""
        if not self._thread.is_alive():
            return

        async def stop_all():
            for name in list(self._conns):
                await self._drop(name)

        try:
            self._run(stop_all(), 30)
        except Exception:  # closing must not raise
            pass
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        for log in self._errlogs.values():
            log.close()


class McpFailure(Exception):
    """A server that could not be started or reached (inside the client only: calls turn it into a message)."""
