#!/usr/bin/env bash
# Interop with libvfio-user's samples, built by hand outside the project (docs/interop.md):
# our client against its servers, its client against ours, and (with VFU_QEMU too) QEMU's
# client against its gpio. ctest runs each as libvfio-user.NAME (label libvfio-user);
# without VFU_LVU naming libvfio-user's build folder it prints one line and is skipped.
#
#   VFU_LVU=/path/to/libvfio-user/build tests/interop/lvu.sh SCENARIO BUILD_DIR
set -uo pipefail
scenario=${1:?usage: lvu.sh SCENARIO BUILD_DIR}
build=$(cd "${2:?usage: lvu.sh SCENARIO BUILD_DIR}" && pwd)
here=$(cd "$(dirname "$0")" && pwd)
if [ -z "${VFU_LVU:-}" ]; then
  echo "libvfio-user.$scenario skipped: VFU_LVU does not name a libvfio-user build folder (docs/interop.md)"
  exit 77
fi
die() { echo "libvfio-user.$scenario: $*" >&2; exit 1; }
samples="$VFU_LVU/samples"
[ -x "$samples/server" ] || die "no $samples/server: VFU_LVU must name libvfio-user's meson build folder"
tools="$build/tools"
work=$(mktemp -d /tmp/vfu-lvu-XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  rm -rf "$work"
}
trap cleanup EXIT
sock="$work/dev.sock"

# start PROGRAM ARGS...: a server in the background (its stdin kept open: the null sample
# exits at EOF); waits for its socket.
start() {
  mkfifo "$work/stdin"
  "$@" <"$work/stdin" >"$work/server.log" 2>&1 &
  pids+=($!)
  exec 3>"$work/stdin"
  for _ in $(seq 50); do [ -S "$sock" ] && return 0; sleep 0.1; done
  die "$1 did not listen on $sock: $(cat "$work/server.log")"
}
# expect FILE PATTERN WHAT
expect() { grep -q -e "$2" "$1" || { cat "$1"; die "$3"; }; }

case "$scenario" in
  probe-gpio)  # vfu-probe (our client) against the gpio sample: IDs, BAR2, port semantics
    start "$samples/gpio-pci-idio-16" "$sock"
    "$tools/vfu-probe" --read=2:1:1 "$sock" | tee "$work/out"
    expect "$work/out" "494f:0dc8" "wrong IDs"
    expect "$work/out" "Region 2 BAR2    size 0x100" "no 256-byte BAR2"
    expect "$work/out" "region 2 0x1: ff" "BAR2 offset 1 did not read 0xff"
    ;;
  probe-null)
    start "$samples/null" "$sock"
    "$tools/vfu-probe" "$sock" | tee "$work/out"
    expect "$work/out" "device flags 0x3: PCI reset, 9 regions, 5 IRQ types" "enumeration differs"
    ;;
  probe-server)
    start "$samples/server" "$sock"
    "$tools/vfu-probe" --read=1:0:16 "$sock" | tee "$work/out"
    expect "$work/out" "dead:beef" "wrong IDs"
    expect "$work/out" "Region 1 BAR1    size 0x4000     RW mmap .*\[area 0x0+0x1000\] \[area 0x2000+0x1000\]" "BAR1 differs"
    ;;
  server-dma)  # its timer-driven DMA, by messages and through its mmap, into our client
    start "$samples/server" -v "$sock"
    "$build/tests/lvu-server-dma" "$sock" || { tail -20 "$work/server.log"; die "failed"; }
    ;;
  server-dma-one-socket)  # the same without the twin socket: its DMA shares our socket
    start "$samples/server" -v "$sock"
    "$build/tests/lvu-server-dma" --one-socket "$sock" || { tail -20 "$work/server.log"; die "failed"; }
    ;;
  migrate-server)  # its server sample moved between two instances, and vfu-migrate's report of why a fresh one cannot
    start "$samples/server" -v "$sock"
    sock2="$work/dev2.sock"
    "$samples/server" -v "$sock2" >"$work/server2.log" 2>&1 &
    pids+=($!)
    for _ in $(seq 50); do [ -S "$sock2" ] && break; sleep 0.1; done
    "$build/tests/lvu-server-dma" --migrate "$sock" "$sock2" || { tail -20 "$work/server.log" "$work/server2.log"; die "failed"; }
    # Two fresh instances: the sample refuses RUNNING with no time in BAR0, so vfu-migrate
    # must fail, name both states, and exit 1.
    sock="$work/dev3.sock" sock2="$work/dev4.sock"
    "$samples/server" -v "$sock" >"$work/server3.log" 2>&1 & pids+=($!)
    "$samples/server" -v "$sock2" >"$work/server4.log" 2>&1 & pids+=($!)
    for _ in $(seq 50); do [ -S "$sock" ] && [ -S "$sock2" ] && break; sleep 0.1; done
    "$tools/vfu-migrate" "$sock" "$sock2" 2>"$work/err"; rc=$?
    cat "$work/err"
    [ $rc = 1 ] || die "vfu-migrate exited $rc"
    expect "$work/err" "destination to RUNNING: .*; source STOP .*, destination STOP" "vfu-migrate did not name both states"
    ;;
  client-gpio | client-dma-test | client-ram)  # its client against our servers
    dev=${scenario#client-}
    start "$tools/vfu-serve" --device="$dev" --socket-path="$sock"
    timeout 60 "$samples/client" "$sock" >"$work/out" 2>&1
    echo "samples/client exited with status $?"
    sed 's/^/[samples\/client] /' "$work/out"
    # It negotiates, enumerates and checks the error reply to a read of region 0xdeadbeef
    # before its first assertion about libvfio-user's own sample device.
    expect "$work/out" "failed to read from region -559038737 0-0x3: Invalid argument" \
      "samples/client stopped before its device-specific checks"
    kill -0 "${pids[0]}" 2>/dev/null || die "vfu-serve died"
    ;;
  qemu-gpio)  # QEMU's client against the gpio sample, with the guest scenario ours passes
    [ -n "${VFU_QEMU:-}" ] || { echo "libvfio-user.$scenario skipped: VFU_QEMU is not set"; exit 77; }
    VFU_SERVER="$samples/gpio-pci-idio-16" bash "$here/run.sh" gpio "$build"
    exit $?
    ;;
  *) die "no scenario '$scenario'" ;;
esac
echo "libvfio-user.$scenario: passed"
