"""Will a model fit: weights + KV cache at a context length against this machine's RAM and VRAM."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from engine import units
from engine.errors import EngineError, SettingsError
from engine.kv import kv_layout
from engine.settings import CacheType, FlashAttention, LoadSettings
from engine.text import printable

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
    embedding: bool = False  # an embedding model: weights and runtime only, no KV cache

    def describe(self) -> str:
        if self.embedding:
            return (
                f"{self.verdict.value}: {units.size(self.total)} needed (weights {units.size(self.weights)} + runtime "
                f"{units.size(OVERHEAD_BYTES)}; an embedding model keeps no KV cache) of {units.size(self.available)} "
                "available"
            )
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
    swa_full: bool = False, embedding: bool = False,
) -> Fit:  # fmt: skip
    """`info`: a gguf_info.ModelInfo when the file is local: the KV cache is then exact (llama.cpp's own
    allocation rule, sliding-window layers included, see engine.kv.kv_layout); else it is estimated.
    `embedding`: an embedding model, which keeps no KV cache (weights and runtime only)."""
    available = available_memory() if available is None else available
    if embedding:
        total = weights + OVERHEAD_BYTES
        return Fit(weights, 0, total, available, verdict_for(total, available), True, embedding=True)
    if info is not None and info.n_layers:
        kv = kv_layout(info, n_ctx, type_k, type_v, n_ubatch, swa_full).total_bytes
    else:
        kv = estimated_kv_bytes(weights, quant, n_ctx)
    total = weights + kv + OVERHEAD_BYTES
    return Fit(weights, kv, total, available, verdict_for(total, available), info is not None)


def recommend(options, n_ctx: int, available: int | None = None, embedding: bool = False):
    """The largest option that fits, not below 4 bits unless nothing at 4+ bits fits; else the smallest.

    `options` are hub.QuantOption-like (quant, size, projector); `embedding`: they are an embedding model's."""
    available = available_memory() if available is None else available
    models = [o for o in options if not o.projector]
    if not models:
        return None
    fitting = [
        o
        for o in models
        if estimate(o.size, o.quant, n_ctx, available, embedding=embedding).verdict is Verdict.FITS
    ]
    good = [o for o in fitting if quant_bits(o.quant) >= 4]
    pool = good or fitting
    if pool:
        return max(pool, key=lambda o: o.size)
    return min(models, key=lambda o: o.size)


# ------------------------------------------------------------------ choosing settings that fit
MIN_FIT_CTX = 512  # below this a chat is not worth loading: "nothing fits" instead
USEFUL_CTX = 4096  # partly offloaded, more GPU layers are preferred down to this context, not below
GPU_OVERHEAD_BYTES = 256 << 20  # the GPU backend's compute buffers, roughly, when any layer is offloaded
RAM_SHARE = 0.9  # leave the system a tenth of what is free now (page cache churn, the GUI, other programs)
_QUANT_CACHES = (CacheType.F16, CacheType.Q8_0)  # tried in this order at each context length


def memory_limit() -> int:
    """INGLE_MEMORY_LIMIT in bytes (0: none)."""
    import os

    text = os.environ.get("INGLE_MEMORY_LIMIT", "").strip()
    if not text:
        return 0
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?", text, re.IGNORECASE)
    if not m:
        raise SettingsError(
            "INGLE_MEMORY_LIMIT", f"'{printable(text)}' is not a size; give bytes or e.g. 512M, 8G"
        )
    return int(float(m.group(1)) * 1024 ** "_KMGT".index(m.group(2).upper() or "_"))


class WontFitError(EngineError):
    """A load refused up front: the model and its KV cache need more memory than is free."""


@dataclass(frozen=True)
class Budget:
    """The memory a load may use: RAM and (when llama.cpp can offload) VRAM, in bytes."""

    ram: int
    vram: int = 0

    @classmethod
    def from_hardware(cls, hw) -> Budget:
        """What is free now, less a margin; INGLE_MEMORY_LIMIT (bytes, or 512M, 8G) caps the RAM a load may use
        (a machine shared with other work)."""
        vram = hw.vram_free if hw.gpu_offload and hw.gpus else 0
        ram = int(hw.ram_available * RAM_SHARE)
        limit = memory_limit()
        return cls(min(ram, limit) if limit else ram, int(vram * RAM_SHARE))

    def describe(self) -> str:
        gpu = f" and {units.size(self.vram)} VRAM" if self.vram else ""
        return f"{units.size(self.ram)} RAM{gpu}"


@dataclass(frozen=True)
class Need:
    """What a load needs in RAM and in VRAM with given settings (weights split by offloaded layers)."""

    ram: int
    vram: int
    kv_cache: int

    def within(self, budget: Budget) -> bool:
        return self.ram <= budget.ram and self.vram <= budget.vram


@dataclass(frozen=True)
class FitChoice:
    settings: LoadSettings
    need: Need
    budget: Budget
    reason: str


def need_for(info, settings: LoadSettings, extra_bytes: int = 0) -> Need:
    """RAM and VRAM for `info` (a local gguf_info.ModelInfo) loaded with `settings`. Offloaded layers take their
    share of the weights and of the KV cache to the GPU; the output layer goes last (llama.cpp's n_gpu_layers
    counts it as layer n_layers + 1). `extra_bytes`: adapters, counted where the weights are."""
    n_layers = max(1, info.n_layers)
    kv = _kv_bytes(
        info, settings.n_ctx, settings.type_k, settings.type_v, settings.n_ubatch, settings.swa_full
    )
    weights = info.file_size + extra_bytes
    ngl = n_layers + 1 if settings.n_gpu_layers < 0 else min(settings.n_gpu_layers, n_layers + 1)
    gpu_weights = weights * ngl // (n_layers + 1)
    gpu_kv = kv * min(ngl, n_layers) // n_layers
    vram = gpu_weights + gpu_kv + (GPU_OVERHEAD_BYTES if ngl else 0)
    ram = weights - gpu_weights + kv - gpu_kv + OVERHEAD_BYTES
    return Need(ram, vram, kv)


def _kv_bytes(info, n_ctx: int, type_k, type_v, n_ubatch: int, swa_full: bool) -> int:
    """The KV cache's size, remembered for the last model (the chooser asks for the same few sizes often)."""
    shape = (info.path, info.architecture, info.n_layers, info.n_kv_heads, info.head_dim_k, info.head_dim_v)
    key = (*shape, info.sliding_window, n_ctx, type_k, type_v, n_ubatch, swa_full)
    if key not in _KV_MEMO:
        if len(_KV_MEMO) > 4096:
            _KV_MEMO.clear()
        _KV_MEMO[key] = kv_layout(info, n_ctx, type_k, type_v, n_ubatch, swa_full).total_bytes
    return _KV_MEMO[key]


_KV_MEMO: dict = {}


def _contexts(want: int) -> list[int]:
    """`want`, then halvings down to MIN_FIT_CTX: longer first."""
    out, n = [], want
    while n >= MIN_FIT_CTX:
        out.append(n)
        n //= 2
    return out or [want]


def _candidates(n_layers: int, asked_ctx: int, gpu: bool):
    """(GPU layers, context) in order of preference: all layers on the GPU at the longest context that fits; then
    as many layers as fit with a useful context (USEFUL_CTX, or the one asked for if shorter); then shorter
    contexts. Without a GPU: the longest context."""
    contexts = _contexts(asked_ctx)
    if not gpu:
        yield from ((0, c) for c in contexts)
        return
    yield from ((-1, c) for c in contexts)
    useful = [c for c in contexts if c >= min(USEFUL_CTX, asked_ctx)]
    for ngl in range(n_layers, -1, -1):
        yield from ((ngl, c) for c in useful)
    for ngl in range(n_layers, -1, -1):
        yield from ((ngl, c) for c in contexts if c not in useful)


def choose(info, settings: LoadSettings, budget: Budget, extra_bytes: int = 0) -> FitChoice | None:
    """GPU layers, context length and KV cache type that fit `budget` (see _candidates for the order; at each,
    an F16 cache before Q8_0). None when nothing fits."""
    caches = _QUANT_CACHES if settings.flash_attn is not FlashAttention.OFF else _QUANT_CACHES[:1]
    if (
        settings.type_k is not CacheType.F16 or settings.type_v is not CacheType.F16
    ):  # the user chose: keep it
        caches = (None,)
    for ngl, n_ctx in _candidates(max(1, info.n_layers), settings.n_ctx, budget.vram > 0):
        for cache in caches:
            tried = settings.replace(n_gpu_layers=ngl, n_ctx=n_ctx)
            if cache is not None:
                tried = tried.replace(type_k=cache, type_v=cache)
            need = need_for(info, tried, extra_bytes)
            if need.within(budget):
                return FitChoice(tried, need, budget, _why(info, settings, tried, need, budget))
    return None


def _why(info, asked: LoadSettings, chosen: LoadSettings, need: Need, budget: Budget) -> str:
    n_layers = max(1, info.n_layers)
    if budget.vram <= 0:
        where = "on the CPU (no GPU memory to offload to)"
    elif chosen.n_gpu_layers < 0:
        where = "all layers on the GPU"
    elif chosen.n_gpu_layers == 0:
        where = "on the CPU (not one layer fits the free VRAM)"
    else:
        where = f"{chosen.n_gpu_layers} of {n_layers + 1} layers on the GPU (all do not fit the free VRAM)"
    ctx = f"context {chosen.n_ctx}"
    if chosen.n_ctx < asked.n_ctx:
        ctx += f" (not {asked.n_ctx}: it did not fit)"
    cache = f"{chosen.type_k.value} KV cache"
    if chosen.type_k is not asked.type_k:
        cache += f" (an {asked.type_k.value} one did not fit at this context)"
    used = f"{units.size(need.ram)} RAM" + (f" + {units.size(need.vram)} VRAM" if need.vram else "")
    return f"Fit automatically: {where}, {ctx}, {cache}; needs {used} of {budget.describe()} free."


def nothing_fits(info, settings: LoadSettings, budget: Budget, smaller: Sequence = ()) -> str:
    """Why nothing fits and what would: a smaller quant from `smaller` (library entries: name, file size,
    ModelInfo), or the context that would, or the memory to free."""
    least = settings.replace(n_ctx=MIN_FIT_CTX, n_gpu_layers=0 if budget.vram <= 0 else -1)
    need = need_for(info, least.replace(n_gpu_layers=0), 0)
    text = (
        f"{printable(info.path.name)} does not fit: even at context {MIN_FIT_CTX} it needs {units.size(need.ram)} "
        f"and {budget.describe()} is free."
    )
    for name, other in sorted(smaller, key=lambda item: -item[1].file_size):
        found = choose(other, settings, budget)
        if found is not None:
            return (
                text
                + f" '{printable(name)}' ({other.quant_label}) would fit at context {found.settings.n_ctx}."
            )
    return text + " Free memory (close other programs) or use a smaller quant of this model."


def check_load(info, settings: LoadSettings, budget: Budget, extra_bytes: int = 0) -> None:
    """Refuse a load whose estimate exceeds the free memory, before llama.cpp tries (and the OS kills it)."""
    need = need_for(info, settings, extra_bytes)
    if need.within(budget):
        return
    shorter = choose(info, settings.replace(n_ctx=settings.n_ctx), budget, extra_bytes)
    advice = (
        f"with context {shorter.settings.n_ctx} it would fit (or tick Fit automatically / --fit)"
        if shorter is not None
        else "free memory or use a smaller quant"
    )
    gpu = f" + {units.size(need.vram)} VRAM" if need.vram else ""
    raise WontFitError(
        f"{printable(info.path.name)} does not fit: it needs {units.size(need.ram)} RAM{gpu} (KV cache "
        f"{units.size(need.kv_cache)} at context {settings.n_ctx}) and {budget.describe()} is free; {advice}."
    )


def _smaller_in_library(info) -> list[tuple[str, object]]:
    """Library models of the same architecture smaller than `info` (names and headers), for 'what would fit'."""
    from engine.errors import IngleError
    from engine.gguf_info import inspect_gguf
    from engine.library import Library

    found = []
    try:
        for entry in Library().entries("model"):
            if entry.file == info.path or entry.size >= info.file_size:
                continue
            other = inspect_gguf(entry.file)
            if other.architecture == info.architecture:
                found.append((entry.name, other))
    except (IngleError, OSError):
        return []
    return found


def settings_for_load(
    info, settings: LoadSettings, extra_bytes: int = 0, budget: Budget | None = None
) -> tuple[LoadSettings, str]:
    """In the engine, before llama.cpp loads anything: with `fit`, the settings that fit the free memory and why;
    with `fit_check`, refuse what does not fit (WontFitError, saying what would)."""
    if not (settings.fit or settings.fit_check):
        return settings, ""
    if budget is None:
        from engine.hardware import current

        budget = Budget.from_hardware(current())
    if budget.vram <= 0 and settings.n_gpu_layers != 0:  # nothing to offload to: the layers stay in RAM
        settings = settings.replace(n_gpu_layers=0)
    if settings.fit:
        choice = choose(info, settings, budget, extra_bytes)
        if choice is None:
            raise WontFitError(nothing_fits(info, settings, budget, _smaller_in_library(info)))
        return choice.settings, choice.reason
    check_load(info, settings, budget, extra_bytes)
    return settings, ""
