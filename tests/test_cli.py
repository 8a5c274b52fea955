"""The `ingle` command line: real processes, exit codes and one-line messages."""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def ingle(*args, home=None, input=None):
    env = dict(os.environ)
    if home:
        env["INGLE_HOME"] = str(home)
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *map(str, args)], capture_output=True, text=True, cwd=REPO, env=env,
        input=input, timeout=300,
    )  # fmt: skip


def assert_one_line_error(result, *phrases):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ingle: error: "), result.stderr
    assert "Traceback" not in result.stderr
    for phrase in phrases:
        assert phrase in lines[0]


def test_missing_file(tmp_path):
    assert_one_line_error(ingle("info", tmp_path / "nope.gguf"), "no such file")
    assert_one_line_error(ingle("run", tmp_path / "nope.gguf", "hello"), "no such file")


def test_corrupt_file(corrupt_files):
    assert_one_line_error(ingle("info", corrupt_files["wrong_magic"]), "not a GGUF file")
    assert_one_line_error(ingle("run", corrupt_files["data_past_eof"], "hi"), "truncated")


def test_bad_setting(tiny_model):
    assert_one_line_error(ingle("run", tiny_model, "hi", "--temperature", "9"), "temperature", "out of range")
    assert_one_line_error(ingle("run", tiny_model, "hi", "--logit-bias", "abc"), "logit_bias")
    assert_one_line_error(ingle("run", tiny_model, "hi", "--type-v", "q8_0", "--flash-attn", "off"), "type_v")
    assert_one_line_error(
        ingle("run", tiny_model, "hi", "--temperature", "warm"), "--temperature", "invalid float"
    )
    assert_one_line_error(ingle("run", tiny_model, "hi", "--no-such-flag"), "--no-such-flag")


def test_run_streams_and_reports_stats(tiny_model):
    result = ingle("run", tiny_model, "the cat", "--temp", "0", "-n", "12", "--stats", "--seed", "7")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()
    assert "stats: prompt" in result.stderr and "tok/s" in result.stderr and "stop:" in result.stderr
    again = ingle("run", tiny_model, "the cat", "--temp", "0", "-n", "12")
    assert again.stdout == result.stdout


def test_run_on_the_starter_model_by_default(starter_model):
    result = ingle("run", "The capital of France is", "--temp", "0", "-n", "8", "--host")
    assert result.returncode == 0, result.stderr
    assert "France" in result.stdout  # greedy on the base model: " the capital of the country of France."


def test_info_json_and_models_commands(tiny_model, tmp_path):
    info = json.loads(ingle("info", tiny_model, "--json", "--sha256").stdout)
    assert info["architecture"] == "llama" and len(info["sha256"]) == 64
    home = tmp_path / "home"
    assert ingle("models", "import", tiny_model, "--name", "tiny", home=home).returncode == 0
    listed = ingle("models", "list", "--json", home=home)
    names = {e["name"] for e in json.loads(listed.stdout)}
    assert {"tiny", "gemma-3-270m-q4_k_m"} <= names
    assert ingle("models", "rm", "tiny", home=home).returncode == 0
    assert_one_line_error(ingle("models", "rm", "tiny", home=home), "No model or adapter named 'tiny'")


def test_chat_in_the_terminal(tiny_model):
    result = ingle("chat", tiny_model, "--temp", "0", "-n", "6", input="hello\n/reset\nthe cat\n/exit\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("> ") >= 3


@pytest.mark.parametrize("flag", ["--help"])
def test_help_lists_every_sampler(flag):
    out = ingle("run", flag).stdout
    for name in (
        "--top-k",
        "--top-p",
        "--min-p",
        "--typical-p",
        "--xtc-probability",
        "--top-n-sigma",
        "--dry-multiplier",
        "--mirostat",
        "--repeat-penalty",
        "--grammar",
        "--json-schema",
        "--logit-bias",
        "--seed",
        "--max-tokens",
    ):
        assert name in out
