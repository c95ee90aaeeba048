/* gpio_server: libvfio-user's gpio sample (samples/gpio-pci-idio-16.c) as a C program on
 * vfu-broker's C API, plus a DMA register that the C API's tests use.
 *
 *   gpio_server SOCKET [--host-loop]
 *
 * BAR2 (256 bytes of I/O space): a write at 0 counts each set bit of its first byte against
 * pins 0-7, at 4 against pins 8-15; a read at 1 returns pins 0-7, at 5 pins 8-15, each bit
 * set when that pin's count is a multiple of 3 (as the sample). Ours too: an 8-byte write at
 * 0x10 is a guest address; the device DMA-reads 4 bytes there, writes them back reversed at
 * address + 4, keeps them readable at 0x18, and raises INTx. DEVICE_RESET zeroes the pins.
 * --host-loop runs the callbacks on this program's own poll() loop instead of the library's
 * thread. SIGTERM ends it. */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <vfu/vfu.h>

static volatile sig_atomic_t stop;
static void on_signal(int sig) {
  (void)sig;
  stop = 1;
}

struct gpio {
  vfub_server *srv;
  unsigned pins[16];
  unsigned char dma_seen[4];
  unsigned maps, unmaps;
};

static int access_cb(void *opaque, uint32_t region, uint64_t off, void *buf, uint32_t count, int is_write) {
  struct gpio *g = opaque;
  unsigned char *b = buf;
  if (region != 2) return -EINVAL;
  if (is_write) {
    if (off == 0x10 && count == 8) {
      uint64_t addr;
      unsigned char data[4], back[4];
      memcpy(&addr, b, 8);
      int r = vfub_server_dma_read(g->srv, addr, data, 4);
      if (r) return r;
      for (int i = 0; i < 4; ++i) back[i] = data[3 - i];
      if ((r = vfub_server_dma_write(g->srv, addr + 4, back, 4))) return r;
      memcpy(g->dma_seen, data, 4);
      return vfub_server_trigger_irq(g->srv, VFUB_IRQ_INTX, 0);
    }
    if (count && (off == 0 || off == 4))
      for (int i = 0; i < 8; ++i)
        if (b[0] & (1u << i)) ++g->pins[(off == 4 ? 8 : 0) + i];
    return 0;
  }
  if (off == 1 || off == 5) {
    unsigned char v = 0;
    for (int i = 0; i < 8; ++i)
      if (g->pins[(off == 5 ? 8 : 0) + i] % 3 == 0) v |= (unsigned char)(1u << i);
    b[0] = v;
  } else if (off == 0x18 && count == 4) {
    memcpy(b, g->dma_seen, 4);
  }
  return 0;
}

static void reset_cb(void *opaque) {
  struct gpio *g = opaque;
  memset(g->pins, 0, sizeof g->pins);
}

static void map_cb(void *opaque, uint64_t iova, uint64_t size, uint32_t prot) {
  struct gpio *g = opaque;
  (void)iova, (void)size, (void)prot;
  ++g->maps;
}

static void unmap_cb(void *opaque, uint64_t iova, uint64_t size) {
  struct gpio *g = opaque;
  (void)iova, (void)size;
  ++g->unmaps;
}

int main(int argc, char **argv) {
  if (argc < 2 || argc > 3 || (argc == 3 && strcmp(argv[2], "--host-loop") != 0)) {
    fprintf(stderr, "usage: gpio_server SOCKET [--host-loop]\n");
    return 2;
  }
  int host_loop = argc == 3;
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_signal;
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGINT, &sa, NULL);

  struct vfub_pci_ids ids = {.vendor = 0x494f, .device = 0x0dc8};
  vfub_device *dev = vfub_device_new(&ids);
  static struct gpio g;
  struct vfub_callbacks cb = {.region_access = access_cb, .reset = reset_cb, .dma_map = map_cb, .dma_unmap = unmap_cb};
  if (!dev || vfub_device_set_bar(dev, 2, 0x100, VFUB_BAR_IO) || vfub_device_set_irqs(dev, 1, 0, 0, 0, 0, 0) ||
      vfub_device_set_callbacks(dev, &cb, &g)) {
    fprintf(stderr, "gpio_server: describing the device: %s\n", vfub_last_error());
    return 1;
  }
  /* Region 9: 8 KiB of shared memory, mmap-able in its second page only; the server
   * writes a greeting there, the client reads it by message and through its mapping. */
  int scratch = vfub_device_add_region(dev, 0x2000, VFUB_REGION_SHARED, 0x80001234, 1);
  if (scratch != 9 || vfub_device_add_mmap_area(dev, 9, 0x1000, 0x1000)) {
    fprintf(stderr, "gpio_server: region 9: %s\n", vfub_last_error());
    return 1;
  }
  /* A bad description is refused with a reason. */
  if (vfub_device_set_bar(dev, 3, 0x3000, 0) != -EINVAL || !*vfub_last_error()) {
    fprintf(stderr, "gpio_server: a BAR of 0x3000 bytes was accepted\n");
    return 1;
  }
  g.srv = vfub_server_listen(dev, argv[1], host_loop ? VFUB_SERVE_HOST_LOOP : VFUB_SERVE_OWN_THREAD);
  vfub_device_free(dev);
  if (!g.srv) {
    fprintf(stderr, "gpio_server: %s: %s\n", argv[1], vfub_last_error());
    return 1;
  }
  char *mem = vfub_server_region_memory(g.srv, 9);
  if (!mem) {
    fprintf(stderr, "gpio_server: no memory behind region 9\n");
    return 1;
  }
  strcpy(mem + 0x1000, "hello from the C device");
  printf("gpio_server: serving on %s (%s)\n", argv[1], host_loop ? "host loop" : "library thread");
  fflush(stdout);
  if (host_loop) {
    struct pollfd p = {.fd = vfub_server_poll_fd(g.srv), .events = POLLIN};
    while (!stop) {
      if (poll(&p, 1, 200) > 0 && vfub_server_run(g.srv) < 0) {
        fprintf(stderr, "gpio_server: %s\n", vfub_server_last_error(g.srv));
        break;
      }
    }
  } else {
    while (!stop) pause();
  }
  vfub_server_destroy(g.srv);
  /* Every window a client mapped was unmapped: by the client, or when it went. */
  printf("gpio_server: DMA windows: %u mapped, %u unmapped\n", g.maps, g.unmaps);
  return 0;
}
