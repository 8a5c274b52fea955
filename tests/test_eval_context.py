"""The context-length eval: `ingle eval-context` on the starter (JSON shape, scores in range, the needle found at a
short length), its argument errors, RoPE settings reaching llama.cpp, and the GUI button on the tiny model."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from engine.errors import SettingsError
from engine.eval_context import (
    base_settings,
    heatmap_lines,
    needed_context,
    parse_depths,
    parse_lengths,
    side_by_side,
)
from engine.haystack import filler_sentences, needle
from engine.settings import LoadSettings, RopeScaling

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def ingle(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=REPO)
    return subprocess.run([sys.executable, "-m", "app.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=REPO)  # fmt: skip


@pytest.fixture(scope="module")
def starter_report(starter_model, tmp_path_factory) -> tuple[dict, str]:
    out = tmp_path_factory.mktemp("eval") / "report.json"
    # one thread: on a busy machine two llama.cpp threads spin waiting for each other (DESIGN.md 6)
    done = ingle("eval-context", str(starter_model), "--lengths", "256,512", "--depths", "0,50,100", "--threads", "1",
                 "--json", str(out))  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(out.read_text()), done.stdout


def test_starter_report_shape_and_ranges(starter_report):
    report, stdout = starter_report
    assert report["lengths"] == [256, 512] and report["depths"] == [0, 50, 100]
    (run,) = report["runs"]
    assert run["n_ctx"] >= needed_context([256, 512]) and run["n_ctx_train"] == 32768  # llama.cpp rounds up
    assert run["rope"]["rope_scaling"] == "model"
    cells = {(c["length"], c["depth"]) for c in run["needle"]}
    assert cells == {(n, d) for n in (256, 512) for d in (0, 50, 100)}
    for cell in run["needle"]:
        assert isinstance(cell["found"], bool) and 0.0 <= cell["token_p"] <= 1.0
        assert cell["logprob"] <= 0.0 and cell["n_tokens"] >= 3
        assert math.isclose(cell["token_p"], math.exp(cell["logprob"] / cell["n_tokens"]))
    # Gemma 3 270M copies a fact from 256 tokens back: the needle is found at every depth there
    assert all(c["found"] for c in run["needle"] if c["length"] == 256), run["needle"]
    assert all(c["token_p"] > 0.5 for c in run["needle"] if c["found"])
    ppl = {row["length"]: row for row in run["perplexity"]}
    assert set(ppl) == {256, 512} and ppl[512]["tokens"] == 512
    # the filler is repetitive: more of it makes the rest more predictable, and it is far from uniform
    assert 1.0 < ppl[512]["perplexity"] < ppl[256]["perplexity"] < 100
    assert "✓" in stdout and "ppl" in stdout and "256" in stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--lengths", "1x,2k"], "lengths: '1x' is not a length"),
        (["--lengths", "8"], "lengths: 8 is out of range"),
        (["--depths", "0,150"], "depths: 150 is out of range"),
        (["--depths", "half"], "depths: 'half' is not a depth"),
        (["--compare"], "--compare needs stretched settings"),
        (["--rope-freq-scale", "3"], "rope_freq_scale"),
        (["--yarn-beta-fast", "-5", "--rope-scaling", "yarn"], "yarn_beta_fast"),
    ],
)
def test_bad_arguments_are_one_line_errors(tiny_model, capsys, args, message):
    from app.cli import main

    assert main(["eval-context", str(tiny_model), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ingle: error:") and message in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_parsing_and_the_haystack_are_deterministic():
    assert parse_lengths("512, 1k,2K,1k") == (512, 1024, 2048)
    assert parse_depths("100,0,50%") == (0, 50, 100)
    with pytest.raises(SettingsError):
        parse_lengths("")
    assert filler_sentences(30) == filler_sentences(30) and filler_sentences(30) != filler_sentences(
        30, seed=1
    )
    first, again, other = needle(512, 50), needle(512, 50), needle(512, 0)
    assert first == again and first.value in first.sentence and first.value != other.value
    assert "secret passphrase" not in "".join(filler_sentences(500))  # the needle is the only such sentence


def test_base_settings_undo_only_the_stretch():
    stretched = LoadSettings(n_ctx=8192, rope_scaling=RopeScaling.YARN, rope_freq_scale=0.5, yarn_beta_fast=16.0,
                             n_threads=2)  # fmt: skip
    base = base_settings(stretched)
    assert (
        base.rope_scaling == RopeScaling.MODEL and base.rope_freq_scale == 0.0 and base.yarn_beta_fast == -1
    )
    assert base.n_ctx == 8192 and base.n_threads == 2


def test_yarn_parameters_reach_llama_cpp_and_change_the_logits(tiny_model):
    from engine.llama_params import context_params
    from engine.runtime import Runtime

    params = context_params(
        LoadSettings(rope_scaling=RopeScaling.YARN, yarn_beta_fast=16.0, yarn_orig_ctx=256)
    )
    assert params.yarn_beta_fast == 16.0 and params.yarn_orig_ctx == 256 and params.yarn_beta_slow == -1
    rt = Runtime()
    try:
        text = "the cat sat on the mat and then the dog sat on the log " * 6
        logits = {}
        yarn = LoadSettings(n_ctx=1024, rope_scaling=RopeScaling.YARN, rope_freq_scale=0.5)
        for name, settings in (
            ("yarn", yarn),
            ("yarn, no extrapolation", yarn.replace(yarn_ext_factor=0.0)),
            ("yarn, other betas", yarn.replace(yarn_beta_fast=4.0, yarn_beta_slow=0.5)),
        ):
            list(rt.load(tiny_model, settings))
            rt.evaluate(rt.tokenize(text, add_special=True))
            logits[name] = rt.last_logits().copy()
        # each of YaRN's parameters is applied, not ignored: the same tokens give other logits
        for name in list(logits)[1:]:
            assert abs(logits[name] - logits["yarn"]).max() > 1e-3, name
    finally:
        rt.close()


def test_heatmap_text_side_by_side():
    run = {"label": "base", "rope": {"rope_scaling": "model"}, "n_ctx": 640, "n_ctx_train": 512,
           "needle": [{"length": 256, "depth": 0, "found": True, "token_p": 0.9},
                      {"length": 256, "depth": 100, "found": False, "token_p": 0.1}],
           "perplexity": [{"length": 256, "perplexity": 7.5}]}  # fmt: skip
    lines = side_by_side([heatmap_lines(run), heatmap_lines(dict(run, label="stretched"), colour=True)])
    assert lines[0].startswith("base (rope model") and "stretched (rope model" in lines[0]
    assert "✓ 0.90" in lines[2] and "✗ 0.10" in lines[3] and "7.50" in lines[4]
    assert "\x1b[48;5;" in lines[2]  # the coloured copy


# ---------------------------------------------------------------------------- the GUI button
@pytest.fixture
def panel(qtbot, tmp_path, tiny_model):
    from app.model_panel import ModelPanel
    from engine.library import Library

    library = Library(tmp_path / "home")
    library.import_file(tiny_model, link=True)
    panel = ModelPanel(library)
    qtbot.addWidget(panel)
    panel.show()
    qtbot.waitUntil(lambda: "Reading" not in panel.estimate.text(), timeout=30_000)
    return panel


def test_rope_fields_load_settings_and_the_trained_context_note(panel):
    rope = panel.rope
    panel.n_ctx.setValue(1024)  # the tiny model was trained on 512
    assert "2x the 512 tokens" in rope.note.text() and not rope.note.isHidden()
    rope.set_values(rope_scaling="yarn", rope_freq_scale=0.5, yarn_beta_fast=16.0)
    assert not rope.yarn.isHidden() and "stretched 2x" in rope.note.text()
    settings = panel.load_settings()
    assert settings.rope_scaling == RopeScaling.YARN and settings.rope_freq_scale == 0.5
    assert settings.yarn_beta_fast == 16.0 and settings.yarn_orig_ctx == 0
    rope.set_values(rope_scaling="model")
    assert rope.yarn.isHidden()
    panel.n_ctx.setValue(512)
    assert rope.note.isHidden()


def test_eval_button_runs_in_the_background_and_draws_heatmaps(qtbot, panel):
    from app.eval_context_dialog import Heatmap

    panel.n_ctx.setValue(1024)
    # two llama.cpp threads spin on a busy machine (DESIGN.md 6); one ran this test 10x faster here
    panel.threads.setValue(1)
    panel.rope.set_values(rope_scaling="linear", rope_freq_scale=0.5)
    panel.rope.eval_button.click()
    from app.eval_context_dialog import ContextEvalDialog

    dialog = next(d for d in panel.findChildren(ContextEvalDialog))
    dialog.lengths.setText("128,256")
    dialog.depths.setText("0,100")
    dialog.run_button.click()
    assert not dialog.run_button.isEnabled() and dialog.cancel_button.isEnabled()
    qtbot.waitUntil(
        lambda: dialog.report is not None or "error" in dialog.status.styleSheet(), timeout=120_000
    )
    assert dialog.report is not None, dialog.status.text()
    assert [run["label"] for run in dialog.report["runs"]] == ["base", "stretched"]
    assert dialog.report["runs"][1]["rope"] == dict(dialog.report["runs"][1]["rope"], rope_scaling="linear",
                                                    rope_freq_scale=0.5)  # fmt: skip
    maps = dialog.findChildren(Heatmap)
    assert len(maps) == 2 and dialog.progress.value() == 1000
    image = maps[0].grab().toImage()
    assert image.width() >= 60 + 2 * Heatmap.CELL_W
    # bad lengths: one line in the dialog, nothing started
    dialog.lengths.setText("lots")
    dialog.run_button.click()
    assert "not a length" in dialog.status.text() and dialog.op is None
    # cancel: the run stops and says so
    dialog.lengths.setText("256")
    dialog.run_button.click()
    dialog.cancel_button.click()
    qtbot.waitUntil(lambda: dialog.op is None, timeout=120_000)
    assert dialog.status.text() == "Cancelled." and dialog.run_button.isEnabled()
