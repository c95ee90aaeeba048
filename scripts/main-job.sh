#!/usr/bin/env bash
# Runs the main job from an existing build folder ($1, default build): vfu-serve's dma-test
# device driven by vfu-broker's client (tools/vfu_demo.cpp).
set -euo pipefail
b=${1:-build}
exec "$b/tools/vfu-demo" --verbose
