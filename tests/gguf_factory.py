"""Build tiny llama-architecture GGUF models with a real SentencePiece-style vocab, for tests that run llama.cpp."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import gguf
import numpy as np

WORDS = (
    "the a an and or of to in on is are was be it this that with for as at by from hello world "
    "yes no good bad cat dog sun moon red blue green one two three four five six seven eight nine ten "
    "user model assistant system answer question chat ingle llama token test happy sad big small"
).split()
CHARS = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [chr(c) for c in range(ord("A"), ord("Z") + 1)]
PUNCT = list(".,!?:;'\"-()[]{}<>/\\@#$%^&*+=_~`|0123456789")
SPECIAL_CHAT = ["<start_of_turn>", "<end_of_turn>"]

TokenType = gguf.TokenType


def build_vocab(with_chat_tokens: bool = True) -> tuple[list[str], list[float], list[int]]:
    """<unk> <s> </s>, 256 byte-fallback tokens, then characters, words and all their prefixes (SPM merges)."""
    tokens = ["<unk>", "<s>", "</s>"]
    types = [TokenType.UNKNOWN, TokenType.CONTROL, TokenType.CONTROL]
    if with_chat_tokens:
        tokens += SPECIAL_CHAT
        types += [TokenType.CONTROL] * len(SPECIAL_CHAT)
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [TokenType.BYTE] * 256
    pieces: list[str] = ["▁", "\n"] + CHARS + PUNCT + ["▁" + c for c in CHARS + PUNCT]
    for word in WORDS:
        full = "▁" + word
        pieces += [full[:i] for i in range(2, len(full) + 1)]
    seen = set(tokens)
    for piece in pieces:
        if piece not in seen:
            seen.add(piece)
            tokens.append(piece)
            types.append(TokenType.NORMAL)
    # SPM merges prefer higher scores: longer pieces score higher so whole words win.
    scores = [
        0.0 if t != TokenType.NORMAL else float(len(tok)) - i * 1e-4
        for i, (tok, t) in enumerate(zip(tokens, types, strict=False))
    ]
    return tokens, scores, [int(t) for t in types]


def add_spm_vocab(w: gguf.GGUFWriter, tokens: list[str], scores: list[float], types: list[int]) -> None:
    """The vocab of build_vocab() as a SentencePiece ("llama") tokenizer: BOS <s> = 1 (added), EOS </s> = 2."""
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)


def write_tiny_llama(
    path: str | Path,
    *,
    n_layers: int = 2,
    n_embd: int = 64,
    n_head: int = 4,
    n_head_kv: int = 2,
    n_ff: int = 128,
    n_ctx: int = 512,
    seed: int = 0,
    arch: str = "llama",
    general_type: str | None = None,
    chat_template: str | None = None,
    name: str = "Tiny Llama Test",
    scale: float = 0.08,
    split_max_tensors: int = 0,
    kv: dict[str, tuple[Any, gguf.GGUFValueType] | None] | None = None,
) -> Path:
    """Write a random-weight llama model (F32) that llama.cpp loads in milliseconds; returns the path.

    `kv` replaces or adds metadata after the usual keys are set, as {key: (value, GGUFValueType)}, or
    {key: None} to leave a key out: how the hostile-file tests give a key the wrong type or a bad value."""
    path = Path(path)
    rng = np.random.default_rng(seed)
    tokens, scores, types = build_vocab()
    n_vocab = len(tokens)
    head_dim = n_embd // n_head

    # split_max_tensors > 0 writes `<stem>-0000i-of-0000N.gguf` parts (like llama-gguf-split); the first is returned
    w = gguf.GGUFWriter(str(path), arch, split_max_tensors=split_max_tensors)
    w.add_name(name)
    if general_type:
        w.add_type(general_type)
    w.add_context_length(n_ctx)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layers)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_rope_dimension_count(head_dim)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    add_spm_vocab(w, tokens, scores, types)
    if chat_template:
        w.add_chat_template(chat_template)
    for key, spec in (kv or {}).items():
        w.kv_data[0].pop(key, None)
        if spec is not None:
            value, vtype = spec
            sub_type = None
            if vtype == gguf.GGUFValueType.ARRAY:
                sub_type = gguf.GGUFValueType.get_type(value[0]) if value else gguf.GGUFValueType.UINT32
            w.kv_data[0][key] = gguf.GGUFValue(value, vtype, sub_type)

    def tensor(name: str, *shape: int, ones: bool = False) -> None:
        data = np.ones(shape, np.float32) if ones else (rng.standard_normal(shape) * scale).astype(np.float32)
        w.add_tensor(name, data)

    tensor("token_embd.weight", n_vocab, n_embd)
    for i in range(n_layers):
        tensor(f"blk.{i}.attn_norm.weight", n_embd, ones=True)
        tensor(f"blk.{i}.attn_q.weight", n_embd, n_embd)
        tensor(f"blk.{i}.attn_k.weight", n_head_kv * head_dim, n_embd)
        tensor(f"blk.{i}.attn_v.weight", n_head_kv * head_dim, n_embd)
        tensor(f"blk.{i}.attn_output.weight", n_embd, n_embd)
        tensor(f"blk.{i}.ffn_norm.weight", n_embd, ones=True)
        tensor(f"blk.{i}.ffn_gate.weight", n_ff, n_embd)
        tensor(f"blk.{i}.ffn_up.weight", n_ff, n_embd)
        tensor(f"blk.{i}.ffn_down.weight", n_embd, n_ff)
    tensor("output_norm.weight", n_embd, ones=True)
    tensor("output.weight", n_vocab, n_embd)

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return w.format_shard_names(path)[0] if split_max_tensors else path


def corrupt_variants(good: Path, out_dir: Path) -> dict[str, Path]:
    """Broken files for every validation case, built from a good tiny model."""
    data = good.read_bytes()
    out_dir.mkdir(parents=True, exist_ok=True)
    variants = {
        "empty": b"",
        "wrong_magic": b"GGML" + data[4:],
        "unknown_version": data[:4] + (99).to_bytes(4, "little") + data[8:],
        "truncated_header": data[:200],
        "data_past_eof": data[: len(data) - 4096],
    }
    paths = {}
    for name, blob in variants.items():
        p = out_dir / f"{name}.gguf"
        p.write_bytes(blob)
        paths[name] = p
    paths["adapter"] = write_tiny_llama(out_dir / "adapter.gguf", general_type="adapter")
    paths["unknown_arch"] = write_tiny_llama(out_dir / "unknown_arch.gguf", arch="ingle-unknown-arch")
    paths["missing"] = out_dir / "does-not-exist.gguf"
    return paths


# ---------------------------------------------------------------------------- raw files
# Hand-built GGUF bytes for defects gguf-py's writer will not produce (bad tensor tables, nested arrays).
_T = gguf.GGUFValueType


def kv_entry(key: str, vtype: int, payload: bytes) -> bytes:
    """One metadata pair: key, value type, value bytes (see the helpers below)."""
    return _string(key) + struct.pack("<I", vtype) + payload


def _string(text: str) -> bytes:
    data = text.encode()
    return struct.pack("<Q", len(data)) + data


def kv_u32(key: str, value: int) -> bytes:
    return kv_entry(key, _T.UINT32, struct.pack("<I", value))


def kv_str(key: str, value: str) -> bytes:
    return kv_entry(key, _T.STRING, _string(value))


def kv_nested_array(key: str, depth: int) -> bytes:
    """An array of an array of ... (`depth` levels) of one uint32."""
    levels = struct.pack("<IQ", _T.ARRAY, 1) * (depth - 1)
    return kv_entry(key, _T.ARRAY, levels + struct.pack("<IQI", _T.UINT32, 1, 7))


def write_raw_gguf(
    path: str | Path,
    kvs: list[bytes],
    tensors: list[tuple[str, tuple[int, ...], int]],
    offsets: list[int] | None = None,
    alignment: int = 32,
    data_bytes: int | None = None,
) -> Path:
    """A GGUF with the given metadata and tensor table (name, shape, GGML type id) and zeroed data.

    `offsets` defaults to the packed layout llama.cpp expects; pass others to corrupt it. `alignment` only
    places the data section (the file's general.alignment, if any, is in `kvs`)."""
    path = Path(path)
    if offsets is None:
        offsets, at = [], 0
        for _, shape, type_id in tensors:
            offsets.append(at)
            block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(type_id)]
            at += -(-(int(np.prod(shape)) // block * size) // alignment) * alignment
    head = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kvs)) + b"".join(kvs)
    for (name, shape, type_id), offset in zip(tensors, offsets, strict=True):
        head += _string(name) + struct.pack("<I", len(shape)) + struct.pack(f"<{len(shape)}Q", *shape)
        head += struct.pack("<IQ", type_id, offset)
    head += b"\0" * (-len(head) % alignment)
    if data_bytes is None:
        data_bytes = max(
            (o + int(np.prod(s)) * 4 for (_, s, _), o in zip(tensors, offsets, strict=True)), default=0
        )
    path.write_bytes(head + b"\0" * data_bytes)
    return path


def hostile_files(out_dir: Path) -> dict[str, tuple[Path, str]]:
    """Files that once gave a Python traceback or made llama.cpp abort the process, each with a phrase the
    one-line error about it must contain. Built by the real writer where it can express the defect."""
    out_dir.mkdir(parents=True, exist_ok=True)
    u32, string, i32, array = _T.UINT32, _T.STRING, _T.INT32, _T.ARRAY
    by_key = {
        "expert_used_without_count": ({"llama.expert_used_count": (2, u32)}, "expert_count"),
        "expert_used_over_count": (
            {"llama.expert_count": (2, u32), "llama.expert_used_count": (4, u32)},
            "4 experts per token",
        ),
        "block_count_huge": ({"llama.block_count": (100000, u32)}, "100,000"),
        "block_count_past_tensors": ({"llama.block_count": (5, u32)}, "holds weights for 2"),
        "context_zero": ({"llama.context_length": (0, u32)}, "must be positive"),
        "embedding_zero": ({"llama.embedding_length": (0, u32)}, "must be positive"),
        "kv_heads_over_heads": ({"llama.attention.head_count_kv": (8, u32)}, "key/value heads"),
        "rope_scaling_unknown": ({"llama.rope.scaling.type": ("bogus", string)}, "rope.scaling.type"),
        "context_as_string": ({"llama.context_length": ("4096", string)}, "should be a whole number"),
        "alignment_as_string": ({"general.alignment": ("32", string)}, "general.alignment"),
        "alignment_as_array": ({"general.alignment": ([32, 32], array)}, "general.alignment"),
        "tokens_as_number": ({"tokenizer.ggml.tokens": (5, u32)}, "tokenizer.ggml.tokens"),
        "chat_template_as_int": ({"tokenizer.chat_template": (5, i32)}, "tokenizer.chat_template"),
        "block_count_as_array": ({"llama.block_count": ([2, 2], array)}, "block_count"),
    }
    files = {
        name: (write_tiny_llama(out_dir / f"{name}.gguf", kv=kv), phrase)
        for name, (kv, phrase) in by_key.items()
    }
    for name, alpha in {"adapter_alpha_as_string": ("8", string), "adapter_alpha_as_float64": (8.0, _T.FLOAT64),
                        "adapter_alpha_as_int": (8, u32)}.items():  # fmt: skip
        files[name] = (write_lora_adapter(out_dir / f"{name}.gguf", alpha=alpha), "adapter.lora.alpha")
    arch = kv_str("general.architecture", "llama")
    f32 = int(gguf.GGMLQuantizationType.F32)
    two = [("a.weight", (32,), f32), ("b.weight", (32,), f32)]
    raw = {
        "nested_array_50000": ([arch, kv_nested_array("ingle.deep", 50_000)], two, None, "array of arrays"),
        "five_dimensions": ([arch], [("a.weight", (2, 2, 2, 2, 2), f32)], None, "5 dimensions"),
        "eight_dimensions": ([arch], [("a.weight", (1,) * 8, f32)], None, "8 dimensions"),
        "overlapping_tensors": ([arch], two, [0, 0], "overlaps"),
        "misaligned_tensor": ([arch], two, [0, 132], "misaligned"),
        "alignment_zero": ([arch, kv_u32("general.alignment", 0)], two, None, "not a power of two"),
        "alignment_three": ([arch, kv_u32("general.alignment", 3)], two, None, "not a power of two"),
        "duplicate_tensor": ([arch], [two[0], two[0]], [0, 128], "appears twice"),
        "duplicate_key": ([arch, kv_u32("x.y", 1), kv_u32("x.y", 2)], two, None, "appears twice"),
        "negative_dimension": ([arch], [("a.weight", (2**64 - 32,), f32)], [0], "negative dimension"),
    }
    for name, (kvs, tensors, offsets, phrase) in raw.items():
        files[name] = (
            write_raw_gguf(out_dir / f"{name}.gguf", kvs, tensors, offsets, data_bytes=4096),
            phrase,
        )
    return files


def write_lora_adapter(
    path: Path, *, n_embd: int = 64, rank: int = 4, alpha: tuple[Any, gguf.GGUFValueType] = (8.0, _T.FLOAT32)
) -> Path:
    """A LoRA adapter for write_tiny_llama's model (on blk.0.attn_q), as llama.cpp's converter writes one."""
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_type("adapter")
    w.add_string("adapter.type", "lora")
    w.add_key_value("adapter.lora.alpha", alpha[0], alpha[1])
    w.add_tensor("blk.0.attn_q.weight.lora_a", np.zeros((rank, n_embd), np.float32))
    w.add_tensor("blk.0.attn_q.weight.lora_b", np.zeros((n_embd, rank), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def valid_raw_gguf(path: Path) -> Path:
    """The raw builder's output without a defect: proves the hostile raw files fail for their defect alone."""
    f32 = int(gguf.GGMLQuantizationType.F32)
    tensors = [("a.weight", (32,), f32), ("b.weight", (32,), f32)]
    return write_raw_gguf(path, [kv_str("general.architecture", "llama"), kv_u32("general.alignment", 64)],
                          tensors, alignment=64)  # fmt: skip
