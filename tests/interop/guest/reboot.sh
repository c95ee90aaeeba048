# reboot: the first boot writes BAR0 of the ram device and reboots; QEMU resets the device
# (DEVICE_RESET), which zeroes it, and the second boot checks that it did. A marker in
# reserved RAM (which a reset keeps) tells the boots apart.
r=$(find_dev 7675 0002) || fail "no 7675:0002 (ram) function on the bus"
enable "$r"
bar=$(bar_start "$r" 0)
marker=$((0x10f00000))
m=$(devmem "$marker" 32)
if [ "$m" != 0x52454254 ]; then
  devmem $((bar + 0x100)) 32 0x11223344
  devmem $((bar + 0xc0000)) 32 0x55667788
  v1=$(devmem $((bar + 0x100)) 32); v2=$(devmem $((bar + 0xc0000)) 32)
  say "first boot: BAR0 0x100 reads $v1, 0xc0000 reads $v2; rebooting"
  [ "$v1" = 0x11223344 ] && [ "$v2" = 0x55667788 ] || fail "first boot: BAR0 did not keep what was written"
  devmem "$marker" 32 0x52454254
  sync
  reboot -f
  sleep 30
  fail "reboot did not happen"
fi
devmem "$marker" 32 0
v1=$(devmem $((bar + 0x100)) 32); v2=$(devmem $((bar + 0xc0000)) 32)
say "second boot: BAR0 0x100 reads $v1, 0xc0000 reads $v2"
[ "$v1" = 0x00000000 ] && [ "$v2" = 0x00000000 ] || fail "the device was not reset across the reboot"
pass "reboot: DEVICE_RESET reached the device (BAR0 zeroed), which works after it"
