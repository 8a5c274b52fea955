"""Sampling math on a fixed set of logits: the preview per sampler stage (llama.cpp's own samplers), what the
whole chain keeps, and a token's log-probability with its top alternatives."""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Sequence

import llama_cpp
import numpy as np

from engine.events import TokenAlternative
from engine.sampling import SamplerStages
from engine.settings import SamplingSettings
from engine.visual import PreviewStage, PreviewToken

# ------------------------------------------------------------------ sampling preview
_TOKEN_DATA = np.dtype([("id", "<i4"), ("logit", "<f4"), ("p", "<f4")])
assert _TOKEN_DATA.itemsize == ctypes.sizeof(llama_cpp.llama_token_data)


class _Candidates:
    """A llama_token_data_array over a numpy buffer, so llama.cpp's samplers can work on fixed logits."""

    def __init__(self, logits: np.ndarray):
        self.buf = np.empty(len(logits), _TOKEN_DATA)
        self.buf["id"] = np.arange(len(logits), dtype=np.int32)
        self.buf["logit"] = logits
        self.buf["p"] = 0.0
        self.array = llama_cpp.llama_token_data_array(
            data=self.buf.ctypes.data_as(llama_cpp.llama_token_data_p),
            size=len(logits),
            selected=-1,
            sorted=False,
        )

    def apply(self, sampler) -> None:
        llama_cpp.llama_sampler_apply(sampler, ctypes.byref(self.array))

    def current(self) -> tuple[np.ndarray, np.ndarray]:
        """(token ids, logits) still kept, read through the array's data pointer (samplers may move it)."""
        n = self.array.size
        addr = ctypes.cast(self.array.data, ctypes.c_void_p).value
        raw = np.frombuffer(
            (ctypes.c_char * (n * _TOKEN_DATA.itemsize)).from_address(addr), _TOKEN_DATA, count=n
        )
        kept = raw[np.isfinite(raw["logit"])]
        return kept["id"].copy(), kept["logit"].astype(np.float64)


def softmax(logits: np.ndarray) -> np.ndarray:
    if len(logits) == 0:
        return logits
    z = np.exp(logits - logits.max())
    return z / z.sum()


def _stage(
    name: str, ids: np.ndarray, logits: np.ndarray, top_n: int, piece: Callable[[int], str], removed=()
) -> PreviewStage:
    probs = softmax(logits)
    order = np.argsort(-probs, kind="stable")[:top_n]
    tokens = tuple(PreviewToken(int(ids[i]), piece(int(ids[i])), float(probs[i])) for i in order)
    return PreviewStage(name, len(ids), tokens, tuple(removed))


def sampling_preview(
    logits: np.ndarray,
    settings: SamplingSettings,
    vocab,
    n_ctx: int,
    history: Sequence[int],
    piece: Callable[[int], str],
    top_n: int = 20,
) -> list[PreviewStage]:
    """Apply llama.cpp's own samplers one at a time to a copy of `logits`; return the distribution after each.

    The final pick (dist, mirostat) is random and not shown; greedy is shown as the one token it keeps.
    """
    seed = settings.seed if settings.seed >= 0 else 0
    built = SamplerStages(vocab, len(logits), settings, n_ctx, seed)
    try:
        cand = _Candidates(logits)
        ids, cur = cand.current()
        stages = [_stage("model", ids, cur, top_n, piece)]
        watch = {t.token_id for t in stages[0].tokens}
        for name, sampler in built.stages:
            if name in ("dist", "mirostat", "mirostat_v2"):
                continue
            if name in ("penalties", "dry"):
                for tok in history:
                    llama_cpp.llama_sampler_accept(sampler, tok)
            cand.apply(sampler)
            if name == "greedy":
                sel = cand.array.selected
                chosen = int(cand.buf["id"][sel]) if sel >= 0 else int(ids[np.argmax(cur)])
                new_ids, new_logits = np.array([chosen]), np.array([0.0])
            else:
                new_ids, new_logits = cand.current()
            gone = watch - set(new_ids.tolist())
            watch -= gone
            stages.append(_stage(name, new_ids, new_logits, top_n, piece, sorted(gone)))
            ids, cur = new_ids, new_logits
        return stages
    finally:
        built.free()


def chain_kept(logits: np.ndarray, settings: SamplingSettings, vocab, n_ctx: int, history: Sequence[int]):
    """What llama.cpp's whole chain (minus the final random pick) keeps: (ids, probabilities). For tests."""
    seed = settings.seed if settings.seed >= 0 else 0
    built = SamplerStages(vocab, len(logits), settings, n_ctx, seed)
    params = llama_cpp.llama_sampler_chain_default_params()
    chain = llama_cpp.llama_sampler_chain_init(params)
    for name, sampler in built.stages:
        if name in ("dist", "mirostat", "mirostat_v2", "greedy"):
            llama_cpp.llama_sampler_free(sampler)
        else:
            llama_cpp.llama_sampler_chain_add(chain, sampler)
    try:
        for tok in history:
            llama_cpp.llama_sampler_accept(chain, tok)
        cand = _Candidates(logits)
        cand.apply(chain)
        ids, cur = cand.current()
        return ids, softmax(cur)
    finally:
        llama_cpp.llama_sampler_free(chain)


def token_logprobs(
    logits: np.ndarray, token: int, top_n: int, piece: Callable[[int], str]
) -> tuple[float, tuple[TokenAlternative, ...]]:
    """log p(token) under `logits`, and the `top_n` most likely tokens with theirs."""
    logits = logits.astype(np.float64)
    peak = logits.max()
    logz = peak + np.log(np.exp(logits - peak).sum())
    alternatives: tuple[TokenAlternative, ...] = ()
    if top_n:
        idx = np.argpartition(-logits, top_n)[:top_n]
        idx = idx[np.argsort(-logits[idx])]
        alternatives = tuple(TokenAlternative(int(i), piece(int(i)), float(logits[i] - logz)) for i in idx)
    return float(logits[token] - logz), alternatives
