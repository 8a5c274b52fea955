"""Read a GGUF file's metadata and tensor table without loading weights, and validate it before llama.cpp does."""

from __future__ import annotations

import hashlib
import mmap
import os
import struct
from collections import Counter
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import gguf

from engine.errors import ModelFileError
from engine.text import printable

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
# llama.cpp's own limits (ggml.h GGML_MAX_DIMS, llama-hparams.h LLAMA_MAX_LAYERS / LLAMA_MAX_EXPERTS): a file past
# them makes llama.cpp abort the whole process (GGML_ASSERT) instead of failing the load, so they are refused here.
MAX_DIMS = 4
MAX_LAYERS = 512
MAX_EXPERTS = 1024
ROPE_SCALING_TYPES = ("none", "linear", "yarn", "longrope")
# Keys llama.cpp reads with getters that abort on any other stored type (gguf_get_val_* asserts): the LoRA
# adapter loader reads these unchecked, so the stored type must be exactly this.
EXACT_TYPES = {
    "general.architecture": gguf.GGUFValueType.STRING,
    "general.type": gguf.GGUFValueType.STRING,
    "adapter.type": gguf.GGUFValueType.STRING,
    "adapter.lora.alpha": gguf.GGUFValueType.FLOAT32,
}
_INT64_MAX = (1 << 63) - 1
# Arrays longer than this are not kept in memory (token lists, scores); only their length is.
MAX_KEPT_ARRAY = 256

_SCALAR_FORMATS = {
    gguf.GGUFValueType.UINT8: "<B",
    gguf.GGUFValueType.INT8: "<b",
    gguf.GGUFValueType.UINT16: "<H",
    gguf.GGUFValueType.INT16: "<h",
    gguf.GGUFValueType.UINT32: "<I",
    gguf.GGUFValueType.INT32: "<i",
    gguf.GGUFValueType.FLOAT32: "<f",
    gguf.GGUFValueType.BOOL: "<?",
    gguf.GGUFValueType.UINT64: "<Q",
    gguf.GGUFValueType.INT64: "<q",
    gguf.GGUFValueType.FLOAT64: "<d",
}


@dataclass(frozen=True)
class ArrayLength:
    """Stands in for a long array that was skipped: its element type and length."""

    item_type: str
    length: int


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    type_name: str
    offset: int
    n_elements: int
    n_bytes: int


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


class _Cursor:
    """Reads little-endian GGUF values from a buffer, turning short reads into a plain 'truncated' error."""

    def __init__(self, buf: memoryview | bytes, path: Path):
        self.buf = buf
        self.pos = 0
        self.path = path

    def _need(self, n: int, what: str) -> None:
        if self.pos + n > len(self.buf):
            raise ModelFileError(
                f"{self.path}: the file is truncated (it ends inside the {printable(what)}). Download or copy it again."
            )

    def scalar(self, fmt: str, what: str) -> Any:
        size = struct.calcsize(fmt)
        self._need(size, what)
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += size
        return value

    def string(self, what: str) -> str:
        length = self.scalar("<Q", what)
        self._need(length, what)
        raw = bytes(self.buf[self.pos : self.pos + length])
        self.pos += length
        return raw.decode("utf-8", errors="replace")

    def skip_string(self, what: str) -> None:
        length = self.scalar("<Q", what)
        self._need(length, what)
        self.pos += length

    def value(self, vtype: int, what: str) -> Any:
        try:
            vtype = gguf.GGUFValueType(vtype)
        except ValueError:
            raise ModelFileError(
                f"{self.path}: metadata '{printable(what)}' has an unknown value type {vtype}; the file is corrupt."
            ) from None
        if vtype == gguf.GGUFValueType.STRING:
            return self.string(what)
        if vtype == gguf.GGUFValueType.ARRAY:
            item_type = self.scalar("<I", what)
            length = self.scalar("<Q", what)
            if item_type == gguf.GGUFValueType.ARRAY:
                # llama.cpp refuses arrays of arrays; reading them recursively would also let a file nest
                # thousands deep and exhaust Python's stack
                raise ModelFileError(
                    f"{self.path}: metadata '{printable(what)}' is an array of arrays, which GGUF readers (llama.cpp) "
                    "refuse; the file is corrupt."
                )
            if item_type not in _SCALAR_FORMATS and item_type != gguf.GGUFValueType.STRING:
                raise ModelFileError(
                    f"{self.path}: metadata '{printable(what)}' is an array of unknown value type {item_type}; "
                    "the file is corrupt."
                )
            if length > MAX_KEPT_ARRAY:
                self._skip_array(item_type, length, what)
                return ArrayLength(gguf.GGUFValueType(item_type).name, length)
            return [self.value(item_type, what) for _ in range(length)]
        return self.scalar(_SCALAR_FORMATS[vtype], what)

    def _skip_array(self, item_type: int, length: int, what: str) -> None:
        if item_type == gguf.GGUFValueType.STRING:
            # the hot loop of opening a model (a 262k-token vocabulary): locals only, one bounds check each
            buf, pos, end, unpack = self.buf, self.pos, len(self.buf), struct.Struct("<Q").unpack_from
            for _ in range(length):
                if pos + 8 > end:
                    break
                pos += 8 + unpack(buf, pos)[0]
                if pos > end:
                    break
            else:
                self.pos = pos
                return
            self.pos = end + 1  # the last string runs past the end
            self._need(0, what)
        else:
            size = struct.calcsize(_SCALAR_FORMATS[gguf.GGUFValueType(item_type)]) * length
            self._need(size, what)
            self.pos += size


def _open_buffer(path: Path) -> tuple[Any, int]:
    if not path.exists():
        raise ModelFileError(f"{path}: no such file. Check the path, or pick a model from the library.")
    if path.is_dir():
        raise ModelFileError(f"{path}: is a folder, not a GGUF file.")
    size = path.stat().st_size
    if size == 0:
        raise ModelFileError(f"{path}: the file is empty (0 bytes). Download or copy it again.")
    try:
        with path.open("rb") as fh:
            return mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ), size
    except OSError as err:
        raise ModelFileError(f"{path}: cannot be read ({err.strerror}).") from None


def read_gguf(path: str | Path) -> tuple[int, dict[str, Any], list[TensorInfo], int]:
    """Parse the header: (version, metadata, tensors, file size). Raises ModelFileError on any defect."""
    path = Path(path)
    buf, size = _open_buffer(path)
    view = memoryview(buf)
    try:
        cur = _Cursor(view, path)
        magic = bytes(buf[:4])
        if magic != GGUF_MAGIC:
            hint = (
                " It looks like a safetensors/PyTorch file; use a GGUF conversion."
                if magic[:1] in (b"{", b"P")
                else ""
            )
            raise ModelFileError(f"{path}: not a GGUF file (it starts with {magic!r}, not b'GGUF').{hint}")
        cur.pos = 4
        version = cur.scalar("<I", "header")
        if version not in SUPPORTED_VERSIONS:
            raise ModelFileError(
                f"{path}: GGUF version {version} is not supported (this Ingle reads versions 2 and 3)."
            )
        n_tensors = cur.scalar("<Q", "header")
        n_kv = cur.scalar("<Q", "header")
        if n_tensors > 1_000_000 or n_kv > 1_000_000:
            raise ModelFileError(
                f"{path}: the header claims {n_tensors} tensors and {n_kv} keys; it is corrupt."
            )
        metadata: dict[str, Any] = {}
        alignment = DEFAULT_ALIGNMENT
        for _ in range(n_kv):
            key = cur.string("metadata keys")
            if key in metadata:
                raise ModelFileError(
                    f"{path}: metadata key '{printable(key)}' appears twice; the file is corrupt."
                )
            vtype = cur.scalar("<I", f"metadata '{key}'")
            metadata[key] = cur.value(vtype, key)
            if key == gguf.Keys.General.ALIGNMENT:
                alignment = _alignment(metadata[key], vtype, path)
            elif key in EXACT_TYPES and vtype != EXACT_TYPES[key]:
                raise ModelFileError(
                    f"{path}: '{key}' is stored as {_type_name(vtype)}, not as the "
                    f"{_type_name(EXACT_TYPES[key])} llama.cpp needs; the file is corrupt."
                )
        tensors = _read_tensor_infos(cur, n_tensors, alignment, size, path)
        return version, metadata, tensors, size
    finally:
        view.release()
        buf.close()


def _alignment(value: Any, vtype: int, path: Path) -> int:
    """general.alignment as llama.cpp accepts it: a uint32 that is a power of two."""
    if vtype != gguf.GGUFValueType.UINT32:
        raise ModelFileError(
            f"{path}: 'general.alignment' is stored as {_type_name(vtype)}, not as the uint32 llama.cpp needs; "
            "the file is corrupt."
        )
    if value <= 0 or value & (value - 1):
        raise ModelFileError(
            f"{path}: 'general.alignment' is {value}, which is not a power of two; the file is corrupt."
        )
    return value


def _type_name(vtype: int) -> str:
    try:
        return gguf.GGUFValueType(vtype).name.lower()
    except ValueError:
        return f"type {vtype}"


def _read_tensor_infos(
    cur: _Cursor, n_tensors: int, alignment: int, size: int, path: Path
) -> list[TensorInfo]:
    raw = []
    seen: set[str] = set()
    for _ in range(n_tensors):
        name = cur.string("tensor table")
        if name in seen:
            raise ModelFileError(f"{path}: tensor '{printable(name)}' appears twice; the file is corrupt.")
        seen.add(name)
        n_dims = cur.scalar("<I", "tensor table")
        if n_dims > MAX_DIMS:
            raise ModelFileError(
                f"{path}: tensor '{printable(name)}' has {n_dims} dimensions; llama.cpp allows at most {MAX_DIMS}. "
                "The file is corrupt."
            )
        shape = tuple(cur.scalar("<q", "tensor table") for _ in range(n_dims))
        type_id = cur.scalar("<I", "tensor table")
        offset = cur.scalar("<Q", "tensor table")
        raw.append((name, shape, type_id, offset))
    data_start = -(-cur.pos // alignment) * alignment
    tensors = []
    expected_offset = (
        0  # llama.cpp wants the tensors' data packed in table order, each padded to the alignment
    )
    for name, shape, type_id, offset in raw:
        try:
            qtype = gguf.GGMLQuantizationType(type_id)
            block, type_size = gguf.GGML_QUANT_SIZES[qtype]
        except (ValueError, KeyError):
            raise ModelFileError(
                f"{path}: tensor '{printable(name)}' has tensor type {type_id}, unknown to this Ingle; "
                "the file is corrupt or needs a newer version."
            ) from None
        if any(d < 0 for d in shape):
            raise ModelFileError(
                f"{path}: tensor '{printable(name)}' has a negative dimension {shape}; the file is corrupt."
            )
        n_elements = 1
        for d in shape:
            n_elements *= d
        if n_elements > _INT64_MAX:
            raise ModelFileError(
                f"{path}: tensor '{printable(name)}' has an impossible shape {shape}; the file is corrupt."
            )
        if (shape[0] if shape else 1) % block:
            raise ModelFileError(
                f"{path}: tensor '{printable(name)}' has rows of {shape[0]} values, not a multiple of {qtype.name}'s "
                f"block of {block}; the file is corrupt."
            )
        n_bytes = n_elements // block * type_size
        if offset != expected_offset:
            how = (
                "overlaps the tensor before it"
                if offset < expected_offset
                else "leaves a gap or is misaligned"
            )
            raise ModelFileError(
                f"{path}: tensor '{printable(name)}' starts at data offset {offset:,}, expected {expected_offset:,} "
                f"(it {how}); llama.cpp refuses such a file. The file is corrupt."
            )
        expected_offset += -(-n_bytes // alignment) * alignment
        end = data_start + offset + n_bytes
        if end > size:
            raise ModelFileError(
                f"{path}: tensor '{printable(name)}' ends at byte {end:,} but the file has only {size:,} bytes; "
                "the file is truncated. Download or copy it again."
            )
        tensors.append(TensorInfo(name, shape, qtype.name, offset, n_elements, n_bytes))
    return tensors


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
    tokens = md.get("tokenizer.ggml.tokens")
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

    def key(name: str) -> str:
        return f"{arch}.{name}"

    def bad(text: str) -> ModelFileError:
        return ModelFileError(f"{path}: {text}; the file is corrupt or was written by a broken converter.")

    if key("context_length") in md and _int(md, key("context_length"), 0, path) <= 0:
        raise bad(f"'{key('context_length')}' is {md[key('context_length')]}, it must be positive")
    if key("embedding_length") in md and _int(md, key("embedding_length"), 0, path) <= 0:
        raise bad(f"'{key('embedding_length')}' is {md[key('embedding_length')]}, it must be positive")
    n_layers = _int(md, key("block_count"), 0, path)
    if key("block_count") in md:
        if not 0 < n_layers <= MAX_LAYERS:
            raise bad(f"'{key('block_count')}' is {n_layers:,}; llama.cpp handles 1 to {MAX_LAYERS} layers")
        present = _layers_with_tensors(tensors)
        split = md.get(
            gguf.Keys.Split.LLM_KV_SPLIT_COUNT, 1
        )  # a split model's first part holds some layers only
        if present and n_layers > present and not (isinstance(split, int) and split > 1):
            raise bad(
                f"'{key('block_count')}' says {n_layers:,} layers but the file holds weights for {present}"
            )
    if _int(md, key("nextn_predict_layers"), 0, path) > n_layers:
        raise bad(f"'{key('nextn_predict_layers')}' is larger than the {n_layers} layers")
    n_expert = _int(md, key("expert_count"), 0, path)
    n_used = _int(md, key("expert_used_count"), 0, path, per_layer=True)
    n_groups = _int(md, key("expert_group_count"), 0, path)
    n_group_used = _int(md, key("expert_group_used_count"), 0, path)
    if n_expert > MAX_EXPERTS:
        raise bad(f"'{key('expert_count')}' is {n_expert:,}; llama.cpp handles at most {MAX_EXPERTS} experts")
    if n_expert == 0 and (n_used or n_groups):
        raise bad(f"it sets '{key('expert_used_count')}' or expert groups but has no '{key('expert_count')}'")
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
    n_head = _int(md, key("attention.head_count"), 0, path, per_layer=True)
    n_head_kv = _int(md, key("attention.head_count_kv"), n_head, path, per_layer=True)
    if n_head and n_head_kv > n_head:
        raise bad(f"it has more key/value heads ({n_head_kv}) than attention heads ({n_head})")
    scaling = _text(md, key("rope.scaling.type"), path)
    if scaling is not None and scaling not in ROPE_SCALING_TYPES:
        raise bad(
            f"'{key('rope.scaling.type')}' is '{printable(scaling)}', not one of {', '.join(ROPE_SCALING_TYPES)}"
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
    kind = "adapter" if md.get("general.type") == "adapter" else "model"
    arch = md.get("general.architecture")
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
    n_heads = _int(md, f"{arch}.attention.head_count", 0, path, per_layer=True)
    n_embd = _int(md, f"{arch}.embedding_length", 0, path)
    default_head = n_embd // n_heads if n_heads else 0
    file_type = md.get("general.file_type")
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
        name=str(md.get("general.name") or path.stem),
        file_type=file_type_name,
        parameter_count=sum(mix.values()),
        quant_mix=dict(mix.most_common()),
        n_layers=_int(md, f"{arch}.block_count", 0, path),
        n_heads=n_heads,
        n_kv_heads=_int(md, f"{arch}.attention.head_count_kv", n_heads, path, per_layer=True),
        head_dim_k=_int(md, f"{arch}.attention.key_length", default_head, path),
        head_dim_v=_int(md, f"{arch}.attention.value_length", default_head, path),
        n_embd=n_embd,
        context_length=_int(md, f"{arch}.context_length", 0, path),
        sliding_window=_int(md, f"{arch}.attention.sliding_window", 0, path),
        vocab_size=_vocab_size(md, path),
        chat_template=_text(md, "tokenizer.chat_template", path),
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
