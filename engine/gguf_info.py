"""Read a GGUF file's metadata and tensor table without loading weights, and validate it before llama.cpp does.

The container itself (header, metadata, tensor table) is read by engine/gguf_reader.py."""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import gguf

from engine.errors import ModelFileError
from engine.gguf_reader import ArrayLength, TensorInfo, read_gguf
from engine.text import printable

K = gguf.Keys  # the GGUF key names, from gguf-py (Ingle's own: engine.gguf_keys)

# llama.cpp's own limits (llama-hparams.h LLAMA_MAX_LAYERS / LLAMA_MAX_EXPERTS): a file past them makes llama.cpp
# abort the whole process (GGML_ASSERT) instead of failing the load, so they are refused here.
MAX_LAYERS = 512
MAX_EXPERTS = 1024
ROPE_SCALING_TYPES = ("none", "linear", "yarn", "longrope")
# Encoder architectures llama.cpp runs: they make embeddings, not chat (others declare a pooling type instead).
EMBEDDING_ARCHS = frozenset({"bert", "nomic-bert", "nomic-bert-moe", "jina-bert-v2", "jina-bert-v3", "modern-bert",
                             "neo-bert", "t5encoder", "gte", "gemma-embedding"})  # fmt: skip


@dataclass(frozen=True)
class ModelInfo:
    """What a GGUF file says about itself. Built by `inspect_gguf`; nothing here needs llama.cpp."""

    path: Path
    file_size: int
    version: int
    kind: str  # "model" or "adapter"
    architecture: str
    name: str
    file_type: str
    parameter_count: int
    quant_mix: dict[str, int]  # tensor type -> number of parameters stored in it
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim_k: int
    head_dim_v: int
    n_embd: int
    context_length: int
    sliding_window: int
    vocab_size: int
    chat_template: str | None
    tensors: tuple[TensorInfo, ...] = field(repr=False)
    metadata: dict[str, Any] = field(repr=False)

    @property
    def has_chat_template(self) -> bool:
        return bool(self.chat_template)

    @property
    def is_embedding(self) -> bool:
        """An embedding model: an encoder architecture, or a GGUF that declares how its token vectors are pooled
        (`<arch>.pooling_type`, read by llama.cpp) or that its attention is not causal."""
        arch = self.architecture
        return (
            arch in EMBEDDING_ARCHS
            or f"{arch}.pooling_type" in self.metadata
            or self.metadata.get(f"{arch}.attention.causal") is False
        )

    @property
    def quant_label(self) -> str:
        """A short quant name for lists, e.g. 'Q4_K_M' or 'F16'."""
        return self.file_type.removeprefix("MOSTLY_").removeprefix("ALL_")

    def summary(self) -> dict[str, Any]:
        """The figures a user cares about, as plain JSON-ready values."""
        return {
            "path": str(self.path),
            "kind": self.kind,
            "architecture": self.architecture,
            "name": self.name,
            "file_type": self.quant_label,
            "parameters": self.parameter_count,
            "file_size": self.file_size,
            "layers": self.n_layers,
            "heads": self.n_heads,
            "kv_heads": self.n_kv_heads,
            "head_dim_k": self.head_dim_k,
            "head_dim_v": self.head_dim_v,
            "embedding": self.n_embd,
            "context_length": self.context_length,
            "sliding_window": self.sliding_window,
            "vocab_size": self.vocab_size,
            "chat_template": self.has_chat_template,
            "quant_mix": dict(self.quant_mix),
        }


def _int(md: dict, key: str, default: int, path: Path, per_layer: bool = False) -> int:
    """An integer key (a per-layer array of integers where llama.cpp allows one: its largest value).

    A key of the wrong type is a corrupt file, said in one line rather than a Python error."""
    value = md.get(key, default)
    if per_layer and isinstance(value, list) and value:
        items = value
    elif per_layer and isinstance(value, ArrayLength):
        raise ModelFileError(
            f"{path}: '{key}' is an array of {value.length:,} values, more than any model's layers; "
            "the file is corrupt."
        )
    else:
        items = [value]
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in items):
        shown = (
            type(value).__name__ if not isinstance(value, list) else "a list of " + type(items[0]).__name__
        )
        raise ModelFileError(f"{path}: '{key}' should be a whole number but is {shown}; the file is corrupt.")
    return max(items)


def _text(md: dict, key: str, path: Path) -> str | None:
    value = md.get(key)
    if value is not None and not isinstance(value, str):
        raise ModelFileError(
            f"{path}: '{key}' should be text but is {type(value).__name__}; the file is corrupt."
        )
    return value


def _vocab_size(md: dict, path: Path) -> int:
    tokens = md.get(K.Tokenizer.LIST)
    if tokens is None:
        return 0
    if isinstance(tokens, ArrayLength) and tokens.item_type == "STRING":
        return tokens.length
    if isinstance(tokens, list) and all(isinstance(t, str) for t in tokens):
        return len(tokens)
    raise ModelFileError(f"{path}: 'tokenizer.ggml.tokens' should be a list of strings; the file is corrupt.")


def _layers_with_tensors(tensors: list[TensorInfo]) -> int:
    """1 + the highest N of the `blk.N.*` tensors: how many layers the file really holds weights for."""
    highest = -1
    for t in tensors:
        head, _, rest = t.name.partition(".")
        number = rest.partition(".")[0]
        if head == "blk" and number.isdigit():
            highest = max(highest, int(number))
    return highest + 1


def _check_hyperparameters(md: dict, arch: str, tensors: list[TensorInfo], path: Path) -> None:
    """Refuse the combinations llama.cpp does not fail on but aborts on (GGML_ASSERT kills the process)."""

    def key(template: str) -> str:
        return template.format(arch=arch)

    def bad(text: str) -> ModelFileError:
        return ModelFileError(f"{path}: {text}; the file is corrupt or was written by a broken converter.")

    if key(K.LLM.CONTEXT_LENGTH) in md and _int(md, key(K.LLM.CONTEXT_LENGTH), 0, path) <= 0:
        raise bad(f"'{key(K.LLM.CONTEXT_LENGTH)}' is {md[key(K.LLM.CONTEXT_LENGTH)]}, it must be positive")
    if key(K.LLM.EMBEDDING_LENGTH) in md and _int(md, key(K.LLM.EMBEDDING_LENGTH), 0, path) <= 0:
        raise bad(
            f"'{key(K.LLM.EMBEDDING_LENGTH)}' is {md[key(K.LLM.EMBEDDING_LENGTH)]}, it must be positive"
        )
    n_layers = _int(md, key(K.LLM.BLOCK_COUNT), 0, path)
    if key(K.LLM.BLOCK_COUNT) in md:
        if not 0 < n_layers <= MAX_LAYERS:
            raise bad(
                f"'{key(K.LLM.BLOCK_COUNT)}' is {n_layers:,}; llama.cpp handles 1 to {MAX_LAYERS} layers"
            )
        present = _layers_with_tensors(tensors)
        # a split model's first part holds some of the layers only
        split = md.get(gguf.Keys.Split.LLM_KV_SPLIT_COUNT, 1)
        if present and n_layers > present and not (isinstance(split, int) and split > 1):
            raise bad(
                f"'{key(K.LLM.BLOCK_COUNT)}' says {n_layers:,} layers but the file holds weights for {present}"
            )
    if _int(md, key(K.LLM.NEXTN_PREDICT_LAYERS), 0, path) > n_layers:
        raise bad(f"'{key(K.LLM.NEXTN_PREDICT_LAYERS)}' is larger than the {n_layers} layers")
    n_expert = _int(md, key(K.LLM.EXPERT_COUNT), 0, path)
    n_used = _int(md, key(K.LLM.EXPERT_USED_COUNT), 0, path, per_layer=True)
    n_groups = _int(md, key(K.LLM.EXPERT_GROUP_COUNT), 0, path)
    n_group_used = _int(md, key(K.LLM.EXPERT_GROUP_USED_COUNT), 0, path)
    if n_expert > MAX_EXPERTS:
        raise bad(
            f"'{key(K.LLM.EXPERT_COUNT)}' is {n_expert:,}; llama.cpp handles at most {MAX_EXPERTS} experts"
        )
    if n_expert == 0 and (n_used or n_groups):
        raise bad(
            f"it sets '{key(K.LLM.EXPERT_USED_COUNT)}' or expert groups but has no '{key(K.LLM.EXPERT_COUNT)}'"
        )
    if n_expert:
        if not 0 < n_used <= n_expert:
            raise bad(f"it uses {n_used} experts per token out of {n_expert}; it must be 1 to {n_expert}")
        if n_groups >= n_expert:
            raise bad(f"it has {n_groups} expert groups for {n_expert} experts")
        if n_groups > 1 and (n_expert % n_groups or not 0 < n_group_used < n_groups):
            raise bad(f"its {n_groups} expert groups ({n_group_used} used) do not fit {n_expert} experts")
    if n_layers:
        for name in ("attention.head_count", "attention.head_count_kv", "feed_forward_length",
                     "expert_used_count"):  # fmt: skip
            value = md.get(key(name))
            if isinstance(value, list) and len(value) > n_layers:
                raise bad(f"'{key(name)}' lists {len(value)} layers but the model has {n_layers}")
    n_head = _int(md, key(K.Attention.HEAD_COUNT), 0, path, per_layer=True)
    n_head_kv = _int(md, key(K.Attention.HEAD_COUNT_KV), n_head, path, per_layer=True)
    if n_head and n_head_kv > n_head:
        raise bad(f"it has more key/value heads ({n_head_kv}) than attention heads ({n_head})")
    scaling = _text(md, key(K.Rope.SCALING_TYPE), path)
    if scaling is not None and scaling not in ROPE_SCALING_TYPES:
        raise bad(
            f"'{key(K.Rope.SCALING_TYPE)}' is '{printable(scaling)}', not one of {', '.join(ROPE_SCALING_TYPES)}"
        )


@cache
def _llama_library_strings() -> bytes:
    from engine.hardware import llama_library_path

    return llama_library_path().read_bytes()


def architecture_supported(arch: str) -> bool:
    """Whether the installed llama.cpp build knows this architecture name (its table of names is in libllama)."""
    return arch.encode() + b"\0" in _llama_library_strings()


def inspect_gguf(path: str | Path, expect: str = "model") -> ModelInfo:
    """Read and validate a GGUF. `expect` is 'model' (refuses adapters), 'adapter' (refuses models) or 'any'.

    Models of an architecture the installed llama.cpp cannot load are always refused.
    """
    path = Path(path)
    version, md, tensors, size = read_gguf(path)
    kind = "adapter" if md.get(K.General.TYPE) == "adapter" else "model"
    arch = md.get(K.General.ARCHITECTURE)
    if not isinstance(arch, str) or not arch:
        raise ModelFileError(f"{path}: the file has no 'general.architecture'; it is not a usable model.")
    if expect == "model" and kind == "adapter":
        raise ModelFileError(
            f"{path}: this is a LoRA adapter, not a model. Load a base {printable(arch)} model and apply the adapter to it."
        )
    if expect == "adapter" and kind != "adapter":
        raise ModelFileError(f"{path}: this is a model, not a LoRA adapter.")
    if kind == "model" and not architecture_supported(arch):
        raise ModelFileError(
            f"{path}: architecture '{printable(arch)}' is not supported by the installed llama.cpp. "
            "Update Ingle (llama-cpp-python) or choose another model."
        )
    if not tensors:
        raise ModelFileError(f"{path}: the file holds no tensors (vocabulary only?); it cannot be run.")
    if kind == "model":
        _check_hyperparameters(md, arch, tensors, path)
    mix: Counter[str] = Counter()
    for t in tensors:
        mix[t.type_name] += t.n_elements
    n_heads = _int(md, K.Attention.HEAD_COUNT.format(arch=arch), 0, path, per_layer=True)
    n_embd = _int(md, K.LLM.EMBEDDING_LENGTH.format(arch=arch), 0, path)
    default_head = n_embd // n_heads if n_heads else 0
    file_type = md.get(K.General.FILE_TYPE)
    try:
        file_type_name = (
            gguf.LlamaFileType(file_type).name if file_type is not None else _guess_file_type(mix)
        )
    except (ValueError, TypeError):
        file_type_name = f"type {printable(file_type)}"[:40]
    return ModelInfo(
        path=path,
        file_size=size,
        version=version,
        kind=kind,
        architecture=arch,
        name=str(md.get(K.General.NAME) or path.stem),
        file_type=file_type_name,
        parameter_count=sum(mix.values()),
        quant_mix=dict(mix.most_common()),
        n_layers=_int(md, K.LLM.BLOCK_COUNT.format(arch=arch), 0, path),
        n_heads=n_heads,
        n_kv_heads=_int(md, K.Attention.HEAD_COUNT_KV.format(arch=arch), n_heads, path, per_layer=True),
        head_dim_k=_int(md, K.Attention.KEY_LENGTH.format(arch=arch), default_head, path),
        head_dim_v=_int(md, K.Attention.VALUE_LENGTH.format(arch=arch), default_head, path),
        n_embd=n_embd,
        context_length=_int(md, K.LLM.CONTEXT_LENGTH.format(arch=arch), 0, path),
        sliding_window=_int(md, K.Attention.SLIDING_WINDOW.format(arch=arch), 0, path),
        vocab_size=_vocab_size(md, path),
        chat_template=_text(md, K.Tokenizer.CHAT_TEMPLATE, path),
        tensors=tuple(tensors),
        metadata=md,
    )


def _guess_file_type(mix: Counter[str]) -> str:
    """Without general.file_type, name the file after the type holding most parameters."""
    return mix.most_common(1)[0][0] if mix else "unknown"


def sha256_file(path: str | Path, progress=None, chunk: int = 8 << 20) -> str:
    """The file's sha256 hex digest; `progress(done_bytes, total_bytes)` is called as it goes."""
    path = Path(path)
    total = path.stat().st_size
    digest = hashlib.sha256()
    done = 0
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
            done += len(block)
            if progress:
                progress(done, total)
    return digest.hexdigest()


_CACHE: dict[tuple[str, int, int, str], ModelInfo] = {}


def inspect_cached(path: str | os.PathLike, expect: str = "model") -> ModelInfo:
    """inspect_gguf, remembered by path, modification time and size (a file written again is read again)."""
    p = Path(path)
    try:
        st = p.stat()
    except OSError:
        return inspect_gguf(p, expect=expect)  # says what is wrong with the path
    key = (str(p.resolve()), st.st_mtime_ns, st.st_size, expect)
    info = _CACHE.get(key)
    if info is None:
        if len(_CACHE) > 256:
            _CACHE.clear()
        info = _CACHE[key] = inspect_gguf(p, expect=expect)
    return info
