"""Tools through MCP: the config file, the client against real servers (mcp-server-time, and the SDK server in
tests/mcp_test_server.py whose tools fail, hang, return a huge result or crash), the tool loop on a real
model, and the CLI (real processes)."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import pytest

from engine.errors import SettingsError
from engine.events import Message, ToolCall
from engine.mcp_client import (
    MAX_RESULT_CHARS,
    McpClient,
    ServerSpec,
    add_server,
    config_path,
    load_servers,
    pick_servers,
    remove_server,
)
from engine.settings import SamplingSettings
from engine.tool_loop import DENIED, Approval, Approver, ToolCallFinished, ToolCallStarted, reply_with_tools

REPO = Path(__file__).resolve().parents[1]
TEST_SERVER = ServerSpec("t", sys.executable, (str(REPO / "tests" / "mcp_test_server.py"),))
TIME_EXE = shutil.which("mcp-server-time") or str(Path(sys.executable).parent / "mcp-server-time")
TIME_SERVER = ServerSpec("time", TIME_EXE)


def ingle(*args, home, input=""):
    env = dict(os.environ, INGLE_HOME=str(home))
    return subprocess.run([sys.executable, "-m", "app.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=REPO, env=env, input=input, timeout=900)  # fmt: skip


# ------------------------------------------------------------------------------------------ config
def test_config_add_list_remove(fresh_home):
    add_server(TIME_SERVER)
    add_server(ServerSpec("web", url="http://127.0.0.1:8765/mcp"))
    servers = load_servers()
    assert servers["time"].command == TIME_EXE and servers["web"].url.endswith("/mcp")
    assert json.loads(config_path().read_text())["mcpServers"]["web"] == {"url": "http://127.0.0.1:8765/mcp"}
    with pytest.raises(SettingsError, match="exists"):
        add_server(TIME_SERVER)
    assert remove_server("web").url
    assert list(load_servers()) == ["time"]
    with pytest.raises(SettingsError, match="no server named 'web'"):
        remove_server("web")
    with pytest.raises(SettingsError, match="no MCP server named 'x'.*time"):
        pick_servers(["x"])


def test_config_bad_input(fresh_home):
    with pytest.raises(SettingsError, match="not a server name"):
        add_server(ServerSpec("a b", "cmd"))
    with pytest.raises(SettingsError, match="not an http"):
        add_server(ServerSpec("w", url="ftp://host/x"))
    config_path().parent.mkdir(parents=True, exist_ok=True)
    config_path().write_text('{"mcpServers": {"x": {"command": "a", "url": "http://h"}}}')
    with pytest.raises(SettingsError, match="either command .* or url"):
        load_servers()
    config_path().write_text("{not json")
    with pytest.raises(SettingsError, match="cannot be read as JSON"):
        load_servers()


# ------------------------------------------------------------------------------------------ client
@pytest.fixture(scope="module")
def client():
    with McpClient([TEST_SERVER, TIME_SERVER], start_timeout=120, call_timeout=4) as c:
        yield c


def test_lists_tools_of_both_servers_with_schemas(client):
    tools = {t.tool.name: t for t in client.tools()}
    assert {"echo", "fail", "hang", "huge", "crash", "get_current_time", "convert_time"} <= set(tools)
    assert tools["get_current_time"].server == "time" and tools["echo"].server == "t"
    schema = json.loads(tools["get_current_time"].tool.parameters)
    assert (
        schema["required"] == ["timezone"]
        and "timezone" in tools["get_current_time"].tool.description.lower()
    )
    assert client.problems == {}


def test_time_server_answers(client):
    result = client.call("get_current_time", '{"timezone": "Europe/Paris"}')
    assert not result.is_error
    assert json.loads(result.text)["timezone"] == "Europe/Paris"


def test_tool_error_becomes_a_message(client):
    result = client.call("fail", '{"reason": "on purpose"}')
    assert result.is_error and result.text.startswith("The tool reported an error:")
    bad_zone = client.call("get_current_time", '{"timezone": "Nowhere/Atlantis"}')
    assert bad_zone.is_error and "Nowhere/Atlantis" in bad_zone.text


def test_huge_result_is_cut_with_a_note(client):
    result = client.call("huge", "{}")
    assert not result.is_error
    assert len(result.text) < MAX_RESULT_CHARS + 200
    assert "result cut: it was 1,000,000 characters" in result.text


def test_hanging_tool_times_out_and_the_server_comes_back(client):
    start = time.monotonic()
    result = client.call("hang", "{}")
    assert result.is_error and "did not answer within 4 s" in result.text
    assert time.monotonic() - start < 60
    assert client.call("echo", '{"text": "back"}').text == "echo: back"


def test_crashed_server_is_reported_and_restarted(client):
    result = client.call("crash", "{}")
    assert result.is_error and "failed or stopped" in result.text
    assert "crashing on purpose" in result.text  # the server's own last words, from its stderr
    assert client.call("echo", '{"text": "again"}').text == "echo: again"


def test_bad_calls_are_messages(client):
    assert client.call("nope", "{}").text == "There is no tool named 'nope'."
    assert "not valid JSON" in client.call("echo", "{oops").text


def test_server_that_cannot_start():
    with McpClient([ServerSpec("gone", "/nonexistent/mcp-server")], start_timeout=30) as c:
        assert c.tools() == []
        assert "could not be started" in c.problems["gone"]


# ------------------------------------------------------------------------------------------ the loop
def test_approver_asks_once_for_always():
    asked = []

    def ask(call, server):
        asked.append(call.name)
        return {"a": Approval.ALWAYS, "b": Approval.ONCE, "c": Approval.DENY}[call.name]

    approve = Approver(ask)
    verdicts = [approve(ToolCall("1", n, "{}"), "s") for n in ("a", "a", "b", "b", "c")]
    assert verdicts == [True, True, True, True, False]
    assert asked == ["a", "b", "b", "c"]


@pytest.fixture(scope="module")
def tiny_rt(tiny_model):
    """The tiny model with room for the tool instructions and a round trip (the shared one has 512 tokens)."""
    from engine.runtime import Runtime
    from engine.settings import LoadSettings

    rt = Runtime()
    list(rt.load(tiny_model, LoadSettings(n_ctx=2048)))
    yield rt
    rt.close()


@pytest.fixture(scope="module")
def echo_client():
    with McpClient([TEST_SERVER], start_timeout=120, call_timeout=10) as c:
        c._tools = [
            t for t in c.tools() if t.tool.name == "echo"
        ]  # only the harmless tool for a random model
        yield c


def test_loop_runs_an_approved_call_and_caps_calls(tiny_rt, echo_client):
    history = [Message("user", "say something")]
    seen = []
    events = list(reply_with_tools(tiny_rt, history, echo_client, "required",
                                   lambda call, server: seen.append(call) or True,
                                   SamplingSettings(max_tokens=300, seed=1), max_calls=1))  # fmt: skip
    finished = [e for e in events if isinstance(e, ToolCallFinished)]
    assert len(finished) == 1 and finished[0].approved  # the cap (1) lets no second call happen
    args = json.loads(finished[0].call.arguments)
    assert finished[0].result.text == f"echo: {args['text']}"
    roles = [m.role for m in history]
    assert roles == ["user", "assistant", "tool", "assistant"]
    assert history[1].tool_calls[0].name == "echo" and not history[3].tool_calls


def test_loop_denied_call_tells_the_model(tiny_rt, echo_client):
    history = [Message("user", "say something")]
    events = list(reply_with_tools(tiny_rt, history, echo_client, "required", lambda call, server: False,
                                   SamplingSettings(max_tokens=300, seed=1), max_calls=1))  # fmt: skip
    assert [type(e) for e in events if isinstance(e, (ToolCallStarted, ToolCallFinished))] == [
        ToolCallStarted,
        ToolCallFinished,
    ]
    finished = next(e for e in events if isinstance(e, ToolCallFinished))
    assert not finished.approved and finished.result.text == DENIED
    assert history[2].role == "tool" and history[2].content == DENIED


def test_a_call_cut_off_by_the_token_limit_says_so(tiny_rt, echo_client):
    """A forced call that runs out of tokens is no call: no tool runs, the text is kept, and the loop says why."""
    from engine.events import StopReason, ToolCallsMade
    from engine.tool_loop import ToolCallCut

    history = [Message("user", "say something")]
    ran = []
    events = list(reply_with_tools(tiny_rt, history, echo_client, "required", lambda c, s: ran.append(c) or True,
                                   SamplingSettings(max_tokens=4, seed=1)))  # fmt: skip
    assert not ran and not [e for e in events if isinstance(e, (ToolCallStarted, ToolCallFinished))]
    made = next(e for e in events if isinstance(e, ToolCallsMade))
    (cut,) = [e for e in events if isinstance(e, ToolCallCut)]
    assert made.cut and made.content.endswith(made.cut) and cut.text == made.cut
    assert cut.reason is StopReason.MAX_TOKENS
    assert "cut off by the reply's token limit" in cut.message() and "Raise Max tokens" in cut.message()
    full = ToolCallCut(cut.text, StopReason.CONTEXT_FULL).message()
    assert "the end of the context" in full and "longer context" in full and "Raise" not in full
    assert history[-1].role == "assistant" and history[-1].content == made.content  # nothing lost


# ------------------------------------------------------------------------------------------ CLI
def test_cli_tools_add_list_rm(tmp_path):
    home = tmp_path / "home"
    added = ingle("tools", "add", "t", "--", *([TEST_SERVER.command, *TEST_SERVER.args]), home=home)
    assert added.returncode == 0, added.stderr
    listed = ingle("tools", "list", "--json", home=home)
    assert listed.returncode == 0, listed.stderr
    (entry,) = json.loads(listed.stdout)
    assert entry["name"] == "t" and entry["error"] == ""
    echo = next(t for t in entry["tools"] if t["name"] == "echo")
    assert echo["parameters"]["required"] == ["text"] and echo["description"]
    assert "echo(text)" in ingle("tools", "list", home=home).stdout
    bad = ingle("tools", "add", "w", "--url", "ftp://x", home=home)
    assert bad.returncode == 2 and bad.stderr.startswith("ingle: error:") and "Traceback" not in bad.stderr
    assert ingle("tools", "rm", "t", home=home).returncode == 0
    gone = ingle("tools", "rm", "t", home=home)
    assert gone.returncode == 2 and "no server named 't'" in gone.stderr


def test_cli_denies_calls_without_a_terminal(tmp_path, tiny_model):
    home = tmp_path / "home"
    assert ingle("tools", "add", "t", "--", TEST_SERVER.command, *TEST_SERVER.args, home=home).returncode == 0
    result = ingle("run", tiny_model, "hello", "--chat", "--mcp", "t", "--tool-choice", "required", "--json",
                   "-n", "300", "-c", "2048", "--seed", "1", "--max-tool-calls", "1", home=home)  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    (call,) = out["tool_calls"]
    assert call["approved"] is False and "no terminal" in call["result"] and "--allow-tools" in call["result"]
    assert "reply" in out and "tool_call_cut" not in out
    cut = ingle("run", tiny_model, "hello", "--chat", "--mcp", "t", "--tool-choice", "required", "--json",
                "-n", "4", "-c", "2048", "--seed", "1", home=home)  # fmt: skip
    assert cut.returncode == 0, cut.stderr
    out = json.loads(cut.stdout)
    assert out["tool_calls"] == [] and out["tool_call_cut"]["text"]
    assert "Raise -n (--max-tokens)" in out["tool_call_cut"]["message"] and "no tool ran" in cut.stderr


def test_starter_makes_a_valid_call_under_the_grammar(starter_model):
    home = Path(os.environ["INGLE_HOME"])  # the session's home holds the starter; its MCP config is put back
    assert not config_path(home).exists()
    try:
        assert ingle("tools", "add", "time", "--", TIME_EXE, home=home).returncode == 0
        # greedy, and room for the whole call: its strings may run to their 256-character cap (then -n would cut it)
        result = ingle("run", "--mcp", "time", "--tool-choice", "required", "--allow-tools", "--json", "-n", "800",
                       "--temperature", "0", "--max-tool-calls", "1", "What time is it in Paris?", home=home)  # fmt: skip
    finally:
        config_path(home).unlink(missing_ok=True)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    (call,) = out["tool_calls"]
    schemas = {
        "get_current_time": ["timezone"],
        "convert_time": ["source_timezone", "time", "target_timezone"],
    }
    assert call["name"] in schemas and call["approved"] is True
    jsonschema.validate(call["arguments"], {"type": "object", "required": schemas[call["name"]]})
    assert call["result"] and isinstance(out["reply"], str)
