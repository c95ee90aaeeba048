# nvme-loop: writes 4 MiB of 'X' at 8 MiB of /dev/nvme0n1 again and again (the host kills
# QEMU meanwhile; it checks that the backing file holds only whole old or new blocks there).
load_modules
i=0
while [ ! -b /dev/nvme0n1 ] && [ $i -lt 200 ]; do sleep 0.1; i=$((i + 1)); done
[ -b /dev/nvme0n1 ] || fail "no /dev/nvme0n1"
say "writing"
while :; do
  dd if=/dev/zero bs=1M count=4 2>/dev/null | tr '\000' X | dd of=/dev/nvme0n1 bs=1M seek=8 conv=fsync 2>/dev/null
  dd if=/dev/zero bs=1M count=4 2>/dev/null | tr '\000' Y | dd of=/dev/nvme0n1 bs=1M seek=8 conv=fsync 2>/dev/null
done
