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
import textwrap
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
    engine.start_slots(1, N_CTX)

    def reload(engine) -> None:
        engine.restart()
        load_model(engine, tiny_model, load)
        engine.start_slots(1, N_CTX)

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
    for bad in ("0", "65"):
        r = subprocess.run([sys.executable, "-m", "app.cli", "serve", "--port", "0", "--parallel", bad],
                           capture_output=True, text=True, timeout=120)  # fmt: skip
        assert (
            r.returncode == 2 and r.stderr.strip() == "ingle: error: parallel: use 1 to 64 requests at once"
        )
    r = subprocess.run([sys.executable, "-m", "app.cli", "serve", "--api-key", "short"],
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode == 2 and "at least 8" in r.stderr and "short" not in r.stderr.split(":", 3)[-1]


def test_ingle_serve_command_end_to_end(tiny_model, tmp_path, reference):
    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\n")
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "serve", str(tiny_model), "--port", "0",
                             "--api-key-file", str(key_file), "--ctx-size", str(N_CTX), "--temperature", "0",
                             "--parallel", "2"],
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        line = proc.stderr.readline()
        assert line.startswith("Serving tiny (2 x context 4096) "), line
        assert KEY not in line
        url = line.split(" at ")[1].split("/v1")[0]
        c = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0, timeout=60)
        # the server's default temperature (0, from the flag) applies when the request names none
        reply = c.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=8)
        assert reply.choices[0].message.content == greedy(reference, MESSAGES, 8).text
        slots = httpx.get(url + "/health", headers=HEADERS).json()["slots"]
        assert (
            len(slots) == 2 and sum(s["cached_tokens"] > 0 for s in slots) == 1
        )  # the reply's slot holds it
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
    assert "--parallel" in serve.format_help()


# ------------------------------------------------------------------ --parallel 4: batched requests
PARALLEL = 4
TIE_GAP = 0.01  # as in test_slots: the tiny model's batched rounding may flip a near tie, nothing more
QUESTIONS = [
    f"Question {i}: tell me about the {w}."
    for i, w in enumerate("sea sky moon sun rain snow wind hill".split())
]
NO_END = {"2": -100, "3": -100, "4": -100}


@pytest.fixture(scope="module")
def parallel_server(tiny_model):
    engine = EngineHost()
    own = LoadSettings(n_ctx=256)  # as `ingle serve`: requests run in the slots' context

    def reload(engine) -> None:
        engine.restart()
        load_model(engine, tiny_model, own)
        engine.start_slots(PARALLEL, N_CTX)

    loaded = load_model(engine, tiny_model, own)
    engine.start_slots(PARALLEL, N_CTX)
    config = ServerConfig(model_name="tiny", model_info=loaded.info, n_ctx=N_CTX, api_key=KEY, max_body=MAX_BODY,
                          max_tokens_cap=N_CTX, max_queue=8, created=int(time.time()))  # fmt: skip
    srv = ServerThread(config, Scheduler(engine, reload, max_queue=8, slots=PARALLEL), bind("127.0.0.1", 0))
    yield srv.start()
    srv.stop()
    engine.close()


def _stream_chat(url: str, body: dict) -> dict:
    c = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0, timeout=120)
    chunks = list(c.chat.completions.create(model="tiny", stream=True, stream_options={"include_usage": True},
                                            **body))  # fmt: skip
    return {"ids": {c.id for c in chunks}, "text": "".join(c.choices[0].delta.content or "" for c in chunks
            if c.choices), "usage": chunks[-1].usage}  # fmt: skip


def _all_at_once(url: str, bodies: list[dict]) -> list[dict]:
    out: list = [None] * len(bodies)

    def work(i: int) -> None:
        out[i] = _stream_chat(url, bodies[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert all(o is not None for o in out), "a stream failed"
    return out


def test_eight_concurrent_streams_with_different_settings_are_not_mixed(parallel_server, reference):
    bodies = []
    for i, q in enumerate(QUESTIONS):
        body = {"messages": [{"role": "user", "content": q}], "max_tokens": 12 + i, "logit_bias": NO_END}
        if i % 2:  # sampled, each with its own seed and samplers (top_k: the tiny model's flat distributions
            # would let batched rounding move a draw across a boundary)
            body.update(temperature=0.8 + i / 20, seed=100 + i, top_p=0.95, extra_body={"top_k": 3})
        else:
            body.update(temperature=0)
        bodies.append(body)
    first = _all_at_once(parallel_server.url, bodies)
    again = _all_at_once(parallel_server.url, bodies)
    assert len(set().union(*(r["ids"] for r in first))) == len(bodies)  # one id per stream, none shared
    ties = reproduced = 0
    for i, (body, a, b) in enumerate(zip(bodies, first, again, strict=True)):
        assert a["usage"].completion_tokens == body["max_tokens"]  # its own max_tokens: not another's
        messages = [Message("user", QUESTIONS[i])]
        assert a["usage"].prompt_tokens == len(reference.render_tokens(messages))
        if i % 2:
            reproduced += a["text"] == b["text"]
            continue
        alone = list(reference.chat(messages, SamplingSettings(temperature=0, max_tokens=body["max_tokens"],
                     logit_bias=((2, -100.0), (3, -100.0), (4, -100.0)), top_logprobs=2)))  # fmt: skip
        if a["text"] != alone[-1].text:
            tokens = [e for e in alone if getattr(e, "token_id", -1) >= 0]
            n = next(k for k, t in enumerate(tokens) if not a["text"].startswith("".join(x.text for x in
                     tokens[: k + 1])))  # fmt: skip
            top = tokens[n].alternatives
            assert top[0].logprob - top[1].logprob < TIE_GAP, (i, n, top[:2])
            ties += 1
    print(f"--parallel {PARALLEL}, 8 streams: {4 - ties}/4 greedy replies equal alone, {ties} parted at a near tie; "
          f"{reproduced}/4 seeded replies reproduced")  # fmt: skip
    # a seed reproduces whatever ran beside it, except that batched rounding (~1e-3 in a logprob) may, rarely,
    # move a random draw across the boundary between two tokens: allow one such stream of four
    assert reproduced >= 3
    assert len({r["text"] for r in first}) == len(bodies)


def _wait_free(server, timeout: float = 30) -> list:
    deadline = time.monotonic() + timeout
    while True:
        states = server.state.scheduler.engine.slot_states()
        if not any(s.busy for s in states) or time.monotonic() > deadline:
            return states
        time.sleep(0.01)


def test_a_client_killed_mid_stream_frees_its_slot(parallel_server):
    body = {"model": "tiny", "messages": MESSAGES, "stream": True, "max_tokens": 4000, "logit_bias": NO_END}
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import httpx, sys
        with httpx.stream("POST", {parallel_server.url + "/v1/chat/completions"!r}, json={body!r},
                          headers={HEADERS!r}, timeout=60) as r:
            for n, line in enumerate(r.iter_lines()):
                if n == 6:
                    print("streaming", flush=True)
                    sys.stdin.readline()
    """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert proc.stdout.readline().strip() == "streaming"
        assert sum(s.busy for s in parallel_server.state.scheduler.engine.slot_states()) == 1
        before = len(parallel_server.state.log)
        proc.kill()  # the client dies without closing anything
    finally:
        proc.wait(30)
    states = _wait_free(parallel_server)
    assert not any(s.busy for s in states), states
    deadline = time.monotonic() + 30
    while len(parallel_server.state.log) == before and time.monotonic() < deadline:
        time.sleep(0.01)
    entry = parallel_server.state.log[-1]
    assert entry["cancelled"] and entry["stop_reason"] == "cancelled" and entry["completion_tokens"] < 2000
    health = raw(parallel_server, "GET", "/health").json()
    assert health["status"] == "ok" and len(health["slots"]) == PARALLEL
    assert (
        not any(s["busy"] for s in health["slots"]) and max(s["cached_tokens"] for s in health["slots"]) > 0
    )


def test_engine_killed_mid_requests_gives_503s_then_recovers(parallel_server, client):
    sched = parallel_server.state.scheduler
    body = {"model": "tiny", "messages": MESSAGES, "stream": True, "max_tokens": 4000, "logit_bias": NO_END}
    started = threading.Barrier(PARALLEL + 1)
    outcomes: list = []

    def one() -> None:
        last = None
        with httpx.stream("POST", parallel_server.url + "/v1/chat/completions", json=body, headers=HEADERS,
                          timeout=60) as r:  # fmt: skip
            for n, line in enumerate(r.iter_lines()):
                if n == 4:
                    started.wait(30)
                if line.startswith("data: "):
                    last = line[6:]
        outcomes.append(json.loads(last))

    threads = [threading.Thread(target=one) for _ in range(PARALLEL)]
    for t in threads:
        t.start()
    started.wait(60)
    os.kill(sched.engine.pid, signal.SIGKILL)
    for t in threads:
        t.join(60)
    assert [o.get("error", {}).get("code") for o in outcomes] == ["engine_restarting"] * PARALLEL
    restarts = sched.restarts
    c = openai.OpenAI(base_url=parallel_server.url + "/v1", api_key=KEY, max_retries=0, timeout=120)
    replies = _all_at_once(
        parallel_server.url, [{"messages": MESSAGES, "max_tokens": 4, "temperature": 0}] * 3
    )
    assert all(r["usage"].completion_tokens == 4 for r in replies) and sched.restarts == restarts + 1
    assert len(sched.engine.slot_states()) == PARALLEL
    assert (
        c.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=2).usage.completion_tokens == 2
    )
