# gpio: the guest enumerates the device with its IDs, and BAR2's port I/O behaves as the
# model says (device/samples.cpp: a read of offset 1 has bit i set while pin i has been
# written a multiple of 3 times; offset 5 the same for pins 8-15).
d=$(find_dev 494f 0dc8) || fail "no 494f:0dc8 function on the bus"
say "found $(basename "$d"): vendor $(cat "$d/vendor") device $(cat "$d/device") class $(cat "$d/class")"
base=$(gpio_port_base)
say "command register 0x$(cfg_read "$d" 4 2), BAR2 at I/O port $(hex "$base")"
expect_inb $((base + 1)) 255 "pins 0-7 before any write (every count is 0)"
outb "$base" 1
expect_inb $((base + 1)) 254 "pins 0-7 after one write of bit 0"
outb "$base" 1
outb "$base" 1
expect_inb $((base + 1)) 255 "pins 0-7 after three writes of bit 0"
outb $((base + 4)) 6
expect_inb $((base + 5)) 249 "pins 8-15 after one write of bits 1 and 2"
expect_inb $((base + 2)) 0 "offset 2"
pass "gpio 494f:0dc8 port I/O as the model says"
