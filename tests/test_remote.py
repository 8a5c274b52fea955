"""Remote engines: the Engine interface over OpenAI-compatible servers that are really running on 127.0.0.1.

Against a server that is not Ingle's (llama-cpp-python's own `llama_cpp.server`, in a child process) and against
`ingle serve` (uvicorn in this process, the engine in its child): greedy replies equal the local engine's on the same
model. Misbehaving servers (500, a stream cut midway, garbage, a redirect to another port) are small real HTTP
servers written here: the point is what the client does with what comes over the wire.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from engine.cli import load_model
from engine.events import Message, PromptEvaluated, ReplyDone, StopReason, Token
from engine.host import EngineHost
from engine.remote import NeedsLocalModel, RemoteEngine, RemoteError
from engine.remotes import (
    add_remote,
    get_remote,
    key_path,
    list_remotes,
    load_key,
    remotes_path,
    remove_remote,
)
from engine.server import Scheduler, ServerConfig
from engine.server.runner import ServerThread
from engine.server_cli import bind
from engine.settings import LoadSettings, SamplingSettings

KEY = "remote-test-key-42"
GREEDY = SamplingSettings(temperature=0, max_tokens=16)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def reply(events) -> tuple[str, list, ReplyDone]:
    events = list(events)
    done = events[-1]
    assert isinstance(done, ReplyDone)
    return done.text, [e for e in events if isinstance(e, Token)], done


def start_llama_cpp_server(model):
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--port", str(port),
         "--n_ctx", "512", "--verbose", "False"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(url + "/models", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert proc.poll() is None, "llama_cpp.server exited while starting"
        assert time.monotonic() < deadline, "llama_cpp.server did not start in 120 s"
        time.sleep(0.3)
    return proc, url


@pytest.fixture(scope="module")
def llama_cpp_server(tiny_model):
    """llama-cpp-python's own OpenAI-compatible server on the tiny model, in a child process."""
    proc, url = start_llama_cpp_server(tiny_model)
    yield url
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="module")
def starter_server(starter_model):
    """The same server on the real starter: real text, so replies compare as text."""
    proc, url = start_llama_cpp_server(starter_model)
    yield url
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="module")
def starter_local(starter_model):
    from engine.runtime import Runtime

    rt = Runtime()
    load_model(rt, starter_model, LoadSettings(n_ctx=512))
    yield rt
    rt.close()


@pytest.fixture(scope="module")
def ingle_server(tiny_model):
    """`ingle serve` on the tiny model with an API key (uvicorn here, llama.cpp in the engine child)."""
    engine = EngineHost()
    loaded = load_model(engine, tiny_model, LoadSettings(n_ctx=512))
    engine.start_slots(1, loaded.n_ctx)  # the server decodes in the engine's slots
    config = ServerConfig(model_name="tiny", model_info=loaded.info, n_ctx=loaded.n_ctx, api_key=KEY,
                          created=int(time.time()))  # fmt: skip
    srv = ServerThread(config, Scheduler(engine, lambda e: None), bind("127.0.0.1", 0)).start()
    yield srv.url + "/v1"
    srv.stop()
    engine.close()


def loaded(url: str, key: str | None = None, model: str = "") -> RemoteEngine:
    engine = RemoteEngine(url, key, model)
    list(engine.load())
    return engine


# ------------------------------------------------------------------ real servers
def test_greedy_completion_through_llama_cpp_server_equals_the_local_engine(starter_server, starter_local):
    prompt = "The capital of France is"
    local, _, _ = reply(starter_local.complete(prompt, GREEDY))
    with loaded(starter_server) as engine:
        assert engine.server_kind == "me"  # llama_cpp.server's owned_by: not a server known to take extras
        remote, tokens, done = reply(engine.complete(prompt, GREEDY))
    assert remote == local and remote
    assert done.stats.stop_reason == StopReason.MAX_TOKENS and done.stats.generated_tokens == 16
    assert len(tokens) == 16


def test_logprobs_come_from_the_server(llama_cpp_server, tiny_runtime, starter_server, starter_local):
    sampling = SamplingSettings(temperature=0, max_tokens=4, top_logprobs=3)
    # the tiny model: random byte tokens (text held back until a character completes), probabilities still come
    local = [e for e in tiny_runtime.complete("Hello", sampling) if isinstance(e, Token) and e.token_id >= 0]
    with loaded(llama_cpp_server) as engine:
        _, tokens, _ = reply(engine.complete("Hello", sampling))
    assert [t.logprob for t in tokens] == pytest.approx([t.logprob for t in local], abs=1e-3)
    # the starter: the same greedy tokens as the local engine, and exactly the probabilities the server reports
    local = [
        e for e in starter_local.complete("The sea is", sampling) if isinstance(e, Token) and e.token_id >= 0
    ]
    with loaded(starter_server) as engine:
        _, tokens, _ = reply(engine.complete("The sea is", sampling))
    body = {"prompt": "The sea is", "max_tokens": 4, "temperature": 0, "logprobs": 3, "repeat_penalty": 1.0}
    said = httpx.post(starter_server + "/completions", json=body, timeout=60).json()["choices"][0]["logprobs"]
    assert [t.piece for t in tokens] == [t.piece for t in local] == said["tokens"]
    assert [t.logprob for t in tokens] == pytest.approx(said["token_logprobs"], abs=1e-6)
    for token, top in zip(tokens, said["top_logprobs"], strict=True):
        assert [(a.piece, a.logprob) for a in token.alternatives] == list(top.items())


def test_ingle_serve_as_a_remote_engine_matches_the_local_chat(ingle_server, tiny_runtime):
    messages = [Message("user", "Tell me about the sea.")]
    local, local_tokens, local_done = reply(tiny_runtime.chat(messages, GREEDY))
    with loaded(ingle_server, KEY) as engine:
        assert engine.server_kind == "ingle" and engine.model == "tiny"
        events = list(engine.chat(messages, SamplingSettings(temperature=0, max_tokens=16, top_logprobs=2)))
        assert engine.notices == []  # Ingle takes every sampler field
    remote, tokens, done = reply(events)
    assert remote == local
    assert [t.token_id for t in tokens] == [
        t.token_id for t in local_tokens
    ]  # ids from the server's logprobs
    assert isinstance(events[0], PromptEvaluated)
    # usage (stream_options.include_usage) is exact: the same prompt the local engine rendered
    assert done.stats.prompt_tokens == local_done.stats.prompt_tokens > 0
    assert done.stats.generated_tokens == 16


def test_wrong_or_missing_key_is_a_clear_error_that_never_shows_the_key(ingle_server):
    for key in ("not-the-key-123", None):
        with pytest.raises(RemoteError, match="refused the API key") as err:
            loaded(ingle_server, key)
        assert "not-the-key-123" not in str(err.value) and KEY not in str(err.value)


def test_unknown_model_lists_what_the_server_has(ingle_server):
    with pytest.raises(RemoteError, match=r"no model 'gpt-9'; it has: tiny"):
        loaded(ingle_server, KEY, "gpt-9")


def test_stop_mid_stream_keeps_the_partial_reply(ingle_server):
    with loaded(ingle_server, KEY) as engine:
        events = engine.chat([Message("user", "Count.")], SamplingSettings(temperature=0, max_tokens=400))
        got = []
        for event in events:
            got.append(event)
            if sum(isinstance(e, Token) for e in got) == 3:
                engine.cancel()
        text, tokens, done = reply(got)
    assert done.stats.stop_reason == StopReason.CANCELLED
    assert 3 <= len(tokens) < 400 and text == "".join(t.text for t in tokens)


def test_visualizers_say_they_need_a_local_model(ingle_server):
    with loaded(ingle_server, KEY) as engine:
        for call in (lambda: engine.kv_state(), lambda: engine.tokenize("x"), lambda: engine.preview(GREEDY)):
            with pytest.raises(NeedsLocalModel, match="needs a local model"):
                call()


def test_unreachable_server_is_one_clear_line():
    with pytest.raises(RemoteError, match=r"Cannot reach the server at 127\.0\.0\.1:\d+"):
        loaded(f"http://127.0.0.1:{free_port()}")


# ------------------------------------------------------------------ misbehaving servers
class Recorder(BaseHTTPRequestHandler):
    """Serves what the test put in `server.plan` (path -> callable(handler)), records each request's headers."""

    def log_message(self, *args) -> None:
        pass

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        self.server.seen.append((self.command, self.path, dict(self.headers), body))
        self.server.plan.get(self.path, lambda h: h.send_error(404))(self)

    do_GET = do_POST = _serve

    def send_json(self, status: int, obj) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


MODELS = {"object": "list", "data": [{"id": "m", "object": "model", "owned_by": "someone"}]}


@pytest.fixture
def fake():
    servers = []

    def start(plan: dict) -> ThreadingHTTPServer:
        srv = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
        srv.plan, srv.seen = {"/v1/models": lambda h: h.send_json(200, MODELS), **plan}, []
        srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        return srv

    yield start
    for srv in servers:
        srv.shutdown()
        srv.server_close()


def sse(handler, chunks: list[dict], done: bool = True, cut_after: int | None = None) -> None:
    handler.send_response(200)
    handler.send_header("Content-Type", "text/event-stream")
    handler.end_headers()
    for i, chunk in enumerate(chunks):
        handler.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
        handler.wfile.flush()
        if cut_after is not None and i + 1 == cut_after:
            handler.connection.shutdown(socket.SHUT_RDWR)  # the connection drops mid-reply
            return
    if done:
        handler.wfile.write(b"data: [DONE]\n\n")


def delta(text: str, finish=None) -> dict:
    return {"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": finish}]}


def test_a_500_says_the_server_failed_and_quotes_it(fake):
    srv = fake({"/v1/chat/completions": lambda h: h.send_json(500, {"error": {"message": "out of VRAM"}})})
    with (
        loaded(srv.url) as engine,
        pytest.raises(RemoteError, match=r"failed \(500\): out of VRAM\. Try again"),
    ):
        list(engine.chat([Message("user", "hi")]))


def test_a_dropped_connection_keeps_the_partial_reply_marked_interrupted(fake):
    chunks = [delta("Once"), delta(" upon"), delta(" a"), delta(" time")]
    srv = fake({"/v1/chat/completions": lambda h: sse(h, chunks, cut_after=2)})
    with loaded(srv.url) as engine:
        text, tokens, done = reply(engine.chat([Message("user", "story")]))
    assert text == "Once upon" and len(tokens) == 2
    assert done.stats.stop_reason == StopReason.INTERRUPTED


def test_garbage_in_the_stream_is_a_clear_error(fake):
    def garbage(h):
        h.send_response(200)
        h.send_header("Content-Type", "text/event-stream")
        h.end_headers()
        h.wfile.write(b"data: <html>oops</html>\n\n")

    srv = fake({"/v1/chat/completions": garbage})
    with loaded(srv.url) as engine, pytest.raises(RemoteError, match="not JSON: '<html>oops</html>'"):
        list(engine.chat([Message("user", "hi")]))
    srv2 = fake({"/v1/models": lambda h: h.send_json(200, {"models": "nope"})})
    with pytest.raises(RemoteError, match="without a `data` array"):
        loaded(srv2.url)


def test_the_key_does_not_follow_a_redirect_to_another_port(fake):
    other = fake({"/v1/chat/completions": lambda h: sse(h, [delta("moved", "stop")])})

    def moved(h):
        h.send_response(307)
        h.send_header("Location", other.url + "/v1/chat/completions")
        h.end_headers()

    home = fake({"/v1/chat/completions": moved})
    with loaded(home.url, KEY) as engine:
        text, _, _ = reply(engine.chat([Message("user", "hi")]))
    assert text == "moved"
    assert all(h.get("Authorization") == f"Bearer {KEY}" for _, _, h, _ in home.seen)
    assert other.seen and all("Authorization" not in h for _, _, h, _ in other.seen)
    assert json.loads(other.seen[0][3])["messages"] == [
        {"role": "user", "content": "hi"}
    ]  # 307 keeps the body


def test_a_strict_server_that_refuses_extra_fields_is_answered_without_them(fake):
    def strict(h):
        body = json.loads(h.server.seen[-1][3])
        if "top_k" in body:
            return h.send_json(400, {"error": {"message": "Unrecognized request argument supplied: top_k"}})
        sse(h, [delta("ok", "stop")])

    srv = fake({"/v1/chat/completions": strict})
    with loaded(srv.url) as engine:
        text, _, _ = reply(engine.chat([Message("user", "hi")], SamplingSettings(top_k=5)))
        assert text == "ok"
        assert "refused the settings top_k, min_p, repeat_penalty" in engine.notices[0]


# ------------------------------------------------------------------ saved remotes
def test_saved_remotes_keep_their_key_private(fresh_home, tmp_path):
    add_remote("gpu-box", "http://10.0.0.5:8080", "sk-secret-1", "llama-70b")
    remote = get_remote("gpu-box")
    assert (remote.url, remote.model, remote.host) == (
        "http://10.0.0.5:8080/v1",
        "llama-70b",
        "10.0.0.5:8080",
    )
    assert stat.S_IMODE(os.stat(key_path("gpu-box")).st_mode) == 0o600
    assert load_key("gpu-box") == "sk-secret-1"
    assert "sk-secret" not in remotes_path().read_text()
    remove_remote("gpu-box")
    assert list_remotes() == [] and not key_path("gpu-box").exists()


@pytest.mark.parametrize(
    "url, message",
    [("ftp://x", "not an http"), ("http://u:p@host", "user name or password"), ("http://h/v1?x=1", "?query"),
     ("http://h:port", "port that is not a number")],
)  # fmt: skip
def test_bad_urls_are_refused_with_the_reason(fresh_home, url, message):
    from engine.errors import SettingsError

    with pytest.raises(SettingsError, match=message.replace("?", r"\?")):
        add_remote("x", url)


def test_forged_entries_are_left_out(fresh_home):
    add_remote("ok", "http://127.0.0.1:1")
    data = json.loads(remotes_path().read_text())
    data["../evil"] = {"url": "http://127.0.0.1:2"}
    data["bad-url"] = {"url": "file:///etc/passwd"}
    remotes_path().write_text(json.dumps(data))
    assert [r.name for r in list_remotes()] == ["ok"]


def test_cli_run_remote_prints_the_reply_and_a_dead_server_is_one_line(ingle_server, fresh_home, tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\n")
    env = dict(os.environ, INGLE_HOME=str(fresh_home))
    run = [sys.executable, "-m", "app.cli", "run", "--remote", ingle_server, "--api-key-file", str(key_file),
           "--temperature", "0", "--max-tokens", "8", "hi"]  # fmt: skip
    done = subprocess.run(run, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() and KEY not in done.stdout + done.stderr
    dead = subprocess.run([sys.executable, "-m", "app.cli", "run", "--remote", f"http://127.0.0.1:{free_port()}",
                           "hi"], capture_output=True, text=True, env=env, timeout=60)  # fmt: skip
    assert dead.returncode == 2 and "Traceback" not in dead.stderr
    assert dead.stderr.startswith("ingle: error: Cannot reach the server")
    added = subprocess.run([sys.executable, "-m", "app.cli", "models", "remote", "add", "mine", ingle_server,
                            "--api-key-file", str(key_file)], capture_output=True, text=True, env=env, timeout=60)  # fmt: skip
    assert added.returncode == 0 and "it serves 1 model(s): tiny" in added.stdout
    listed = subprocess.run([sys.executable, "-m", "app.cli", "models", "remote", "list"], capture_output=True,
                            text=True, env=env, timeout=60)  # fmt: skip
    assert "mine" in listed.stdout and "key saved" in listed.stdout and KEY not in listed.stdout
