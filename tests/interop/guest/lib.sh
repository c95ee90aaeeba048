# Helpers for the guest scenarios (busybox sh). Every check prints what it saw, so that the
# console log tells what happened; fail prints the verdict and ends the scenario.

pass() { echo "VFU-RESULT: PASS $*"; exit 0; }
fail() { echo "VFU-RESULT: FAIL $*"; exit 3; }
say() { echo "VFU: $*"; }

# find_dev VENDOR DEVICE [N]: the sysfs folder of the Nth (from 1) PCI function with these
# IDs (4 hex digits each, no 0x), or nothing.
find_dev() {
  n=0
  for d in /sys/bus/pci/devices/*; do
    [ "$(cat "$d/vendor")" = "0x$1" ] && [ "$(cat "$d/device")" = "0x$2" ] || continue
    n=$((n + 1))
    [ "$n" = "${3:-1}" ] && { echo "$d"; return 0; }
  done
  return 1
}

# wait_dev VENDOR DEVICE [gone] [SECONDS]: waits until the function is there (or gone).
wait_dev() {
  i=0
  while [ "$i" -lt "${4:-30}" ]; do
    if find_dev "$1" "$2" >/dev/null; then [ "$3" != gone ] && return 0
    else [ "$3" = gone ] && return 0; fi
    sleep 1
    i=$((i + 1))
  done
  return 1
}

# cfg_read DEV OFFSET WIDTH: config space bytes as one hex number (little-endian).
cfg_read() {
  dd if="$1/config" bs=1 skip="$2" count="$3" 2>/dev/null | od -An -tx1 -v |
    awk '{ for (i = 1; i <= NF; i++) s = $i s } END { print s }'
}

# cfg_write16 DEV OFFSET VALUE: writes a 16-bit config register.
cfg_write16() {
  lo=$(($3 & 255)); hi=$((($3 >> 8) & 255))
  printf "$(printf '\\%03o\\%03o' "$lo" "$hi")" | dd of="$1/config" bs=1 seek="$2" count=2 conv=notrunc 2>/dev/null
}

# enable DEV: I/O and memory decoding plus bus mastering (command register = 0x0007).
enable() { cfg_write16 "$1" 4 7; }

# bar_start DEV N: the start address of BAR N (decimal), from sysfs.
bar_start() { echo $(($(sed -n "$(($2 + 1))p" "$1/resource" | cut -d' ' -f1))); }

# inb PORT / outb PORT VALUE: port I/O through /dev/port.
inb() { dd if=/dev/port bs=1 skip="$1" count=1 2>/dev/null | od -An -tu1 | tr -d ' '; }
outb() { printf "$(printf '\\%03o' "$2")" | dd of=/dev/port bs=1 seek="$1" count=1 conv=notrunc 2>/dev/null; }

# mem_put ADDR BYTES FILE / mem_get ADDR BYTES: guest physical memory through /dev/mem, in
# whole pages (the scenarios use the area that memmap= on the command line reserves).
mem_put() { dd if="$3" of=/dev/mem bs=4096 seek=$(($1 / 4096)) count=$(($2 / 4096)) conv=notrunc 2>/dev/null; }
mem_get() { dd if=/dev/mem bs=4096 skip=$(($1 / 4096)) count=$(($2 / 4096)) 2>/dev/null; }

hex() { printf '0x%x' "$1"; }

# ---- the sample devices -------------------------------------------------------------------

# gpio_port_base: enables the gpio function (494f:0dc8) and prints BAR2's I/O port base.
gpio_port_base() {
  g=$(find_dev 494f 0dc8) || fail "no 494f:0dc8 (gpio) function on the bus"
  enable "$g"
  b=$(bar_start "$g" 2)
  [ "$b" -gt 0 ] || fail "gpio BAR2 has no address"
  echo "$b"
}

# expect_inb PORT VALUE WHAT: reads a port and fails unless it holds VALUE.
expect_inb() {
  v=$(inb "$1")
  say "$3: $(hex "$1") reads $v"
  [ "$v" = "$2" ] || fail "$3: port $(hex "$1") read $v, not $2"
}

# The dma-test registers (device/samples.hpp), BAR0 of 7675:0001.
DMA_SRC=$((0x10000000)); DMA_DST=$((0x10800000))
dma_bar() {
  t=$(find_dev 7675 0001) || fail "no 7675:0001 (dma-test) function on the bus"
  enable "$t"
  bar_start "$t" 0
}
dma_reg() { echo $(($(devmem $(($DMA_BAR + $1)) 32))); }
dma_setreg() { devmem $(($DMA_BAR + $1)) 32 "$2"; }

# dma_copy FROM TO LEN: rings the doorbell and waits up to 10 s for done; prints the status
# register, or "timeout". Needs DMA_BAR.
dma_copy() {
  dma_setreg 0x00 $(($1 & 0xffffffff)); dma_setreg 0x04 $(($1 >> 32))
  dma_setreg 0x08 $(($2 & 0xffffffff)); dma_setreg 0x0c $(($2 >> 32))
  dma_setreg 0x10 "$3"; dma_setreg 0x18 1
  i=0
  while [ $i -lt 1000 ]; do
    s=$(dma_reg 0x14)
    [ $((s & 1)) = 0 ] && [ $((s & 2)) = 2 ] && { echo "$s"; return 0; }
    i=$((i + 1)); usleep 10000
  done
  echo "timeout"
}

# dma_check LEN: copies LEN random bytes from DMA_SRC to DMA_DST and compares them.
dma_check() {
  [ -f /tmp/pat ] || dd if=/dev/urandom of=/tmp/pat bs=65536 count=16 2>/dev/null
  [ -f /tmp/zero ] || dd if=/dev/zero of=/tmp/zero bs=65536 count=16 2>/dev/null
  mem_put "$DMA_SRC" "$1" /tmp/pat
  mem_put "$DMA_DST" "$1" /tmp/zero
  before=$(dma_reg 0x20)
  s=$(dma_copy "$DMA_SRC" "$DMA_DST" "$1")
  [ "$s" = timeout ] && fail "the $1-byte copy did not finish in 10 s"
  [ $((s & 4)) = 0 ] || fail "the $1-byte copy failed: status $s, errno $(dma_reg 0x1c)"
  want=$(dd if=/tmp/pat bs="$1" count=1 2>/dev/null | md5sum | cut -d' ' -f1)
  got=$(mem_get "$DMA_DST" "$1" | md5sum | cut -d' ' -f1)
  say "copy of $1 bytes: status $s, copies $before -> $(dma_reg 0x20), md5 $got"
  [ "$got" = "$want" ] || fail "the $1 bytes copied differ from the source (md5 $got, want $want)"
}

# load_modules: every module the guest carries, in order (make-guest.sh), once.
load_modules() {
  d=/lib/modules/$(uname -r)
  for m in $(cat "$d/load.order"); do
    grep -q "^$(echo "$m" | tr - _) " /proc/modules && continue
    insmod "$d/$m.ko" || fail "insmod $m.ko"
  done
}
