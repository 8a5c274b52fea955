"""Write what training made: a GGUF LoRA adapter, merged F16 GGUF, and quantized merges by llama.cpp's quantizer."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import gguf
import numpy as np

from engine.gguf_info import inspect_gguf, sha256_file
from engine.gguf_keys import IngleKeys
from engine.library import ADAPTER_BASE_SHA_KEY
from training.errors import ExportError

DATASET_SHA_KEY = IngleKeys.DATASET_SHA256
SETTINGS_KEY = IngleKeys.TRAINING_SETTINGS
# Architectures whose GGUF -> transformers -> GGUF route is verified.
TRAINABLE_ARCHS = frozenset({"llama", "qwen2", "qwen3", "gemma2", "gemma3"})
# Those whose q/k projections transformers permutes on load (undone when the adapter is written back).
PERMUTE_QK_ARCHS = frozenset({"llama"})

# llama.cpp file types by the names its quantize tool uses.
QUANT_TYPES = {
    "F16": "MOSTLY_F16", "BF16": "MOSTLY_BF16", "Q8_0": "MOSTLY_Q8_0", "Q6_K": "MOSTLY_Q6_K",
    "Q5_K_M": "MOSTLY_Q5_K_M", "Q5_K_S": "MOSTLY_Q5_K_S", "Q5_1": "MOSTLY_Q5_1", "Q5_0": "MOSTLY_Q5_0",
    "Q4_K_M": "MOSTLY_Q4_K_M", "Q4_K_S": "MOSTLY_Q4_K_S", "Q4_1": "MOSTLY_Q4_1", "Q4_0": "MOSTLY_Q4_0",
    "IQ4_NL": "MOSTLY_IQ4_NL", "IQ4_XS": "MOSTLY_IQ4_XS", "Q3_K_L": "MOSTLY_Q3_K_L", "Q3_K_M": "MOSTLY_Q3_K_M",
    "Q3_K_S": "MOSTLY_Q3_K_S", "IQ3_M": "MOSTLY_IQ3_M", "IQ3_S": "MOSTLY_IQ3_S", "IQ3_XS": "MOSTLY_IQ3_XS",
    "IQ3_XXS": "MOSTLY_IQ3_XXS", "Q2_K": "MOSTLY_Q2_K", "Q2_K_S": "MOSTLY_Q2_K_S", "IQ2_M": "MOSTLY_IQ2_M",
    "IQ2_S": "MOSTLY_IQ2_S", "IQ2_XS": "MOSTLY_IQ2_XS", "IQ2_XXS": "MOSTLY_IQ2_XXS", "IQ1_M": "MOSTLY_IQ1_M",
    "IQ1_S": "MOSTLY_IQ1_S",
}  # fmt: skip
# llama.cpp's quantize tool refuses these without an importance matrix: at so few bits the result is garbage.
NEEDS_IMATRIX = {"IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "Q2_K_S"}


def permute_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's q/k row order (convert_hf_to_gguf's permute): the inverse of what transformers undoes on load."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


@contextlib.contextmanager
def atomic_path(out: Path) -> Iterator[Path]:
    """Yields a temporary path beside `out`; renamed onto `out` on success, removed on any failure."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".part")
    os.close(fd)
    try:
        yield Path(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a finished export gets the usual permissions
        os.replace(tmp, out)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        raise ExportError(f"{out}: could not write the file ({err.strerror or err}). Free some disk space "
                          "or choose another folder; no partial file was left.") from None  # fmt: skip
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_sidecar(out: Path, record: dict) -> None:
    with atomic_path(out.with_name(out.name + ".json")) as tmp:
        tmp.write_text(json.dumps(record, indent=2, sort_keys=True))


def gguf_tensor_name(arch: str, n_layers: int, hf_module: str) -> str:
    """'model.layers.0.self_attn.q_proj' -> 'blk.0.attn_q' (via gguf-py's name map)."""
    arch_enum = {v: k for k, v in gguf.MODEL_ARCH_NAMES.items()}[arch]
    name = gguf.get_tensor_name_map(arch_enum, n_layers).get_name(hf_module)
    if name is None:
        raise ExportError(f"No GGUF tensor name for '{hf_module}' in a {arch} model.")
    return name


def write_adapter(
    out: str | Path,
    base: str | Path,
    lora: dict[str, tuple[np.ndarray, np.ndarray]],
    alpha: float,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Write a llama.cpp LoRA adapter. `lora` maps transformers module names to (A [r, in], B [out, r])."""
    out = Path(out)
    info = inspect_gguf(base)
    arch = info.architecture
    if arch not in TRAINABLE_ARCHS:
        raise ExportError(f"Exporting adapters for '{arch}' models is not supported.")
    with atomic_path(out) as tmp:
        w = gguf.GGUFWriter(str(tmp), arch)
        w.add_type(gguf.GGUFType.ADAPTER)
        w.add_string(gguf.Keys.Adapter.TYPE, "lora")
        w.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(alpha))
        w.add_name(f"{info.metadata.get('general.name', Path(base).stem)} LoRA")
        for key, value in (metadata or {}).items():
            w.add_string(key, value)
        for module, (a, b) in sorted(lora.items()):
            name = gguf_tensor_name(arch, info.n_layers, module)
            if arch in PERMUTE_QK_ARCHS and name.endswith(("attn_q", "attn_k")):
                b = permute_rows(b, info.n_heads if name.endswith("attn_q") else info.n_kv_heads)
            w.add_tensor(f"{name}.weight.lora_a", np.ascontiguousarray(a, np.float32))
            w.add_tensor(f"{name}.weight.lora_b", np.ascontiguousarray(b, np.float32))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    return out


def read_adapter(path: str | Path) -> tuple[float, dict[str, tuple[np.ndarray, np.ndarray]], dict]:
    """(alpha, {'blk.0.attn_q.weight': (A, B)}, string metadata) of a GGUF LoRA adapter."""
    inspect_gguf(path, expect="adapter")
    reader = gguf.GGUFReader(str(path))
    alpha_field = reader.fields.get(gguf.Keys.Adapter.LORA_ALPHA)
    alpha = float(alpha_field.contents()) if alpha_field else 0.0
    parts: dict[str, dict[str, np.ndarray]] = {}
    for t in reader.tensors:
        base, _, kind = t.name.rpartition(".")
        parts.setdefault(base, {})[kind] = np.asarray(t.data, np.float32).reshape(
            tuple(reversed(t.shape.tolist()))
        )
    pairs = {k: (v["lora_a"], v["lora_b"]) for k, v in parts.items() if "lora_a" in v and "lora_b" in v}
    meta = {f.name: f.contents() for f in reader.fields.values() if f.name.startswith(IngleKeys.PREFIX)}
    return alpha, pairs, meta


def _dequantized(t) -> np.ndarray:
    shape = tuple(reversed(t.shape.tolist()))
    if t.tensor_type in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
        return np.asarray(t.data, np.float32).reshape(shape)
    return gguf.quants.dequantize(t.data, t.tensor_type).reshape(shape).astype(np.float32)


def _copy_metadata(reader, w, extra: dict[str, str]) -> None:
    for f in reader.fields.values():
        if (
            f.name.startswith("GGUF.")
            or f.name in ("general.architecture", "general.file_type")
            or f.name in extra
        ):
            continue
        vtype = f.types[0]
        sub = f.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        w.add_key_value(f.name, f.contents(), vtype, sub_type=sub)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    for key, value in extra.items():
        w.add_string(key, value)


def merge_f16(
    base: str | Path, adapter: str | Path, out: str | Path, scale: float = 1.0, extra=None, progress=None
) -> Path:
    """Dequantize the base, add scale·(alpha/r)·B·A to each adapted weight, write F16 (norms stay F32).
    `progress(done, total)` is called per tensor (a big model takes minutes)."""
    out = Path(out)
    alpha, pairs, meta = read_adapter(adapter)
    arch = inspect_gguf(base).architecture
    reader = gguf.GGUFReader(str(base))
    names = {t.name for t in reader.tensors}
    missing = sorted(set(pairs) - names)
    if missing:
        raise ExportError(
            f"{adapter}: adapts tensors the base model does not have ({', '.join(missing[:3])})."
        )
    with atomic_path(out) as tmp:
        w = gguf.GGUFWriter(str(tmp), arch)
        _copy_metadata(reader, w, {**meta, **(extra or {})})
        for number, t in enumerate(reader.tensors):
            if progress is not None:
                progress(number, len(reader.tensors))
            data = _dequantized(t)
            if t.name in pairs:
                a, b = pairs[t.name]
                rank = a.shape[0]
                data = data + (scale * (alpha / rank if alpha else 1.0)) * (b @ a)
            w.add_tensor(t.name, data.astype(np.float16 if data.ndim == 2 else np.float32))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    if progress is not None:
        progress(len(reader.tensors), len(reader.tensors))
    return out


def check_quant(qtype: str) -> str:
    q = qtype.upper()
    if q not in QUANT_TYPES:
        raise ExportError(f"Unknown quantization type '{qtype}'; choose one of {', '.join(QUANT_TYPES)}.")
    if q in NEEDS_IMATRIX:
        raise ExportError(f"{q} needs an importance matrix (imatrix): without one, llama.cpp's quantizer refuses it "
                          "because so few bits give a broken model. Choose Q3_K_S or larger.")  # fmt: skip
    return q


def quantize(f16: str | Path, out: str | Path, qtype: str, threads: int = 0) -> Path:
    """Quantize a GGUF with llama.cpp's own quantizer (llama_model_quantize), atomically."""
    import llama_cpp

    from engine.runtime import init_backend

    q = check_quant(qtype)
    init_backend()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_{QUANT_TYPES[q]}")
    params.nthread = threads
    out = Path(out)
    with atomic_path(out) as tmp:
        rc = llama_cpp.llama_model_quantize(str(f16).encode(), str(tmp).encode(), ctypes_ref(params))
        if rc != 0:
            raise OSError(f"llama.cpp's quantizer failed (code {rc})")
    return out


def ctypes_ref(obj):
    import ctypes

    return ctypes.byref(obj)


def export(
    base: str | Path, adapter: str | Path, out: str | Path, qtype: str = "F16", scale: float = 1.0,
    progress=None,
) -> Path:  # fmt: skip
    """Merged model in `qtype` (F16 direct; anything else via a temporary F16 merge), with a sidecar JSON.
    `progress(done, total)`: the merge, tensor by tensor."""
    q = check_quant(qtype)
    out = Path(out)
    base_sha = sha256_file(base)
    extra = {ADAPTER_BASE_SHA_KEY: base_sha, IngleKeys.EXPORT_QUANT: q, IngleKeys.EXPORT_SCALE: str(scale)}
    if q == "F16":
        merge_f16(base, adapter, out, scale, extra, progress)
    else:
        with tempfile.TemporaryDirectory(dir=out.parent if out.parent.exists() else None) as tmpdir:
            f16 = merge_f16(base, adapter, Path(tmpdir) / "merged-f16.gguf", scale, extra, progress)
            quantize(f16, out, q)
    _, _, meta = read_adapter(adapter)
    write_sidecar(out, {"kind": "merged", "quant": q, "base": str(base), "adapter": str(adapter), "scale": scale,
                        **meta, ADAPTER_BASE_SHA_KEY: base_sha})  # fmt: skip
    return out
