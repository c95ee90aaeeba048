#!/usr/bin/env bash
# Runs the main job from an existing build folder ($1, default build).
set -euo pipefail
b=${1:-build}
vec=${VFU_VECTORS_DIR:-$(dirname "$0")/../../shared/vectors}
exec "$b/tools/vfu-decode" "$vec"
