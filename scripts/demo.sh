#!/usr/bin/env bash
# The main job: install what is missing, build, and run the demo (see README.md).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$(nproc)" >/dev/null
exec bash scripts/main-job.sh build
