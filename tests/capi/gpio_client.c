/* gpio_client: a client on vfu-broker's C API that checks a gpio device (vfu-serve's, or
 * tests/capi/gpio_server.c's with --dma). Prints one line per check; exit 0 when all pass.
 *
 *   gpio_client SOCKET [--dma]
 *
 * --dma also maps guest memory without an fd (served by this program's callback), has the
 * device DMA through it, and waits for its interrupt. */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <vfu/vfu.h>

static unsigned char guest[4096];
static const uint64_t guest_iova = 0x10000;
static const uint64_t ro_iova = 0x20000;  /* mapped read-only */
static int failures, writes_to_ro;

static void check(int ok, const char *what) {
  printf("%s %s\n", ok ? "PASS" : "FAIL", what);
  if (!ok) ++failures;
}

static int guest_memory(void *opaque, uint64_t iova, void *buf, uint64_t len, int is_write) {
  (void)opaque;
  if (iova >= ro_iova && iova < ro_iova + 4096) {
    if (is_write) ++writes_to_ro;
    if (!is_write) memset(buf, 0x5a, len);
    return 0;
  }
  if (iova < guest_iova || len > sizeof guest || iova - guest_iova > sizeof guest - len) return -EFAULT;
  if (is_write) memcpy(guest + (iova - guest_iova), buf, len);
  else memcpy(buf, guest + (iova - guest_iova), len);
  return 0;
}

static int pins_low(vfub_client *c) {
  unsigned char v = 0;
  return vfub_client_read(c, 2, 1, &v, 1) ? -1 : v;
}

int main(int argc, char **argv) {
  if (argc < 2 || argc > 3 || (argc == 3 && strcmp(argv[2], "--dma") != 0)) {
    fprintf(stderr, "usage: gpio_client SOCKET [--dma]\n");
    return 2;
  }
  struct vfub_client_options opt = {.guest_memory = guest_memory};
  vfub_client *c = vfub_client_connect(argv[1], &opt);
  if (!c) {
    printf("FAIL connect %s: %s (errno %d)\n", argv[1], vfub_last_error(), errno);
    return 1;
  }
  uint32_t nreg = 0, nirq = 0;
  check(vfub_client_probe(c, &nreg, &nirq) == 0 && nreg >= 9 && nirq >= 1, "probe: regions and IRQs");
  struct vfub_region_info bar2;
  check(vfub_client_region_info(c, 2, &bar2) == 0 && bar2.size == 0x100, "BAR2 is 256 bytes");
  uint16_t ids[2] = {0, 0};
  check(vfub_client_read(c, VFUB_REGION_CONFIG, 0, ids, 4) == 0 && ids[0] == 0x494f && ids[1] == 0x0dc8,
        "config space: vendor 494f device 0dc8");

  check(vfub_client_reset(c) == 0, "DEVICE_RESET");
  check(pins_low(c) == 0xff, "pins 0-7 read 0xff after reset (every count a multiple of 3)");
  unsigned char one = 0x01;
  check(vfub_client_write(c, 2, 0, &one, 1) == 0 && pins_low(c) == 0xfe, "a write to pin 0 clears its bit");
  check(vfub_client_write_posted(c, 2, 0, &one, 1) == 0 && vfub_client_write_posted(c, 2, 0, &one, 1) == 0 &&
            pins_low(c) == 0xff,
        "two posted writes, then a read that sees both");

  unsigned char b;
  int r = vfub_client_read(c, 2, 0x100, &b, 1);
  check(r == -EINVAL && *vfub_client_last_error(c), "a read past BAR2 fails -EINVAL with a message");
  check(vfub_client_dma_map(c, 0x1000, 4096, 0x80, -1, 0) == -EINVAL, "unknown DMA flags: -EINVAL");

  if (argc == 3) {
    int efd = eventfd(0, EFD_CLOEXEC);
    check(vfub_client_set_irqs(c, VFUB_IRQ_INTX, 0, 1, &efd) == 0, "INTx wired to an eventfd");
    check(vfub_client_dma_map(c, guest_iova, sizeof guest, VFUB_DMA_READ | VFUB_DMA_WRITE, -1, 0) == 0,
          "guest memory mapped without an fd");
    uint16_t cmd = 0;
    check(vfub_client_read(c, VFUB_REGION_CONFIG, 4, &cmd, 2) == 0 && (cmd |= 4, 1) &&
              vfub_client_write(c, VFUB_REGION_CONFIG, 4, &cmd, 2) == 0,
          "bus mastering on (a device DMAs only then)");
    memcpy(guest + 0x100, "\x11\x22\x33\x44", 4);
    uint64_t addr = guest_iova + 0x100;
    r = vfub_client_write(c, 2, 0x10, &addr, 8);
    if (r) printf("  (%d: %s)\n", r, vfub_client_last_error(c));
    check(r == 0, "the device was given a guest address");
    struct pollfd p = {.fd = efd, .events = POLLIN};
    uint64_t n = 0;
    check(poll(&p, 1, 5000) == 1 && read(efd, &n, 8) == 8 && n == 1, "its interrupt came");
    check(memcmp(guest + 0x104, "\x44\x33\x22\x11", 4) == 0, "it read 4 bytes by DMA and wrote them back reversed");
    unsigned char seen[4] = {0};
    check(vfub_client_read(c, 2, 0x18, seen, 4) == 0 && memcmp(seen, "\x11\x22\x33\x44", 4) == 0,
          "and shows what it read");
    check(vfub_client_dma_unmap(c, guest_iova, sizeof guest) == 0, "guest memory unmapped");
    addr = guest_iova + 0x100;
    check(vfub_client_write(c, 2, 0x10, &addr, 8) == -EFAULT, "DMA to the unmapped window: -EFAULT");
    check(vfub_client_dma_map(c, ro_iova, 4096, VFUB_DMA_READ, -1, 0) == 0, "a read-only window mapped");
    addr = ro_iova;
    check(vfub_client_write(c, 2, 0x10, &addr, 8) == -EFAULT && writes_to_ro == 0,
          "the device reads it, and its write there fails EFAULT without reaching the callback");
    /* (left mapped: the server hears of its unmapping when this client goes) */
    close(efd);
    struct vfub_region_info r9;
    char hello[24] = {0};
    check(vfub_client_region_info(c, 9, &r9) == 0 && r9.size == 0x2000 && (r9.flags & 4),
          "region 9: 8 KiB, offered for mmap");
    check(vfub_client_read(c, 9, 0x1000, hello, sizeof hello - 1) == 0 && strcmp(hello, "hello from the C device") == 0,
          "its shared memory holds what the device wrote");
  }
  vfub_client_close(c);
  printf("%s: %d failed\n", failures ? "FAIL" : "PASS", failures);
  return failures ? 1 : 0;
}
