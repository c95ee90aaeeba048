# dma-loop: 1 MiB copies until the host kills QEMU (kill-during-dma).
DMA_BAR=$(dma_bar)
n=0
while true; do
  say "copying ($n done)"
  dma_check 1048576 >/dev/null
  n=$((n + 1))
done
