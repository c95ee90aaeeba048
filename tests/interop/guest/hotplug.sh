# hotplug: the host unplugs the ram device over QMP (device_del), then plugs it back
# (device_add). QEMU resets a device it plugs (DEVICE_RESET), which zeroes the ram
# device's memory; the new connection then reads and writes both halves of BAR0.
ram_bar() {
  r=$(find_dev 7675 0002) || fail "no 7675:0002 (ram) function on the bus"
  enable "$r"
  bar_start "$r" 0
}
bar=$(ram_bar)
devmem $((bar + 0x40)) 32 0x0badcafe
devmem $((bar + 0xa0000)) 32 0x600dbeef
say "wrote 0x0badcafe at 0x40 (mmapped) and 0x600dbeef at 0xa0000 (messages)"
say "unplug me"
wait_dev 7675 0002 gone 60 || fail "the device is still there after 60 s"
say "gone"
wait_dev 7675 0002 "" 60 || fail "the device did not come back within 60 s"
bar=$(ram_bar)
v1=$(devmem $((bar + 0x40)) 32); v2=$(devmem $((bar + 0xa0000)) 32)
say "back at $(hex "$bar"): 0x40 reads $v1, 0xa0000 reads $v2"
[ "$v1" = 0x00000000 ] && [ "$v2" = 0x00000000 ] || fail "the re-plugged device was not reset"
devmem $((bar + 0x44)) 32 0x12345678
devmem $((bar + 0xa0004)) 32 0x9abcdef0
v1=$(devmem $((bar + 0x44)) 32); v2=$(devmem $((bar + 0xa0004)) 32)
say "after the re-plug: 0x44 reads $v1, 0xa0004 reads $v2"
[ "$v1" = 0x12345678 ] && [ "$v2" = 0x9ABCDEF0 ] || fail "writes after the re-plug did not read back"
pass "hot-unplug and re-plug over QMP; the re-plugged device was reset and works"
