"""Visualizer numbers agree with llama.cpp: sampling preview vs its own chain, KV sizes vs its own report."""

import json
import subprocess
import sys

import numpy as np
import pytest

from engine.kv import kv_layout
from engine.preview import chain_kept
from engine.runtime import Runtime
from engine.settings import CacheType, FlashAttention, LoadSettings, SamplingSettings


@pytest.fixture(scope="module")
def starter(starter_model):
    rt = Runtime()
    list(rt.load(starter_model, LoadSettings(n_ctx=1024)))
    rt.evaluate_text("The capital of France is")
    yield rt
    rt.close()


SETTINGS = [
    SamplingSettings(top_k=40, top_p=0.9, min_p=0.05, temperature=0.7),
    SamplingSettings(top_k=0, top_p=1.0, min_p=0.0, typical_p=0.8, temperature=1.3),
    SamplingSettings(top_n_sigma=1.5, top_k=100, min_p=0.0, top_p=1.0, dynatemp_range=0.5),
    SamplingSettings(
        repeat_penalty=1.5,
        presence_penalty=0.3,
        frequency_penalty=0.2,
        top_k=20,
        xtc_probability=1.0,
        xtc_threshold=0.05,
        seed=4,
    ),  # fmt: skip
    SamplingSettings(logit_bias=((818, -100.0),), dry_multiplier=0.8, top_k=30),
]


@pytest.mark.parametrize("settings", SETTINGS, ids=range(len(SETTINGS)))
def test_preview_keeps_what_llama_cpps_chain_keeps(starter, settings):
    stages = starter.preview(settings, top_n=10**6)
    final = stages[-1]
    history = starter.cached_tokens
    ids, probs = chain_kept(starter.logits_snapshot, settings, starter.vocab, starter.n_ctx, history)
    assert final.kept == len(ids)
    ours = {t.token_id: t.p for t in final.tokens}
    assert set(ours) == set(ids.tolist())
    for tok, p in zip(ids.tolist(), probs, strict=True):
        assert ours[tok] == pytest.approx(p, rel=1e-4, abs=1e-7)
    assert stages[0].name == "model" and stages[0].kept == starter.n_vocab
    assert sum(t.p for t in stages[0].tokens) == pytest.approx(1.0, abs=1e-4)


def test_each_stage_names_what_it_removed(starter):
    stages = starter.preview(SamplingSettings(top_k=3, temperature=1.0, min_p=0.0, top_p=1.0), top_n=10)
    names = [s.name for s in stages]
    assert names == ["model", "top_k", "temperature"]
    top_k = stages[1]
    assert top_k.kept == 3 and len(top_k.removed) == 7
    assert {t.token_id for t in stages[0].tokens[:3]} == {t.token_id for t in top_k.tokens}


def test_moving_a_slider_runs_no_model_evaluation(starter):
    before = starter.evaluations
    for temp in (0.2, 0.5, 0.9, 1.4):
        starter.preview(SamplingSettings(temperature=temp))
    assert starter.evaluations == before


@pytest.mark.parametrize("cache", [CacheType.F16, CacheType.Q8_0])
def test_kv_layout_matches_llama_cpps_report(starter_model, cache):
    rt = Runtime()
    settings = LoadSettings(n_ctx=3000, type_k=cache, type_v=cache, flash_attn=FlashAttention.ON)
    list(rt.load(starter_model, settings))
    layout = rt.kv_layout()
    reports = rt.kv_reports
    rt.close()
    groups = layout.groups()
    assert len(reports) == len(groups) == 2
    for group, report in zip(groups, reports, strict=True):
        assert (group["layers"], group["cells"]) == (report["layers"], report["cells"])
        assert group["bytes_k"] / 2**20 == pytest.approx(report["k_mib"], abs=0.006)
        assert group["bytes_v"] / 2**20 == pytest.approx(report["v_mib"], abs=0.006)
    assert "layers x" in layout.formula()


def test_kv_calculator_needs_no_model(starter_model):
    from engine.gguf_info import inspect_gguf

    info = inspect_gguf(starter_model)
    small, big = kv_layout(info, 4096), kv_layout(info, 32768)
    assert big.total_bytes > small.total_bytes
    assert kv_layout(info, 4096, CacheType.Q8_0, CacheType.Q8_0).total_bytes < small.total_bytes
    assert sum(layer.sliding for layer in small.layers) == 15  # Gemma 3: 5 of every 6 layers use the window


@pytest.mark.parametrize(
    "text", ["Héllo wörld", "東京 🙂 emoji", "<start_of_turn>user\nhi<end_of_turn>", "  two  spaces\n"]
)
def test_token_view_round_trips(starter, text):
    pieces = starter.token_pieces(text)
    assert b"".join(p.data for p in pieces) == text.encode()
    if "<start_of_turn>" in text:
        assert any(p.special and p.text == "<start_of_turn>" for p in pieces)


def test_inspect_cli_json(tiny_model):
    out = subprocess.run(
        [sys.executable, "-m", "app.cli", "inspect", str(tiny_model), "the cat", "--top-k", "5", "--json"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    names = [s["name"] for s in data["preview_stages"]]
    assert names[0] == "model" and "top_k" in names
    assert len(data["preview"][names.index("top_k")]) == 5
    for stage in data["preview"]:
        assert all({"token_id", "piece", "p"} == set(t) for t in stage)
    assert data["kv_cache"]["n_past"] == data["prompt_tokens"] == len(data["tokens"])
    assert np.isclose(sum(t["p"] for t in data["preview"][names.index("top_k")]), 1.0)


def test_inspect_gives_budget_preview_and_cache_in_one_call(starter):
    from engine.events import Message
    from engine.settings import OverflowPolicy

    convo = [Message("user", "Name a colour."), Message("assistant", "Blue.")]
    settings = SamplingSettings(top_k=5)
    state = starter.inspect(convo, "And another one?", settings, OverflowPolicy.STOP)
    budget = state.budget
    assert budget.draft_tokens > 0 and budget.fits
    assert state.kv.n_past == sum(end - start for _, start, end in budget.spans)
    assert [s.name for s in state.preview][0] == "model" and state.preview[-1].kept <= 5
    before = starter.evaluations
    again = starter.inspect(convo, "And another one?", settings, OverflowPolicy.STOP)  # all from the cache
    assert starter.evaluations - before == 1 and again.kv.evaluated_tokens == 1
    empty = starter.inspect([], "", settings, OverflowPolicy.STOP)
    assert empty.preview == () and "type a message" in empty.preview_note
