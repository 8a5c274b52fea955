"""`ingle bench` on the tiny model: the JSON it writes and the tokens each mode produced (no timed assertions)."""

from __future__ import annotations

import json

import pytest

from app.bench import exact_prompt
from app.cli import main
from engine.runtime import Runtime


@pytest.fixture(scope="module")
def bench_json(tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    argv = ["bench", str(tiny_model), "--threads", "1", "--prompt-tokens", "24", "--gen-tokens", "6"]
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


def test_speculation_mode_compares_each_case_with_the_target_alone(bench_json):
    spec = bench_json["speculation"]
    for case in ("draft", "lookup_copy", "lookup_no_overlap"):
        assert spec[case]["identical"] is True  # drafting never changes the greedy tokens
        assert spec[case]["speedup"] > 0 and spec[case]["alone_tok_s"] > 0
        assert spec[case]["generated_tokens"] == 6
    assert spec["draft"]["target"].endswith("-F16.gguf")  # no pair given: an F16 copy is the target
    assert (
        spec["draft"]["drafted"] > 0 and spec["draft"]["acceptance"] > 0.5
    )  # the model drafts for its own copy
    assert spec["lookup_copy"]["drafting"] == "prompt lookup"


def test_sampling_mode_reports_each_chain_and_a_missing_llama_bench(bench_json, tmp_path):
    sampling = bench_json["sampling"]
    assert sampling["sampling_path"] == {"greedy": "argmax", "default": "top_k"}
    assert sampling["decode_tok_s"]["greedy"] > 0 and sampling["decode_tok_s"]["reference"] > 0
    if sampling["llama_bench_tg"] is None:
        assert "llama-bench not found" in sampling["llama_bench_note"]
        assert sampling["vs_llama_bench"] is None
