"""The API server (`ingle serve`) driven by the clients people use: the official openai and ollama packages,
plus raw HTTP for the error cases. One real server (uvicorn on 127.0.0.1, the engine in its child process, the
tiny model) serves most tests."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import ollama
import openai
import pytest

from engine.cli import load_model
from engine.events import Message
from engine.host import EngineHost
from engine.server import Scheduler, ServerConfig
from engine.server.runner import ServerThread
from engine.server_cli import bind, check_exposure
from engine.settings import LoadSettings, SamplingSettings

KEY = "test-key-0123456789"
ORIGIN = "http://allowed.example"
N_CTX = 4096
MAX_BODY = 64 * 1024
HEADERS = {"Authorization": f"Bearer {KEY}"}
MESSAGES = [{"role": "user", "content": "Tell me about the sea."}]


@pytest.fixture(scope="module")
def server(tiny_model):
    engine = EngineHost()
    load = LoadSettings(n_ctx=N_CTX)
    loaded = load_model(engine, tiny_model, load)

    def reload(engine) -> None:
        engine.restart()
        load_model(engine, tiny_model, load)

    config = ServerConfig(model_name="tiny", model_info=loaded.info, n_ctx=loaded.n_ctx, api_key=KEY,
                          cors_origins=(ORIGIN,), max_body=MAX_BODY, max_tokens_cap=N_CTX, max_queue=1,
                          created=int(time.time()))  # fmt: skip
    srv = ServerThread(config, Scheduler(engine, reload, max_queue=1), bind("127.0.0.1", 0)).start()
    yield srv
    srv.stop()
    engine.close()


@pytest.fixture(scope="module")
def reference(tiny_model):
    """The engine's own greedy replies, in this process, for the same prompts."""
    from engine.runtime import Runtime

    rt = Runtime()
    load_model(rt, tiny_model, LoadSettings(n_ctx=N_CTX))
    yield rt
    rt.unload()


def greedy(rt, messages: list[dict], max_tokens: int):
    done = None
    sampling = SamplingSettings(temperature=0, max_tokens=max_tokens)
    for event in rt.chat([Message(m["role"], m["content"]) for m in messages], sampling):
        done = event
    return done


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=60)


@pytest.fixture
def oclient(server):
    return ollama.Client(host=server.url, headers=HEADERS, timeout=60)


def raw(server, method: str, path: str, **kw) -> httpx.Response:
    kw.setdefault("headers", HEADERS)
    return httpx.request(method, server.url + path, timeout=60, **kw)


# ------------------------------------------------------------------ OpenAI
def test_models_lists_the_served_model(client):
    assert [m.id for m in client.models.list().data] == ["tiny"]


def test_greedy_chat_equals_the_engines_own_reply_with_exact_usage(client, reference):
    reply = client.chat.completions.create(model="tiny", messages=MESSAGES, temperature=0, max_tokens=16)
    own = greedy(reference, MESSAGES, 16)
    assert reply.choices[0].message.content == own.text
    assert reply.choices[0].finish_reason == ("length" if own.stats.stop_reason == "max_tokens" else "stop")
    assert reply.usage.prompt_tokens == own.stats.prompt_tokens == len(reference.render_tokens(
        [Message(m["role"], m["content"]) for m in MESSAGES]))  # fmt: skip
    assert reply.usage.completion_tokens == own.stats.generated_tokens
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_stream_matches_the_non_stream_reply_and_reports_usage(client):
    whole = client.chat.completions.create(model="tiny", messages=MESSAGES, temperature=0, max_tokens=12)
    chunks = list(client.chat.completions.create(model="tiny", messages=MESSAGES, temperature=0, max_tokens=12,
                                                 stream=True, stream_options={"include_usage": True}))  # fmt: skip
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason


def test_completions_endpoint_streams_and_counts(client):
    whole = client.completions.create(model="tiny", prompt="Once upon a time", temperature=0, max_tokens=8)
    parts = list(client.completions.create(model="tiny", prompt="Once upon a time", temperature=0, max_tokens=8,
                                           stream=True))  # fmt: skip
    assert "".join(p.choices[0].text for p in parts) == whole.choices[0].text != ""
    assert whole.usage.completion_tokens == 8


def test_logprobs_report_the_chosen_token_and_its_alternatives(client):
    reply = client.chat.completions.create(model="tiny", messages=MESSAGES, temperature=0, max_tokens=6,
                                           logprobs=True, top_logprobs=3)  # fmt: skip
    content = reply.choices[0].logprobs.content
    assert len(content) == reply.usage.completion_tokens == 6
    for entry in content:
        assert len(entry.top_logprobs) == 3
        # greedy: the chosen token is the most likely one, with the same log-probability
        assert entry.token == entry.top_logprobs[0].token
        assert entry.logprob == pytest.approx(entry.top_logprobs[0].logprob)
        assert entry.logprob < 0 and bytes(entry.bytes).decode("utf-8", "replace") == entry.token
    assert "".join(e.token for e in content) == reply.choices[0].message.content


def test_json_schema_response_format_constrains_the_reply(client):
    schema = {"type": "object", "properties": {"color": {"enum": ["red", "blue"]}}, "required": ["color"],
              "additionalProperties": False}  # fmt: skip
    reply = client.chat.completions.create(
        model="tiny", messages=MESSAGES, max_tokens=200, seed=7,
        response_format={"type": "json_schema", "json_schema": {"name": "c", "schema": schema}},
    )  # fmt: skip
    assert reply.choices[0].finish_reason == "stop"
    assert json.loads(reply.choices[0].message.content)["color"] in ("red", "blue")


def test_a_schema_that_makes_no_grammar_is_400_naming_response_format(client):
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="tiny", messages=MESSAGES, response_format={
            "type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "frobnicate"}}})  # fmt: skip
    assert err.value.body["param"] == "response_format" and "frobnicate" in err.value.body["message"]


def test_ingle_samplers_as_extra_fields(client):
    a = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=8, seed=3,
                                       extra_body={"min_p": 0.0, "top_k": 5, "dry_multiplier": 0.8,
                                                   "xtc_probability": 0.5, "xtc_threshold": 0.01})  # fmt: skip
    b = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=8, seed=3,
                                       extra_body={"min_p": 0.0, "top_k": 5, "dry_multiplier": 0.8,
                                                   "xtc_probability": 0.5, "xtc_threshold": 0.01})  # fmt: skip
    assert a.choices[0].message.content == b.choices[0].message.content  # the seed reproduces the reply
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="tiny", messages=MESSAGES, extra_body={"dry_multiplier": 9})
    assert err.value.body["param"] == "dry_multiplier"


@pytest.mark.parametrize(
    ("extra", "param"),
    [({"temperature": 9}, "temperature"), ({"n": 2}, "n"), ({"min-p": 0.1}, "min-p"),
     ({"max_tokens": N_CTX + 1}, "max_tokens"), ({"top_logprobs": 2}, "top_logprobs"),
     ({"logit_bias": {"abc": 1}}, "logit_bias"), ({"logit_bias": {"99999999": 1}}, "logit_bias"), ({"stop": [1, 2]}, "stop"),
     ({"tools": [{"type": "function", "function": {"name": "no spaces"}}]}, "tools[0].function.name")],
)  # fmt: skip
def test_bad_fields_are_400_naming_the_field(client, extra, param):
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=4, extra_body=extra)
    assert err.value.status_code == 400
    assert err.value.body["param"] == param and param in err.value.body["message"]


def test_wrong_key_unknown_model_and_long_prompt_errors(server, client):
    bad = openai.OpenAI(base_url=server.url + "/v1", api_key="wrong-key-123", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert err.value.body["code"] == "model_not_found"
    long = [{"role": "user", "content": "sea " * (N_CTX + 100)}]
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="tiny", messages=long, max_tokens=4)
    assert err.value.body["code"] == "context_length_exceeded"
    message = err.value.body["message"]
    needs = re.search(r"needs (\d+) tokens", message)
    assert needs and int(needs.group(1)) > N_CTX and f"holds {N_CTX}" in message, message
    assert "--ctx-size" in message and "overflow policy" not in message


# ------------------------------------------------------------------ Ollama
def test_ollama_list_chat_and_generate(oclient, client, reference):
    assert [m.model for m in oclient.list().models] == ["tiny"]
    reply = oclient.chat(model="tiny", messages=MESSAGES, options={"temperature": 0, "num_predict": 10})
    assert reply.message.content == greedy(reference, MESSAGES, 10).text
    assert reply.done and reply.eval_count == 10 and reply.prompt_eval_count > 0
    streamed = "".join(p.message.content for p in oclient.chat(
        model="tiny:latest", messages=MESSAGES, stream=True, options={"temperature": 0, "num_predict": 10}))  # fmt: skip
    assert streamed == reply.message.content
    gen = oclient.generate(
        model="tiny", prompt="Tell me about the sea.", options={"temperature": 0, "num_predict": 10}
    )
    assert (
        gen.response == reply.message.content
    )  # generate wraps the prompt in the chat template, as Ollama does
    parts = list(oclient.generate(model="tiny", prompt="Once upon a time", raw=True, stream=True,
                                  options={"temperature": 0, "num_predict": 8}))  # fmt: skip
    assert "".join(p.response for p in parts) == client.completions.create(
        model="tiny", prompt="Once upon a time", temperature=0, max_tokens=8).choices[0].text  # fmt: skip
    assert parts[-1].done and parts[-1].eval_count == 8


def test_ollama_errors(oclient):
    with pytest.raises(ollama.ResponseError) as err:
        oclient.chat(model="llama3", messages=MESSAGES)
    assert err.value.status_code == 404 and "not found" in err.value.error
    with pytest.raises(ollama.ResponseError) as err:
        oclient.chat(model="tiny", messages=MESSAGES, options={"min_p": 3})
    assert err.value.status_code == 400 and "options.min_p" in err.value.error


def test_ollama_version_and_show(server):
    assert raw(server, "GET", "/api/version").json()["version"]
    shown = raw(server, "POST", "/api/show", json={"model": "tiny"}).json()
    assert shown["details"]["format"] == "gguf" and shown["model_info"]["context_length"] == N_CTX


# ------------------------------------------------------------------ raw HTTP: guards
def test_malformed_json_and_oversized_body(server):
    r = raw(server, "POST", "/v1/chat/completions", content=b'{"model": "tiny", "messages": [')
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    r = raw(server, "POST", "/api/chat", content=b"[1, 2]")
    assert r.status_code == 400 and "JSON object" in r.json()["error"]
    big = json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "x" * MAX_BODY}]})
    r = raw(server, "POST", "/v1/chat/completions", content=big.encode())
    assert r.status_code == 413 and "--max-body" in r.json()["error"]["message"]

    def chunked():  # no Content-Length: the cap still holds while reading
        for _ in range(20):
            yield b"x" * 8192

    r = raw(server, "POST", "/v1/chat/completions", content=chunked())
    assert r.status_code == 413


def test_missing_key_is_401_and_never_echoed(server):
    r = raw(server, "GET", "/v1/models", headers={})
    assert r.status_code == 401 and r.json()["error"]["code"] == "missing_api_key"
    r = raw(server, "GET", "/api/tags", headers={"Authorization": "Bearer not-the-key"})
    assert r.status_code == 401 and "not-the-key" not in r.text and KEY not in r.text
    assert raw(server, "GET", "/api/tags", headers={"x-api-key": KEY}).status_code == 200


def test_cors_only_for_the_named_origin(server):
    pre = {"Origin": ORIGIN, "Access-Control-Request-Method": "POST",
           "Access-Control-Request-Headers": "authorization,content-type"}  # fmt: skip
    r = raw(server, "OPTIONS", "/v1/chat/completions", headers=pre)
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == ORIGIN
    r = raw(server, "OPTIONS", "/v1/chat/completions", headers={**pre, "Origin": "http://evil.example"})
    assert r.status_code == 400 and "access-control-allow-origin" not in r.headers
    r = raw(server, "GET", "/v1/models", headers={**HEADERS, "Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in r.headers
    r = raw(server, "GET", "/v1/models", headers={**HEADERS, "Origin": ORIGIN})
    assert r.headers["access-control-allow-origin"] == ORIGIN


def test_queue_full_is_503_with_retry_after_then_the_waiter_is_served(server):
    sched = server.state.scheduler
    held, release = threading.Event(), threading.Event()

    async def hold():  # another user of the engine (as the chat window will be) holds the one slot
        async with sched.slot():
            held.set()
            while not release.is_set():
                await asyncio.sleep(0.01)

    holder = asyncio.run_coroutine_threadsafe(hold(), server.loop)
    assert held.wait(30)
    waiter: dict = {}
    body = {"model": "tiny", "messages": MESSAGES, "max_tokens": 4}
    t = threading.Thread(
        target=lambda: waiter.setdefault("r", raw(server, "POST", "/v1/chat/completions", json=body))
    )
    t.start()
    deadline = time.monotonic() + 30
    while sched.waiting < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sched.waiting == 1
    r = raw(server, "POST", "/v1/chat/completions", json=body)
    assert r.status_code == 503 and r.headers["retry-after"] == "1"
    assert r.json()["error"]["code"] == "server_busy"
    release.set()
    holder.result(30)
    t.join(60)
    assert waiter["r"].status_code == 200


def test_waiting_requests_are_served_in_arrival_order(server):
    sched = server.state.scheduler
    held, release = threading.Event(), threading.Event()

    async def hold():
        async with sched.slot():
            held.set()
            while not release.is_set():
                await asyncio.sleep(0.01)

    sched.max_queue = 3
    try:
        holder = asyncio.run_coroutine_threadsafe(hold(), server.loop)
        assert held.wait(30)
        before = len(server.state.log)
        threads = []
        for n in (5, 3, 4):  # max_tokens tells the requests apart in the request log
            body = {
                "model": "tiny",
                "messages": MESSAGES,
                "max_tokens": n,
                "logit_bias": {"2": -100, "4": -100},
            }
            t = threading.Thread(
                target=raw, args=(server, "POST", "/v1/chat/completions"), kwargs={"json": body}
            )
            t.start()
            threads.append(t)
            deadline = time.monotonic() + 30
            while sched.waiting < len(threads) and time.monotonic() < deadline:
                time.sleep(0.01)
        release.set()
        holder.result(30)
        for t in threads:
            t.join(60)
    finally:
        sched.max_queue = 1
    assert [e["completion_tokens"] for e in list(server.state.log)[before:]] == [5, 3, 4]


@pytest.mark.parametrize("api", ["openai", "ollama"])
def test_client_disconnect_cancels_the_generation(server, api):
    ban_eos = {"2": -100, "3": -100, "4": -100}  # </s>, <start_of_turn>, <end_of_turn>: never ends by itself
    if api == "openai":
        path, body = "/v1/chat/completions", {"model": "tiny", "messages": MESSAGES, "stream": True,
                                              "max_tokens": 4000, "logit_bias": ban_eos}  # fmt: skip
    else:
        path, body = "/api/chat", {"model": "tiny", "messages": MESSAGES,
                                   "options": {"num_predict": 4000, "logit_bias": ban_eos}}  # fmt: skip
    before = len(server.state.log)
    with httpx.stream("POST", server.url + path, json=body, headers=HEADERS, timeout=60) as r:
        assert r.status_code == 200
        seen = 0
        for line in r.iter_lines():  # wait until the reply has started (role chunk, then two tokens): leave
            seen += bool(line.strip())
            if seen == 3:
                break
    deadline = time.monotonic() + 30
    while len(server.state.log) == before and time.monotonic() < deadline:
        time.sleep(0.01)
    entry = server.state.log[-1]
    assert entry["cancelled"] and entry["stop_reason"] == "cancelled", entry
    assert entry["completion_tokens"] < 2000, entry  # stopped long before max_tokens
    print("tokens generated before the cancel:", entry["completion_tokens"])
    assert server.state.scheduler.busy == 0
    r = raw(
        server, "POST", "/v1/chat/completions", json={"model": "tiny", "messages": MESSAGES, "max_tokens": 2}
    )
    assert r.status_code == 200  # the engine is free again


def test_non_stream_client_that_hangs_up_cancels_too(server):
    before = len(server.state.log)
    body = {
        "model": "tiny",
        "messages": MESSAGES,
        "max_tokens": 4000,
        "logit_bias": {"2": -100, "3": -100, "4": -100},
    }
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.url + "/v1/chat/completions", json=body, headers=HEADERS, timeout=1.0)
    deadline = time.monotonic() + 30
    while len(server.state.log) == before and time.monotonic() < deadline:
        time.sleep(0.01)
    entry = server.state.log[-1]
    assert entry["cancelled"] and entry["stop_reason"] == "cancelled" and entry["status"] == 499, entry


def test_engine_death_is_503_then_the_engine_restarts(server, client):
    engine = server.state.scheduler.engine
    os.kill(engine.pid, signal.SIGKILL)
    with pytest.raises(openai.InternalServerError) as err:
        client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=4)
    assert err.value.status_code == 503 and err.value.body["code"] == "engine_restarting"
    reply = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=4, temperature=0)
    assert reply.usage.completion_tokens == 4 and server.state.scheduler.restarts == 1
    # killed mid-stream: the stream ends with the error object, and the next request is served again
    body = {"model": "tiny", "messages": MESSAGES, "stream": True, "max_tokens": 4000,
            "logit_bias": {"2": -100, "3": -100, "4": -100}}  # fmt: skip
    events = []
    with httpx.stream(
        "POST", server.url + "/v1/chat/completions", json=body, headers=HEADERS, timeout=60
    ) as r:
        for line in r.iter_lines():
            if line.startswith("data: "):
                events.append(line[6:])
                if len(events) == 3:
                    os.kill(server.state.scheduler.engine.pid, signal.SIGKILL)
    assert json.loads(events[-1])["error"]["code"] == "engine_restarting"
    assert "[DONE]" not in events
    reply = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=4, temperature=0)
    assert reply.usage.completion_tokens == 4 and server.state.scheduler.restarts == 2


# ------------------------------------------------------------------ the command
def test_serving_beyond_this_machine_needs_a_key():
    assert check_exposure("127.0.0.1", None, False) is None and check_exposure("::1", None, False) is None
    assert "without an API key" in check_exposure("0.0.0.0", None, True)
    assert check_exposure("0.0.0.0", KEY, False) is None
    r = subprocess.run([sys.executable, "-m", "app.cli", "serve", "--host", "0.0.0.0", "--port", "0"],
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode == 2 and r.stderr.startswith("ingle: error: host:") and "--insecure" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    with socket.socket() as taken:  # a port in use: one line, before any model is loaded
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        r = subprocess.run([sys.executable, "-m", "app.cli", "serve", "--port", str(port)],
                           capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode == 2 and r.stderr.startswith("ingle: error: port:") and "--port" in r.stderr
    r = subprocess.run([sys.executable, "-m", "app.cli", "serve", "--api-key", "short"],
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode == 2 and "at least 8" in r.stderr and "short" not in r.stderr.split(":", 3)[-1]


def test_ingle_serve_command_end_to_end(tiny_model, tmp_path, reference):
    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\n")
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "serve", str(tiny_model), "--port", "0",
                             "--api-key-file", str(key_file), "--ctx-size", str(N_CTX), "--temperature", "0"],
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        line = proc.stderr.readline()
        assert line.startswith("Serving tiny "), line
        assert KEY not in line
        url = line.split(" at ")[1].split("/v1")[0]
        c = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0, timeout=60)
        # the server's default temperature (0, from the flag) applies when the request names none
        reply = c.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=8)
        assert reply.choices[0].message.content == greedy(reference, MESSAGES, 8).text
        r = httpx.get(url + "/v1/models", headers={**HEADERS, "Origin": ORIGIN})
        assert r.status_code == 200 and "access-control-allow-origin" not in r.headers  # CORS off by default
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
        assert proc.stderr.read().strip() == "ingle: server stopped."


def test_every_serve_flag_has_help():
    from app.cli import build_parser

    serve = next(a for a in build_parser()._actions if a.dest == "command").choices["serve"]
    assert [a.option_strings for a in serve._actions if not a.help] == []
    assert "--max-tokens-cap" in serve.format_help() and "--ctx-size" in serve.format_help()
