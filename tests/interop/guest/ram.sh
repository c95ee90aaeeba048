# ram: BAR0 is 1 MiB; QEMU maps its first half (a sparse mmap area) into the guest, and
# turns accesses to the second half into REGION_READ/REGION_WRITE. The guest writes and
# reads both; the host then reads the same bytes with vfu-probe (run.sh).
r=$(find_dev 7675 0002) || fail "no 7675:0002 (ram) function on the bus"
enable "$r"
bar=$(bar_start "$r" 0)
say "ram BAR0 at $(hex "$bar"), $(($(sed -n 1p "$r/resource" | cut -d' ' -f2) - bar + 1)) bytes"
devmem $((bar + 0x1000)) 32 0xa55aa55a
devmem $((bar + 0x90000)) 32 0x3cc33cc3
v=$(devmem $((bar + 0x1000)) 32); say "mmapped half: 0x1000 reads $v"
[ "$v" = 0xA55AA55A ] || fail "0x1000 read $v after writing 0xa55aa55a"
v=$(devmem $((bar + 0x90000)) 32); say "message half: 0x90000 reads $v"
[ "$v" = 0x3CC33CC3 ] || fail "0x90000 read $v after writing 0x3cc33cc3"
# /dev/mem's read() stops at the end of RAM, so BAR bytes go through devmem (mmap), a word
# at a time: 32 words at each of four places, two in each half, each word its own value.
# (busybox 1.35's devmem maps a second page for an access in a page's last 32 bytes, which
# the kernel refuses at the end of the BAR, so the words stay clear of them.)
for off in 0x2000 0x7fe00 0x80000 0xffe00; do
  i=0
  while [ $i -lt 32 ]; do
    devmem $((bar + off + 4 * i)) 32 $(((off * 7 + i * 0x01010101 + 0x5a000000) & 0xffffffff))
    i=$((i + 1))
  done
  i=0
  while [ $i -lt 32 ]; do
    want=$(((off * 7 + i * 0x01010101 + 0x5a000000) & 0xffffffff))
    got=$(($(devmem $((bar + off + 4 * i)) 32)))
    [ "$got" = "$want" ] || fail "word $i at $off read $(hex "$got"), not $(hex "$want")"
    i=$((i + 1))
  done
  say "128 bytes at $off read back as written"
done
pass "ram BAR0 read and written through the mmapped half and through messages"
