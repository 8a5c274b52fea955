"""Build llama.cpp's RPC backend as a loadable ggml module (libggml-rpc.so) into the Ingle home, once.

The installed llama-cpp-python is built without RPC, and pip reuses its cached wheel whatever CMAKE_ARGS say,
so instead of reinstalling we compile ggml-rpc from the SAME vendored llama.cpp source (llama-cpp-python's sdist
of the installed version) as a backend module linked to the installed libggml-base, with the flags ggml's CMake
gives a module (ggml_add_backend_library, GGML_BACKEND_DL=ON). The engine loads it with ggml_backend_load().
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from engine.errors import RpcError
from engine.library import data_dir

MODULE_NAME = "libggml-rpc.so"
PACKAGE = "llama-cpp-python"


def installed_version() -> str:
    return importlib.metadata.version(PACKAGE)


def llama_lib_dir() -> Path:
    """The folder of the installed libggml*.so (found without importing llama_cpp, so it is cheap)."""
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.origin:
        raise RpcError("llama-cpp-python is not installed in this Python.")
    return Path(spec.origin).parent / "lib"


def module_path() -> Path:
    """Where the module for the installed llama-cpp-python lives (one per version: a new version rebuilds)."""
    return data_dir() / "backends" / installed_version() / MODULE_NAME


def _sdist(work: Path) -> Path:
    version = installed_version()
    cmd = [sys.executable, "-m", "pip", "download", f"{PACKAGE}=={version}", "--no-binary", ":all:",
           "--no-deps", "--quiet", "-d", str(work)]  # fmt: skip
    if subprocess.run(cmd).returncode != 0:
        raise RpcError(
            f"could not download the {PACKAGE} {version} source; pass its unpacked folder instead."
        )
    archive = next(work.glob("*.tar.gz"), None)
    if archive is None:
        raise RpcError(f"pip downloaded no {PACKAGE} source archive into {work}.")
    with tarfile.open(archive) as tar:
        tar.extractall(work, filter="data")
    return next(p for p in work.iterdir() if p.is_dir())


def build(source: Path | None = None, log=print) -> Path:
    """Compile the module into module_path(); `source` is an unpacked sdist (downloaded when None)."""
    compiler = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if not compiler:
        raise RpcError("no C++ compiler found (install g++ or clang++, or set CXX).")
    with tempfile.TemporaryDirectory(prefix="ingle-rpc-") as tmp:
        src = Path(source) if source else _sdist(Path(tmp))
        ggml = src / "vendor" / "llama.cpp" / "ggml"
        rpc = ggml / "src" / "ggml-rpc"
        if not (rpc / "ggml-rpc.cpp").is_file():
            raise RpcError(
                f"{src}: no vendored ggml-rpc source there (expected an unpacked {PACKAGE} sdist)."
            )
        out = module_path()
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp_out = out.with_name(f".{out.name}.tmp")
        lib = llama_lib_dir()
        cmd = ["nice", compiler, "-O2", "-std=c++17", "-fPIC", "-shared", "-pthread",
               "-DGGML_BACKEND_DL", "-DGGML_BACKEND_BUILD", "-DGGML_BACKEND_SHARED", "-DGGML_SHARED", "-DNDEBUG",
               f"-I{ggml / 'include'}", f"-I{ggml / 'src'}", f"-I{rpc}",
               str(rpc / "ggml-rpc.cpp"), str(rpc / "transport.cpp"),
               f"-L{lib}", "-lggml-base", f"-Wl,-rpath,{lib}", "-o", str(tmp_out)]  # fmt: skip
        log(f"building the RPC backend for {PACKAGE} {installed_version()} (about a minute)...")
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            tmp_out.unlink(missing_ok=True)
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise RpcError(f"compiling ggml-rpc failed: {last[:300]}")
        os.replace(tmp_out, out)
    return out


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    try:
        path = build(Path(args[0]) if args else None)
    except RpcError as err:
        print(f"build_rpc: error: {err}", file=sys.stderr)
        return 2
    print(f"built: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
