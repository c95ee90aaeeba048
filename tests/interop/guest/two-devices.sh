# two-devices: a gpio and a dma-test from one vfu-serve process, in one guest.
base=$(gpio_port_base)
expect_inb $((base + 1)) 255 "gpio pins 0-7"
outb "$base" 1
expect_inb $((base + 1)) 254 "gpio pins 0-7 after one write of bit 0"
DMA_BAR=$(dma_bar)
dma_check 65536
dma_check 1048576
expect_inb $((base + 1)) 254 "gpio pins 0-7 after the copies"
pass "gpio and dma-test from one vfu-serve in one guest"
