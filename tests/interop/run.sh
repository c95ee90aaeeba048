#!/usr/bin/env bash
# One interop scenario against a real QEMU: vfu-serve on the host, QEMU's vfio-user-pci
# client in a Linux guest (tests/interop/make-guest.sh), and a guest script
# (tests/interop/guest/NAME.sh) whose verdict line decides. ctest runs each scenario as
# qemu.NAME (label qemu); without VFU_QEMU it prints one line and is skipped (exit 77).
#
#   VFU_QEMU=/path/to/qemu-system-x86_64 tests/interop/run.sh SCENARIO BUILD_DIR
#
# QEMU itself (10.1 or later, with hw/vfio-user) is built by hand, outside the project:
# docs/interop.md says how.
set -uo pipefail
scenario=${1:?usage: run.sh SCENARIO BUILD_DIR}
build=$(cd "${2:?usage: run.sh SCENARIO BUILD_DIR}" && pwd)
here=$(cd "$(dirname "$0")" && pwd)

if [ -z "${VFU_QEMU:-}" ]; then
  echo "qemu.$scenario skipped: VFU_QEMU does not name a qemu-system-x86_64 (docs/interop.md)"
  exit 77
fi
die() { echo "qemu.$scenario: $*" >&2; exit 1; }
[ -x "$VFU_QEMU" ] || die "VFU_QEMU=$VFU_QEMU is not an executable"
"$VFU_QEMU" -device help 2>/dev/null | grep -q '"vfio-user-pci"' || die "$VFU_QEMU has no vfio-user-pci device (QEMU 10.1 or later is needed)"
for c in cpio gzip dpkg apt-get socat timeout; do
  command -v "$c" >/dev/null || die "$c is missing (VFU_QEMU=... bash scripts/setup.sh installs it)"
done

guest="$build/interop-guest"
bash "$here/make-guest.sh" "$guest" >"$build/interop-guest.log" 2>&1 || { cat "$build/interop-guest.log"; die "could not assemble the guest"; }
serve="$build/tools/vfu-serve"
probe="$build/tools/vfu-probe"
work=$(mktemp -d /tmp/vfu-qemu-XXXXXX)
serve_pid=""
qemu_pid=""
cleanup() {
  [ -n "$qemu_pid" ] && kill -9 "$qemu_pid" 2>/dev/null
  [ -n "$serve_pid" ] && kill "$serve_pid" 2>/dev/null && wait "$serve_pid" 2>/dev/null
  [ -n "${VFU_KEEP:-}" ] && echo "kept $work" || rm -rf "$work"
}
trap cleanup EXIT

# The 16 MiB at 256 MiB are reserved for the scenarios' buffers (/dev/mem in the guest).
append_base="console=ttyS0 ${VFU_GUEST_QUIET-quiet} panic=-1 memmap=16M\$0x10000000"

# start_serve ARGS...: vfu-serve in the background, logging at info level; waits for its
# sockets. Sets serve_pid. VFU_SERVE_ARGS: more words for vfu-serve (--poll-max-ns=0).
start_serve() {
  # shellcheck disable=SC2086
  "$serve" "$@" ${VFU_SERVE_ARGS:-} --logger.console=uncolored --logger.console-verbosity=info >"$work/serve.log" 2>&1 &
  serve_pid=$!
  local s
  for s in "$@"; do
    case "$s" in --socket-path=*)
      for _ in $(seq 50); do [ -S "${s#--socket-path=}" ] && break; sleep 0.1; done
      [ -S "${s#--socket-path=}" ] || die "vfu-serve did not create ${s#--socket-path=}: $(cat "$work/serve.log")"
    esac
  done
}
# start_other PROGRAM SOCKET: another implementation's server (tests/interop/lvu.sh).
start_other() {
  mkfifo "$work/stdin"
  # shellcheck disable=SC2086  # (VFU_SERVER_ARGS: words for the server, after the socket)
  "$1" "$2" ${VFU_SERVER_ARGS:-} <"$work/stdin" >"$work/serve.log" 2>&1 &
  serve_pid=$!
  exec 3>"$work/stdin"  # its stdin stays open (the null sample stops at EOF)
  for _ in $(seq 50); do [ -S "$2" ] && return 0; sleep 0.1; done
  die "$1 did not listen on $2: $(cat "$work/serve.log")"
}
serve_fds() { ls "/proc/$serve_pid/fd" | wc -l; }
serve_alive() { kill -0 "$serve_pid" 2>/dev/null || die "vfu-serve died: $(tail -5 "$work/serve.log")"; }

# vfio_dev SOCKET [ID]: a -device argument for QEMU's vfio-user-pci.
vfio_dev() {
  local id=""
  [ -n "${2:-}" ] && id=",\"id\":\"$2\""
  echo "{\"driver\":\"vfio-user-pci\",\"socket\":{\"path\":\"$1\",\"type\":\"unix\"}$id}"
}
memfd_ram=(-object memory-backend-memfd,id=ram0,size=512M,share=on -machine memory-backend=ram0)

# start_qemu NAME TEST QEMU-ARGS...: boots the guest with scenario TEST in the background,
# its console in $work/NAME.log. Sets qemu_pid.
start_qemu() {
  local name=$1 test=$2
  shift 2
  "$VFU_QEMU" -machine pc -m 512 -nographic -no-user-config -nodefaults -serial stdio \
    -kernel "$guest/vmlinuz" -initrd "$guest/initramfs.cpio.gz" \
    -append "$append_base vfu.test=$test" "$@" >"$work/$name.log" 2>&1 &
  qemu_pid=$!
}

# wait_console NAME PATTERN SECONDS: waits for a console line matching PATTERN.
wait_console() {
  local i
  for i in $(seq $(($3 * 10))); do
    grep -aq "$2" "$work/$1.log" 2>/dev/null && return 0
    kill -0 "$qemu_pid" 2>/dev/null || { grep -aq "$2" "$work/$1.log"; return; }
    sleep 0.1
  done
  return 1
}

# finish_qemu NAME [SECONDS]: waits for QEMU to exit (the guest powers off) and checks the
# verdict; prints the guest's VFU lines and QEMU's own messages.
finish_qemu() {
  local name=$1 limit=${2:-180} i
  for i in $(seq $((limit * 10))); do
    kill -0 "$qemu_pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$qemu_pid" 2>/dev/null; then
    kill -9 "$qemu_pid"
    show "$name"
    die "$name: QEMU still running after ${limit} s"
  fi
  wait "$qemu_pid" 2>/dev/null
  qemu_pid=""
  show "$name"
  grep -aq "VFU-RESULT: PASS" "$work/$name.log" || die "$name: the guest did not pass"
}
show() {
  [ -n "${VFU_GUEST_QUIET-x}" ] || cat "$work/$1.log"
  grep -a -E "VFU|qemu-system|vfio" "$work/$1.log" | tr -d '\r' | sed -e 's/^.*\(VFU\)/\1/' -e "s/^/[$1] /"
}

# qmp SOCKET COMMAND-JSON...: runs QMP commands one after another and prints the replies.
qmp() {
  local sock=$1
  shift
  {
    echo '{"execute":"qmp_capabilities"}'
    for c in "$@"; do echo "$c"; sleep 0.2; done
    sleep 1
  } | socat -t 5 - "UNIX-CONNECT:$sock"
}

# wait_fds N: waits until vfu-serve holds N fds again (its client's fds are closed).
wait_fds() {
  local i
  for i in $(seq 50); do [ "$(serve_fds)" = "$1" ] && return 0; sleep 0.1; done
  return 1
}

dma_sock="$work/dma.sock"
gpio_sock="$work/gpio.sock"
ram_sock="$work/ram.sock"
nvme_sock="$work/nvme.sock"

case "$scenario" in
  gpio)
    if [ -n "${VFU_SERVER:-}" ]; then start_other "$VFU_SERVER" "$gpio_sock"
    else start_serve --device=gpio --socket-path="$gpio_sock"; fi
    start_qemu gpio gpio -device "$(vfio_dev "$gpio_sock")"
    finish_qemu gpio
    ;;
  dma-memfd | dma-default)
    start_serve --device=dma-test --socket-path="$dma_sock"
    ram=()
    [ "$scenario" = dma-memfd ] && ram=("${memfd_ram[@]}")
    start_qemu dma dma "${ram[@]}" -device "$(vfio_dev "$dma_sock")"
    finish_qemu dma
    grep -a "DMA messages use" "$work/serve.log" | sed 's/^/[vfu-serve] /'
    if [ "$scenario" = dma-default ]; then
      grep -aq "DMA messages use QEMU's layout .* (detected)" "$work/serve.log" ||
        die "vfu-serve did not log that it detected QEMU's DMA layout"
    else
      grep -aq "DMA messages use" "$work/serve.log" && die "memfd RAM: DMA went by messages"
    fi
    serve_alive
    ;;
  ram)
    start_serve --device=ram --socket-path="$ram_sock"
    start_qemu ram ram "${memfd_ram[@]}" -device "$(vfio_dev "$ram_sock")"
    finish_qemu ram
    # What the guest wrote is in the device, seen by another client once QEMU is gone.
    "$probe" --read=0:0x1000:16 --read=0:0x90000:16 "$ram_sock" | sed 's/^/[vfu-probe] /' | tee "$work/probe.out"
    grep -q "0x1000: 5a a5 5a a5" "$work/probe.out" || die "the bytes written through the mmapped area are not in the device"
    grep -q "0x90000: c3 3c c3 3c" "$work/probe.out" || die "the bytes written by REGION_WRITE are not in the device"
    ;;
  reboot)
    start_serve --device=ram --socket-path="$ram_sock"
    start_qemu reboot reboot "${memfd_ram[@]}" -device "$(vfio_dev "$ram_sock")"
    finish_qemu reboot 240
    ;;
  hotplug)
    # The ram device: QEMU 10.2.50 aborts when it unplugs a vfio-user device with MSI-X
    # (docs/interop.md), and the guest kernel finds no I/O space for the gpio's BAR2 on a
    # hot-add.
    start_serve --device=ram --socket-path="$ram_sock"
    base_fds=$(serve_fds)
    start_qemu hotplug hotplug "${memfd_ram[@]}" -qmp "unix:$work/qmp.sock,server=on,wait=off" -device "$(vfio_dev "$ram_sock" vfu0)"
    wait_console hotplug "VFU: unplug me" 60 || { show hotplug; die "the guest never asked for the unplug"; }
    qmp "$work/qmp.sock" '{"execute":"device_del","arguments":{"id":"vfu0"}}' >"$work/qmp1.out"
    wait_console hotplug "VFU: gone" 60 || { show hotplug; cat "$work/qmp1.out"; die "the device did not leave the guest"; }
    wait_fds "$base_fds" || die "vfu-serve holds $(serve_fds) fds after the unplug, $base_fds before QEMU came"
    echo "[host] after device_del: vfu-serve holds $(serve_fds) fds, as before QEMU came"
    qmp "$work/qmp.sock" "{\"execute\":\"device_add\",\"arguments\":$(vfio_dev "$ram_sock" vfu0)}" >"$work/qmp2.out"
    grep -q '"error"' "$work/qmp2.out" && { cat "$work/qmp2.out"; die "device_add failed"; }
    sed 's/^/[qmp] /' "$work/qmp2.out"
    finish_qemu hotplug
    ;;
  kill-during-dma)
    start_serve --device=dma-test --socket-path="$dma_sock"
    base_fds=$(serve_fds)
    start_qemu copying dma-loop -device "$(vfio_dev "$dma_sock")"
    wait_console copying "VFU: copying" 60 || { show copying; die "the guest did not start copying"; }
    sleep 2
    kill -9 "$qemu_pid"
    wait "$qemu_pid" 2>/dev/null
    qemu_pid=""
    show copying
    echo "[host] QEMU killed during a copy"
    serve_alive
    wait_fds "$base_fds" || die "vfu-serve holds $(serve_fds) fds after QEMU was killed, $base_fds before"
    echo "[host] vfu-serve holds $(serve_fds) fds, as before QEMU came"
    start_qemu next dma -device "$(vfio_dev "$dma_sock")"
    finish_qemu next
    wait_fds "$base_fds" || die "vfu-serve holds $(serve_fds) fds after the second QEMU, $base_fds before"
    echo "[host] after the second QEMU: vfu-serve holds $(serve_fds) fds"
    ;;
  two-devices)
    start_serve --device=gpio --socket-path="$gpio_sock" --device=dma-test --socket-path="$dma_sock"
    start_qemu two two-devices -device "$(vfio_dev "$gpio_sock")" -device "$(vfio_dev "$dma_sock")"
    finish_qemu two
    ;;
  nvme | nvme-default)
    # Linux's nvme driver on our controller: with memfd RAM (DMA through mmapped windows) or
    # QEMU's default RAM (every byte by DMA messages); a reboot in the middle.
    img="$work/disk.img"
    start_serve --device=nvme --backing="$img" --size=64M --socket-path="$nvme_sock"
    ram=()
    [ "$scenario" = nvme ] && ram=("${memfd_ram[@]}")
    start_qemu nvme nvme "${ram[@]}" -device "$(vfio_dev "$nvme_sock")"
    finish_qemu nvme 300
    # The host sees what the guest wrote, where it wrote it, and nothing elsewhere.
    for spec in 1:A 20:B 59:C; do
      mib=${spec%%:*}; c=${spec#*:}
      [ "$(dd if="$img" bs=1M skip="$mib" count=4 2>/dev/null | tr -d "$c" | wc -c)" = 0 ] ||
        die "the backing file does not hold 4 MiB of '$c' at $mib MiB"
    done
    [ "$(dd if="$img" bs=1M count=1 2>/dev/null | tr -d '\000' | wc -c)" = 0 ] || die "the first MiB was written"
    echo "[host] the backing file holds the three patterns, and zeros before them"
    serve_alive
    ;;
  nvme-kill)
    # QEMU killed while the guest writes: vfu-serve lives on, holds the fds it held before,
    # serves the next QEMU, and the range holds whole blocks of the old or the new data.
    img="$work/disk.img"
    start_serve --device=nvme --backing="$img" --size=64M --socket-path="$nvme_sock"
    base_fds=$(serve_fds)
    start_qemu writing nvme-loop "${memfd_ram[@]}" -device "$(vfio_dev "$nvme_sock")"
    wait_console writing "VFU: writing" 90 || { show writing; die "the guest did not start writing"; }
    sleep 3
    kill -9 "$qemu_pid"
    wait "$qemu_pid" 2>/dev/null
    qemu_pid=""
    show writing
    echo "[host] QEMU killed during writes"
    serve_alive
    wait_fds "$base_fds" || die "vfu-serve holds $(serve_fds) fds after QEMU was killed, $base_fds before"
    blocks=$(dd if="$img" bs=512 skip=$((8 * 2048)) count=$((4 * 2048)) 2>/dev/null | od -An -v -tx1 -w512 |
             awk '{ ok = ($1 == "58" || $1 == "59" || $1 == "00"); for (i = 2; i <= NF; i++) if ($i != $1) ok = 0; if (!ok) bad++ }
                  END { print bad + 0 }')
    [ "$blocks" = 0 ] || die "$blocks blocks of the written range hold neither old nor new data"
    [ "$(dd if="$img" bs=1M count=8 2>/dev/null | tr -d '\000' | wc -c)" = 0 ] || die "data before the range changed"
    echo "[host] every 512-byte block of the range is whole old or new data; nothing outside it changed"
    start_qemu next nvme "${memfd_ram[@]}" -device "$(vfio_dev "$nvme_sock")"
    finish_qemu next 300
    ;;
  *)
    die "no scenario '$scenario'"
    ;;
esac
echo "qemu.$scenario: passed ($("$VFU_QEMU" --version | head -n1), guest $(cat "$guest/stamp" | cut -d' ' -f1))"
