"""A tiny Gemma 3 GGUF (F32) with sliding-window layers, for tests of what differs from llama: the window mask,
q/k norms, NEOX RoPE, the embedding scale."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import gguf
import numpy as np
from gguf_factory import add_spm_vocab, build_vocab


def write_tiny_gemma3(
    path: str | Path, *, n_layers: int = 2, n_embd: int = 64, n_head: int = 4, n_head_kv: int = 2,
    head_dim: int = 16, n_ff: int = 128, window: int = 4, pattern: Sequence[bool] | None = None, seed: int = 1,
    scale: float = 0.3,
) -> Path:  # fmt: skip
    """Random weights, norms of ones; `pattern` (one bool per layer, True: sliding window) goes in the GGUF as
    gemma3.attention.sliding_window_pattern, else llama.cpp's default for gemma3 applies (5 sliding, 1 global)."""
    rng = np.random.default_rng(seed)
    tokens, scores, types = build_vocab()
    w = gguf.GGUFWriter(str(path), "gemma3")
    w.add_name("Tiny Gemma 3 Test")
    w.add_context_length(512)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layers)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_sliding_window(window)
    w.add_rope_freq_base(10000.0)
    if pattern is not None:
        w.add_array("gemma3.attention.sliding_window_pattern", list(pattern))
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    add_spm_vocab(w, tokens, scores, types)

    def t(name: str, *shape: int, ones: bool = False) -> None:
        w.add_tensor(
            name,
            np.ones(shape, np.float32) if ones else (rng.standard_normal(shape) * scale).astype(np.float32),
        )

    t("token_embd.weight", len(tokens), n_embd)
    for i in range(n_layers):
        t(f"blk.{i}.attn_norm.weight", n_embd, ones=True)
        t(f"blk.{i}.attn_q.weight", n_head * head_dim, n_embd)
        t(f"blk.{i}.attn_k.weight", n_head_kv * head_dim, n_embd)
        t(f"blk.{i}.attn_v.weight", n_head_kv * head_dim, n_embd)
        t(f"blk.{i}.attn_q_norm.weight", head_dim, ones=True)
        t(f"blk.{i}.attn_k_norm.weight", head_dim, ones=True)
        t(f"blk.{i}.attn_output.weight", n_embd, n_head * head_dim)
        t(f"blk.{i}.post_attention_norm.weight", n_embd, ones=True)
        t(f"blk.{i}.ffn_norm.weight", n_embd, ones=True)
        t(f"blk.{i}.ffn_gate.weight", n_ff, n_embd)
        t(f"blk.{i}.ffn_up.weight", n_ff, n_embd)
        t(f"blk.{i}.ffn_down.weight", n_embd, n_ff)
        t(f"blk.{i}.post_ffw_norm.weight", n_embd, ones=True)
    t("output_norm.weight", n_embd, ones=True)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return Path(path)
