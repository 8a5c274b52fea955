"""An MCP server for the tests (stdio, written with the SDK): a tool that works, one that fails, one that
hangs, one that returns a huge result, one that crashes the server."""

import os
import sys
import time
from typing import Annotated

from mcp.server.mcpserver import MCPServer
from pydantic import Field

server = MCPServer("ingle-test")
ONLY = set(filter(None, os.environ.get("INGLE_TEST_TOOLS", "").split(",")))  # serve only these tools when set


def tool(fn):
    if not ONLY or fn.__name__ in ONLY:
        server.tool()(fn)
    return fn


@tool
def echo(text: Annotated[str, Field(max_length=12)]) -> str:
    """Return the text it was given."""
    return f"echo: {text}"


@tool
def fail(reason: str = "broken") -> str:
    """Always fails."""
    raise ValueError(f"this tool always fails ({reason})")


@tool
def hang() -> str:
    """Never answers."""
    time.sleep(3600)
    return "late"


@tool
def huge() -> str:
    """Returns a million characters."""
    return "x" * 1_000_000


@tool
def crash() -> str:
    """Ends the server's process."""
    sys.stderr.write("test server: crashing on purpose\n")
    sys.stderr.flush()
    os._exit(3)


if __name__ == "__main__":
    server.run()
