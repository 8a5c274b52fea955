"""Will a model fit: weights + KV cache at a context length against this machine's RAM and VRAM."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from enum import StrEnum

from engine import units
from engine.kv import kv_layout
from engine.settings import CacheType

# Bits per weight of each quant family, to guess the parameter count from a file size before downloading.
_BPW = {"F32": 32, "F16": 16, "BF16": 16, "Q8": 8.5, "Q6": 6.6, "Q5": 5.6, "Q4": 4.8, "IQ4": 4.4, "Q3": 3.9,
        "IQ3": 3.4, "Q2": 3.0, "IQ2": 2.4, "IQ1": 1.8, "TQ1": 1.7, "TQ2": 2.1, "MXFP4": 4.3}  # fmt: skip
OVERHEAD_BYTES = 300 << 20  # llama.cpp compute buffers and runtime, roughly
TIGHT_SHARE = 0.8  # above this share of available memory a load is "tight"


class Verdict(StrEnum):
    FITS = "fits"
    TIGHT = "tight"
    WONT_FIT = "won't fit"


@dataclass(frozen=True)
class Fit:
    weights: int
    kv_cache: int
    total: int
    available: int
    verdict: Verdict
    exact_kv: bool  # False: the KV cache is estimated from the size (shapes unknown before download)

    def describe(self) -> str:
        approx = "" if self.exact_kv else "~"
        return (
            f"{self.verdict.value}: {units.size(self.total)} needed (weights {units.size(self.weights)} + KV cache "
            f"{approx}{units.size(self.kv_cache)} + runtime {units.size(OVERHEAD_BYTES)}) of {units.size(self.available)} available"
        )


def quant_bits(quant: str) -> float:
    """Bits per weight of a quant name; unknown names count as 16 (so they are never preferred wrongly)."""
    q = quant.upper()
    if q in _BPW:
        return _BPW[q]
    m = re.match(r"(IQ\d|TQ\d|Q\d)", q)
    return _BPW.get(m.group(1), 16.0) if m else 16.0


def estimated_kv_bytes(weights: int, quant: str, n_ctx: int) -> int:
    """Without the shapes: KV bytes per token grow about as the square root of the parameter count
    (Llama 3 8B ~128 KiB/token, Gemma 3 270M ~18 KiB/token, both in F16)."""
    params = weights * 8 / quant_bits(quant)
    return int(n_ctx * 1.4 * math.sqrt(max(params, 1.0)))


def available_memory(hw=None) -> int:
    """RAM available now plus free VRAM where llama.cpp can offload.

    Without a Hardware snapshot, and where llama.cpp is not loaded in this process (the GUI never loads it),
    only RAM is counted: probing GPUs would load llama.cpp here.
    """
    if hw is None:
        import sys

        if "llama_cpp" not in sys.modules:
            import psutil

            return psutil.virtual_memory().available
        from engine.hardware import detect

        hw = detect()
    return hw.ram_available + (hw.vram_free if hw.gpu_offload else 0)


def verdict_for(total: int, available: int) -> Verdict:
    if total <= available * TIGHT_SHARE:
        return Verdict.FITS
    return Verdict.TIGHT if total <= available else Verdict.WONT_FIT


def estimate(
    weights: int, quant: str, n_ctx: int, available: int | None = None, info=None,
    type_k: CacheType = CacheType.F16, type_v: CacheType = CacheType.F16, n_ubatch: int = 512,
    swa_full: bool = False,
) -> Fit:  # fmt: skip
    """`info`: a gguf_info.ModelInfo when the file is local: the KV cache is then exact (llama.cpp's own
    allocation rule, sliding-window layers included, see engine.kv.kv_layout); else it is estimated."""
    available = available_memory() if available is None else available
    if info is not None and info.n_layers:
        kv = kv_layout(info, n_ctx, type_k, type_v, n_ubatch, swa_full).total_bytes
    else:
        kv = estimated_kv_bytes(weights, quant, n_ctx)
    total = weights + kv + OVERHEAD_BYTES
    return Fit(weights, kv, total, available, verdict_for(total, available), info is not None)


def recommend(options, n_ctx: int, available: int | None = None):
    """The largest option that fits, not below 4 bits unless nothing at 4+ bits fits; else the smallest.

    `options` are hub.QuantOption-like (quant, size, projector)."""
    available = available_memory() if available is None else available
    models = [o for o in options if not o.projector]
    if not models:
        return None
    fitting = [o for o in models if estimate(o.size, o.quant, n_ctx, available).verdict is Verdict.FITS]
    good = [o for o in fitting if quant_bits(o.quant) >= 4]
    pool = good or fitting
    if pool:
        return max(pool, key=lambda o: o.size)
    return min(models, key=lambda o: o.size)
