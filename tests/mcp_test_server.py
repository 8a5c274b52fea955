"""An MCP server for the tests (stdio, written with the SDK): a tool that works, one that fails, one that
hangs, one that returns a huge result, one that crashes the server."""

import os
import sys
import time
from typing import Annotated

from mcp.server.mcpserver import MCPServer
from pydantic import Field

server = MCPServer("ingle-test")


@server.tool()
def echo(text: Annotated[str, Field(max_length=12)]) -> str:
    """Return the text it was given."""
    return f"echo: {text}"


@server.tool()
def fail(reason: str = "broken") -> str:
    """Always fails."""
    raise ValueError(f"this tool always fails ({reason})")


@server.tool()
def hang() -> str:
    """Never answers."""
    time.sleep(3600)
    return "late"


@server.tool()
def huge() -> str:
    """Returns a million characters."""
    return "x" * 1_000_000


@server.tool()
def crash() -> str:
    """Ends the server's process."""
    sys.stderr.write("test server: crashing on purpose\n")
    sys.stderr.flush()
    os._exit(3)


if __name__ == "__main__":
    server.run()
