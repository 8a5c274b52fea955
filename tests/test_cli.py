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
    result = ingle("run", "The capital of France is", "--temp", "0", "-n", "8", "--host", "--no-adapter")
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


# ---------------------------------------------------------------- hostile model files (issue 14, items 3 and 12)
CLI_HOSTILE = [
    "expert_used_without_count", "block_count_huge", "expert_used_over_count", "context_as_string",
    "alignment_as_array", "tokens_as_number", "chat_template_as_int", "nested_array_50000", "five_dimensions",
    "alignment_three", "overlapping_tensors",
]  # fmt: skip


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    from gguf_factory import hostile_files

    return hostile_files(tmp_path_factory.mktemp("hostile"))


def assert_no_crash_output(result):
    for marker in ("GGML_ASSERT", "Traceback", "backtrace", "Aborted", "core dumped"):
        assert marker not in result.stderr, result.stderr


@pytest.mark.parametrize("case", CLI_HOSTILE)
def test_hostile_model_files_give_one_line_errors(hostile, case, tmp_path):
    path, phrase = hostile[case]
    for args in (("info", path), ("run", path, "hello", "-n", "4"), ("models", "import", path)):
        result = ingle(*args, home=tmp_path / "home")
        assert_one_line_error(result, phrase)
        assert_no_crash_output(result)


def test_a_hostile_adapter_gives_a_one_line_error(hostile, tiny_model, tmp_path):
    path, phrase = hostile["adapter_alpha_as_float64"]  # llama.cpp's adapter loader aborts on it
    result = ingle("run", tiny_model, "hello", "-n", "4", "--adapter", path)
    assert_one_line_error(result, phrase)
    assert_no_crash_output(result)
    assert_one_line_error(ingle("models", "import", path, home=tmp_path / "home"), phrase)


def test_a_file_that_aborts_llama_cpp_past_the_checks_ends_the_child_not_the_command(tmp_path):
    """A BERT tokenizer type over a SentencePiece vocabulary passes Ingle's checks, and this llama.cpp aborts on
    it ("fatal error" in its vocabulary code): the engine child dies and the command says so in one line."""
    import gguf
    from gguf_factory import write_tiny_llama

    path = write_tiny_llama(
        tmp_path / "bert-vocab.gguf", kv={"tokenizer.ggml.model": ("bert", gguf.GGUFValueType.STRING)}
    )
    home = tmp_path / "home"
    result = ingle("run", path, "hello", "-n", "4", home=home)
    assert_one_line_error(result)
    assert_no_crash_output(result)
    assert "fatal error" not in result.stderr
    if "crashed" in result.stderr:  # (a later llama.cpp may refuse the file instead: also one line)
        (log,) = (home / "logs").glob("ingle-engine-crash-*.log")
        assert str(log) in result.stderr and "fatal error" in log.read_text()
    assert_one_line_error(ingle("inspect", path, "hello", home=home))


def test_in_process_run_is_still_protected_by_the_checks(hostile):
    path, phrase = hostile["block_count_huge"]
    result = ingle("run", path, "hello", "--in-process")
    assert_one_line_error(result, phrase)
    assert_no_crash_output(result)


def test_a_crash_of_the_engine_mid_reply_is_one_line_exit_2(tiny_model, tmp_path):
    import signal

    import psutil

    env = dict(os.environ, INGLE_HOME=str(tmp_path / "home"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "run", str(tiny_model), "the cat", "-n", "1000000", "--policy",
         "sliding_window", "--logit-bias", "2=-inf", "--logit-bias", "4=-inf", "-c", "512"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=env,
    )  # fmt: skip
    try:
        proc.stdout.read(20)  # the reply is streaming: the engine child is up and generating
        children = psutil.Process(proc.pid).children()
        assert len(children) == 1
        os.kill(children[0].pid, signal.SIGABRT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    result = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    assert_one_line_error(result, "llama.cpp crashed", "SIGABRT")
    assert_no_crash_output(result)
    logs = list((tmp_path / "home" / "logs").glob("ingle-engine-crash-*.log"))
    assert len(logs) == 1 and str(logs[0]) in err


# ---------------------------------------------------------------- names, homes, text (issue 14, items 5, 12, 19)
def test_models_import_name_cannot_escape_the_library(tiny_model, tmp_path):
    home = tmp_path / "home"
    outside = tmp_path / "outside"
    for name in ("../outside/evil", str(outside / "abs"), "../../x"):
        assert_one_line_error(ingle("models", "import", tiny_model, "--name", name, home=home), "not allowed")
    assert not outside.exists() and not (tmp_path / "x.gguf").exists()
    assert not (home / "models").exists() or list((home / "models").iterdir()) == []


def test_an_unusable_home_is_one_line_for_list_and_run(tmp_path, tiny_model):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    home = blocker / "home"
    assert_one_line_error(ingle("models", "list", home=home), "INGLE_HOME", str(home))
    assert_one_line_error(ingle("run", "hello", home=home), "INGLE_HOME")
    assert_one_line_error(ingle("models", "import", tiny_model, home=home), "INGLE_HOME")


def test_a_prompt_that_is_not_utf8_is_replaced_and_said(tiny_model):
    env = dict(os.environ)
    result = subprocess.run(
        [sys.executable.encode(), b"-m", b"app.cli", b"run", str(tiny_model).encode(), b"caf\xe9 \xff", b"-n", b"4"],
        capture_output=True, cwd=REPO, env=env, timeout=300,
    )  # fmt: skip
    stderr = result.stderr.decode("utf-8", "replace")
    assert result.returncode == 0, stderr
    assert "not valid UTF-8" in stderr and "Traceback" not in stderr


def test_a_model_path_that_is_not_utf8_loads_and_a_stop_string_is_said(tiny_model, tmp_path):
    import shutil

    odd = os.fsencode(tmp_path) + b"/tiny-\xff.gguf"
    shutil.copy(tiny_model, odd)
    result = subprocess.run(
        [sys.executable.encode(), b"-m", b"app.cli", b"run", odd, b"the cat", b"-n", b"4", b"--stop", b"\xfe"],
        capture_output=True, cwd=REPO, timeout=300,
    )  # fmt: skip
    stderr = result.stderr.decode("utf-8", "replace")
    assert result.returncode == 0, stderr
    assert "--stop is not valid UTF-8" in stderr and "Traceback" not in stderr


def test_a_grammar_file_that_is_not_text_is_one_line(tiny_model, tmp_path):
    binary = tmp_path / "grammar.bin"
    binary.write_bytes(b"root ::= \xff\xfe\x00\x01")
    assert_one_line_error(
        ingle("run", tiny_model, "hi", "--grammar", f"@{binary}"), "grammar", "not UTF-8 text"
    )
    assert_one_line_error(ingle("run", tiny_model, "hi", "--grammar", "@/bin/ls"), "grammar", "not")
    assert_one_line_error(
        ingle("run", tiny_model, "hi", "--grammar", f"@{tmp_path}"), "grammar", "cannot read"
    )


@pytest.mark.parametrize("where", ["engine child", "in process"])
def test_a_bad_grammar_says_why_instead_of_pointing_at_a_log(tiny_model, where):
    extra = ["--in-process"] if where == "in process" else []
    result = ingle("run", tiny_model, "hi", "-n", "2", "-c", "512", "--grammar", 'root ::= ( "a" \n', *extra)
    assert_one_line_error(result, "could not parse the grammar: expecting ')'")
    assert "see the log" not in result.stderr


def test_inspect_runs_in_the_engine_child_and_refuses_hostile_files(tiny_model, hostile):
    ok = ingle("inspect", tiny_model, "the cat", "--json", "--top", "3")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["tokens"][0]["token_id"] == 1  # BOS: the prompt went through the tokenizer
    path, phrase = hostile["expert_used_without_count"]
    result = ingle("inspect", path, "the cat")
    assert_one_line_error(result, phrase)
    assert_no_crash_output(result)


def test_eval_of_a_file_that_aborts_llama_cpp_is_one_line(tmp_path):
    import gguf
    from gguf_factory import write_tiny_llama

    path = write_tiny_llama(
        tmp_path / "bert-vocab.gguf", kv={"tokenizer.ggml.model": ("bert", gguf.GGUFValueType.STRING)}
    )
    data = tmp_path / "data.jsonl"
    data.write_text('{"text": "the cat is big"}\n{"text": "the dog is small"}\n')
    result = ingle("eval", path, data, home=tmp_path / "home")
    errors = [line for line in result.stderr.splitlines() if line.startswith("ingle: error: ")]
    assert result.returncode == 2 and len(errors) == 1, result.stderr  # (after eval's progress lines)
    assert "llama.cpp" in errors[0] and result.stderr.rstrip().endswith(errors[0])
    assert_no_crash_output(result)
    assert "fatal error" not in result.stderr


def test_chat_reads_a_line_that_is_not_utf8_without_a_traceback(tiny_model):
    result = subprocess.run(
        [sys.executable, "-m", "app.cli", "chat", str(tiny_model), "-n", "3"],
        input=b"caf\xe9 \xff\n/exit\n", capture_output=True, cwd=REPO, timeout=300,
    )  # fmt: skip
    stderr = result.stderr.decode("utf-8", "replace")
    assert result.returncode == 0, stderr
    assert "Traceback" not in stderr and "UnicodeDecodeError" not in stderr


def test_train_on_a_file_that_aborts_llama_cpp_is_one_error_line_and_a_kept_log(tmp_path):
    pytest.importorskip("torch")
    import gguf
    from gguf_factory import write_tiny_llama

    path = write_tiny_llama(
        tmp_path / "bert-vocab.gguf", kv={"tokenizer.ggml.model": ("bert", gguf.GGUFValueType.STRING)}
    )
    data = tmp_path / "data.jsonl"
    data.write_text('{"text": "the cat is big"}\n{"text": "the dog is small"}\n')
    home = tmp_path / "home"
    result = ingle("train", path, data, "--out", tmp_path / "a.gguf", "--max-steps", "1", home=home)
    errors = [line for line in result.stderr.splitlines() if line.startswith("ingle: error: ")]
    assert result.returncode == 2 and len(errors) == 1, result.stderr  # (after train's progress lines)
    assert_no_crash_output(result)
    assert "fatal error" not in result.stderr and "libc-start" not in result.stderr  # no debugger backtrace
    (log,) = (home / "logs").glob("ingle-engine-crash-*.log")
    assert str(log) in errors[0] and "fatal error" in log.read_text()


def test_chat_goes_on_after_the_engine_dies(tiny_model):
    """The engine child killed between two messages: chat says so, starts a fresh one, the conversation goes on."""
    import psutil

    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "chat", str(tiny_model), "--temp", "0", "-n", "4", "-c", "512"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
    )  # fmt: skip
    try:
        seen = []
        while not any("Type /help" in line for line in seen):  # the model is loaded
            line = proc.stderr.readline()
            assert line, "".join(seen)
            seen.append(line)
        children = psutil.Process(proc.pid).children()
        assert len(children) == 1
        children[0].kill()
        out, err = proc.communicate("hello\nthe cat\n/exit\n", timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "starting it again" in err and "ready again" in err
    assert out.count("> ") >= 3  # hello (lost to the dead engine, said so), the cat (answered), /exit
