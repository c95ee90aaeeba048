#!/usr/bin/env bash
# The C API's programs against each other and against vfu-serve (ctest capi.*):
#   run.sh own|host-loop|vfu-serve BUILD_DIR
set -euo pipefail
mode=$1 build=$2
work=$(mktemp -d /tmp/vfu-capi-XXXXXX)
sock="$work/gpio.sock"
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
case "$mode" in
  own) "$build/tests/gpio_server" "$sock" >"$work/server.log" 2>&1 & pid=$! ; args=--dma ;;
  host-loop) "$build/tests/gpio_server" "$sock" --host-loop >"$work/server.log" 2>&1 & pid=$! ; args=--dma ;;
  vfu-serve) "$build/tools/vfu-serve" --device=gpio --socket-path="$sock" >"$work/server.log" 2>&1 & pid=$! ; args= ;;
  *) echo "unknown mode $mode" >&2; exit 2 ;;
esac
for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.05; done
rc=0
"$build/tests/gpio_client" "$sock" $args || rc=$?
if [ "$mode" != vfu-serve ]; then
  # Our C++ client enumerates the C device too.
  "$build/tools/vfu-probe" --read=2:1:1 "$sock" >"$work/probe.out" || { cat "$work/probe.out"; rc=1; }
  grep -q "494f:0dc8" "$work/probe.out" || { echo "FAIL vfu-probe did not see the C device"; cat "$work/probe.out"; rc=1; }
fi
kill "$pid"; wait "$pid" || { echo "FAIL the server exited badly"; rc=1; }
pid=
cat "$work/server.log"
if [ "$mode" != vfu-serve ] && ! grep -qE 'DMA windows: ([1-9][0-9]*) mapped, \1 unmapped' "$work/server.log"; then
  echo "FAIL the device did not hear of every window's unmapping"; rc=1
fi
exit $rc
