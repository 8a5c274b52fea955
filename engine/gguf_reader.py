"""The GGUF container read without loading weights: header, metadata values and tensor table, each checked the way
llama.cpp would need it (a file it would abort on is refused here with one line). engine/gguf_info.py reads a model
out of it."""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf

from engine.errors import ModelFileError
from engine.text import printable

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
# llama.cpp's own limit (ggml.h GGML_MAX_DIMS): a file past it makes llama.cpp abort the whole process
# (GGML_ASSERT) instead of failing the load, so it is refused here.
MAX_DIMS = 4
# Keys llama.cpp reads with getters that abort on any other stored type (gguf_get_val_* asserts): the LoRA
# adapter loader reads these unchecked, so the stored type must be exactly this.
EXACT_TYPES = {
    gguf.Keys.General.ARCHITECTURE: gguf.GGUFValueType.STRING,
    gguf.Keys.General.TYPE: gguf.GGUFValueType.STRING,
    gguf.Keys.Adapter.TYPE: gguf.GGUFValueType.STRING,
    gguf.Keys.Adapter.LORA_ALPHA: gguf.GGUFValueType.FLOAT32,
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
    file_offset: int = -1  # where the data starts in the file (offset is relative to the data section)


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
        tensors.append(TensorInfo(name, shape, qtype.name, offset, n_elements, n_bytes, data_start + offset))
    return tensors
