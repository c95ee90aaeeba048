# nvme: Linux's own nvme driver (nvme-core.ko and nvme.ko from Debian's kernel package) on
# vfu-serve's NVMe controller. The first boot writes 4 MiB patterns at three offsets with
# dd, drops the page cache, reads them back, and reboots; the second boot finds them again
# (the controller was reset by the reboot; the data is in the backing file).
load_modules
i=0
while [ ! -b /dev/nvme0n1 ] && [ $i -lt 200 ]; do sleep 0.1; i=$((i + 1)); done
[ -b /dev/nvme0n1 ] || { dmesg | grep -i nvme | tail -20; fail "no /dev/nvme0n1"; }
dmesg | grep -i "nvme" | sed 's/^/VFU: dmesg: /'
sectors=$(cat /sys/block/nvme0n1/size)
say "/dev/nvme0n1: $sectors sectors of 512 bytes, model '$(cat /sys/class/nvme/nvme0/model | tr -s ' ')'"
[ "$sectors" = 131072 ] || fail "expected 131072 sectors (64 MiB)"

# pattern CHAR: 4 MiB of one character.
pattern() { dd if=/dev/zero bs=1M count=4 2>/dev/null | tr '\000' "$1"; }
# check_patterns WHEN: the three patterns read back from the disk (md5).
check_patterns() {
  for spec in 1:A 20:B 59:C; do
    mib=${spec%%:*}; c=${spec#*:}
    want=$(pattern "$c" | md5sum | cut -d' ' -f1)
    got=$(dd if=/dev/nvme0n1 bs=1M skip="$mib" count=4 2>/dev/null | md5sum | cut -d' ' -f1)
    say "$1: 4 MiB of '$c' at $mib MiB: read back $got (want $want)"
    [ "$got" = "$want" ] || fail "$1: the data at $mib MiB differs"
  done
}
marker=$((0x10f00000))
if [ "$(devmem "$marker" 32)" != 0x31415926 ]; then
  for spec in 1:A 20:B 59:C; do
    mib=${spec%%:*}; c=${spec#*:}
    pattern "$c" | dd of=/dev/nvme0n1 bs=1M seek="$mib" conv=fsync 2>/dev/null || fail "dd write at $mib MiB"
  done
  sync
  echo 3 > /proc/sys/vm/drop_caches
  check_patterns "first boot"
  devmem "$marker" 32 0x31415926
  reboot -f
  sleep 30
  fail "reboot did not happen"
fi
devmem "$marker" 32 0
check_patterns "second boot (after the reboot)"
pass "nvme: /dev/nvme0n1 of 64 MiB, three 4 MiB patterns written, read back, and found again after a reboot"
