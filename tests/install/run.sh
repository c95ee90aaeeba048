#!/usr/bin/env bash
# install.consumer: installs the build into a temporary prefix, builds tests/install/consumer
# against it the way a host would (CMake find_package; make with pkg-config), and runs the
# three programs against the installed vfu-serve.
set -euo pipefail
build=$1
src=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d /tmp/vfu-install-XXXXXX)
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
prefix="$work/prefix"
cmake --install "$build" --prefix "$prefix" >"$work/install.log"
echo "installed: $(find "$prefix" -type f | wc -l) files"
for f in include/vfu/vfu.h include/vfu/actors/endpoint.hpp share/man/man1/vfu-trace.1 bin/vfu-serve; do
  [ -e "$prefix/$f" ] || { echo "FAIL $f not installed"; exit 1; }
done
libdir=$(dirname "$(find "$prefix" -name 'libvfu.so' | head -1)")
readelf -d "$libdir/libvfu.so" | grep -q 'SONAME.*libvfu.so.0.2' || { echo "FAIL libvfu.so has no SONAME libvfu.so.0.2"; exit 1; }
# Only the API: the broker's internals are not installed.
[ ! -e "$prefix/include/vfu/actors/stream_transport.hpp" ] || { echo "FAIL internal headers installed"; exit 1; }
# Nothing of our build's flags leaks: no override folder, no -Werror, no sanitizer.
if grep -rqE 'caf_override|Werror|fsanitize|BOOST_ASIO_NO_DEPRECATED' "$prefix"/lib*/cmake "$prefix"/lib*/pkgconfig 2>/dev/null; then
  echo "FAIL build flags leak into the installed package files"; exit 1
fi
cp -r "$src/consumer" "$work/consumer"
cmake -S "$work/consumer" -B "$work/consumer/build" -DCMAKE_PREFIX_PATH="$prefix" >"$work/configure.log" ||
  { cat "$work/configure.log"; exit 1; }
cmake --build "$work/consumer/build" -j2 >"$work/build.log" 2>&1 || { cat "$work/build.log"; exit 1; }
PKG_CONFIG_PATH="$libdir/pkgconfig" make -C "$work/consumer" c_probe_make >"$work/make.log" 2>&1 ||
  { cat "$work/make.log"; exit 1; }
"$prefix/bin/vfu-serve" --device=gpio --socket-path="$work/gpio.sock" >"$work/serve.log" 2>&1 & pid=$!
for _ in $(seq 100); do [ -S "$work/gpio.sock" ] && break; sleep 0.05; done
# The installed libraries are found through their RUNPATH ($ORIGIN); the make-built one
# through LD_LIBRARY_PATH, as for any library outside the system's paths.
"$work/consumer/build/cpp_probe" "$work/gpio.sock"
"$work/consumer/build/c_probe" "$work/gpio.sock"
LD_LIBRARY_PATH="$libdir" "$work/consumer/c_probe_make" "$work/gpio.sock"
echo "PASS installed, found with find_package and pkg-config, and used from C++ and C"
