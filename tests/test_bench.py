"""`ingle bench` on the tiny model: the JSON it writes and the tokens each mode produced (no timed assertions)."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from app.bench import exact_prompt
from app.cli import main
from engine.runtime import Runtime


@pytest.fixture(scope="module")
def bench_json(tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    argv = ["bench", str(tiny_model), "--threads", "1", "--prompt-tokens", "24", "--gen-tokens", "6"]
    argv += ["--modes", "1-7,10,11"]  # the default seven, and speculation and sampling
    assert main([*argv, "--reps", "2", "--warmup", "1", "--turns", "3", "--json", str(out)]) == 0
    return json.loads(out.read_text())


def test_bench_json_holds_medians_of_each_timed_mode(bench_json):
    for mode in ("reference", "engine", "host"):
        figures = bench_json["modes"][mode]
        assert figures["prefill_tok_s"] > 0 and figures["decode_tok_s"] > 0
        assert figures["prefill"]["n"] == 2 and figures["prefill"]["median"] == figures["prefill_tok_s"]
    for mode in ("engine", "host"):
        assert set(bench_json["ratios"][mode]) == {"prefill_tok_s", "decode_tok_s"}
    assert bench_json["config"]["interleaved"] is True


def test_reference_and_engine_modes_produce_the_requested_tokens(bench_json):
    for mode in ("reference", "engine", "host"):
        assert bench_json["modes"][mode]["prompt_tokens"] == 24
        assert bench_json["modes"][mode]["generated_tokens"] == 6
    # greedy on the same model and settings: the engine and its host pick the reference's tokens
    assert bench_json["modes"]["agreement"] == {"engine": True, "host": True}


def test_chat_turns_never_re_evaluate_the_previous_prompt(bench_json):
    chat = bench_json["chat"]
    assert [t["turn"] for t in chat["turns"]] == [1, 2, 3]
    assert chat["prefix_reuse_ok"]
    for turn in chat["turns"][1:]:
        assert turn["reused_tokens"] >= turn["previous_history_tokens"]
        assert turn["evaluated_tokens"] < turn["history_tokens"]


def test_other_figures_are_reported_or_marked_unavailable(bench_json):
    assert bench_json["gui"]["rss_bytes"] > 10 * 2**20
    assert bench_json["gui"]["llama_cpp_loaded"] is False  # the GUI process never loads llama.cpp
    assert bench_json["load"]["engine_load_seconds"] > 0
    for block in (bench_json["streaming"], bench_json["training"]):
        assert block["available"] or block["reason"]


def test_training_mode_times_real_optimizer_steps(bench_json):
    pytest.importorskip("torch", reason="LoRA training needs the training extra (pip install -e '.[train]')")
    train = bench_json["training"]
    assert train["available"], train
    assert train["steps"] >= 1 and train["warmup_steps"] >= 1
    # every timed step trained on real tokens of the sample chats, in the child process's own memory
    assert train["tokens_per_step"] > 0 and train["tokens_per_s"] > 0
    assert train["peak_memory_bytes"] > 0 and train["trainable_params"] > 0


def test_markdown_reports_every_mode(bench_json):
    from app.bench import BenchResult, markdown

    fields = ("config", "machine", "modes", "ratios", "chat", "streaming", "load", "gui", "training",
              "speculation", "sampling")  # fmt: skip
    text = markdown(BenchResult(**{k: bench_json[k] for k in fields}))
    assert "| (1) llama.cpp loop |" in text and "| (3) engine via host |" in text
    assert "| LoRA training (7) |" in text and "| chat window streaming (5) |" in text


def test_prompt_has_exactly_the_requested_token_count(tiny_model):
    runtime = Runtime()
    list(runtime.load(tiny_model))
    try:
        for n in (2, 17, 100):
            text, tokens = exact_prompt(
                lambda t: runtime.tokenize(t, add_special=True, parse_special=False), n
            )
            assert len(tokens) == n == len(runtime.tokenize(text, add_special=True, parse_special=False))
    finally:
        runtime.unload()


@pytest.mark.parametrize("flag", ["--reps=0", "--prompt-tokens=1", "--threads=-1"])
def test_bad_settings_are_refused_with_one_line(flag, tiny_model, capsys):
    assert main(["bench", str(tiny_model), flag]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ingle: error:") and err.count("\n") == 1


def test_a_file_that_is_not_a_model_is_refused(corrupt_files, capsys):
    bad = next(iter(corrupt_files.values()))
    assert main(["bench", str(bad)]) == 2
    assert "ingle: error:" in capsys.readouterr().err


# ----------------------------------------------------------------------------- server mode (issue 16)
@pytest.fixture(scope="module")
def server_run(tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench-server") / "server.json"
    argv = ["bench", str(tiny_model), "--server", "--streams", "1,2", "--tokens", "6", "--reps", "1"]
    return out, [*argv, "--prompt-tokens", "12", "--threads", "1", "--json", str(out)]


def test_server_mode_measures_each_stream_count_and_writes_json(server_run, capsys):
    out, argv = server_run
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "llama-server column skipped: no --llama-server given" in captured.err
    assert "llama-server column skipped" in captured.out
    assert "| 1 | ingle |" in captured.out and "| 2 | ingle |" in captured.out
    server = json.loads(out.read_text())["server"]
    assert set(server["results"]) == {"ingle"} and server["skipped"]
    for n in ("1", "2"):
        block = server["results"]["ingle"][n]
        assert block["aggregate_tok_s"] > 0 and block["ttft_idle_ms"] > 0 and block["end_to_end_tok_s"] > 0
        assert block["parallel_requested"] == int(n) and 1 <= block["parallel_accepted"] <= int(n)
        # ignore_eos: every stream of every round generated exactly the requested tokens
        assert block["tokens_per_stream"] == [6]
        assert len(block["rounds"][0]["ttft_ms"]) == int(n)
        assert 1 <= block["decoding_at_once"] <= block["parallel_accepted"]
    busy = server["results"]["ingle"]["2"]["busy"]  # measured on the server with the most slots
    assert busy["streams"] == 4 and busy["ttft_ms"] > 0
    assert "busy" not in server["results"]["ingle"]["1"]
    targets = {t["target"]: t for t in server["targets"]}
    assert len(targets) == 3
    # no stream count 4 and no llama-server in this run: those two are reported as not measured
    assert [t["pass"] for t in server["targets"][:2]] == [None, None]
    assert server["targets"][2]["pass"] in (True, False)


def test_decode_rate_counts_only_the_window_where_every_stream_decodes():
    from app.bench_server import decode_rate

    # stream a: first token at 1.0, then one every 0.1 s to 3.0; stream b: first token at 2.0, to 4.0
    a = {"first": 1.0, "last": 3.0, "times": [1.0 + 0.1 * i for i in range(21)]}
    b = {"first": 2.0, "last": 4.0, "times": [2.0 + 0.1 * i for i in range(21)]}
    rate, window = decode_rate([a, b])
    assert window == pytest.approx(1.0)
    assert rate == pytest.approx(20.0)  # 10 tokens of each in (2.0, 3.0]
    # no moment when both decode: the span from the first token to the last, tokens after each first
    c = {"first": 5.0, "last": 6.0, "times": [5.0 + 0.1 * i for i in range(11)]}
    rate, window = decode_rate([a, c])
    assert window == pytest.approx(5.0) and rate == pytest.approx(30 / 5.0)


@pytest.mark.parametrize(
    "extra, says",
    [
        (
            ["--llama-server", "/nonexistent/llama-server"],
            "llama-server: /nonexistent/llama-server is not an executable",
        ),
        (["--streams", "0,2"], "streams: '0' is not a stream count"),
        (["--streams", "two"], "streams: 'two' is not a stream count"),
        (["--tokens", "1"], "tokens: 1 is outside"),
    ],
)
def test_server_mode_refuses_bad_options_with_one_line(extra, says, tiny_model, capsys):
    assert main(["bench", str(tiny_model), "--server", *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ingle: error: " + says) and err.count("\n") == 1


def test_a_llama_server_that_is_not_executable_is_refused(tmp_path, tiny_model, capsys):
    fake = tmp_path / "llama-server"
    fake.write_text("not a program")
    assert main(["bench", str(tiny_model), "--server", "--llama-server", str(fake)]) == 2
    assert "is not an executable file" in capsys.readouterr().err


def test_llama_server_without_server_mode_is_refused(tiny_model, capsys):
    assert main(["bench", str(tiny_model), "--llama-server", "/usr/bin/true"]) == 2
    assert "add --server" in capsys.readouterr().err


def test_ignore_eos_bans_every_end_of_generation_token():
    from engine.server import mapping
    from engine.server.config import ServerConfig
    from engine.server.errors import ApiError

    config = ServerConfig(model_name="m", eog_tokens=(2, 7))
    body = {"prompt": "x", "ignore_eos": True, "logit_bias": {"5": 3}}
    s = mapping.openai_settings(config, body, chat=False)
    assert dict(s.logit_bias) == {5: 3.0, 2: -math.inf, 7: -math.inf}
    assert mapping.openai_settings(config, {"prompt": "x", "ignore_eos": False}, chat=False).logit_bias == ()
    s = mapping.ollama_settings(config, {"options": {"ignore_eos": True, "logit_bias": {"5": 1}}})
    assert dict(s.logit_bias) == {5: 1.0, 2: -math.inf, 7: -math.inf}
    with pytest.raises(ApiError) as bad:
        mapping.openai_settings(config, {"prompt": "x", "ignore_eos": "yes"}, chat=False)
    assert bad.value.status == 400 and bad.value.param == "ignore_eos"
    with pytest.raises(ApiError) as unknown:  # a server that was not told the model's EOG tokens says so
        mapping.openai_settings(ServerConfig(model_name="m"), {"prompt": "x", "ignore_eos": True}, chat=False)
    assert unknown.value.param == "ignore_eos" and "end-of-generation" in str(unknown.value)


def test_served_model_eog_tokens_come_from_its_vocabulary(tiny_model):
    from engine.reference import model_eog_tokens

    assert 2 in model_eog_tokens(tiny_model)  # </s>, the tiny vocab's end of sequence


def test_a_killed_server_bench_stops_the_servers_it_started(tiny_model):
    root = Path(__file__).resolve().parents[1]
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))
    )
    argv = ["bench", str(tiny_model), "--server", "--streams", "1", "--tokens", "100", "--reps", "1000"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", *argv, "--prompt-tokens", "8", "-t", "1"],
        stderr=subprocess.PIPE, text=True, env=env, cwd=root,
    )  # fmt: skip
    try:
        for line in proc.stderr:
            if "round 1/1000" in line:  # a server is up and being measured
                break
        children = psutil.Process(proc.pid).children(recursive=True)
        assert any("serve" in c.cmdline() for c in children)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(120) == 130  # ended as by Ctrl+C
        assert "ingle: interrupted" in proc.stderr.read()
        _gone, alive = psutil.wait_procs(children, timeout=60)
        assert alive == []
    finally:
        if proc.poll() is None:
            proc.kill()


def test_speculation_mode_compares_each_case_with_the_target_alone(bench_json):
    spec = bench_json["speculation"]
    for case in ("draft", "lookup_copy", "lookup_no_overlap"):
        assert spec[case]["identical"] is True, spec[case]  # drafting never changes the greedy tokens
        assert spec[case]["speedup"] > 0 and spec[case]["alone_tok_s"] > 0
        assert spec[case]["generated_tokens"] == 6
    assert spec["draft"]["target"].endswith("-F16.gguf")  # no pair given: an F16 copy is the target
    draft = spec["draft"]
    assert draft["drafting"].startswith("draft ")
    # the model drafts for its own copy and is right mostly; or drafting did not pay here and the governor
    # switched it off (its pause lasts across the repetitions)
    assert (draft["drafted"] > 0 and draft["acceptance"] > 0.5) or draft["switched_off"]
    assert draft["identical"] or draft["near_tie"]
    assert spec["lookup_copy"]["drafting"] == "prompt lookup"


def test_sampling_mode_reports_each_chain_and_a_missing_llama_bench(bench_json, tmp_path):
    sampling = bench_json["sampling"]
    assert sampling["sampling_path"] == {"greedy": "argmax", "default": "top_k"}
    assert sampling["decode_tok_s"]["greedy"] > 0 and sampling["decode_tok_s"]["reference"] > 0
    if sampling["llama_bench_tg"] is None:
        assert "llama-bench not found" in sampling["llama_bench_note"]
        assert sampling["vs_llama_bench"] is None and sampling["vs_llama_bench_paired"] is None
        assert sampling["llama_bench_tg_reps"] == []
    else:  # llama-bench runs once in every repetition, beside the engine's runs of that repetition
        assert len(sampling["llama_bench_tg_reps"]) == sampling["reps"] == 2
        assert "once in each of 2 repetitions" in sampling["llama_bench_note"]
        assert all(v > 0 for v in sampling["vs_llama_bench_paired"].values())
