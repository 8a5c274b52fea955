"""What this machine and the installed llama.cpp build can use: CPU features, GPU backends and memory."""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import psutil

from engine import units

# ggml_backend_dev_type values (ggml-backend.h)
_DEV_TYPES = {0: "CPU", 1: "GPU", 2: "IGPU", 3: "ACCEL"}


@dataclass(frozen=True)
class Device:
    name: str
    description: str
    kind: str  # CPU, GPU, IGPU, ACCEL
    memory_free: int
    memory_total: int


@dataclass(frozen=True)
class Hardware:
    """A snapshot of what llama.cpp can run on here."""

    cpu_features: dict[str, bool]
    physical_cores: int
    logical_cores: int
    ram_total: int
    ram_available: int
    gpu_offload: bool
    backends: tuple[str, ...]
    devices: tuple[Device, ...] = field(default_factory=tuple)
    has_amx: bool = False

    @property
    def gpus(self) -> tuple[Device, ...]:
        return tuple(d for d in self.devices if d.kind in ("GPU", "IGPU"))

    @property
    def vram_total(self) -> int:
        return sum(d.memory_total for d in self.gpus)

    @property
    def vram_free(self) -> int:
        return sum(d.memory_free for d in self.gpus)

    def describe(self) -> str:
        gpus = ", ".join(f"{d.description} ({units.gib(d.memory_total)})" for d in self.gpus) or "none"
        feats = " ".join(k for k, v in self.cpu_features.items() if v)
        return (
            f"CPU: {self.physical_cores} cores ({self.logical_cores} threads), {feats}\n"
            f"RAM: {units.gib(self.ram_available)} free of {units.gib(self.ram_total)}\n"
            f"llama.cpp backends: {', '.join(self.backends)}; GPU offload: {'yes' if self.gpu_offload else 'no'}\n"
            f"GPUs: {gpus}"
        )


def llama_library_path() -> Path:
    """The libllama shared library that llama-cpp-python loads, found without importing (and so loading) it:
    the GUI process inspects GGUF files but must never load llama.cpp itself."""
    import importlib.util

    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("llama-cpp-python is not installed")
    lib_dir = Path(list(spec.submodule_search_locations)[0]) / "lib"
    for name in ("libllama.so", "libllama.dylib", "llama.dll"):
        if (lib_dir / name).exists():
            return lib_dir / name
    raise FileNotFoundError(f"libllama not found in {lib_dir}")


def parse_cpu_flags(cpuinfo: str) -> frozenset[str]:
    """The feature flags of the first CPU in /proc/cpuinfo text (its `flags` line; not `vmx flags` or `bugs`)."""
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


@cache
def cpu_flags() -> frozenset[str]:
    """This CPU's feature flags (avx2, avx512_bf16, amx_tile, ...); empty where there is no /proc/cpuinfo."""
    try:
        return parse_cpu_flags(Path("/proc/cpuinfo").read_text())
    except OSError:
        return frozenset()


def cpu_has_amx() -> bool:
    """AMX CPUs crash llama.cpp's repacked matmul (DESIGN.md section 4); we then load with use_extra_bufts off."""
    return bool({"amx_int8", "amx_tile"} & cpu_flags())


def _parse_system_info(text: str) -> dict[str, bool]:
    features: dict[str, bool] = {}
    for part in text.replace("CPU :", "|").split("|"):
        if "=" in part:
            key, _, value = part.partition("=")
            features[key.strip()] = value.strip() == "1"
    return features


def _ggml_devices() -> list[Device]:
    """Enumerate ggml backend devices through the stable C API of libggml (llama-cpp-python has no binding)."""
    lib_dir = llama_library_path().parent
    candidates = [
        p for p in lib_dir.iterdir() if p.name.startswith(("libggml.", "ggml.")) and "base" not in p.name
    ]
    if not candidates:
        return []
    lib = ctypes.CDLL(str(sorted(candidates)[0]))
    lib.ggml_backend_dev_count.restype = ctypes.c_size_t
    lib.ggml_backend_dev_get.restype = ctypes.c_void_p
    lib.ggml_backend_dev_get.argtypes = [ctypes.c_size_t]
    for fn in (lib.ggml_backend_dev_name, lib.ggml_backend_dev_description):
        fn.restype = ctypes.c_char_p
        fn.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_dev_type.restype = ctypes.c_int
    lib.ggml_backend_dev_type.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_dev_memory.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t)] * 1 + [
        ctypes.POINTER(ctypes.c_size_t)
    ]
    devices = []
    for i in range(lib.ggml_backend_dev_count()):
        dev = lib.ggml_backend_dev_get(i)
        free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
        lib.ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
        devices.append(
            Device(
                name=(lib.ggml_backend_dev_name(dev) or b"").decode(),
                description=(lib.ggml_backend_dev_description(dev) or b"").decode(),
                kind=_DEV_TYPES.get(lib.ggml_backend_dev_type(dev), "OTHER"),
                memory_free=free.value,
                memory_total=total.value,
            )
        )
    return devices


@cache
def detect() -> Hardware:
    """Probe once per process; cheap enough for start-up (no model is loaded)."""
    import llama_cpp

    llama_cpp.llama_backend_init()
    info = llama_cpp.llama_print_system_info().decode(errors="replace")
    try:
        devices = tuple(_ggml_devices())
    except (OSError, AttributeError):
        devices = ()
    backends = tuple(dict.fromkeys(d.name.rstrip("0123456789") for d in devices)) or ("CPU",)
    mem = psutil.virtual_memory()
    return Hardware(
        cpu_features=_parse_system_info(info),
        physical_cores=psutil.cpu_count(logical=False) or os.cpu_count() or 1,
        logical_cores=os.cpu_count() or 1,
        ram_total=mem.total,
        ram_available=mem.available,
        gpu_offload=bool(llama_cpp.llama_supports_gpu_offload()),
        backends=backends,
        devices=devices,
        has_amx=cpu_has_amx(),
    )


def current() -> Hardware:
    """`detect()` with the free RAM and VRAM of now (what a fit check or "Fit automatically" must use)."""
    import dataclasses

    base = detect()
    try:
        devices = tuple(_ggml_devices())
    except (OSError, AttributeError):
        devices = base.devices
    return dataclasses.replace(base, ram_available=psutil.virtual_memory().available, devices=devices)


def default_threads() -> int:
    """llama.cpp runs best on physical cores; leave one for the GUI on big machines."""
    cores = psutil.cpu_count(logical=False) or os.cpu_count() or 1
    return max(1, cores - 1) if cores > 4 else cores
