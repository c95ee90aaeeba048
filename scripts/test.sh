#!/usr/bin/env bash
# Install what is missing, build, and run every test (see README.md). CI runs this verbatim.
# It runs the whole suite three ways, each in its own build folder:
#   1. build-test:  the normal build (RelWithDebInfo, -Werror); the interop tests with real
#      peers (labels qemu, libvfio-user) run only when VFU_QEMU / VFU_LVU name them;
#   2. build-asan:  the whole suite under AddressSanitizer + UndefinedBehaviorSanitizer;
#   3. build-tsan:  the socket tests (broker core, twin socket, server, client, faults) under
#      ThreadSanitizer.
# The socket test binaries run twice: as they are, and (prefix polling.) with the event
# loop polling, as vfu-serve runs by default.
# Options: --quick (only 1), --sanitize (only 2), --tsan (only 3).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
jobs=$(nproc)
mode=${1:-all}

run_normal() {
  cmake -S . -B build-test -DCMAKE_BUILD_TYPE=Release >/dev/null
  cmake --build build-test -j"$jobs"
  (cd build-test && ctest --output-on-failure -j"$jobs" --timeout 300)
}
run_asan() {
  # (The headers were checked and the install tried by the normal build: a consumer built
  # without the sanitizer cannot load sanitized libraries.)
  cmake -S . -B build-asan -DVFU_SANITIZE=ON -DVFU_HEADER_CHECK=OFF -DCMAKE_BUILD_TYPE=Debug -DCMAKE_CXX_FLAGS_DEBUG=-g1 >/dev/null
  cmake --build build-asan -j"$jobs"
  (cd build-asan && ctest --output-on-failure -j"$jobs" --timeout 600 -LE 'qemu|libvfio-user|install')
}
run_tsan() {
  cmake -S . -B build-tsan -DVFU_TSAN=ON -DCMAKE_BUILD_TYPE=Debug -DCMAKE_CXX_FLAGS_DEBUG=-g1 >/dev/null
  cmake --build build-tsan -j"$jobs" --target actor_tests twin_tests device_tests client_tests fault_tests robustness_tests
  export TSAN_OPTIONS="halt_on_error=1 exitcode=66 suppressions=$PWD/tests/tsan.supp"
  (cd build-tsan && ctest --output-on-failure -j"$jobs" --timeout 900 \
     -R '^(polling\.)?(BrokerTest|WithAndWithout/TwinPair|TwinRaw|ServerTest|ClientTest|InProcessClientTest|HostileServerTest|FaultTest|RobustnessTest)\.')
}

case "$mode" in
  --quick) run_normal ;;
  --sanitize) run_asan ;;
  --tsan) run_tsan ;;
  all) run_normal; run_asan; run_tsan ;;
  *) echo "usage: scripts/test.sh [--quick|--sanitize|--tsan]" >&2; exit 2 ;;
esac
