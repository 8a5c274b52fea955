"""Fit automatically: the chooser never exceeds its budget and prefers full offload, then longer context; a load
that cannot fit is refused before llama.cpp runs."""

from __future__ import annotations

import dataclasses

import pytest

from engine.errors import SettingsError
from engine.fit import Budget, WontFitError, check_load, choose, need_for, nothing_fits, settings_for_load
from engine.gguf_info import inspect_gguf
from engine.settings import CacheType, FlashAttention, LoadSettings

GIB = 1 << 30
MIB = 1 << 20


@pytest.fixture(scope="module")
def models(tiny_model, starter_model) -> dict:
    """Real headers (tiny, the starter) and the same headers grown to the shapes of bigger models."""
    tiny = inspect_gguf(tiny_model)
    starter = inspect_gguf(starter_model)
    llama8b = dataclasses.replace(
        tiny, file_size=4_900 * MIB, n_layers=32, n_kv_heads=8, head_dim_k=128, head_dim_v=128,
        context_length=131072, sliding_window=0,
    )  # fmt: skip
    big70b = dataclasses.replace(llama8b, file_size=40 * GIB, n_layers=80)
    return {"tiny": tiny, "starter": starter, "llama8b": llama8b, "big70b": big70b}


BUDGETS = [Budget(ram, vram) for ram in (64 * MIB, 400 * MIB, 1 * GIB, 3 * GIB, 6 * GIB, 24 * GIB, 128 * GIB)
           for vram in (0, 512 * MIB, 4 * GIB, 8 * GIB, 24 * GIB, 80 * GIB)]  # fmt: skip
ASKS = [LoadSettings(n_ctx=n, flash_attn=fa) for n in (512, 4096, 32768, 131072)
        for fa in (FlashAttention.AUTO, FlashAttention.OFF)]  # fmt: skip


def test_the_chooser_never_exceeds_the_budget(models):
    chosen = refused = 0
    for info in models.values():
        for budget in BUDGETS:
            for ask in ASKS:
                choice = choose(info, ask, budget)
                if choice is None:
                    refused += 1
                    continue
                chosen += 1
                need = need_for(info, choice.settings)  # recomputed: the choice cannot have lied about it
                assert need == choice.need
                assert need.ram <= budget.ram and need.vram <= budget.vram, (info.name, budget, choice)
                assert choice.settings.n_ctx <= ask.n_ctx
                if ask.flash_attn is FlashAttention.OFF:  # a quantized V cache needs flash attention
                    assert choice.settings.type_v is CacheType.F16
                if budget.vram == 0:
                    assert choice.settings.n_gpu_layers == 0
    assert chosen > 100 and refused > 10  # the grid covers both outcomes


def test_the_chooser_prefers_full_offload_then_longer_context(models):
    info = models["llama8b"]
    ask = LoadSettings(n_ctx=32768)
    # full offload fits at a short context only: full offload wins over a longer partly offloaded context
    budget = Budget(16 * GIB, 6 * GIB)
    choice = choose(info, ask, budget)
    assert choice.settings.n_gpu_layers == -1
    assert choice.settings.n_ctx < 32768
    assert "all layers on the GPU" in choice.reason and "did not fit" in choice.reason
    # at a given offload, a Q8_0 cache at the longer context beats an F16 cache at half of it
    f16 = need_for(info, ask.replace(n_gpu_layers=-1, n_ctx=choice.settings.n_ctx * 2))
    q8 = need_for(info, ask.replace(n_gpu_layers=-1, n_ctx=choice.settings.n_ctx * 2, type_k=CacheType.Q8_0,
                                    type_v=CacheType.Q8_0))  # fmt: skip
    assert q8.vram < f16.vram
    roomy = Budget(16 * GIB, f16.vram - 1)
    picked = choose(info, ask, roomy)
    assert picked.settings.type_k is CacheType.Q8_0 and picked.settings.n_ctx == choice.settings.n_ctx * 2
    # no GPU: the CPU, the longest context that fits
    cpu = choose(info, ask, Budget(8 * GIB, 0))
    assert cpu.settings.n_gpu_layers == 0 and cpu.settings.n_ctx == 32768 and "on the CPU" in cpu.reason


def test_partly_offloaded_more_layers_win_down_to_a_useful_context(models):
    info = models["big70b"]  # 40 GiB of weights, a 24 GiB GPU: full offload cannot fit
    ask = LoadSettings(n_ctx=32768)
    choice = choose(info, ask, Budget(64 * GIB, 24 * GIB))
    assert 0 < choice.settings.n_gpu_layers < info.n_layers and choice.settings.n_ctx >= 4096
    assert f"{choice.settings.n_gpu_layers} of {info.n_layers + 1} layers on the GPU" in choice.reason
    # one more layer does not fit even at the shortest useful context with the smaller cache
    more = ask.replace(n_gpu_layers=choice.settings.n_gpu_layers + 1, n_ctx=4096, type_k=CacheType.Q8_0,
                       type_v=CacheType.Q8_0)  # fmt: skip
    assert not need_for(info, more).within(Budget(64 * GIB, 24 * GIB))
    # ... though it would at a context too short to be useful: that is not taken either
    shortest = more.replace(n_ctx=512)
    assert need_for(info, shortest).vram < need_for(info, more).vram


def test_a_users_cache_type_is_kept(models):
    ask = LoadSettings(n_ctx=4096, type_k=CacheType.Q4_0, type_v=CacheType.F16)
    choice = choose(models["starter"], ask, Budget(2 * GIB))
    assert (choice.settings.type_k, choice.settings.type_v) == (CacheType.Q4_0, CacheType.F16)


def test_nothing_fits_names_a_smaller_quant_that_would(models):
    info = models["llama8b"]
    smaller = dataclasses.replace(info, file_size=2_000 * MIB, file_type="MOSTLY_Q2_K")
    budget = Budget(3 * GIB, 0)
    assert choose(info, LoadSettings(), budget) is None
    text = nothing_fits(info, LoadSettings(), budget, [("llama-8b-q2", smaller)])
    assert "does not fit" in text and "'llama-8b-q2' (Q2_K) would fit at context 4096" in text
    assert "smaller quant" in nothing_fits(info, LoadSettings(), budget, [])


def test_check_load_says_which_context_would_fit(models):
    info = models["llama8b"]
    with pytest.raises(WontFitError, match=r"does not fit: .* with context \d+ it would fit"):
        check_load(info, LoadSettings(n_ctx=131072), Budget(8 * GIB))
    check_load(info, LoadSettings(n_ctx=4096), Budget(8 * GIB))  # fits: no error


def test_settings_for_load_fits_or_refuses(models):
    info = models["starter"]
    fitted, note = settings_for_load(info, LoadSettings(n_ctx=32768, fit=True), budget=Budget(600 * MIB))
    assert fitted.n_ctx < 32768 and note.startswith("Fit automatically")
    unchanged, note = settings_for_load(info, LoadSettings(n_ctx=2048), budget=Budget(8 * GIB))
    assert unchanged == LoadSettings(n_ctx=2048) and note == ""
    with pytest.raises(WontFitError):
        settings_for_load(info, LoadSettings(n_ctx=2048), budget=Budget(100 * MIB))
    off, _ = settings_for_load(info, LoadSettings(fit_check=False), budget=Budget(1))
    assert off == LoadSettings(fit_check=False)  # the user said load anyway


def test_a_load_that_does_not_fit_is_refused_before_llama_cpp_runs(tiny_model, monkeypatch):
    from engine.runtime import Runtime

    monkeypatch.setenv("INGLE_MEMORY_LIMIT", "100M")  # less than the runtime overhead alone
    rt = Runtime()
    with pytest.raises(WontFitError, match="tiny.gguf does not fit: it needs .* and 100.0 MiB RAM is free"):
        list(rt.load(tiny_model, LoadSettings(n_ctx=512)))
    assert rt.model is None and rt.evaluations == 0
    monkeypatch.setenv("INGLE_MEMORY_LIMIT", "12G")
    loaded = list(rt.load(tiny_model, LoadSettings(n_ctx=1 << 16, fit=True)))[-1]
    assert loaded.fit_note.startswith("Fit automatically: on the CPU") and loaded.n_ctx == 1 << 16
    rt.close()


def test_a_bad_memory_limit_is_one_clear_error(tiny_model, monkeypatch):
    from engine.runtime import Runtime

    monkeypatch.setenv("INGLE_MEMORY_LIMIT", "lots")
    with pytest.raises(SettingsError, match="INGLE_MEMORY_LIMIT: 'lots' is not a size"):
        list(Runtime().load(tiny_model, LoadSettings(n_ctx=512)))
