#!/usr/bin/env bash
# tools/run.sh — the README's main-job command: set up, build, run the main job.
# Until the training app lands (issue 4) the main job is `ladnn info`: what this build can run on.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
bash tools/build.sh
./build/ladnn info
