"""Build tiny llama-architecture GGUF models with a real SentencePiece-style vocab, for tests that run llama.cpp."""

from __future__ import annotations

from pathlib import Path

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
) -> Path:
    """Write a random-weight llama model (F32) that llama.cpp loads in milliseconds; returns the path."""
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
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    if chat_template:
        w.add_chat_template(chat_template)

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
