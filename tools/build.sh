#!/usr/bin/env bash
# tools/build.sh — configures and builds ladnn in ./build (Release). Extra arguments go to CMake's
# configure step, e.g. tools/build.sh -DLADNN_CUDA=OFF or -DCMAKE_CUDA_ARCHITECTURES=80.
set -euo pipefail
cd "$(dirname "$0")/.."
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release "$@"
cmake --build build -j "$(nproc)"
