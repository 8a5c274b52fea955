#!/usr/bin/env bash
# Build llama.cpp's own llama-server and llama-bench from the llama.cpp source that the installed
# llama-cpp-python vendors, so `ingle bench --server` and llama-bench compare against the very same engine.
# Usage: packaging/build_llama_tools.sh PREFIX [--cuda] [-j N]
#   PREFIX   where the tools go: PREFIX/bin/llama-server, PREFIX/bin/llama-bench (the build tree stays in
#            PREFIX/build, so a second run only rebuilds what changed)
#   --cuda   build with GGML_CUDA=ON (needs the CUDA toolkit)
#   -j N     parallel compile jobs (default: all cores)
# Environment: PYTHON (default: python3) is the interpreter whose llama-cpp-python version is matched.
set -euo pipefail

usage() { echo "usage: $0 PREFIX [--cuda] [-j N]" >&2; exit 2; }
[ $# -ge 1 ] || usage
prefix=$1; shift
cuda=OFF
jobs=$(nproc 2>/dev/null || echo 2)
while [ $# -gt 0 ]; do
  case $1 in
    --cuda) cuda=ON ;;
    -j) [ $# -ge 2 ] || usage; jobs=$2; shift ;;
    *) usage ;;
  esac
  shift
done
python=${PYTHON:-python3}
mkdir -p "$prefix"
prefix=$(cd "$prefix" && pwd)

version=$("$python" -c 'import importlib.metadata as m; print(m.version("llama_cpp_python"))') || {
  echo "build_llama_tools: error: llama-cpp-python is not installed for $python; set PYTHON to the" \
    "interpreter that runs Ingle" >&2
  exit 2
}
echo "llama-cpp-python $version: fetching its source distribution"

src=$prefix/src/llama-cpp-python-$version
if [ ! -d "$src/vendor/llama.cpp" ]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  # pip prepares the metadata (in an isolated environment), which is why a download takes a minute.
  "$python" -m pip download "llama-cpp-python==$version" --no-deps --no-binary :all: -d "$tmp" -q
  archive=$(find "$tmp" -maxdepth 1 -name 'llama[_-]cpp[_-]python-*.tar.gz' | head -1)
  [ -n "$archive" ] || { echo "build_llama_tools: error: pip downloaded no sdist into $tmp" >&2; exit 2; }
  mkdir -p "$tmp/unpack"
  tar -xzf "$archive" -C "$tmp/unpack"
  mkdir -p "$prefix/src"
  rm -rf "$src"
  mv "$tmp/unpack"/*/ "$src"
fi
llama=$src/vendor/llama.cpp
[ -f "$llama/CMakeLists.txt" ] || { echo "build_llama_tools: error: no vendor/llama.cpp in $src" >&2; exit 2; }

generator=()
command -v ninja >/dev/null && generator=(-G Ninja)
build=$prefix/build
# Static libraries: the two binaries then run from PREFIX/bin without an LD_LIBRARY_PATH.
cmake -S "$llama" -B "$build" "${generator[@]}" \
  -DCMAKE_BUILD_TYPE=Release \
  -DBUILD_SHARED_LIBS=OFF \
  -DLLAMA_CURL=OFF \
  -DGGML_NATIVE=ON \
  -DGGML_CUDA="$cuda" \
  -DLLAMA_BUILD_TESTS=OFF \
  -DLLAMA_BUILD_EXAMPLES=OFF \
  -DLLAMA_BUILD_SERVER=ON
cmake --build "$build" --config Release -j "$jobs" --target llama-server llama-bench
mkdir -p "$prefix/bin"
for tool in llama-server llama-bench; do
  install -m 755 "$build/bin/$tool" "$prefix/bin/$tool"
done
echo "$version" >"$prefix/LLAMA_CPP_PYTHON_VERSION"
echo "built: $prefix/bin/llama-server and $prefix/bin/llama-bench (llama.cpp vendored by llama-cpp-python $version)"
