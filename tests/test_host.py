"""The engine host runs llama.cpp in a child process: same events, typed errors when the child dies, no orphans."""

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import psutil
import pytest

from engine.errors import EngineDied, EngineError, EngineHung, ModelFileError, SettingsError
from engine.events import LoadProgress, ModelLoaded, ReplyDone, StopReason, Token
from engine.host import EngineHost
from engine.runtime import Runtime
from engine.settings import LoadSettings, OverflowPolicy, SamplingSettings

NO_EOS = ((2, float("-inf")), (4, float("-inf")))
GREEDY = SamplingSettings(temperature=0, max_tokens=16, logit_bias=NO_EOS)


@pytest.fixture
def host(tiny_model):
    h = EngineHost(hang_timeout=30)
    events = list(h.load(tiny_model, LoadSettings(n_ctx=512)))
    assert isinstance(events[-1], ModelLoaded) and any(isinstance(e, LoadProgress) for e in events)
    yield h
    h.close()


def reply(events) -> ReplyDone:
    *_, done = events
    assert isinstance(done, ReplyDone)
    return done


def test_host_streams_the_same_reply_as_in_process(host, tiny_model):
    rt = Runtime()
    list(rt.load(tiny_model, LoadSettings(n_ctx=512)))
    local = reply(rt.complete("the cat", GREEDY))
    rt_tokens = rt.tokenize("hello world")
    rt.close()
    events = list(host.complete("the cat", GREEDY))
    remote = events[-1]
    assert remote.tokens == local.tokens and remote.text == local.text
    assert "".join(e.text for e in events if isinstance(e, Token)) == remote.text
    assert host.tokenize("hello world") == rt_tokens


@pytest.mark.parametrize("case", ["missing", "wrong_magic", "data_past_eof", "adapter", "unknown_arch"])
def test_bad_files_and_settings_raise_typed_errors_and_the_child_lives_on(
    host, corrupt_files, tiny_model, case
):
    with pytest.raises(ModelFileError):
        list(host.load(corrupt_files[case]))
    assert host.alive
    list(host.load(tiny_model))
    with pytest.raises(SettingsError) as err:
        list(host.complete("x", SamplingSettings(logit_bias=((10**8, 1.0),))))
    assert err.value.field == "logit_bias"
    assert reply(host.complete("hello", GREEDY)).stats.generated_tokens == 16


def test_cancel_through_the_host(host):
    seen = 0
    for event in host.complete("hello", GREEDY.replace(max_tokens=5000), OverflowPolicy.SLIDING_WINDOW):
        if isinstance(event, Token):
            seen += 1
            if seen == 3:
                host.cancel()
        done = event
    # the child sees the cancel a pipe-hop later; the tiny model makes ~10k tok/s, so allow a burst
    assert done.stats.stop_reason == StopReason.CANCELLED and done.stats.generated_tokens < 2000


@pytest.mark.parametrize("sig", [signal.SIGSEGV, signal.SIGKILL])
def test_child_killed_mid_reply_gives_typed_error_and_restart_answers(host, tiny_model, sig):
    got = []
    with pytest.raises(EngineDied) as err:
        for event in host.complete("hello", GREEDY.replace(max_tokens=100000)):
            if isinstance(event, Token):
                got.append(event.text)
                if len(got) == 5:
                    os.kill(host.pid, sig)
    assert err.value.signal == sig
    assert signal.Signals(sig).name in str(err.value) and "Restart" in str(err.value)
    assert len(got) >= 5  # what streamed before the crash was delivered
    host.restart()
    list(host.load(tiny_model))
    assert reply(host.complete("hello", GREEDY)).stats.generated_tokens == 16


def test_hung_child_is_killed_after_the_timeout(tiny_model):
    h = EngineHost(hang_timeout=5)
    list(h.load(tiny_model))
    pid = h.pid
    os.kill(pid, signal.SIGSTOP)
    started = time.monotonic()
    with pytest.raises(EngineHung, match="stopped answering"):
        list(h.complete("hello", GREEDY))
    assert time.monotonic() - started < 60  # killed after the 5 s timeout, not left hanging
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    h.close()


def test_close_leaves_no_child(tiny_model):
    h = EngineHost()
    pid = h.pid
    h.close()
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_child_dies_with_its_parent(tmp_path):
    script = textwrap.dedent(
        """
        import sys, time
        from engine.host import EngineHost
        h = EngineHost()
        print(h.pid, flush=True)
        time.sleep(60)
        """
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=os.getcwd()
    )
    child_pid = int(parent.stdout.readline())
    assert psutil.pid_exists(child_pid)
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and psutil.pid_exists(child_pid):
        if psutil.Process(child_pid).status() == psutil.STATUS_ZOMBIE:
            break
        time.sleep(0.1)
    assert not psutil.pid_exists(child_pid) or psutil.Process(child_pid).status() == psutil.STATUS_ZOMBIE


def test_cancel_from_another_thread_while_streaming(host):
    timer = threading.Timer(0.2, host.cancel)
    timer.start()
    # the sliding window keeps the reply going past the context's end until the cancel lands
    done = reply(host.complete("hello", GREEDY.replace(max_tokens=10**6), OverflowPolicy.SLIDING_WINDOW))
    assert done.stats.stop_reason == StopReason.CANCELLED


# ------------------------------------------------------------ logs (issue 14, items 12 and 14)
def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_logs_of_dead_parents_are_cleaned_and_logs_live_in_a_per_user_folder(fresh_home, tiny_model):
    from engine.child_process import log_dir

    folder = log_dir()
    assert folder == fresh_home / "logs"
    stale = folder / f"ingle-engine-{_dead_pid()}-abc.log"
    live = folder / f"ingle-engine-{os.getpid()}-def.log"
    crashes = [folder / f"ingle-engine-crash-2020010{i}-000000-1.log" for i in range(1, 10)] + [
        folder / f"ingle-engine-crash-2020011{i}-000000-1.log" for i in range(0, 3)
    ]
    for path in [stale, live, *crashes]:
        path.write_text("old")
    h = EngineHost()
    try:
        assert not stale.exists() and live.exists()
        assert sum(p.exists() for p in crashes) == 10 and not crashes[0].exists()  # the oldest crash logs go
        own = [p for p in folder.glob(f"ingle-engine-{os.getpid()}-*.log") if p != live]
        assert len(own) == 1  # this engine's log, named after its parent (us)
    finally:
        h.close()
    assert not own[0].exists()  # an orderly close leaves nothing behind


def test_a_crashed_childs_log_is_kept_and_named_in_the_error(fresh_home, tiny_model):
    h = EngineHost(hang_timeout=30)
    try:
        list(h.load(tiny_model))
        killed = False
        with pytest.raises(EngineDied) as err:
            for event in h.complete("hello", GREEDY.replace(max_tokens=100000)):
                if isinstance(event, Token) and not killed:  # tokens already sent still arrive after the kill
                    os.kill(h.pid, signal.SIGABRT)
                    killed = True
        log = h.crash_log
        assert log is not None and log.exists() and str(log) in str(err.value)
        assert log.parent == fresh_home / "logs"
    finally:
        h.close()
    assert log.exists()  # kept for the user after close
    h2 = EngineHost()  # and not taken for a stale log at the next start
    h2.close()
    assert log.exists()


def test_a_load_failure_says_why_instead_of_pointing_at_a_log(host, tmp_path):
    import gguf
    from gguf_factory import write_tiny_llama

    fewer = write_tiny_llama(
        tmp_path / "fewer.gguf", kv={"llama.block_count": (1, gguf.GGUFValueType.UINT32)}
    )
    with pytest.raises(EngineError) as err:
        list(host.load(fewer))
    message = str(err.value)
    assert "see the log" not in message and "llama.cpp could not load this model: " in message
    assert "tensors" in message and "\n" not in message  # llama.cpp's own reason: wrong number of tensors
    assert host.alive


# ------------------------------------------------------------ one call in a child (eval, export)
def test_call_in_child_returns_the_result_and_raises_typed_errors(fresh_home, tiny_model, corrupt_files):
    from engine.child_process import call_in_child
    from engine.gguf_info import inspect_gguf, sha256_file

    assert call_in_child(sha256_file, tiny_model) == sha256_file(tiny_model)
    with pytest.raises(ModelFileError, match="not a GGUF file"):
        call_in_child(inspect_gguf, corrupt_files["wrong_magic"])
    assert list((fresh_home / "logs").glob("*.log")) == []  # nothing left behind


def test_call_in_child_survives_llama_cpp_aborting(fresh_home, tmp_path, capfd):
    import gguf
    from gguf_factory import write_tiny_llama

    from engine.child_process import call_in_child
    from training.evaluate import open_runtime

    # passes Ingle's checks; this llama.cpp aborts in its vocabulary code (GGML_ABORT "fatal error")
    path = write_tiny_llama(
        tmp_path / "bert.gguf", kv={"tokenizer.ggml.model": ("bert", gguf.GGUFValueType.STRING)}
    )
    with pytest.raises((EngineDied, EngineError)) as err:
        call_in_child(open_runtime, path, what="evaluation")
    if isinstance(err.value, EngineDied):
        (log,) = (fresh_home / "logs").glob("ingle-engine-crash-*.log")
        assert str(log) in str(err.value) and "SIGABRT" in str(err.value) and "\n" not in str(err.value)
        assert "fatal error" in log.read_text()
    assert "fatal error" not in capfd.readouterr().err  # llama.cpp's output went to the log, not the terminal
