"""KV cache size per layer as llama.cpp allocates it (sliding-window layers included). Pure: no llama.cpp import."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

import gguf

from engine import units
from engine.gguf_info import ModelInfo
from engine.settings import CacheType

# Layers per sliding-window group where the last layer of each group is global, by architecture
# (llama.cpp sets these in llama-model.cpp when the GGUF has no per-layer pattern).
SWA_PATTERNS = {"gemma3": 6, "gemma3n": 5, "gemma2": 2, "cohere2": 4, "gemma-embedding": 6}
KV_PAD = 256  # llama.cpp pads KV cache sizes to this many cells


@dataclass(frozen=True)
class KVLayer:
    index: int
    sliding: bool
    cells: int
    bytes_k: int
    bytes_v: int


@dataclass(frozen=True)
class KVLayout:
    n_ctx: int
    type_k: str
    type_v: str
    n_kv_heads: int
    head_dim_k: int
    head_dim_v: int
    layers: tuple[KVLayer, ...]

    @property
    def total_bytes(self) -> int:
        return sum(layer.bytes_k + layer.bytes_v for layer in self.layers)

    def groups(self) -> list[dict]:
        """Layers grouped by cache (global / sliding window) as llama.cpp allocates them."""
        out = []
        for sliding in (False, True):
            layers = [layer for layer in self.layers if layer.sliding == sliding]
            if layers:
                out.append({
                    "cache": "sliding-window" if sliding else "global",
                    "layers": len(layers),
                    "cells": layers[0].cells,
                    "bytes_k": sum(lyr.bytes_k for lyr in layers),
                    "bytes_v": sum(lyr.bytes_v for lyr in layers),
                })  # fmt: skip
        return out

    def formula(self) -> str:
        parts = []
        for g in self.groups():
            parts.append(
                f"{g['layers']} layers x {g['cells']} cells x {self.n_kv_heads} KV heads x "
                f"({self.head_dim_k} x {self.type_k} + {self.head_dim_v} x {self.type_v})"
            )
        return " + ".join(parts) + f" = {units.mib(self.total_bytes, 2)}"

    def to_dict(self) -> dict:
        return {
            **asdict(self),
            "total_bytes": self.total_bytes,
            "groups": self.groups(),
            "formula": self.formula(),
        }


def _row_bytes(n: int, cache_type: CacheType) -> int:
    qtype = gguf.GGMLQuantizationType[cache_type.name]
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    return n // block * size


def _pad(n: int) -> int:
    return -(-n // KV_PAD) * KV_PAD


def sliding_layers(info: ModelInfo) -> list[bool]:
    """Which layers use the sliding-window cache."""
    pattern = info.metadata.get(f"{info.architecture}.attention.sliding_window_pattern")
    if isinstance(pattern, list) and len(pattern) == info.n_layers:
        return [bool(x) for x in pattern]
    if info.sliding_window <= 0:
        return [False] * info.n_layers
    group = SWA_PATTERNS.get(info.architecture, 0)
    if group:
        return [(i % group) < group - 1 for i in range(info.n_layers)]
    return [True] * info.n_layers


def kv_layout(
    info: ModelInfo, n_ctx: int, type_k: CacheType = CacheType.F16, type_v: CacheType = CacheType.F16,
    n_ubatch: int = 512, swa_full: bool = False,
) -> KVLayout:  # fmt: skip
    """KV cache size per layer: cells x KV heads x head dim x bytes, for K and V (llama.cpp's allocation rule)."""
    cells = _pad(n_ctx)
    swa_cells = cells if swa_full else min(cells, _pad(info.sliding_window + n_ubatch))
    k_row = _row_bytes(info.n_kv_heads * info.head_dim_k, type_k)
    v_row = _row_bytes(info.n_kv_heads * info.head_dim_v, type_v)
    layers = tuple(
        KVLayer(i, sliding, swa_cells if sliding else cells, (swa_cells if sliding else cells) * k_row,
                (swa_cells if sliding else cells) * v_row)
        for i, sliding in enumerate(sliding_layers(info))
    )  # fmt: skip
    return KVLayout(
        cells, type_k.value, type_v.value, info.n_kv_heads, info.head_dim_k, info.head_dim_v, layers
    )


_KV_REPORT = re.compile(
    r"llama_kv_cache: size =\s*([\d.]+) MiB \(\s*(\d+) cells,\s*(\d+) layers.*K \((\w+)\):\s*([\d.]+) MiB, V \((\w+)\):\s*([\d.]+) MiB"
)


def parse_kv_report(line: str) -> dict | None:
    """llama.cpp's own log line about a KV cache it allocated, as numbers."""
    m = _KV_REPORT.search(line)
    if not m:
        return None
    total, cells, layers, tk, k_mib, tv, v_mib = m.groups()
    return {"mib": float(total), "cells": int(cells), "layers": int(layers), "type_k": tk, "k_mib": float(k_mib),
            "type_v": tv, "v_mib": float(v_mib)}  # fmt: skip
