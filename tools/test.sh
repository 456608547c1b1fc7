#!/usr/bin/env bash
# tools/test.sh — the README's test command: set up, build, make the large golden fixtures, run every
# test (CUDA tests skip with a reason when no GPU is present).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh --golden
bash tools/build.sh
# The DenseNet-169 fixture (~100 MB) is too large to commit: PyTorch writes it here, once.
if [ ! -f build/golden/densenet169_io.safetensors ]; then
  /usr/bin/python3 tools/make_golden_densenet.py --arch densenet169 --out build/golden
fi
ctest --test-dir build --output-on-failure -j "$(nproc)"
