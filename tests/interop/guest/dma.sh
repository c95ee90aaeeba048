# dma-test: copies of 64 KiB and 1 MiB between two buffers in guest RAM, checked byte for
# byte, then a copy from outside guest RAM (the device's error bit, EFAULT) and one more
# good copy (the server is still there). The host runs it with memfd RAM (the server maps
# the windows) and with QEMU's default RAM (every byte goes by DMA_READ/DMA_WRITE).
DMA_BAR=$(dma_bar)
say "dma-test BAR0 at $(hex "$DMA_BAR")"
dma_check 65536
dma_check 1048576
s=$(dma_copy $((0x4000000000)) "$DMA_DST" 4096)
err=$(dma_reg 0x1c)
say "copy from 256 GiB (outside guest RAM): status $s, errno $err"
[ "$s" != timeout ] && [ $((s & 4)) = 4 ] || fail "a copy from outside guest RAM did not set the error bit (status $s)"
[ "$err" = 14 ] || fail "a copy from outside guest RAM gave errno $err, not EFAULT (14)"
dma_check 65536
pass "dma-test: 64 KiB and 1 MiB copies byte for byte, EFAULT outside RAM, server still up"
