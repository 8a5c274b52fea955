"""Attention weights captured from llama.cpp agree with an independent numpy forward pass of the same tiny model,
and on the starter they are distributions that respect causality and the sliding window."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import gguf
import numpy as np
import pytest
from tiny_gemma3 import write_tiny_gemma3

from engine.attention_map import MAX_BYTES, MAX_TOKENS, AttentionMap, token_cap
from engine.errors import EngineError, SettingsError
from engine.runtime import Runtime
from engine.settings import LoadSettings, RopeScaling

TEXT = "the cat is on the moon and the dog is in the sun , hello world"


def _rms(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def _rope_norm(x: np.ndarray, base: float = 10000.0, pos_scale: float = 1.0) -> np.ndarray:
    """llama.cpp's LLAMA_ROPE_TYPE_NORM (the llama arch): rotate adjacent pairs (x[2i], x[2i+1]) by
    pos*base^(-2i/d); linear RoPE scaling multiplies the positions by `pos_scale`."""
    n, _, d = x.shape
    theta = (np.arange(n) * pos_scale)[:, None] * base ** (-np.arange(0, d, 2) / d)[None, :]
    cos, sin = np.cos(theta)[:, None, :], np.sin(theta)[:, None, :]
    even, odd = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = even * cos - odd * sin
    out[..., 1::2] = even * sin + odd * cos
    return out


def numpy_llama_attention(path, tokens: list[int], pos_scale: float = 1.0) -> np.ndarray:
    """The attention softmax of every layer and head of a tiny llama GGUF (F32 weights), computed in float64 from
    the file's tensors with no llama.cpp code: [layer, head, query, key]."""
    reader = gguf.GGUFReader(str(path))
    t = {tensor.name: np.asarray(tensor.data, np.float64) for tensor in reader.tensors}

    def field(key: str):
        return reader.fields[key].contents()

    n_layers, n_head = field("llama.block_count"), field("llama.attention.head_count")
    n_kv, eps = field("llama.attention.head_count_kv"), field("llama.attention.layer_norm_rms_epsilon")
    x = t["token_embd.weight"][tokens]
    n, d = x.shape
    hd = d // n_head
    causal = np.tril(np.ones((n, n), bool))
    out = []
    for i in range(n_layers):
        h = _rms(x, t[f"blk.{i}.attn_norm.weight"], eps)
        q = _rope_norm((h @ t[f"blk.{i}.attn_q.weight"].T).reshape(n, n_head, hd), pos_scale=pos_scale)
        k = _rope_norm((h @ t[f"blk.{i}.attn_k.weight"].T).reshape(n, n_kv, hd), pos_scale=pos_scale)
        v = (h @ t[f"blk.{i}.attn_v.weight"].T).reshape(n, n_kv, hd)
        k, v = (
            np.repeat(k, n_head // n_kv, axis=1),
            np.repeat(v, n_head // n_kv, axis=1),
        )  # grouped-query heads
        scores = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(hd)
        scores = np.where(causal, scores, -np.inf)
        p = np.exp(scores - scores.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        out.append(p)
        x = x + np.einsum("hqk,khd->qhd", p, v).reshape(n, d) @ t[f"blk.{i}.attn_output.weight"].T
        h = _rms(x, t[f"blk.{i}.ffn_norm.weight"], eps)
        gate, up = h @ t[f"blk.{i}.ffn_gate.weight"].T, h @ t[f"blk.{i}.ffn_up.weight"].T
        x = x + (gate / (1 + np.exp(-gate)) * up) @ t[f"blk.{i}.ffn_down.weight"].T
    return np.stack(out)


def test_captured_attention_matches_a_numpy_forward_pass(tiny_runtime, tiny_model):
    amap = tiny_runtime.attention(TEXT)
    assert isinstance(amap, AttentionMap)
    assert amap.tokens[0] == 1 and len(amap.tokens) > 10  # the text got its BOS
    expected = numpy_llama_attention(tiny_model, list(amap.tokens))
    assert amap.weights.dtype == np.float32 and amap.weights.shape == expected.shape == (
        2,
        4,
        len(amap.tokens),
        len(amap.tokens),
    )
    # llama.cpp runs this in float32 (weights and the K/V of this pass are F32), numpy in float64: the gap is
    # float32 rounding over two layers of 64-wide dot products and exp, measured at 1.0e-7 at most (17 and 215
    # tokens). 1e-6 absolute leaves room for other CPUs' summation order and stays far below a real mistake
    # (a wrong RoPE, scale or head mapping moves weights by 1e-2 or more, as a shifted token shows below).
    np.testing.assert_allclose(amap.weights, expected, atol=1e-6, rtol=0)
    assert np.abs(amap.weights - expected).max() > 0  # two real computations, not one copied
    shifted = numpy_llama_attention(tiny_model, [1, *amap.tokens[1:-1], amap.tokens[1]])
    assert np.abs(shifted[:, :, -1] - amap.weights[:, :, -1]).max() > 1e-2  # the comparison can fail


def _rope_neox(x: np.ndarray, base: float = 10000.0) -> np.ndarray:
    """llama.cpp's LLAMA_ROPE_TYPE_NEOX (Gemma): rotate the pairs (x[i], x[i + d/2]) by pos*base^(-2i/d)."""
    n, _, d = x.shape
    theta = np.arange(n)[:, None] * base ** (-np.arange(0, d, 2) / d)[None, :]
    cos, sin = np.cos(theta)[:, None, :], np.sin(theta)[:, None, :]
    a, b = x[..., : d // 2], x[..., d // 2 :]
    return np.concatenate([a * cos - b * sin, a * sin + b * cos], axis=-1)


def numpy_gemma3_attention(path, tokens: list[int]) -> np.ndarray:
    """The same for a tiny Gemma 3: embeddings scaled by sqrt(n_embd), q/k RMS-normed per head, NEOX RoPE,
    post-attention and post-FFN norms, GELU (tanh form), and the sliding-window mask (a query sees the `window`
    tokens up to itself) on the layers the GGUF's pattern marks."""
    reader = gguf.GGUFReader(str(path))
    t = {tensor.name: np.asarray(tensor.data, np.float64) for tensor in reader.tensors}

    def field(key: str):
        return reader.fields[f"gemma3.{key}"].contents()

    n_head, n_kv, hd = (
        field("attention.head_count"),
        field("attention.head_count_kv"),
        field("attention.key_length"),
    )
    eps, window = field("attention.layer_norm_rms_epsilon"), field("attention.sliding_window")
    pattern = field("attention.sliding_window_pattern")
    x = t["token_embd.weight"][tokens] * np.sqrt(t["token_embd.weight"].shape[1])
    n = len(tokens)
    qi, ki = np.arange(n)[:, None], np.arange(n)[None, :]
    out = []
    for i in range(field("block_count")):
        visible = (ki <= qi) & ((qi - ki < window) if pattern[i] else True)
        h = _rms(x, t[f"blk.{i}.attn_norm.weight"], eps)
        q = (h @ t[f"blk.{i}.attn_q.weight"].T).reshape(n, n_head, hd)
        k = (h @ t[f"blk.{i}.attn_k.weight"].T).reshape(n, n_kv, hd)
        q = _rope_neox(_rms(q, t[f"blk.{i}.attn_q_norm.weight"], eps))
        k = _rope_neox(_rms(k, t[f"blk.{i}.attn_k_norm.weight"], eps))
        v = (h @ t[f"blk.{i}.attn_v.weight"].T).reshape(n, n_kv, hd)
        k, v = np.repeat(k, n_head // n_kv, axis=1), np.repeat(v, n_head // n_kv, axis=1)
        scores = np.where(visible, np.einsum("qhd,khd->hqk", q / np.sqrt(hd), k), -np.inf)
        p = np.exp(scores - scores.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        out.append(p)
        attn = np.einsum("hqk,khd->qhd", p, v).reshape(n, n_head * hd) @ t[f"blk.{i}.attn_output.weight"].T
        x = x + _rms(attn, t[f"blk.{i}.post_attention_norm.weight"], eps)
        h = _rms(x, t[f"blk.{i}.ffn_norm.weight"], eps)
        gate = h @ t[f"blk.{i}.ffn_gate.weight"].T
        gate = 0.5 * gate * (1 + np.tanh(np.sqrt(2 / np.pi) * (gate + 0.044715 * gate**3)))
        ffn = (gate * (h @ t[f"blk.{i}.ffn_up.weight"].T)) @ t[f"blk.{i}.ffn_down.weight"].T
        x = x + _rms(ffn, t[f"blk.{i}.post_ffw_norm.weight"], eps)
    return np.stack(out)


@pytest.fixture(scope="module")
def tiny_gemma3(tmp_path_factory):
    """Layer 0 slides with a 4-token window, layer 1 is global (the pattern written in the GGUF)."""
    path = write_tiny_gemma3(
        tmp_path_factory.mktemp("gemma3") / "tiny-gemma3.gguf", window=4, pattern=[True, False]
    )
    rt = Runtime()
    list(rt.load(path, LoadSettings(n_ctx=256)))
    yield path, rt
    rt.close()


def test_sliding_window_layers_match_numpy_and_are_banded(tiny_gemma3):
    path, rt = tiny_gemma3
    amap = rt.attention(TEXT)
    assert amap.sliding_window == 4 and amap.sliding_window_layers == (0,)
    w, n = amap.weights, len(amap.tokens)
    qi, ki = np.arange(n)[:, None], np.arange(n)[None, :]
    assert w[0][:, qi - ki >= 4].max() == 0.0  # outside the window: nothing
    assert w[0][:, (qi - ki < 4) & (ki <= qi)].min() > 0.0  # inside it: something, for every head
    assert w[1][:, qi - ki >= 4].max() > 0.01  # the global layer reaches further back
    np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-5)
    expected = numpy_gemma3_attention(path, list(amap.tokens))
    # layer 0 depends only on the embeddings and attention: float32 rounding, measured 1.5e-7. Layer 1 also sees
    # layer 0's FFN, where ggml's CPU GELU reads a table indexed by its input rounded to float16: measured
    # 1.5e-4 against the exact GELU here (3.7e-5 when numpy rounds the same way), so 5e-4 for later layers.
    np.testing.assert_allclose(w[0], expected[0], atol=1e-6, rtol=0)
    np.testing.assert_allclose(w[1], expected[1], atol=5e-4, rtol=0)


def test_the_capture_uses_the_chats_rope_scaling(tiny_model):
    # a 1024-token chat on a model trained for 512, stretched linearly: positions count half (scale 0.5)
    rt = Runtime()
    list(rt.load(tiny_model, LoadSettings(n_ctx=1024, rope_scaling=RopeScaling.LINEAR)))
    try:
        amap = rt.attention(TEXT)
    finally:
        rt.close()
    np.testing.assert_allclose(
        amap.weights, numpy_llama_attention(tiny_model, list(amap.tokens), 0.5), atol=1e-6
    )
    unscaled = numpy_llama_attention(tiny_model, list(amap.tokens))
    assert np.abs(amap.weights - unscaled).max() > 1e-3


def test_rows_are_causal_distributions(tiny_runtime):
    w = tiny_runtime.attention(TEXT).weights
    np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-5)
    assert np.triu(w, 1).max() == 0.0
    assert (w >= 0).all()


def test_token_ids_cap_and_bad_input(tiny_runtime):
    ids = tiny_runtime.tokenize(TEXT, add_special=True)
    from_ids = tiny_runtime.attention(ids)
    assert list(from_ids.tokens) == ids and from_ids.dropped == 0
    capped = tiny_runtime.attention(ids, max_tokens=5)
    assert (
        list(capped.tokens) == ids[-5:] and capped.dropped == len(ids) - 5 and capped.weights.shape[-1] == 5
    )
    long = tiny_runtime.attention(ids * 40)  # more than the cap
    assert len(long.tokens) == MAX_TOKENS and long.dropped == len(ids) * 40 - MAX_TOKENS
    for bad in (0, MAX_TOKENS + 1, True, 2.5):
        with pytest.raises(SettingsError, match="max_tokens"):
            tiny_runtime.attention(ids, max_tokens=bad)
    with pytest.raises(SettingsError, match="vocabulary"):
        tiny_runtime.attention([1, 10**7])
    with pytest.raises(SettingsError, match="nothing to evaluate"):
        tiny_runtime.attention([])


def test_capture_leaves_the_chat_cache_alone(tiny_runtime):
    tiny_runtime.evaluate(tiny_runtime.tokenize("hello world", add_special=True))
    before = tiny_runtime.cached_tokens
    tiny_runtime.attention(TEXT)
    assert tiny_runtime.cached_tokens == before
    assert tiny_runtime.positions() == (0, len(before) - 1)


def test_json_dense_and_top_k_forms(tiny_runtime):
    amap = tiny_runtime.attention(TEXT)
    n = len(amap.tokens)
    dense = amap.to_json()
    assert dense["format"] == "dense" and dense["tokens"] == list(amap.tokens)
    np.testing.assert_allclose(np.array(dense["weights"]), amap.weights, atol=1e-6)
    sparse = amap.to_json(dense_limit=4, top_k=3)
    assert sparse["format"] == "top-k" and sparse["top_k"] == 3
    pairs = sparse["weights"][0][1][n - 1]
    best = np.argsort(-amap.weights[0, 1, n - 1])[:3]
    assert [key for key, _ in pairs] == best.tolist()
    assert [w for _, w in pairs] == sorted((w for _, w in pairs), reverse=True)


def test_inspect_cli_attention_json_through_the_engine_child(tiny_model):
    out = subprocess.run(
        [sys.executable, "-m", "app.cli", "inspect", str(tiny_model), TEXT, "--attention", "--json"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    att = json.loads(out.stdout)["attention"]
    n = len(att["tokens"])
    assert att["format"] == "dense" and len(att["weights"]) == 2 and len(att["weights"][0]) == 4
    weights = np.array(att["weights"])
    assert weights.shape == (2, 4, n, n) and att["sliding_window_layers"] == []
    np.testing.assert_allclose(weights.sum(-1), 1.0, atol=1e-4)
    assert np.triu(weights, 1).max() == 0.0
    text = subprocess.run(
        [sys.executable, "-m", "app.cli", "inspect", str(tiny_model), "the cat", "--attention", "--in-process"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert text.returncode == 0, text.stderr
    assert "Attention: 2 layers x 4 heads over 3 tokens" in text.stdout
    assert re.search(r"layer  1 \(global\): '(<s>| the| cat)' 0\.\d\d", text.stdout)
    bad = subprocess.run(
        [sys.executable, "-m", "app.cli", "inspect", "no-such-model", "hi", "--attention"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert bad.returncode == 2 and bad.stderr.startswith("ingle: error:") and "Traceback" not in bad.stderr


@pytest.fixture(scope="module")
def starter(starter_model):
    rt = Runtime()
    list(rt.load(starter_model, LoadSettings(n_ctx=1024)))
    yield rt
    rt.close()


def test_starter_attention_is_causal_and_marks_sliding_layers(starter):
    amap = starter.attention("The capital of France is Paris. The capital of Italy is")
    w = amap.weights
    assert w.shape[:2] == (18, 4)
    np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-4)
    assert np.triu(w, 1).max() == 0.0
    # Gemma 3: five sliding-window layers, then one global, repeated (llama.cpp's pattern 6 for gemma3)
    assert amap.sliding_window == 512
    assert amap.sliding_window_layers == tuple(i for i in range(18) if i % 6 != 5)


def test_after_an_unload_the_engine_says_so_instead_of_aborting(tiny_model):
    rt = Runtime()
    list(rt.load(tiny_model, LoadSettings(n_ctx=256)))
    rt.unload()
    for call in (lambda: rt.tokenize("hi"), lambda: rt.render_tokens([]), lambda: rt.attention("hi")):
        with pytest.raises(EngineError, match="No model is loaded"):
            call()


def test_big_models_get_fewer_tokens_so_the_weights_stay_bounded():
    assert token_cap(18, 4) == MAX_TOKENS  # the starter: 18 x 4 x 512² floats = 72 MiB
    assert token_cap(32, 32) == 256  # a 7B-class model: 256 MiB at 256 tokens, not 1 GiB at 512
    assert token_cap(32, 32, max_tokens=100) == 100
    for shape in ((18, 4), (32, 32), (80, 64)):
        n = token_cap(*shape)
        assert shape[0] * shape[1] * n * n * 4 <= MAX_BYTES
