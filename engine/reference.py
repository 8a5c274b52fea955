"""The minimal llama.cpp loop `ingle bench` measures the engine against (like llama.cpp's examples/simple).

It lives in engine/ because it talks to llama.cpp directly; app/ never imports llama_cpp.
"""

from __future__ import annotations

import ctypes
import math
import time
from collections.abc import Sequence
from pathlib import Path

import llama_cpp

from engine.llama_params import context_params, model_params
from engine.runtime import init_backend
from engine.settings import LoadSettings


def eog_tokens(vocab, n_vocab: int) -> list[int]:
    """Every end-of-generation token; banned in all modes so each produces exactly the requested tokens."""
    return [t for t in range(n_vocab) if llama_cpp.llama_vocab_is_eog(vocab, t)]


def model_eog_tokens(path: Path) -> tuple[int, ...]:
    """The end-of-generation tokens of the model file, read from its vocabulary alone (no weights, no context):
    what a server bans for a request's `ignore_eos`."""
    init_backend()
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    model = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
    if not model:
        raise RuntimeError(f"{path}: llama.cpp could not read the model's vocabulary")
    try:
        vocab = llama_cpp.llama_model_get_vocab(model)
        return tuple(eog_tokens(vocab, llama_cpp.llama_vocab_n_tokens(vocab)))
    finally:
        llama_cpp.llama_model_free(model)


class Reference:
    """The minimal llama.cpp loop (like llama.cpp's examples/simple): batch prefill, greedy decode, no Python around it."""

    def __init__(self, path: Path, settings: LoadSettings, banned: Sequence[int] = ()):
        self.ll = ll = llama_cpp
        init_backend()  # llama_backend_init, with llama.cpp's log quietened as in the engine
        started = time.perf_counter()
        mparams = model_params(settings)
        self.model = ll.llama_model_load_from_file(str(path).encode(), mparams)
        if not self.model:
            raise RuntimeError(f"{path}: llama.cpp could not load the model")
        cparams = context_params(settings)  # the engine's own translation: the same workload
        self.ctx = ll.llama_init_from_model(self.model, cparams)
        self.load_seconds = time.perf_counter() - started
        self.vocab = ll.llama_model_get_vocab(self.model)
        self.n_vocab = ll.llama_vocab_n_tokens(self.vocab)
        self.n_batch = ll.llama_n_batch(self.ctx)
        self.banned = list(banned)
        self.chain = ll.llama_sampler_chain_init(ll.llama_sampler_chain_default_params())
        if self.banned:
            self._bias = (ll.llama_logit_bias * len(self.banned))()
            for i, tok in enumerate(self.banned):
                self._bias[i].token, self._bias[i].bias = tok, -math.inf
            ll.llama_sampler_chain_add(
                self.chain, ll.llama_sampler_init_logit_bias(self.n_vocab, len(self.banned), self._bias)
            )
        ll.llama_sampler_chain_add(self.chain, ll.llama_sampler_init_greedy())

    def tokenize(self, text: str) -> list[int]:
        data = text.encode()
        buf = (self.ll.llama_token * (len(data) + 8))()
        n = self.ll.llama_tokenize(self.vocab, data, len(data), buf, len(buf), True, False)
        return list(buf[:n])

    def run(self, tokens: Sequence[int], n_gen: int) -> dict:
        ll = self.ll
        ll.llama_memory_clear(ll.llama_get_memory(self.ctx), True)
        ll.llama_sampler_reset(self.chain)
        prompt = (ll.llama_token * len(tokens))(*tokens)
        one = (ll.llama_token * 1)()
        t0 = time.perf_counter()
        for start in range(0, len(tokens), self.n_batch):
            chunk = min(self.n_batch, len(tokens) - start)
            batch = ll.llama_batch_get_one(
                ctypes.cast(ctypes.byref(prompt, start * 4), ll.llama_token_p), chunk
            )
            if ll.llama_decode(self.ctx, batch) != 0:
                raise RuntimeError("llama_decode failed on the prompt")
        t1 = time.perf_counter()
        token = ll.llama_sampler_sample(self.chain, self.ctx, -1)
        out = [token]
        t2, c2 = time.perf_counter(), time.process_time()
        while len(out) < n_gen:
            one[0] = token
            if ll.llama_decode(self.ctx, ll.llama_batch_get_one(one, 1)) != 0:
                raise RuntimeError("llama_decode failed while generating")
            token = ll.llama_sampler_sample(self.chain, self.ctx, -1)
            out.append(token)
        t3, c3 = time.perf_counter(), time.process_time()
        return rates(len(tokens), t1 - t0, len(out), t3 - t2, out, cpu_decode_s=c3 - c2)

    def close(self) -> None:
        ll = self.ll
        if self.chain:
            ll.llama_sampler_free(self.chain)
            self.chain = None
        if self.ctx:
            ll.llama_free(self.ctx)
            self.ctx = None
        if self.model:
            ll.llama_model_free(self.model)
            self.model = None


def rates(
    prompt_tokens: int,
    prefill_s: float,
    generated: int,
    decode_s: float,
    tokens=(),
    cpu_decode_s: float = 0.0,
) -> dict:
    # the first generated token comes from the prefill's logits; decode time covers the other generated - 1
    return {
        "prompt_tokens": prompt_tokens,
        "generated_tokens": generated,
        "prefill_seconds": prefill_s,
        "decode_seconds": decode_s,
        "prefill_tok_s": prompt_tokens / prefill_s if prefill_s > 0 else 0.0,
        "decode_tok_s": (generated - 1) / decode_s if generated > 1 and decode_s > 0 else 0.0,
        "tokens": list(tokens),
        # CPU seconds per decoded token barely move when other processes take the cores: a steadier overhead gauge
        "cpu_decode_tok_s": (generated - 1) / cpu_decode_s if generated > 1 and cpu_decode_s > 0 else 0.0,
    }


def f16_copy(src: str | Path, out: str | Path, threads: int = 0) -> Path:
    """`src` rewritten with F16 weights by llama.cpp's quantizer (dequantized, so it computes what `src` computes,
    at F16's cost): the benchmark's speculative target when no pair is given. Written atomically."""
    init_backend()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_F16
    params.allow_requantize = True
    params.nthread = threads
    out = Path(out)
    tmp = out.with_name(out.name + ".part")
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), ctypes.byref(params))
    if rc != 0:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(
            f"llama.cpp's quantizer could not write an F16 copy of {Path(src).name} (code {rc})"
        )
    tmp.replace(out)
    return out
