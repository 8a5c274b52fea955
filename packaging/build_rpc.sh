#!/usr/bin/env bash
# Build llama.cpp's RPC backend module (libggml-rpc.so) into the Ingle home, once (engine/rpc_build.py says how
# and why). Same as `ingle worker --build`.
# Usage: packaging/build_rpc.sh [SDIST_DIR]   (PYTHON, INGLE_HOME and CXX honoured; SDIST_DIR: an unpacked
#        llama-cpp-python-<version> source folder; without it the installed version's source is downloaded)
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python}" -m engine.rpc_build "$@"
