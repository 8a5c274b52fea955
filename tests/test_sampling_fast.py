"""The cheap sampling step (argmax for greedy, a partial selection for top-k / min-p first) samples exactly what
llama.cpp's full chain samples: both chains run side by side on the same logits, token for token."""

from __future__ import annotations

import numpy as np
import pytest

from engine.sampling import FastPath, SamplerChain, fast_path, top_ids
from engine.settings import SamplingSettings

CASES = [
    (SamplingSettings(temperature=0), FastPath.ARGMAX),
    (SamplingSettings(seed=1), FastPath.TOP_K),  # the default chain: top-k 40, top-p, min-p, temperature
    (SamplingSettings(seed=2, temperature=1.5, top_k=200, top_p=1.0, min_p=0.0), FastPath.TOP_K),
    (
        SamplingSettings(seed=3, top_k=5, typical_p=0.9, xtc_probability=0.5, xtc_threshold=0.05),
        FastPath.TOP_K,
    ),
    (SamplingSettings(seed=4, top_k=0, top_p=1.0, min_p=0.02, temperature=1.2), FastPath.MIN_P),
    (SamplingSettings(seed=5, top_k=0, top_p=1.0, min_p=0.3, dynatemp_range=0.5), FastPath.MIN_P),
    (SamplingSettings(seed=6, top_k=1), FastPath.TOP_K),
    # stages before top-k see every token: these keep llama.cpp's own path
    (SamplingSettings(seed=7, repeat_penalty=1.3), FastPath.FULL),
    (SamplingSettings(seed=8, top_n_sigma=1.0), FastPath.FULL),
    # a logit bias first is added to a copy of the logits, then the fast path goes on
    (SamplingSettings(temperature=0, logit_bias=((5, 3.0), (9, float("-inf")), (5, 1.0))), FastPath.ARGMAX),
    (SamplingSettings(seed=9, logit_bias=((7, 4.0), (11, float("-inf")))), FastPath.TOP_K),
    (SamplingSettings(seed=9, logit_bias=((7, 2.0),), repeat_penalty=1.2), FastPath.FULL),
]


def side_by_side(
    rt, settings: SamplingSettings, prompt: str, n: int
) -> tuple[list[int], list[int], FastPath]:
    """Generate `n` tokens, sampling each step with both chains from the same logits; decode the full chain's."""
    fast = SamplerChain(rt.vocab, rt.n_vocab, settings, rt.n_ctx)
    full = SamplerChain(rt.vocab, rt.n_vocab, settings, rt.n_ctx, fast=False)
    assert full.path == FastPath.FULL
    try:
        rt.evaluate(rt.tokenize(prompt, add_special=True))
        got, want = [], []
        for _ in range(n):
            want.append(full.sample(rt.ctx))
            got.append(fast.sample(rt.ctx))
            rt._decode([want[-1]], len(rt._cached))
        return got, want, fast.path
    finally:
        fast.close()
        full.close()


@pytest.mark.parametrize("settings,path", CASES)
def test_fast_paths_sample_what_the_full_chain_samples(tiny_runtime, settings, path):
    got, want, used = side_by_side(tiny_runtime, settings, "the cat and the dog", 32)
    assert used == path
    assert got == want
    if not settings.greedy:
        assert len(set(want)) > 3  # really sampled, not a degenerate distribution


BANNED = tuple((t, float("-inf")) for t in (1, 106)) + ((2, -3.0),)


@pytest.mark.parametrize(
    "settings",
    [CASES[4][0], SamplingSettings(seed=3, logit_bias=BANNED), SamplingSettings(temperature=0, logit_bias=BANNED)],
)  # fmt: skip
def test_fast_paths_on_the_starter(starter_runtime, settings):
    """A 262k vocabulary with a peaked, real distribution (and many equal, unused logits)."""
    got, want, _ = side_by_side(starter_runtime, settings, "The capital of France is", 12)
    assert got == want


def test_seeds_change_the_sample_but_not_the_agreement(tiny_runtime):
    runs = [
        side_by_side(tiny_runtime, SamplingSettings(seed=s, temperature=2.0), "hello world", 24)
        for s in (10, 11)
    ]
    for got, want, _ in runs:
        assert got == want
    assert runs[0][1] != runs[1][1]


def test_a_huge_top_k_keeps_the_full_path():
    assert FastPath.FULL == fast_path(["top_k", "dist"], SamplingSettings(top_k=100_000))


@pytest.fixture(scope="module")
def starter_runtime(starter_model):
    from engine.runtime import Runtime
    from engine.settings import LoadSettings

    rt = Runtime()
    list(rt.load(starter_model, LoadSettings(n_ctx=512)))
    yield rt
    rt.close()


@pytest.mark.parametrize("k", [1, 40, 300])
def test_top_ids_are_the_k_largest(k):
    rng = np.random.default_rng(k)
    peaked = rng.standard_normal(262_144).astype(np.float32) * 3
    flat = np.zeros(262_144, np.float32)  # every logit equal: the sampled threshold keeps too many
    flat[[5, 70_000]] = 1.0
    low_top = np.full(262_144, -50.0, np.float32)  # the top few outside the 1/64 sample
    low_top[1 : 64 * 5 : 64] = 0.0
    for logits in (peaked, flat, low_top):
        got = top_ids(logits, k)
        assert got.size == k and np.unique(got).size == k
        assert logits[got].min() >= np.sort(logits)[-k]


def test_a_bias_that_ties_a_lower_id_with_the_winner_picks_the_lower_id_as_llama_cpp_does(tiny_runtime):
    """Greedy picks the first largest logit: a bias that lifts a lower id exactly level with the raw winner makes
    that id win, in the fast path as in llama.cpp's own greedy sampler."""
    rt = tiny_runtime
    rt.evaluate(rt.tokenize("the cat and the dog", add_special=True))
    logits = rt.last_logits().copy()
    top = int(np.argmax(logits))
    lower = int(np.argmin(logits[:top])) if top else None
    assert lower is not None, "the tiny model's winner here is token 0; pick another prompt"
    bias = np.float32(logits[top]) - np.float32(logits[lower])
    while np.float32(logits[lower]) + bias < logits[top]:  # exactly level in float32, as llama.cpp adds it
        bias = np.nextafter(bias, np.float32(np.inf))
    while np.float32(logits[lower]) + bias > logits[top]:
        bias = np.nextafter(bias, np.float32(-np.inf))
    assert np.float32(logits[lower]) + bias == logits[top]
    for extra in ((), ((lower + 1 if lower + 1 != top else lower + 2, -1.0),)):
        settings = SamplingSettings(temperature=0, logit_bias=((lower, float(bias)), *extra))
        picked = []
        for fast in (True, False):
            chain = SamplerChain(rt.vocab, rt.n_vocab, settings, rt.n_ctx, fast=fast)
            try:
                picked.append(chain.sample(rt.ctx))
            finally:
                chain.close()
        assert picked == [lower, lower]


def test_top_k_with_an_id_biased_twice_samples_what_the_full_chain_samples(tiny_runtime):
    settings = SamplingSettings(seed=12, logit_bias=((7, 2.0), (7, 1.5), (11, float("-inf"))))
    got, want, used = side_by_side(tiny_runtime, settings, "the cat and the dog", 24)
    assert used == FastPath.TOP_K
    assert got == want
