"""The CLI tells what it is doing: progress of long work, chat commands, adapter and context notices, exit codes."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from app.bench import MODES, parse_modes
from engine.errors import SettingsError
from engine.progress import Progress, duration

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHAT = {"messages": [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "blue moon"}]}


def ingle(*args, home=None, input=None, timeout=300):
    env = dict(os.environ)
    if home:
        env["INGLE_HOME"] = str(home)
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *map(str, args)], capture_output=True, text=True, cwd=REPO, env=env,
        input=input, timeout=timeout,
    )  # fmt: skip


@pytest.fixture
def dataset(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(json.dumps(CHAT) for _ in range(4)) + "\n")
    return path


@pytest.fixture
def adapter(tiny_model, tmp_path):
    """A LoRA adapter for the tiny model, written by Ingle's own writer from numpy (no torch needed)."""
    from training.export import write_adapter

    rng = np.random.default_rng(0)
    lora = {"model.layers.0.self_attn.v_proj": (rng.normal(0, 0.1, (4, 64)), rng.normal(0, 0.1, (32, 4)))}
    return write_adapter(tmp_path / "tiny-lora.gguf", tiny_model, lora, alpha=8.0)


# ------------------------------------------------------------------------------------------ the progress helper
def test_progress_prints_plain_lines_with_eta_when_not_a_terminal():
    out = io.StringIO()
    progress = Progress("work", 20, "items", stream=out)
    assert not progress.tty  # a StringIO is no terminal
    for done in range(21):
        progress.update(done, f"item {done}")
        time.sleep(0.002)
    progress.close("all done")
    lines = out.getvalue().splitlines()
    # the first line, one per tenth, the last: not one per item
    assert lines[0].startswith("work: 0/20 items (0%), item 0")
    assert len(lines) == 12 and "\r" not in out.getvalue()
    assert "ETA " in lines[5] and lines[-2].startswith("work: 20/20 items (100%), item 20, in ")
    assert lines[-1] == "work: all done"


def test_progress_redraws_one_line_on_a_terminal():
    out = io.StringIO()
    progress = Progress("work", 4, stream=out, tty=True)
    progress.update(1)
    progress.note("a phase")
    time.sleep(0.15)
    progress.update(4)
    progress.close()
    text = out.getvalue()
    assert text.startswith("\rwork: [######") and "work: a phase\n" in text
    assert "4/4 (100%)" in text and text.endswith("\n") and text.count("\n") == 2


def test_progress_without_a_total_counts_and_times():
    out = io.StringIO()
    Progress("scan", unit="files", stream=out).update(3)
    assert out.getvalue() == "scan: 3 files, 0s so far\n"
    out = io.StringIO()
    phase = Progress("loading", stream=out, tty=True)
    phase.tick()
    time.sleep(1.1)
    phase.tick()  # a phase without a count shows the time going by
    assert out.getvalue().startswith("\rloading: 0s so far") and "\rloading: 1s so far" in out.getvalue()
    assert [duration(s) for s in (5, 65, 3725)] == ["5s", "1m05s", "1h02m"]


# ------------------------------------------------------------------------------------------ commands show progress
def test_eval_shows_its_phases_and_takes_ctx_size_like_run(tiny_model, dataset):
    result = ingle("eval", tiny_model, dataset, "--ctx-size", "256", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["tiny.gguf"]["tokens"] > 0
    for line in ("eval: loading tiny.gguf", "eval: tokenizing: 4/4 examples (100%)",
                 "eval: perplexity: 4/4 examples (100%)"):  # fmt: skip
        assert line in result.stderr, result.stderr
    # the first releases' --ctx still works, hidden from the help
    old = ingle("eval", tiny_model, dataset, "--ctx", "256", "--json")
    assert old.returncode == 0 and json.loads(old.stdout) == json.loads(result.stdout)
    small = ingle("eval", tiny_model, dataset, "--ctx", "10")  # the alias sets the same setting
    assert small.returncode == 2 and "n_ctx" in small.stderr


def test_export_shows_each_type_and_the_measurements(tiny_model, adapter, dataset, tmp_path):
    out = tmp_path / "merged.gguf"
    result = ingle("export", tiny_model, adapter, "--quant", "F16", "--quant", "Q8_0", "--out", out, "--data",
                   dataset, "--no-library")  # fmt: skip
    assert result.returncode == 0, result.stderr
    err = result.stderr
    assert "export: F16 (1/2): merging the adapter in F16 -> " in err
    assert "export: Q8_0 (2/2): merging the adapter in F16, then quantizing to Q8_0 -> " in err
    assert "export: 2/2 files (100%), Q8_0 written" in err
    assert (
        "export: F16 merge: 21/21 tensors (100%)" in err and "export: Q8_0 merge: 21/21 tensors (100%)" in err
    )
    for what in ("base", "base+adapter", "F16", "Q8_0", "Q8_0 vs F16"):
        assert f"export: measuring {what}: 4/4 examples (100%)" in err, err
    assert (tmp_path / "merged-Q8_0.gguf").exists()


def test_every_flag_of_train_export_eval_has_help():
    from app.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    for name in ("train", "export", "eval"):
        for action in commands[name]._actions:
            assert action.help, f"{name} {action.option_strings or action.dest} has no help"
    eval_help = commands["eval"].format_help()
    assert "--ctx-size" in eval_help and "--ctx " not in eval_help


# ------------------------------------------------------------------------------------------ bench modes
def test_bench_modes_by_name_and_number():
    assert parse_modes("reference,engine,host") == ("reference", "engine", "host")
    assert parse_modes("7, 1-2") == ("reference", "engine", "training")
    assert parse_modes("GUI 5") == ("streaming", "gui")
    assert parse_modes(",".join(MODES)) == MODES
    assert parse_modes("11, 10") == ("speculation", "sampling")
    for bad in ("12", "fast", "0-2", " , "):
        with pytest.raises(SettingsError, match="modes"):
            parse_modes(bad)


def test_bench_runs_only_the_chosen_modes_with_progress(tiny_model, tmp_path):
    out = tmp_path / "bench.json"
    result = ingle("bench", tiny_model, "--modes", "reference,engine,chat", "--threads", "1", "--prompt-tokens",
                   "16", "--gen-tokens", "4", "--reps", "2", "--warmup", "1", "--turns", "2", "--json", out)  # fmt: skip
    assert result.returncode == 0, result.stderr
    data = json.loads(out.read_text())
    assert set(data["modes"]) == {"reference", "engine", "agreement"}
    assert data["modes"]["agreement"] == {"engine": True}
    assert [t["turn"] for t in data["chat"]["turns"]] == [1, 2]
    assert data["streaming"] == data["gui"] == data["training"] == {}
    assert data["config"]["modes"] == ["reference", "engine", "chat"]
    assert "bench: reference, engine: 3/3 reps (100%)" in result.stderr, result.stderr
    assert "[2/2] mode (4) multi-turn chat" in result.stderr
    assert "LoRA training (7) | not run" in result.stdout and "(3) engine via host" not in result.stdout
    bad = ingle("bench", tiny_model, "--modes", "fast")
    assert bad.returncode == 2 and bad.stderr.startswith("ingle: error:") and "1 reference" in bad.stderr


# ------------------------------------------------------------------------------------------ info, run, chat
def test_info_takes_library_names_as_run_does(tiny_model, tmp_path):
    home = tmp_path / "home"
    assert ingle("models", "import", tiny_model, "--name", "tiny-one", home=home).returncode == 0
    result = ingle("info", "tiny-one", "--json", home=home)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["architecture"] == "llama"
    missing = ingle("info", "no-such-model", home=home)
    assert missing.returncode == 2 and "no-such-model" in missing.stderr and "Traceback" not in missing.stderr


def test_a_context_past_the_trained_length_is_warned_once(tiny_model):
    long = ingle("run", tiny_model, "the cat", "-n", "2", "--temp", "0", "--ctx-size", "16384")
    assert long.returncode == 0, long.stderr
    warning = [line for line in long.stderr.splitlines() if line.startswith("warning: context")]
    assert len(warning) == 1 and "32x the 512 tokens" in warning[0] and "--rope-scaling yarn" in warning[0]
    fits = ingle("run", tiny_model, "the cat", "-n", "2", "--temp", "0", "--ctx-size", "512")
    assert fits.returncode == 0 and "warning" not in fits.stderr
    stretched = ingle(
        "run", tiny_model, "the cat", "-n", "2", "--ctx-size", "16384", "--rope-scaling", "yarn"
    )
    assert stretched.returncode == 0 and "warning" not in stretched.stderr, stretched.stderr


def test_rope_scaling_settings_reach_llama_cpp(tiny_model):
    from engine.runtime import Runtime
    from engine.settings import LoadSettings

    def logits(**rope) -> np.ndarray:
        rt = Runtime()
        list(rt.load(tiny_model, LoadSettings(n_ctx=2048, **rope)))
        try:
            tokens = rt.tokenize("the cat sat on the mat and the dog sat on the log", add_special=True)
            return np.concatenate(list(rt.logits_all(tokens)))
        finally:
            rt.unload()

    plain = logits()
    assert np.allclose(logits(rope_scaling="none"), plain)  # the tiny model's file asks for no scaling
    linear = logits(rope_scaling="linear")  # 0: 512 trained / 2048 -> positions squeezed 4x
    assert np.allclose(linear[0], plain[0], atol=1e-4)  # position 0 does not rotate
    assert np.abs(linear[1:] - plain[1:]).max() > 1e-3
    assert not np.allclose(logits(rope_scaling="linear", rope_freq_scale=0.5), linear)


def test_chat_says_the_adapter_is_on(tiny_model, adapter):
    result = ingle("chat", tiny_model, "--adapter", f"{adapter}:0.5", "-c", "512", input="/exit\n")
    assert result.returncode == 0, result.stderr
    assert "adapter tiny-lora.gguf at scale 0.5 on" in result.stderr


def test_chat_commands_never_reach_the_model(tiny_model, tmp_path):
    saved = tmp_path / "talk.json"
    script = "/help\n/frobnicate now\n/system be brief\n/system\n//hello\n/save {}\n/reset\n/exit\n"
    result = ingle("chat", tiny_model, "--temp", "0", "-n", "4", "-c", "512", input=script.format(saved))
    assert result.returncode == 0, result.stderr
    err = result.stderr
    assert "/system TEXT" in err and "/save FILE" in err  # the help
    assert "unknown command /frobnicate: /help lists the commands" in err
    assert "system prompt: be brief" in err and "conversation reset (system prompt kept)" in err
    messages = json.loads(saved.read_text())["messages"]
    # only the one real message went to the model, with its leading '/' (the '//' escape)
    assert [m["role"] for m in messages] == ["system", "user", "assistant"]
    assert messages[0]["content"] == "be brief" and messages[1]["content"] == "/hello"
    assert "saved 3 messages to" in err


def test_chat_save_to_an_unwritable_place_is_one_line_and_chat_goes_on(tiny_model, tmp_path):
    script = f"/save {tmp_path}/no/such/dir/x.json\n/save\n/exit\n"
    result = ingle("chat", tiny_model, "-c", "512", input=script)
    assert result.returncode == 0
    assert "ingle: save: cannot write" in result.stderr and "does not exist" in result.stderr
    assert "give a file: /save FILE" in result.stderr and not (tmp_path / "no").exists()
    assert "Traceback" not in result.stderr


def test_ctrl_c_at_the_chat_prompt_exits_130(tiny_model):
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "chat", str(tiny_model), "-c", "512"], cwd=REPO, stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        while "Type /help" not in (line := proc.stderr.readline()):
            assert line, "chat ended before its prompt"
        time.sleep(0.5)  # into input()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=120) == 130
    finally:
        proc.kill()
        proc.wait()


def test_max_steps_is_the_total_number_of_steps_and_overrides_epochs():
    from training.lora import TrainSettings, plan_steps

    # 6 micro-batches per epoch: epochs decide, unless max_steps is set (then it is the total, data cycled)
    assert plan_steps(6, TrainSettings(epochs=1.0)) == (6, 6)
    assert plan_steps(6, TrainSettings(epochs=1.0, max_steps=40)) == (40, 40)
    assert plan_steps(6, TrainSettings(epochs=3.0, max_steps=4)) == (4, 4)
    assert plan_steps(6, TrainSettings(epochs=2.0, grad_accum=4)) == (3, 12)
    assert plan_steps(6, TrainSettings(max_steps=5, grad_accum=4)) == (5, 20)


def test_hashing_a_big_file_shows_progress(tmp_path, capsys):
    from engine.cli import hash_progress
    from engine.gguf_info import sha256_file

    small, big = tmp_path / "small.bin", tmp_path / "big.bin"
    small.write_bytes(b"x")
    with big.open("wb") as fh:  # sparse: no disk used
        fh.truncate(300 << 20)
    assert hash_progress(small) is None
    digest = sha256_file(big, hash_progress(big))
    err = capsys.readouterr().err
    assert len(digest) == 64 and "sha256: 8/300 MiB" in err and "sha256: 300/300 MiB (100%)" in err


def _interrupt_group(argv, ready) -> subprocess.CompletedProcess:
    """Start `ingle ARGV` in its own process group, wait until `ready(proc)` returns, press Ctrl+C (SIGINT to
    the whole group, as a terminal does), and collect the result."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", *map(str, argv)], cwd=REPO, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        ready(proc)
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def test_ctrl_c_during_a_reply_in_the_engine_child_cancels_it_and_exits_130(tiny_model):
    # token 2 (end of text) banned: the reply would go on for 100,000 tokens
    argv = ["run", tiny_model, "the cat", "--host", "-c", "512", "-n", "100000", "--logit-bias", "2=-100",
            "--policy", "sliding_window"]  # fmt: skip
    result = _interrupt_group(argv, lambda proc: proc.stdout.read(1))
    # before: the engine child died of the terminal's SIGINT ("The engine process was killed by signal SIGINT")
    assert result.returncode == 130, result.stderr
    assert "killed" not in result.stderr and "Traceback" not in result.stderr


def test_a_chat_line_that_is_not_utf8_is_refused_alone(tiny_model):
    for env in ({"PYTHONUTF8": "0", "LC_ALL": "C.UTF-8"}, {"PYTHONUTF8": "1"}):
        proc = subprocess.run(
            [sys.executable, "-m", "app.cli", "chat", str(tiny_model), "-c", "512", "-n", "2", "--temp", "0"],
            input=b"\xff\xfe oops\nhello\n/exit\n", capture_output=True, cwd=REPO, env={**os.environ, **env},
            timeout=300,
        )  # fmt: skip
        err = proc.stderr.decode()
        assert proc.returncode == 0 and "Traceback" not in err, err
        assert "that line is not valid UTF-8 (byte 0xff); type it again" in err
        assert proc.stdout.decode().count("> ") == 3  # the bad line, hello (answered), /exit


def test_eval_adapter_scale_that_is_not_a_number_is_one_line(tiny_model, dataset, adapter):
    result = ingle("eval", tiny_model, dataset, "--adapter", f"{adapter}:half")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("ingle: error: ")


def test_the_wizard_estimates_max_steps_as_the_total(tiny_model):
    from engine.gguf_info import inspect_gguf
    from training.estimate import training_estimate
    from training.lora import TrainSettings

    info = inspect_gguf(tiny_model)
    stats = {"tokens": 600, "examples": 6, "train_examples": 6, "max_len": 100}
    one_epoch = training_estimate(info, TrainSettings(batch_size=1), stats)[1]
    forty_steps = training_estimate(info, TrainSettings(batch_size=1, max_steps=40), stats)[1]
    start = 5.0 + info.parameter_count / 1e7  # the fixed part: the child's start and dequantizing
    # 6 steps per epoch: 40 steps train 40/6 times the tokens of one epoch (before: capped at one epoch)
    assert forty_steps - start == pytest.approx((one_epoch - start) * 40 / 6)
