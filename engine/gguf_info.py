"""Read a GGUF file's metadata and tensor table without loading weights, and validate it before llama.cpp does."""

from __future__ import annotations

import hashlib
import mmap
import struct
from collections import Counter
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import gguf

from engine.errors import ModelFileError

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
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
                f"{self.path}: the file is truncated (it ends inside the {what}). Download or copy it again."
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
                f"{self.path}: metadata '{what}' has an unknown value type {vtype}; the file is corrupt."
            ) from None
        if vtype == gguf.GGUFValueType.STRING:
            return self.string(what)
        if vtype == gguf.GGUFValueType.ARRAY:
            item_type = self.scalar("<I", what)
            length = self.scalar("<Q", what)
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
        elif item_type in _SCALAR_FORMATS:
            size = struct.calcsize(_SCALAR_FORMATS[gguf.GGUFValueType(item_type)]) * length
            self._need(size, what)
            self.pos += size
        else:
            for _ in range(length):
                self.value(item_type, what)


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
        for _ in range(n_kv):
            key = cur.string("metadata keys")
            vtype = cur.scalar("<I", f"metadata '{key}'")
            metadata[key] = cur.value(vtype, key)
        tensors = _read_tensor_infos(cur, n_tensors, metadata, size, path)
        return version, metadata, tensors, size
    finally:
        view.release()
        buf.close()


def _read_tensor_infos(
    cur: _Cursor, n_tensors: int, metadata: dict, size: int, path: Path
) -> list[TensorInfo]:
    raw = []
    for _ in range(n_tensors):
        name = cur.string("tensor table")
        n_dims = cur.scalar("<I", "tensor table")
        if n_dims > 8:
            raise ModelFileError(f"{path}: tensor '{name}' claims {n_dims} dimensions; the file is corrupt.")
        shape = tuple(cur.scalar("<Q", "tensor table") for _ in range(n_dims))
        type_id = cur.scalar("<I", "tensor table")
        offset = cur.scalar("<Q", "tensor table")
        raw.append((name, shape, type_id, offset))
    alignment = int(metadata.get("general.alignment", DEFAULT_ALIGNMENT)) or DEFAULT_ALIGNMENT
    data_start = -(-cur.pos // alignment) * alignment
    tensors = []
    for name, shape, type_id, offset in raw:
        try:
            qtype = gguf.GGMLQuantizationType(type_id)
            block, type_size = gguf.GGML_QUANT_SIZES[qtype]
        except (ValueError, KeyError):
            raise ModelFileError(
                f"{path}: tensor '{name}' has tensor type {type_id}, unknown to this Ingle; "
                "the file is corrupt or needs a newer version."
            ) from None
        n_elements = 1
        for d in shape:
            n_elements *= d
        n_bytes = n_elements // block * type_size
        end = data_start + offset + n_bytes
        if end > size:
            raise ModelFileError(
                f"{path}: tensor '{name}' ends at byte {end:,} but the file has only {size:,} bytes; "
                "the file is truncated. Download or copy it again."
            )
        tensors.append(TensorInfo(name, shape, qtype.name, offset, n_elements, n_bytes))
    return tensors


def _arch_value(metadata: dict, arch: str, key: str, default: Any = 0) -> Any:
    value = metadata.get(f"{arch}.{key}", default)
    if isinstance(value, list):  # per-layer values (e.g. head_count_kv): report the largest
        value = max(value) if value else default
    return value


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
            f"{path}: this is a LoRA adapter, not a model. Load a base {arch} model and apply the adapter to it."
        )
    if expect == "adapter" and kind != "adapter":
        raise ModelFileError(f"{path}: this is a model, not a LoRA adapter.")
    if kind == "model" and not architecture_supported(arch):
        raise ModelFileError(
            f"{path}: architecture '{arch}' is not supported by the installed llama.cpp. "
            "Update Ingle (llama-cpp-python) or choose another model."
        )
    if not tensors:
        raise ModelFileError(f"{path}: the file holds no tensors (vocabulary only?); it cannot be run.")
    mix: Counter[str] = Counter()
    for t in tensors:
        mix[t.type_name] += t.n_elements
    n_heads = int(_arch_value(md, arch, "attention.head_count"))
    n_embd = int(_arch_value(md, arch, "embedding_length"))
    default_head = n_embd // n_heads if n_heads else 0
    tokens = md.get("tokenizer.ggml.tokens")
    vocab = tokens.length if isinstance(tokens, ArrayLength) else len(tokens or [])
    file_type = md.get("general.file_type")
    try:
        file_type_name = (
            gguf.LlamaFileType(file_type).name if file_type is not None else _guess_file_type(mix)
        )
    except ValueError:
        file_type_name = f"type {file_type}"
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
        n_layers=int(_arch_value(md, arch, "block_count")),
        n_heads=n_heads,
        n_kv_heads=int(_arch_value(md, arch, "attention.head_count_kv", n_heads)),
        head_dim_k=int(_arch_value(md, arch, "attention.key_length", default_head)),
        head_dim_v=int(_arch_value(md, arch, "attention.value_length", default_head)),
        n_embd=n_embd,
        context_length=int(_arch_value(md, arch, "context_length")),
        sliding_window=int(_arch_value(md, arch, "attention.sliding_window")),
        vocab_size=vocab,
        chat_template=md.get("tokenizer.chat_template"),
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
