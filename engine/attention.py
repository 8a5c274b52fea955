"""Capture the attention weights llama.cpp computes: one evaluation of up to 512 tokens in a separate context on
the loaded model, with flash attention off and a graph evaluation callback that copies every layer's softmax.

llama.cpp names the softmax of layer `il` "kq_soft_max-<il>" (llm_graph_context::build_attn_mha in
src/llama-graph.cpp of the vendored llama.cpp; the name is set by llama_context::graph_get_cb as "%s-%d"). Its
shape is ne = [n_kv, n_tokens, n_head, n_stream] (ggml order, fastest first), so in numpy it reads
[n_stream, n_head, n_tokens, n_kv]. The context here is fresh and evaluates the tokens in one micro-batch from
position 0, so KV cell i holds position i; cells past the last token are padding (masked to 0) and dropped.
Runs in the engine child only (it needs the model); the GUI receives an engine.attention_map.AttentionMap.
"""

from __future__ import annotations

import ctypes
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import llama_cpp
import numpy as np

from engine.attention_map import MAX_TOKENS, AttentionMap, token_cap
from engine.errors import Cancelled, EngineError, SettingsError
from engine.kv import sliding_layers
from engine.llama_params import context_params

if TYPE_CHECKING:
    from engine.runtime import Runtime

SOFTMAX_NAME = b"kq_soft_max-"
GGML_TYPE_F32 = 0
GGML_MAX_DIMS = 4
_PAD = 256  # llama.cpp pads the KV cache to 256 cells


class _GGMLTensor(ctypes.Structure):
    """The head of struct ggml_tensor (ggml/include/ggml.h of the vendored llama.cpp, GGML_MAX_DIMS 4): only the
    fields before `op` are read, so the rest of the layout does not matter here."""

    _fields_ = [
        ("type", ctypes.c_int),
        ("buffer", ctypes.c_void_p),
        ("ne", ctypes.c_int64 * GGML_MAX_DIMS),
        ("nb", ctypes.c_size_t * GGML_MAX_DIMS),
    ]


_ggml = None


def _ggml_lib() -> ctypes.CDLL:
    """ggml's tensor functions from the library llama-cpp-python ships (already loaded by libllama)."""
    global _ggml
    if _ggml is None:
        lib = ctypes.CDLL(str(Path(llama_cpp.__file__).parent / "lib" / "libggml-base.so"))
        lib.ggml_get_name.argtypes = [ctypes.c_void_p]
        lib.ggml_get_name.restype = ctypes.c_char_p
        lib.ggml_nbytes.argtypes = [ctypes.c_void_p]
        lib.ggml_nbytes.restype = ctypes.c_size_t
        lib.ggml_backend_tensor_get.argtypes = [
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_size_t,
        ]
        lib.ggml_backend_tensor_get.restype = None
        _ggml = lib
    return _ggml


def _tokens_for(rt: Runtime, text_or_tokens: str | Sequence[int], max_tokens: int) -> tuple[list[int], int]:
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or not 1 <= max_tokens <= MAX_TOKENS:
        raise SettingsError(
            "max_tokens", f"must be a whole number from 1 to {MAX_TOKENS}, not {max_tokens!r}."
        )
    if isinstance(text_or_tokens, str):
        tokens = rt.tokenize(text_or_tokens, add_special=True)
    else:
        tokens = [int(t) for t in text_or_tokens]
        bad = [t for t in tokens if not 0 <= t < rt.n_vocab]
        if bad:
            raise SettingsError(
                "tokens", f"token id {bad[0]} is not in this model's vocabulary (0..{rt.n_vocab - 1})."
            )
    if not tokens:
        raise SettingsError("text", "there is nothing to evaluate: give a text or at least one token.")
    # the most recent tokens matter most in a conversation; the ones before the cap are left out and counted
    cap = token_cap(
        llama_cpp.llama_model_n_layer(rt.model), llama_cpp.llama_model_n_head(rt.model), max_tokens
    )
    dropped = max(0, len(tokens) - cap)
    return tokens[dropped:], dropped


def capture(rt: Runtime, text_or_tokens: str | Sequence[int], max_tokens: int = MAX_TOKENS) -> AttentionMap:
    """Evaluate `text_or_tokens` (a text gets the model's BOS) and return every layer's attention softmax, for
    the last `max_tokens` tokens (fewer on big models: engine.attention_map.token_cap).

    K and V are kept in F32 for this pass, so the weights are the model's and not a cache quantization's; the
    chat's own context and KV cache are not touched."""
    rt.require_model()
    tokens, dropped = _tokens_for(rt, text_or_tokens, max_tokens)
    rt.stop_flag.clear()  # a Stop from before this request is not for it; one during it ends the evaluation
    n = len(tokens)
    cells = -(-n // _PAD) * _PAD
    ggml = _ggml_lib()
    captured: dict[int, np.ndarray] = {}
    problems: list[str] = []

    @llama_cpp.ggml_backend_sched_eval_callback
    def on_tensor(tensor, ask: bool, _user) -> bool:
        name = ggml.ggml_get_name(tensor) or b""
        if ask:
            return name.startswith(SOFTMAX_NAME)
        if name.startswith(SOFTMAX_NAME):
            try:
                captured[int(name[len(SOFTMAX_NAME) :])] = _read(ggml, tensor, n)
            except (ValueError, EngineError) as err:  # never raise through llama.cpp's C frames
                problems.append(f"{name.decode(errors='replace')}: {err}")
            if rt.heartbeat:  # one decode of 512 tokens can outlast the host's patience on a slow machine
                try:
                    rt.heartbeat()
                except OSError:  # the pipe is gone, so is the parent; the child ends with it
                    pass
        return not rt.stop_flag.is_set()

    # the chat context's parameters (threads, RoPE scaling for its length), then this pass's own
    cparams = context_params(rt.load_settings, llama_cpp.llama_model_n_ctx_train(rt.model))
    cparams.n_ctx = cparams.n_batch = cparams.n_ubatch = cells  # one micro-batch: cell i holds position i
    cparams.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED  # the softmax exists only without it
    cparams.type_k = cparams.type_v = llama_cpp.GGML_TYPE_F32
    cparams.swa_full = (
        True  # sliding-window layers keep every cell too, so cells map to positions the same way
    )
    cparams.cb_eval = on_tensor
    cparams.cb_eval_user_data = None
    started = time.perf_counter()
    ctx = llama_cpp.llama_init_from_model(rt.model, cparams)
    if not ctx:
        raise EngineError(
            f"llama.cpp could not create a {cells}-token context to capture attention; free some memory or "
            "capture fewer tokens."
        )
    batch = llama_cpp.llama_batch_init(cells, 0, 1)
    try:
        _apply_adapters(rt, ctx)
        batch.n_tokens = n
        for i, tok in enumerate(tokens):
            batch.token[i] = tok
            batch.pos[i] = i
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = 0
            batch.logits[i] = i == n - 1
        rc = llama_cpp.llama_decode(ctx, batch)
        rt.evaluations += 1
    finally:
        llama_cpp.llama_batch_free(batch)
        llama_cpp.llama_free(ctx)
    if rt.stop_flag.is_set():
        raise Cancelled("Capturing attention was cancelled.")
    if rc != 0:
        raise EngineError(f"llama_decode failed with code {rc} while capturing attention.")
    if problems:
        raise EngineError(f"unexpected attention tensor {problems[0]}")
    n_layers = llama_cpp.llama_model_n_layer(rt.model)
    if sorted(captured) != list(range(n_layers)):
        raise EngineError(
            f"llama.cpp computed attention for {len(captured)} of {n_layers} layers; this architecture does not "
            "name its attention softmax 'kq_soft_max' in every layer, so it cannot be shown."
        )
    n_swa = llama_cpp.llama_model_n_swa(rt.model)
    sliding = tuple(i for i, s in enumerate(sliding_layers(rt.info)) if s) if n_swa > 0 else ()
    return AttentionMap(
        tokens=tuple(tokens),
        pieces=tuple(rt.piece(t) for t in tokens),
        weights=np.stack([captured[i] for i in range(n_layers)]),
        sliding_window_layers=sliding,
        sliding_window=n_swa,
        dropped=dropped,
        seconds=time.perf_counter() - started,
    )


def _read(ggml: ctypes.CDLL, tensor: int, n: int) -> np.ndarray:
    """One softmax tensor as float32 [head, query, key] for the first `n` KV cells (the padding dropped)."""
    head = _GGMLTensor.from_address(tensor)
    if head.type != GGML_TYPE_F32:
        raise EngineError(f"type {head.type}, expected F32")
    n_kv, n_q, n_head, n_stream = (int(x) for x in head.ne)
    if n_stream != 1 or n_q != n or n_kv < n or head.nb[0] != 4 or head.nb[1] != 4 * n_kv:
        raise EngineError(
            f"shape {[n_kv, n_q, n_head, n_stream]}, expected [>={n}, {n}, heads, 1], contiguous"
        )
    nbytes = ggml.ggml_nbytes(tensor)
    data = np.empty(nbytes // 4, np.float32)
    ggml.ggml_backend_tensor_get(tensor, data.ctypes.data, 0, nbytes)
    weights = data.reshape(n_head, n_q, n_kv)
    if weights[
        :, :, n:
    ].any():  # cells past the last token must be masked padding, or cell i is not position i
        raise EngineError(
            f"weights on {n_kv - n} KV cells past the last token; cells do not map to positions"
        )
    return np.ascontiguousarray(weights[:, :, :n])


def _apply_adapters(rt: Runtime, ctx) -> None:
    """The chat's LoRA adapters, at their scales, on this context too: the weights are the model the user runs."""
    handles = list(rt._adapters)
    if not handles:
        return
    arr = (llama_cpp.llama_adapter_lora_p_ctypes * len(handles))(*handles)
    scales = (ctypes.c_float * len(handles))(*rt.adapter_scales)
    if llama_cpp.llama_set_adapters_lora(ctx, arr, len(handles), scales) != 0:
        raise EngineError("llama.cpp refused to apply the adapters to the attention context.")
