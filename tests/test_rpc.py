"""llama.cpp RPC workers on loopback: `ingle worker` processes hold part of the starter, greedy tokens equal the
local run, a worker killed mid-reply is a typed error that the engine host survives, bad input is refused."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from engine.errors import RpcError, RpcWorkerLost, SettingsError
from engine.events import ModelLoaded, ReplyDone, Token
from engine.host import EngineHost
from engine.rpc_split import SplitError, layer_devices, parse_endpoints, parse_weights, plan
from engine.settings import LoadSettings, SamplingSettings

GREEDY = SamplingSettings(temperature=0, max_tokens=8)
PROMPT = "The capital of France is"
STARTER_LAYERS = 18


@pytest.fixture(scope="session")
def rpc_module() -> Path:
    """The RPC backend module in the session's Ingle home: built once per llama-cpp-python version (about a
    minute; INGLE_LLAMA_SDIST may name an unpacked sdist, else pip downloads it) and kept in the temp folder."""
    from engine.rpc_build import build, installed_version, module_path

    cached = Path(tempfile.gettempdir()) / f"ingle-test-libggml-rpc-{installed_version()}.so"
    target = module_path()
    if not cached.is_file():
        try:
            built = build(
                Path(os.environ["INGLE_LLAMA_SDIST"]) if os.environ.get("INGLE_LLAMA_SDIST") else None
            )
        except RpcError as err:
            pytest.skip(f"the RPC backend cannot be built here: {err}")
        shutil.copyfile(built, cached.with_suffix(".tmp"))
        os.replace(cached.with_suffix(".tmp"), cached)
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(cached, target)
    return target


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_worker(*extra: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "worker", "--port", str(port), "--threads", "1", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"worker exited: {proc.stderr.read()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, port
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise AssertionError("worker did not listen within 120 s")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(10)


@pytest.fixture
def two_workers(rpc_module):
    procs = [start_worker(), start_worker()]
    yield procs
    for proc, _ in procs:
        stop(proc)


def rpc_settings(workers, split: str = "") -> LoadSettings:
    return LoadSettings(n_ctx=512, rpc=",".join(f"127.0.0.1:{port}" for _, port in workers), rpc_split=split)


def rss(proc: subprocess.Popen) -> int:
    return psutil.Process(proc.pid).memory_info().rss


def test_starter_split_across_two_workers_gives_the_local_greedy_tokens_and_survives_losing_one(
    starter_model, two_workers
):
    host = EngineHost(hang_timeout=600)
    try:
        list(host.load(starter_model, LoadSettings(n_ctx=512)))
        *_, local = host.complete(PROMPT, GREEDY)
        before = [rss(proc) for proc, _ in two_workers]
        events = list(host.load(starter_model, rpc_settings(two_workers, "1,1,1")))
        loaded = events[-1]
        assert isinstance(loaded, ModelLoaded)
        assert loaded.n_gpu_layers == plan(STARTER_LAYERS, (1, 1, 1)).n_gpu_layers == 13  # 6 layers stay here
        # each worker now holds its share of the weights (a few layers of ~2.5 MB, and the output on the last)
        grown = [rss(proc) - b for (proc, _), b in zip(two_workers, before, strict=True)]
        assert all(g > 10 << 20 for g in grown), grown
        *_, split = host.complete(PROMPT, GREEDY)
        assert isinstance(split, ReplyDone) and isinstance(local, ReplyDone)
        assert split.tokens == local.tokens and len(local.tokens) == GREEDY.max_tokens

        # a worker killed mid-reply: a typed error after the tokens that streamed, and the host starts again
        got = []
        with pytest.raises(RpcWorkerLost) as err:
            for event in host.complete(
                PROMPT, GREEDY.replace(max_tokens=4000, logit_bias=((1, float("-inf")),))
            ):
                if isinstance(event, Token):
                    got.append(event.text)
                    if len(got) == 2:
                        two_workers[1][0].send_signal(signal.SIGKILL)
        assert len(got) >= 2
        assert "RPC worker dropped" in str(err.value) and "restart the engine" in str(err.value)
        host.restart()
        list(host.load(starter_model, LoadSettings(n_ctx=512)))  # the app goes on, here without the workers
        *_, done = host.complete(PROMPT, GREEDY)
        assert done.tokens == local.tokens
    finally:
        host.close()


def test_unreachable_worker_is_a_clear_error_and_the_engine_lives(tiny_model, rpc_module):
    host = EngineHost(hang_timeout=120)
    try:
        port = free_port()  # nothing listens there
        with pytest.raises(RpcError, match=f"cannot reach the RPC worker 127.0.0.1:{port}.*ingle worker"):
            list(host.load(tiny_model, LoadSettings(n_ctx=256, rpc=f"127.0.0.1:{port}")))
        assert host.alive
        assert isinstance(list(host.load(tiny_model, LoadSettings(n_ctx=256)))[-1], ModelLoaded)
    finally:
        host.close()


def test_worker_on_another_address_warns_and_a_taken_port_is_an_error(rpc_module):
    proc, port = start_worker("--host", "0.0.0.0")
    try:
        taken = subprocess.run(
            [sys.executable, "-m", "app.cli", "worker", "--port", str(port)],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert taken.returncode == 2 and f"could not listen on 127.0.0.1:{port}" in taken.stderr
        assert "Traceback" not in taken.stderr
    finally:
        stop(proc)
    assert "no authentication or encryption" in proc.stderr.read()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--port", "0"], "port must be a number"),
        (["--threads", "0"], "--threads"),
        (["--mem", "0"], "--mem"),
        (["--build", "/nonexistent"], "no vendored ggml-rpc source there"),
    ],
)
def test_worker_bad_flags_are_one_line_errors(args, message):
    done = subprocess.run([sys.executable, "-m", "app.cli", "worker", *args], capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 2 and message in done.stderr and done.stderr.startswith("ingle: error:")


@pytest.mark.parametrize(
    ("rpc", "split", "field"),
    [("nohost", "", "rpc"), ("h:99999", "", "rpc"), ("a:1,a:1", "", "rpc"), ("a:1", "1,1,1", "rpc_split"),
     ("a:1", "1,x", "rpc_split"), ("a:1", "0,0", "rpc_split"), ("", "1,1", "rpc_split"), ("a:1", "1,nan", "rpc_split")],
)  # fmt: skip
def test_bad_rpc_settings_name_the_field(rpc, split, field):
    with pytest.raises(SettingsError) as err:
        LoadSettings(rpc=rpc, rpc_split=split)
    assert err.value.field == field


def test_split_plan_places_layers_like_llama_cpp():
    # 18 layers + output, equal shares: llama.cpp put layers 0-5 here, 6-12 on RPC0, 13-18 on RPC1 (its log)
    devices = layer_devices(STARTER_LAYERS, plan(STARTER_LAYERS, (1, 1, 1)))
    assert devices == [0] * 6 + [1] * 7 + [2] * 6
    assert layer_devices(4, plan(4, (0, 1))) == [1] * 5  # nothing here
    assert layer_devices(4, plan(4, (1, 0))) == [0] * 5  # nothing on the worker
    assert parse_endpoints("[::1]:50052,host.lan:7")[0].host == "::1"
    assert parse_weights("", 2) == (1.0, 1.0, 1.0)
    with pytest.raises(SplitError):
        parse_endpoints(",".join(f"h:{p}" for p in range(1, 18)))


def test_placement_matches_llama_cpps_own_buffers(starter_model):
    from engine.gguf_info import inspect_gguf
    from engine.rpc_fit import placements

    places = placements(inspect_gguf(starter_model), LoadSettings(rpc="127.0.0.1:1,127.0.0.1:2"))
    # llama.cpp's log for this load (n_ctx 4096): model buffers CPU 191.72 MiB, RPC0 24.77, RPC1 188.67 (the
    # tied output matrix is copied there); KV buffers 4+5, 4+6, 4+4 MiB
    mib = [(round(p.weights / 2**20, 2), p.kv_cache / 2**20) for p in places]
    assert mib == [(191.72, 9.0), (24.77, 10.0), (188.67, 8.0)]
    assert [p.layers for p in places] == [6, 7, 5] and [p.output for p in places] == [False, False, True]


def test_model_panel_shows_where_the_split_lands(qtbot, starter_model):
    from app.model_panel import ModelPanel
    from engine.library import Library

    library = Library()
    panel = ModelPanel(library)
    qtbot.addWidget(panel)
    panel.select(library.ensure_starter().name)
    qtbot.waitUntil(lambda: panel.estimate.text().startswith("fits"), timeout=60_000)
    whole = panel.current_estimate()
    panel.rpc.setText("127.0.0.1:50061,127.0.0.1:50062")
    panel.rpc_split.setText("2,1,1")
    text = panel.estimate.text()
    assert "\nSplit: this machine: 10 layers" in text and "worker 127.0.0.1:50062: 3 layers + output" in text
    assert panel.current_estimate().weights < whole.weights  # the verdict counts this machine's share only
    assert panel.load_settings().rpc_split == "2,1,1"
    panel.resize(520, 640)
    panel.show()
    panel.grab().save("/tmp/i-rpc-panel.png")
    panel.rpc_split.setText("1,1")  # three devices, two shares
    assert "rpc_split: 2 shares given for 3 devices" in panel.estimate.text()
    with qtbot.assertNotEmitted(panel.load_requested):
        panel.load_button.click()


def test_app_keeps_the_partial_reply_when_a_worker_dies_and_says_why(
    qtbot, tmp_path, starter_model, two_workers
):
    from test_chat_window import GEMMA_EOG, LOAD_TIMEOUT, after_tokens, new_chat, open_window, send_and_wait

    window = open_window(qtbot, tmp_path / "chats.sqlite3", starter_model)
    try:
        with qtbot.waitSignal(window.model_ready, timeout=LOAD_TIMEOUT):
            window.load_model(str(starter_model), rpc_settings(two_workers), ())
        new_chat(window, temperature=0, max_tokens=3000, logit_bias=GEMMA_EOG)
        on_event = after_tokens(window, 3, lambda: two_workers[0][0].send_signal(signal.SIGKILL))
        reply = send_and_wait(qtbot, window, "Tell me a long story.")
        window.bridge.event.disconnect(on_event)
        assert reply.status == "interrupted" and reply.content
        banner = window.fault_banner.label.text()
        assert "An RPC worker dropped the connection" in banner and "partial reply are kept" in banner
        assert "(interrupted)" in window.view.toPlainText()
        # a restart reloads the split: the dead worker is named, the app stays up, and loads locally again
        with qtbot.waitSignal(window.engine_failed, timeout=LOAD_TIMEOUT) as failed:
            window.fault_banner.button.click()
        assert f"cannot reach the RPC worker 127.0.0.1:{two_workers[0][1]}" in failed.args[0]
        with qtbot.waitSignal(window.model_ready, timeout=LOAD_TIMEOUT):
            window.load_model(str(starter_model), LoadSettings(n_ctx=512), ())
        assert window.store.message(reply.id).content == reply.content
    finally:
        window.close()


def test_worker_mem_cap_refuses_an_oversized_share_and_stays_up(starter_model, rpc_module):
    proc, port = start_worker("--mem", "64")  # the last worker gets ~190 MB (the output matrix)
    host = EngineHost(hang_timeout=600)
    try:
        with pytest.raises(RpcWorkerLost, match="too little memory for its share"):
            list(host.load(starter_model, LoadSettings(n_ctx=512, rpc=f"127.0.0.1:{port}", rpc_split="1,1")))
        time.sleep(1)
        assert proc.poll() is None  # the worker refused the tensor and stays up
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
        host.restart()
        assert isinstance(list(host.load(starter_model, LoadSettings(n_ctx=512)))[-1], ModelLoaded)
    finally:
        host.close()
        stop(proc)


@pytest.mark.parametrize(("flags", "message"), [(["--rpc", "nohost"], "rpc: 'nohost' is not HOST:PORT"),
                                                (["--rpc", "127.0.0.1:{free}"], "cannot reach the RPC worker")])  # fmt: skip
def test_run_with_bad_or_unreachable_workers_is_a_one_line_error(tiny_model, rpc_module, flags, message):
    flags = [f.format(free=free_port()) for f in flags]
    done = subprocess.run([sys.executable, "-m", "app.cli", "run", str(tiny_model), "hi", "-n", "2", *flags],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 2 and done.stderr.startswith("ingle: error:") and message in done.stderr
    assert "Traceback" not in done.stderr
