"""Attention weights of one evaluation as plain data, and their JSON form. No llama.cpp import, so the GUI process
can unpickle what the engine child sends (engine.attention captures them)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAX_TOKENS = 512  # the most tokens one capture evaluates: [layers][heads][512][512] float32 is 1 MiB per head
MAX_BYTES = (
    256 << 20
)  # and the most its weights may take (they cross a pipe to the GUI): big models get fewer
DENSE_LIMIT = (
    128  # up to this many tokens the JSON carries every weight; beyond, the top-k keys of each query
)
SPARSE_TOP_K = 16


def token_cap(n_layers: int, n_heads: int, max_tokens: int = MAX_TOKENS) -> int:
    """How many tokens one capture may evaluate for a model of this shape: at most `max_tokens`, and fewer where
    layers x heads x tokens² float32 weights would pass MAX_BYTES (a 32-layer, 32-head model: 256 tokens)."""
    fits = int((MAX_BYTES / (4 * max(1, n_layers * n_heads))) ** 0.5)
    return max(1, min(max_tokens, fits))


@dataclass(frozen=True)
class AttentionMap:
    """The attention softmax of every layer and head for `tokens`, evaluated from position 0 in a fresh cache.

    `weights[layer, head, query, key]` is the weight query token `query` gives key token `key` (rows sum to 1,
    zero above the diagonal, and zero outside the window on sliding-window layers)."""

    tokens: tuple[int, ...]
    pieces: tuple[str, ...]  # each token as text (special tokens as their text), for labels
    weights: np.ndarray  # float32 [n_layers, n_heads, n_tokens, n_tokens]
    sliding_window_layers: tuple[int, ...]
    sliding_window: int  # llama.cpp's n_swa (0: no sliding-window layers)
    dropped: int = 0  # tokens left out from the start because the text was longer than the cap
    seconds: float = 0.0

    @property
    def n_layers(self) -> int:
        return int(self.weights.shape[0])

    @property
    def n_heads(self) -> int:
        return int(self.weights.shape[1])

    def matrix(self, layer: int, head: int | None) -> np.ndarray:
        """[query, key] weights of one head, or the mean over heads when `head` is None."""
        per_layer = self.weights[layer]
        return per_layer.mean(axis=0) if head is None else per_layer[head]

    def to_json(self, dense_limit: int = DENSE_LIMIT, top_k: int = SPARSE_TOP_K) -> dict:
        """The `attention` object of `ingle inspect --attention --json`.

        Dense (`"format": "dense"`): `weights[layer][head][query][key]`, every key of every query (the keys
        after the query are 0: causal), so `numpy.array(weights)` is the 4-D array. Beyond `dense_limit` tokens,
        `"format": "top-k"`: `weights[layer][head][query]` is a list of `[key, weight]` pairs, the `top_k`
        largest weights of that query, largest first (the rest of the row's mass is left out)."""
        n = len(self.tokens)
        rounded = np.round(self.weights.astype(np.float64), 6)
        out: dict = {
            "tokens": list(self.tokens),
            "pieces": list(self.pieces),
            "n_layers": self.n_layers,
            "n_heads": self.n_heads,
            "sliding_window_layers": list(self.sliding_window_layers),
            "sliding_window": self.sliding_window,
            "dropped_tokens": self.dropped,
        }
        if n <= dense_limit:
            out["format"] = "dense"
            out["weights"] = rounded.tolist()
            return out
        k = min(top_k, n)
        order = np.argsort(-self.weights, axis=-1, kind="stable")[..., :k]
        out["format"] = "top-k"
        out["top_k"] = k
        out["weights"] = [
            [
                [
                    [[int(key), float(rounded[layer, head, q, key])] for key in order[layer, head, q]]
                    for q in range(n)
                ]
                for head in range(self.n_heads)
            ]
            for layer in range(self.n_layers)
        ]
        return out
