/* vfu.h: the C API of vfu-broker, both vfio-user roles.
 *
 * Server role: describe a PCI device (IDs, BARs and other regions, IRQs, MSI/MSI-X), give
 * it callbacks, and serve it on a socket. Client role: connect to a device, enumerate it,
 * access its regions, map guest memory for its DMA, wire its interrupts.
 *
 * Names start with vfub_ (vfu-broker): libvfio-user's C API uses vfu_, and a host may link
 * both.
 *
 * Rules for every function here:
 *  - Errors are negative errno values (-EINVAL, -ENOTCONN, ...). Constructors return NULL
 *    and set errno. A handle keeps a message for its last error (vfub_*_last_error), and
 *    vfub_last_error() has the calling thread's last one, also for failed constructors.
 *  - No C++ exception crosses this boundary; an allocation failure is -ENOMEM.
 *  - Threading is stated per function. "Any thread" includes the callbacks' thread.
 *  - One process-wide runtime (an event-loop thread of ours) serves every handle; it starts
 *    with the first handle and stops with the last.
 *
 * docs/embedding.md has a complete device and client in C and in C++.
 */
#ifndef VFU_VFU_H
#define VFU_VFU_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define VFUB_VERSION_MAJOR 0
#define VFUB_VERSION_MINOR 2

/* The calling thread's last error message ("" if none). Any thread. */
const char *vfub_last_error(void);

/* Region numbers (VFIO's): BARs 0-5, ROM 6, config space 7, VGA 8, device-specific 9 on. */
#define VFUB_REGION_BAR0 0
#define VFUB_REGION_CONFIG 7
/* IRQ indexes (VFIO's). */
#define VFUB_IRQ_INTX 0
#define VFUB_IRQ_MSI 1
#define VFUB_IRQ_MSIX 2
/* DMA window permissions. */
#define VFUB_DMA_READ 1u
#define VFUB_DMA_WRITE 2u

/* ======================================================================================
 * Server role
 * ==================================================================================== */

typedef struct vfub_device vfub_device;
typedef struct vfub_server vfub_server;

struct vfub_pci_ids {
  uint16_t vendor, device, subsystem_vendor, subsystem;
  uint32_t class_code; /* 24 bits: base class, subclass, programming interface */
  uint8_t revision;
};

/* BAR flags. */
#define VFUB_BAR_IO 0x1u          /* I/O space instead of memory */
#define VFUB_BAR_MEM64 0x2u       /* 64-bit memory BAR (takes the next BAR's slot) */
#define VFUB_BAR_PREFETCH 0x4u    /* prefetchable */
#define VFUB_REGION_SHARED 0x10u  /* memory the library owns and offers for mmap (memfd):
                                     served without callbacks; vfub_server_region_memory() */
#define VFUB_REGION_READ_ONLY 0x20u

/* The device's callbacks. Each runs on the server's callback thread (vfub_server_new),
 * one at a time, never on a thread of the library's event loop: it may block, and may call
 * vfub_server_dma_read/write and vfub_server_trigger_irq. Return 0 or a negative errno. */
struct vfub_callbacks {
  /* An access to a BAR or device-specific region that is not VFUB_REGION_SHARED (and not
   * the MSI-X table or PBA, which the library keeps). A read fills buf (zeroed first). */
  int (*region_access)(void *opaque, uint32_t region, uint64_t offset, void *buf, uint32_t count, int is_write);
  /* DEVICE_RESET, after the library reset config space and IRQ state. May be NULL. */
  void (*reset)(void *opaque);
  /* A DMA window was mapped / unmapped by the client. Notices only (the library keeps the
   * windows and serves vfub_server_dma_read/write from them). May be NULL. */
  void (*dma_map)(void *opaque, uint64_t iova, uint64_t size, uint32_t prot);
  void (*dma_unmap)(void *opaque, uint64_t iova, uint64_t size);
};

/* A device description. Any thread; a description is used by one thread at a time. */
vfub_device *vfub_device_new(const struct vfub_pci_ids *ids);
void vfub_device_free(vfub_device *dev);
/* BAR `bar` (0-5) of `size` bytes (a power of two, at least 16), VFUB_BAR_* flags. */
int vfub_device_set_bar(vfub_device *dev, uint32_t bar, uint64_t size, uint32_t flags);
/* A VFUB_REGION_SHARED region offered for mmap only in these areas (repeatable; default:
 * the whole region). `region`: a BAR, or a device-specific region. */
int vfub_device_add_mmap_area(vfub_device *dev, uint32_t region, uint64_t offset, uint64_t size);
/* A device-specific region (VFIO's region types: a vendor `type`, with its `subtype`) of
 * `size` bytes, VFUB_REGION_SHARED and VFUB_REGION_READ_ONLY flags: returns its number (9
 * and up, in the order added) or a negative errno. */
int vfub_device_add_region(vfub_device *dev, uint64_t size, uint32_t flags, uint32_t type, uint32_t subtype);
/* Interrupts: INTx on or off, MSI vectors (0-32), MSI-X vectors (0-2048) with their table
 * and PBA in BAR `msix_bar` at the given offsets (the BAR must be set first and hold them). */
int vfub_device_set_irqs(vfub_device *dev, int intx, uint32_t msi_vectors, uint32_t msix_vectors, uint32_t msix_bar,
                         uint32_t table_offset, uint32_t pba_offset);
int vfub_device_set_callbacks(vfub_device *dev, const struct vfub_callbacks *cb, void *opaque);

/* Serving modes: callbacks on a thread of the library's, or on the host's own thread
 * whenever it calls vfub_server_run() (its event loop polls vfub_server_poll_fd()). */
#define VFUB_SERVE_OWN_THREAD 0
#define VFUB_SERVE_HOST_LOOP 1

/* Serves `dev` (copied: it may be freed after) on a UNIX socket path (a stale socket file is
 * replaced), one client at a time, as long as the server lives. Any thread. */
vfub_server *vfub_server_listen(const vfub_device *dev, const char *path, int mode);
/* The same on a listening socket or a connected one (the server owns `fd` from now on, also
 * when this fails). */
vfub_server *vfub_server_serve_fd(const vfub_device *dev, int fd, int mode);
/* Closes the connection, waits for a callback in progress, frees everything. Not from a
 * callback. */
void vfub_server_destroy(vfub_server *srv);

/* VFUB_SERVE_HOST_LOOP: an fd that is readable while callbacks wait to run, and the call
 * that runs them (returns how many ran, or a negative errno). The host's thread only;
 * -EINVAL in the other mode. */
int vfub_server_poll_fd(vfub_server *srv);
int vfub_server_run(vfub_server *srv);

/* 1 while a client is connected and negotiated, 0 otherwise. Any thread. */
int vfub_server_connected(vfub_server *srv);
/* Waits up to timeout_ms for a connected client: 0, or -ETIMEDOUT. Any thread but the
 * host loop's (whose callbacks would not run meanwhile). */
int vfub_server_wait_connected(vfub_server *srv, int timeout_ms);
/* Raises vector `vector` of IRQ `index` (its eventfd, or its pending bit while masked).
 * Any thread; does not wait. */
int vfub_server_trigger_irq(vfub_server *srv, uint32_t index, uint32_t vector);
/* Reads / writes guest memory: through the client's mmapped window, or by DMA messages.
 * Blocks until done (-EFAULT outside every window, -ENOTCONN without a client). Any
 * thread, the callbacks' included. */
int vfub_server_dma_read(vfub_server *srv, uint64_t iova, void *buf, size_t len);
int vfub_server_dma_write(vfub_server *srv, uint64_t iova, const void *buf, size_t len);
/* A VFUB_REGION_SHARED region's memory (valid until vfub_server_destroy), or NULL. Any
 * thread; the host synchronizes its own accesses with the client's. */
void *vfub_server_region_memory(vfub_server *srv, uint32_t region);
/* The message of this handle's last error ("" if none). Any thread. */
const char *vfub_server_last_error(vfub_server *srv);

/* ======================================================================================
 * Client role
 * ==================================================================================== */

typedef struct vfub_client vfub_client;

struct vfub_client_options {
  /* Serves the server's DMA_READ/DMA_WRITE messages: copy `len` bytes at `iova` into /
   * from `buf`. Called only for a range inside one window mapped with vfub_client_dma_map,
   * with that window's permission (anything else is answered EFAULT without calling it);
   * the only way to serve windows mapped without an fd. Runs on a thread of the client's
   * own (it may block; the library's event loop goes on), one call at a time; must not call
   * this client's functions. Return 0 or a negative errno. NULL: such DMA fails EFAULT. */
  int (*guest_memory)(void *opaque, uint64_t iova, void *buf, uint64_t len, int is_write);
  void *opaque;
  /* Redial a server that went away, and restore DMA windows and IRQ eventfds (1), or not
   * (0: calls fail with -ENOTCONN from then on). */
  int reconnect;
};

struct vfub_region_info {
  uint64_t size;
  uint32_t flags;   /* VFIO's: 1 read, 2 write, 4 mmap */
  void *mapped;     /* the whole region mmapped, or NULL (then accesses go by message) */
};

/* Connects to the server at `path` and negotiates (options may be NULL). Any thread. */
vfub_client *vfub_client_connect(const char *path, const struct vfub_client_options *opt);
/* Closes the connection and frees the handle. Not concurrently with other calls on it. */
void vfub_client_close(vfub_client *c);

/* Every function below: any thread, concurrently; each blocks until its reply. */
/* Enumerates the device: info, every region (mmapping what the server offers), IRQs. */
int vfub_client_probe(vfub_client *c, uint32_t *num_regions, uint32_t *num_irqs);
int vfub_client_region_info(vfub_client *c, uint32_t region, struct vfub_region_info *out);
/* Region access of any length (split at the server's limit; straight through an mmapped
 * area when the range lies in one). */
int vfub_client_read(vfub_client *c, uint32_t region, uint64_t offset, void *buf, size_t len);
int vfub_client_write(vfub_client *c, uint32_t region, uint64_t offset, const void *buf, size_t len);
/* A posted write (no reply awaited; stays in order with later calls). */
int vfub_client_write_posted(vfub_client *c, uint32_t region, uint64_t offset, const void *buf, uint32_t len);
/* A DMA window: with an fd the server may mmap (at fd_offset), or fd -1 (by messages,
 * served by options.guest_memory). The fd is not taken; the caller may close it after. */
int vfub_client_dma_map(vfub_client *c, uint64_t iova, uint64_t size, uint32_t prot, int fd, uint64_t fd_offset);
int vfub_client_dma_unmap(vfub_client *c, uint64_t iova, uint64_t size);
/* Wires eventfds to vectors [start, start + count) of IRQ `index` (not taken either). */
int vfub_client_set_irqs(vfub_client *c, uint32_t index, uint32_t start, uint32_t count, const int *eventfds);
int vfub_client_reset(vfub_client *c);
const char *vfub_client_last_error(vfub_client *c);

#ifdef __cplusplus
}
#endif

#endif /* VFU_VFU_H */
