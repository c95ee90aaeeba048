#!/usr/bin/env bash
# Installs what vfu-broker needs from Debian 12, and nothing when it is all there.
# Idempotent and quiet when there is nothing to do. Must run as root (or with sudo).
set -euo pipefail
pkgs=(g++ cmake make pkg-config libcaf-dev libboost-dev libgtest-dev nlohmann-json3-dev)
if [ "${VFU_FUZZ:-0}" = 1 ]; then pkgs+=(clang libclang-rt-14-dev); fi
# The qemu interop tests (tests/interop/run.sh) assemble a guest from Debian packages and
# drive QEMU's monitor; QEMU itself is built by hand (docs/interop.md).
if [ -n "${VFU_QEMU:-}" ]; then pkgs+=(cpio gzip xz-utils zstd socat); fi
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "setup: installing ${missing[*]}"
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
