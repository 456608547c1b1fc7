#!/usr/bin/env bash
# tools/run.sh — the README's main-job command: set up, build, train LA-DNN on COVID-CT, evaluate it
# on the test split, and say where the report is.
#
# On the CPU it trains the tiny DenseNet configuration (under 2 minutes on 2 idle cores). On a GPU machine
# the full model is `./build/ladnn train --arch densenet169 --device cuda ...` (the CUDA backend was
# verified on an H200; see bench/RESULTS-gpu.md); this script keeps to the CPU job.
# Environment: LADNN_DATA (data folder; default ../shared/data/covid-ct), EPOCHS (default 20).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
bash tools/build.sh

data="${LADNN_DATA:-../shared/data/covid-ct}"
if [ ! -f "$data/data_split/train_meta.csv" ]; then
  echo "run: no COVID-CT data at $data — get it with tools/get-covid-ct.sh, or set LADNN_DATA" >&2
  exit 1
fi
run="runs/tiny-cpu-$(date +%Y%m%d-%H%M%S)"
./build/ladnn train --data "$data" --arch tiny --device cpu --epochs "${EPOCHS:-20}" --batch 32 \
  --lr 1e-3 --schedule cosine --seed 0 --out "$run"
./build/ladnn eval --model "$run/best.safetensors" --data "$data" --split test --out "$run/eval-test"
echo
echo "main job done: model $run/best.safetensors, report $run/eval-test/report.json (+ roc.svg, pr.svg, reliability.svg)"
