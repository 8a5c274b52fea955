"""LoRA training end to end on the tiny llama: loss falls, adapter matches torch in llama.cpp, exports, cancel/resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from gguf_factory import write_tiny_llama
from lora_helpers import llama_logits, random_lora

from engine.gguf_info import inspect_gguf, sha256_file
from engine.library import ADAPTER_BASE_SHA_KEY
from training.errors import ExportError, TrainingError
from training.evaluate import compare, evaluation_items, measure_exports, open_runtime, perplexity, reply
from training.export import atomic_path, check_quant, export, merge_f16, read_adapter

pytestmark = pytest.mark.training
torch = pytest.importorskip("torch", reason="training extra not installed (pip install -e .[train])")
from training.lora import TrainSettings, train  # noqa: E402

REPLIES = {"hello": "blue moon cat", "yes": "red sun dog", "good": "green big happy token"}
FAST = dict(
    rank=8, alpha=16.0, learning_rate=2e-2, batch_size=3, val_fraction=0.0, scheduler="constant", bf16=False
)


@pytest.fixture(scope="module")
def memorize(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "memorize.jsonl"
    lines = [
        {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
        for q, a in REPLIES.items()
    ]
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return path


@pytest.fixture(scope="module")
def trained(tiny_model, memorize, tmp_path_factory):
    out = tmp_path_factory.mktemp("adapter") / "memorize.gguf"
    events = []
    done = train(tiny_model, memorize, out, TrainSettings(**FAST, epochs=60), emit=events.append)
    return out, done, events


def test_training_lowers_the_loss_and_records_provenance(trained, tiny_model, memorize):
    out, done, events = trained
    losses = [e.loss for e in events if type(e).__name__ == "TrainStep"]
    assert len(losses) == 60 and losses[-1] < 0.5 * losses[0]
    meta = read_adapter(out)[2]
    assert meta[ADAPTER_BASE_SHA_KEY] == sha256_file(tiny_model)
    assert meta["ingle.dataset.sha256"] == sha256_file(memorize)
    assert json.loads(meta["ingle.training.settings"])["rank"] == 8
    sidecar = json.loads(out.with_name(out.name + ".json").read_text())
    assert sidecar["losses"] == losses and sidecar[ADAPTER_BASE_SHA_KEY] == meta[ADAPTER_BASE_SHA_KEY]
    step = next(e for e in events if type(e).__name__ == "TrainStep")
    assert step.tokens_per_second > 0 and step.memory_bytes > 0 and step.eta_seconds >= 0


def test_engine_with_adapter_replies_with_the_memorized_answer(trained, tiny_model):
    out, _, _ = trained
    base = open_runtime(tiny_model)
    adapted = open_runtime(tiny_model, [(str(out), 1.0)])
    try:
        assert reply(base, "hello", 8) != REPLIES["hello"]
        for prompt, answer in REPLIES.items():
            assert reply(adapted, prompt, 12) == answer
    finally:
        base.close()
        adapted.close()


def test_adapter_in_llama_cpp_matches_torch_logits(tiny_model, tmp_path):
    """Tolerance: max |logit difference| < 0.01 on logits of size ~3 (float32 both sides), same argmax."""
    model, adapter = random_lora(tiny_model, tmp_path / "random.gguf", std=0.1)
    rt = open_runtime(tiny_model)
    tokens = rt.tokenize("the cat is on the moon and the dog", add_special=True)
    rt.close()
    cpp = llama_logits(tiny_model, [(str(adapter), 1.0)], tokens, n_ctx=1024)
    model.eval()
    with torch.no_grad():
        ours = model(torch.tensor([tokens])).logits[0].numpy()
        with model.disable_adapter():
            plain = model(torch.tensor([tokens])).logits[0].numpy()
    assert np.abs(ours - plain).max() > 0.5  # the adapter changes the logits a lot...
    assert (
        np.abs(cpp - ours).max() < 0.01
    )  # ...and llama.cpp applies exactly that change (q/k permutation undone)
    assert (cpp.argmax(-1) == ours.argmax(-1)).all()


def test_f16_merge_equals_base_plus_adapter_and_q8_0_answers(trained, tiny_model, memorize, tmp_path):
    out, _, _ = trained
    f16 = export(tiny_model, out, tmp_path / "merged-f16.gguf", "F16")
    q8 = export(tiny_model, out, tmp_path / "merged-q8.gguf", "q8_0")
    assert inspect_gguf(q8).quant_mix.get("Q8_0", 0) > 0
    meta = inspect_gguf(f16).metadata  # the merged files carry provenance
    assert meta[ADAPTER_BASE_SHA_KEY] == sha256_file(tiny_model) and meta["ingle.export.quant"] == "F16"
    assert json.loads((tmp_path / "merged-q8.gguf.json").read_text())["quant"] == "Q8_0"
    adapted = open_runtime(tiny_model, [(str(out), 1.0)])
    merged = open_runtime(f16)
    quant = open_runtime(q8)
    try:
        items = evaluation_items(adapted, memorize)
        same = compare(adapted, merged, items)
        assert same["kl_divergence"] < 1e-4 and same["top1_agreement"] == 1.0
        assert abs(perplexity(adapted, items)["perplexity"] - perplexity(merged, items)["perplexity"]) < 0.01
        assert reply(quant, "yes", 12) == REPLIES["yes"]
        assert compare(merged, quant, items)["top1_agreement"] == 1.0
    finally:
        for rt in (adapted, merged, quant):
            rt.close()


def test_measure_exports_compares_each_export_with_the_f16_one(trained, tiny_model, memorize, tmp_path):
    out, _, _ = trained
    exports = {q: str(export(tiny_model, out, tmp_path / f"m-{q}.gguf", q)) for q in ("F16", "Q8_0")}
    reference = open_runtime(exports["F16"])
    try:
        items = evaluation_items(reference, memorize)
        f16 = perplexity(reference, items)
        given = measure_exports(exports, items, reference)
    finally:
        reference.close()
    opened = measure_exports(exports, items)
    for report in (given, opened):
        assert list(report) == ["F16", "Q8_0"] and "kl_divergence" not in report["F16"]
        assert report["F16"]["perplexity"] == pytest.approx(f16["perplexity"], rel=1e-6)
        assert 0 <= report["Q8_0"]["kl_divergence"] < 0.01 and report["Q8_0"]["top1_agreement"] == 1.0
    assert opened["Q8_0"]["kl_divergence"] == pytest.approx(given["Q8_0"]["kl_divergence"], rel=1e-6)
    without_reference = measure_exports({"Q8_0": exports["Q8_0"]}, items)
    assert "kl_divergence" not in without_reference["Q8_0"]


def test_same_seed_and_data_give_the_same_losses(tiny_model, memorize, tmp_path):
    runs = []
    for i in range(2):
        events = []
        train(tiny_model, memorize, tmp_path / f"a{i}.gguf", TrainSettings(**FAST, max_steps=4, epochs=4,
              dropout=0.1), emit=events.append)  # fmt: skip
        runs.append([e.loss for e in events if type(e).__name__ == "TrainStep"])
    assert runs[0] == runs[1]


def test_unsupported_architecture_is_refused_before_any_work(tmp_path, memorize):
    odd = write_tiny_llama(tmp_path / "phi.gguf", arch="phi3")
    started = time.perf_counter()
    with pytest.raises(TrainingError, match="'phi3' models cannot be trained"):
        train(odd, memorize, tmp_path / "never.gguf")
    assert not (tmp_path / "never.gguf").exists()
    assert time.perf_counter() - started < 20  # no torch import, no model load: refused at once


def test_cancel_mid_epoch_in_child_then_resume_gives_the_uninterrupted_losses(tiny_model, memorize, tmp_path):
    from engine.errors import Cancelled
    from training.runner import TrainingRun

    settings = TrainSettings(**{**FAST, "batch_size": 1}, epochs=40, checkpoint_every=0)
    out = tmp_path / "resumed.gguf"
    run = TrainingRun(tiny_model, memorize, out, settings)
    steps = []
    with pytest.raises(Cancelled, match="resume from"):
        for event in run.events():
            if type(event).__name__ == "TrainStep":
                steps.append(event.loss)
                if event.step == 5:  # mid-epoch: 3 steps per epoch
                    asked = time.perf_counter()
                    run.cancel()
    assert time.perf_counter() - asked < 60  # the step in flight finishes, then it stops
    run.process.join(10)
    assert not run.process.is_alive() and not out.exists()
    run.close()
    assert 5 <= len(steps) < 120
    resumed = train(tiny_model, memorize, out, settings, resume=True)
    full = tmp_path / "full.gguf"
    train(tiny_model, memorize, full, settings)
    a = json.loads(out.with_name(out.name + ".json").read_text())["losses"]
    b = json.loads(full.with_name(full.name + ".json").read_text())["losses"]
    assert resumed.steps == len(b) and np.allclose(a, b, rtol=1e-5)


def test_resume_refuses_other_settings(tiny_model, memorize, tmp_path):
    out = tmp_path / "x.gguf"
    with pytest.raises(TrainingError, match="No checkpoint"):
        train(tiny_model, memorize, out, TrainSettings(**FAST, max_steps=2), resume=True)


def test_full_disk_during_export_leaves_no_partial_file(trained, tiny_model, tmp_path):
    out, _, _ = trained
    target = tmp_path / "full" / "merged.gguf"
    code = (
        "import resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))\n"  # the disk fills at 100 kB
        "from training.export import merge_f16\n"
        "from training.errors import ExportError\n"
        f"try:\n    merge_f16({str(tiny_model)!r}, {str(out)!r}, {str(target)!r})\n"
        "except ExportError as err:\n    print('REFUSED', err); sys.exit(3)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          cwd=os.getcwd(), env={**os.environ, "PYTHONPATH": os.getcwd()})  # fmt: skip
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert "no partial file" in proc.stdout
    assert list(target.parent.iterdir()) == []


def test_atomic_path_removes_the_temporary_on_error(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "x.gguf") as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_quant_types_needing_an_imatrix_are_refused_with_the_reason():
    with pytest.raises(ExportError, match="importance matrix"):
        check_quant("IQ2_XXS")
    with pytest.raises(ExportError, match="Unknown quantization type 'Q9'"):
        check_quant("Q9")
    assert check_quant("q4_k_m") == "Q4_K_M"


def test_merge_refuses_an_adapter_for_other_tensors(trained, tmp_path):
    out, _, _ = trained
    other = write_tiny_llama(tmp_path / "one-layer.gguf", n_layers=1)
    with pytest.raises(ExportError, match="does not have"):
        merge_f16(other, out, tmp_path / "m.gguf")


def test_cli_train_export_eval(tiny_model, memorize, tmp_path, capsys, fresh_home):
    from app.cli import main
    from engine.library import Library

    config = tmp_path / "cfg.json"
    config.write_text(json.dumps({**FAST, "epochs": 2.0}))
    adapter = tmp_path / "cli.gguf"
    assert main(["train", str(tiny_model), str(memorize), "--out", str(adapter), "--config", str(config),
                 "--lr", "0.03", "--max-steps", "2"]) == 0  # fmt: skip
    assert json.loads(read_adapter(adapter)[2]["ingle.training.settings"])["learning_rate"] == 0.03
    assert "after 2 steps" in capsys.readouterr().err
    (entry,) = Library().entries("adapter")  # linked where it was written, for the GUI's adapter picker
    assert entry.file == adapter and entry.linked and entry.base_sha256 == sha256_file(tiny_model)
    assert main(["train", str(tiny_model), str(memorize), "--out", str(adapter), "--config", str(config),
                 "--max-steps", "1"]) == 0  # fmt: skip
    assert [e.name for e in Library().entries("adapter")] == ["cli"]  # trained again: the same entry
    capsys.readouterr()
    assert main(["export", str(tiny_model), str(adapter), "--quant", "Q8_0", "--out", str(tmp_path / "m.gguf"),
                 "--data", str(memorize), "--json"]) == 0  # fmt: skip
    report = json.loads(capsys.readouterr().out)
    assert set(report) == {"base", "base+adapter", "F16", "Q8_0"} and "kl_divergence" in report["Q8_0"]
    assert Library().get("m").quant == "Q8_0" and Library().get("m").kind == "model"
    assert main(["eval", str(tiny_model), str(memorize), "--adapter", f"{adapter}:0.5", "--json"]) == 0
    assert list(json.loads(capsys.readouterr().out).values())[0]["tokens"] == report["base"]["tokens"]
    assert main(["train", str(tiny_model), str(memorize), "--out", str(adapter), "--rank", "0"]) == 2
    assert "rank: 0 is out of range" in capsys.readouterr().err


def test_max_steps_is_the_total_and_cycles_epochs_with_progress_lines(tiny_model, memorize, tmp_path, capsys):
    """Hugging Face Trainer's convention: max_steps > 0 is the number of optimizer steps, overriding epochs
    (before, 7 steps asked on 3 steps per epoch trained 3). stderr is not a terminal here: plain lines."""
    from app.cli import main

    out = tmp_path / "cycled.gguf"
    argv = ["train", str(tiny_model), str(memorize), "--out", str(out), "--batch-size", "1", "--max-steps", "7",
            "--val-fraction", "0", "--no-bf16", "--no-library", "--scheduler", "constant"]  # fmt: skip
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "7 steps = 2.3 epochs of 3 steps (--max-steps 7 sets the total" in err
    assert len(json.loads(out.with_name(out.name + ".json").read_text())["losses"]) == 7
    # every phase before the first step says what it does, then the steps count up to the total
    for line in ("train: starting the training process", "train: loading the tokenizer",
                 "train: tokenizing: 3/3 examples (100%)", "train: loading and dequantizing the base model",
                 "train: 7/7 steps (100%), loss ", "after 7 steps"):  # fmt: skip
        assert line in err, err
    assert "\r" not in err  # no terminal bar when stderr is not a terminal
    assert err.index("dequantizing") < err.index("train: 1/7 steps") < err.index("train: 7/7 steps")


def test_ctrl_c_in_cli_training_saves_a_checkpoint_and_exits_130(tiny_model, memorize, tmp_path):
    """A terminal's Ctrl+C reaches the training child too: it must not die of it (before: a KeyboardInterrupt
    traceback from the child, no checkpoint); the run ends its step, saves, and says how to resume."""
    import signal

    out = tmp_path / "stopped.gguf"
    argv = [sys.executable, "-m", "app.cli", "train", str(tiny_model), str(memorize), "--out", str(out),
            "--max-steps", "1000000", "--batch-size", "1", "--no-library", "--val-fraction", "0"]  # fmt: skip
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True, start_new_session=True, cwd=os.getcwd(),
                            env={**os.environ, "PYTHONPATH": os.getcwd()})  # fmt: skip
    try:
        while "steps (0%)" not in (line := proc.stderr.readline()):
            assert line, "training ended before its first step"
        time.sleep(1.0)
        os.killpg(proc.pid, signal.SIGINT)
        err = proc.communicate(timeout=300)[1]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert (tmp_path / "stopped.gguf.checkpoint" / "state.pt").exists()
    assert "run the same command with --resume" in err and not out.exists()


def test_importing_the_cli_does_not_import_torch():
    code = "import sys, training.cli, app.cli; app.cli.build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=os.getcwd(),
                         env={**os.environ, "PYTHONPATH": os.getcwd()})  # fmt: skip
    assert out.stdout.strip() == "False", out.stderr


def test_cancel_event_stops_in_process_training_quickly(tiny_model, memorize, tmp_path):
    from engine.errors import Cancelled

    cancel = threading.Event()

    def emit(event):
        if type(event).__name__ == "TrainStep" and event.step == 2:
            cancel.set()

    with pytest.raises(Cancelled, match="at step 2"):
        train(
            tiny_model,
            memorize,
            tmp_path / "c.gguf",
            TrainSettings(**FAST, epochs=50),
            emit=emit,
            cancel=cancel,
        )


def test_side_by_side_shows_base_and_adapted_replies(trained, tiny_model):
    from training.evaluate import side_by_side

    out, _, _ = trained
    rows = side_by_side(tiny_model, out, ["hello", "good"], max_tokens=12)
    assert [r["adapted"] for r in rows] == [REPLIES["hello"], REPLIES["good"]]
    assert rows[0]["base"] != rows[0]["adapted"]


def test_closing_a_run_leaves_no_child_process(tiny_model, memorize, tmp_path):
    import psutil

    from training.runner import TrainingRun

    run = TrainingRun(tiny_model, memorize, tmp_path / "x.gguf", TrainSettings(**FAST, epochs=500))
    pid = run.pid
    next(iter(run.events()))  # TrainStarted: the child is working
    run.close()
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_a_training_child_that_stops_answering_is_killed_with_a_clear_error(tiny_model, memorize, tmp_path):
    import signal

    from engine.errors import EngineHung
    from training.runner import TrainingRun

    run = TrainingRun(
        tiny_model, memorize, tmp_path / "x.gguf", TrainSettings(**FAST, epochs=500), hang_timeout=8
    )
    events = run.events()
    next(events)  # TrainStarted
    for _ in range(3):  # steps and heartbeats keep it alive
        next(events)
    os.kill(run.pid, signal.SIGSTOP)  # frozen: no steps, no heartbeat
    started = time.monotonic()
    with pytest.raises(EngineHung, match="stopped answering for 8 s"):
        for _ in events:
            pass
    assert time.monotonic() - started < 60
    assert not run.process.is_alive()
    run.close()


def test_a_slow_but_living_child_is_not_taken_for_hung(tiny_model, memorize, tmp_path):
    from training.runner import TrainingRun

    # importing torch and loading the model in the child takes longer than 3 s without any training event
    with TrainingRun(
        tiny_model, memorize, tmp_path / "x.gguf", TrainSettings(**FAST, epochs=2), hang_timeout=6
    ) as run:
        kinds = [type(e).__name__ for e in run.events()]
    # the phases before the first step (tokenizer, tokenizing, model), then the run itself; no heartbeats
    assert kinds[:3] == ["TrainPhase"] * 3 and kinds.index("TrainStarted") < kinds.index("TrainStep")
    assert kinds[-1] == "TrainDone" and "alive" not in str(kinds) and None not in kinds
