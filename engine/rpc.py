"""llama.cpp's RPC backend in this process: load the ggml-rpc module, attach workers' devices to a model load,
and serve this machine as a worker. Only the engine child and `ingle worker` import this (it loads llama.cpp)."""

from __future__ import annotations

import ctypes
import socket
from dataclasses import dataclass

import llama_cpp

from engine.errors import RpcError
from engine.rpc_build import llama_lib_dir, module_path
from engine.rpc_split import Endpoint, SplitPlan, parse_endpoints, parse_weights, plan
from engine.settings import LoadSettings

CONNECT_TIMEOUT = 5.0
_DEV_TYPE_CPU, _DEV_TYPE_ACCEL = 0, 3  # GGML_BACKEND_DEVICE_TYPE_CPU, _ACCEL (ggml-backend.h)
_ggml = None
_reg = None
_keepalive: list = []  # the device and split arrays llama.cpp reads while a model loads


def _lib() -> ctypes.CDLL:
    global _ggml
    if _ggml is None:
        lib = ctypes.CDLL(str(llama_lib_dir() / "libggml.so"))
        vp, cp, sz = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t
        for name, res, args in [
            ("ggml_backend_load", vp, [cp]),
            ("ggml_backend_reg_get_proc_address", vp, [vp, cp]),
            ("ggml_backend_reg_dev_count", sz, [vp]),
            ("ggml_backend_reg_dev_get", vp, [vp, sz]),
            ("ggml_backend_dev_by_type", vp, [ctypes.c_int]),
            ("ggml_backend_dev_count", sz, []),
            ("ggml_backend_dev_get", vp, [sz]),
            ("ggml_backend_dev_type", ctypes.c_int, [vp]),
            ("ggml_backend_dev_name", cp, [vp]),
            ("ggml_backend_dev_description", cp, [vp]),
            ("ggml_backend_dev_memory", None, [vp, ctypes.POINTER(sz), ctypes.POINTER(sz)]),
        ]:
            fn = getattr(lib, name)
            fn.restype, fn.argtypes = res, args
        _ggml = lib
    return _ggml


def available() -> bool:
    return module_path().is_file()


def load_backend() -> int:
    """Register the RPC backend (once per process); a clear error when it has not been built."""
    global _reg
    if _reg is None:
        path = module_path()
        if not path.is_file():
            raise RpcError(
                "llama.cpp's RPC backend is not built on this machine; run `ingle worker --build` once "
                "(it compiles it for the installed llama-cpp-python, about a minute)."
            )
        llama_cpp.llama_backend_init()
        reg = _lib().ggml_backend_load(str(path).encode())
        if not reg:
            raise RpcError(
                f"{path}: llama.cpp could not load the RPC backend; rebuild it with `ingle worker --build`."
            )
        _reg = reg
    return _reg


def _proc(name: str, restype, *argtypes):
    address = _lib().ggml_backend_reg_get_proc_address(load_backend(), name.encode())
    if not address:
        raise RpcError(f"the RPC backend has no {name}; rebuild it with `ingle worker --build`.")
    return ctypes.CFUNCTYPE(restype, *argtypes)(address)


def check_reachable(endpoint: Endpoint, timeout: float = CONNECT_TIMEOUT) -> None:
    """ggml-rpc aborts the whole process on a refused connection, so try the worker from Python first."""
    try:
        socket.create_connection((endpoint.host, endpoint.port), timeout=timeout).close()
    except OSError as err:
        raise RpcError(
            f"cannot reach the RPC worker {endpoint}: {err.strerror or err}; start it there with "
            f"`ingle worker --port {endpoint.port}` (or check the address and any SSH tunnel)."
        ) from None


@dataclass(frozen=True)
class WorkerDevice:
    endpoint: Endpoint
    handle: int  # ggml_backend_dev_t
    name: str
    description: str
    free: int
    total: int


def attach(endpoint: Endpoint) -> list[WorkerDevice]:
    """Connect to one worker and return its devices (llama.cpp remembers the connection)."""
    check_reachable(endpoint)
    add_server = _proc("ggml_backend_rpc_add_server", ctypes.c_void_p, ctypes.c_char_p)
    reg = add_server(str(endpoint).encode())
    lib = _lib()
    devices = []
    for i in range(lib.ggml_backend_reg_dev_count(reg)):
        dev = lib.ggml_backend_reg_dev_get(reg, i)
        free, total = ctypes.c_size_t(), ctypes.c_size_t()
        lib.ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
        devices.append(WorkerDevice(endpoint, dev, lib.ggml_backend_dev_name(dev).decode(errors="replace"),
                                    lib.ggml_backend_dev_description(dev).decode(errors="replace"),
                                    free.value, total.value))  # fmt: skip
    if not devices:
        raise RpcError(f"the RPC worker {endpoint} offers no device.")
    return devices


def apply_split(params, settings: LoadSettings, n_layer: int) -> SplitPlan | None:
    """Point llama_model_params at the workers of `settings.rpc` with its layer split; None without workers."""
    endpoints = parse_endpoints(settings.rpc)
    if not endpoints:
        return None
    weights = parse_weights(settings.rpc_split, len(endpoints))
    handles, shares = [], []
    for endpoint, weight in zip(endpoints, weights[1:], strict=True):
        devices = attach(endpoint)
        for dev in devices:  # a worker serving several devices shares its weight among them
            handles.append(dev.handle)
            shares.append(weight / len(devices))
    split = plan(n_layer, (weights[0], *shares))
    device_array = (ctypes.c_void_p * (len(handles) + 1))(*handles, None)
    split_array = (ctypes.c_float * max(len(shares), llama_cpp.LLAMA_MAX_DEVICES))(*split.tensor_split)
    _keepalive[:] = [device_array, split_array]
    params.devices = ctypes.cast(device_array, ctypes.c_void_p)
    params.tensor_split = split_array
    params.n_gpu_layers = split.n_gpu_layers
    return split


def served_devices() -> list[int]:
    """What a worker serves, as llama.cpp's rpc-server chooses: every GPU of this build, else the CPU."""
    load_backend()
    lib = _lib()
    all_devices = [lib.ggml_backend_dev_get(i) for i in range(lib.ggml_backend_dev_count())]
    gpus = [d for d in all_devices if lib.ggml_backend_dev_type(d) not in (_DEV_TYPE_CPU, _DEV_TYPE_ACCEL)]
    cpu = lib.ggml_backend_dev_by_type(_DEV_TYPE_CPU)
    if not gpus and not cpu:
        raise RpcError("llama.cpp found no device to serve.")
    return gpus or [cpu]


def describe_devices(devices: list[int]) -> str:
    lib = _lib()
    return ", ".join(lib.ggml_backend_dev_description(d).decode(errors="replace") for d in devices)


def serve(host: str, port: int, threads: int, devices: list[int]) -> None:
    """Serve `devices` as an RPC worker; blocks for good (run it in a thread)."""
    start = _proc(
        "ggml_backend_rpc_start_server", None,
        ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_size_t, ctypes.POINTER(ctypes.c_void_p),
    )  # fmt: skip
    array = (ctypes.c_void_p * len(devices))(*devices)
    start(str(Endpoint(host, port)).encode(), None, threads, len(devices), array)
