#!/usr/bin/env bash
# Install what is missing, build, and run every test (see README.md). Used verbatim by CI.
#   scripts/test.sh               normal build in build-test/
#   scripts/test.sh --sanitize    ASan+UBSan build in build-asan/
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
dir=build-test; opts=()
if [ "${1:-}" = "--sanitize" ]; then dir=build-asan; opts=(-DVFU_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug); fi
cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo "${opts[@]}" >/dev/null
cmake --build "$dir" -j"$(nproc)"
cd "$dir" && ctest --output-on-failure -j"$(nproc)" --timeout 300
