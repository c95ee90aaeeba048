// device.hpp: the server-role framework. A PCI device is a device_model (what the device
// does) inside a device actor (what the protocol needs): config space, regions, IRQs, DMA
// windows, reset, and connection loss. The actor answers every command the dispatcher hands
// it, so a device author writes only register semantics.
//
// Threading: every device_model hook and every device_context call runs on the device
// actor, one at a time; no locks are needed in a model.
#pragma once

#include <caf/all.hpp>

#include <array>
#include <functional>
#include <map>
#include <memory>
#include <vector>

#include "actors/types.hpp"
#include "device/pci_config.hpp"

namespace vfu::dev {

struct region_spec {
  uint64_t size = 0;
  bool readable = true;
  bool writable = true;
  /// Backed by shared memory (memfd) that the framework owns; offered as mmap-able, and
  /// served from there (large REGION_READs straight from it, with no copy).
  bool shared_memory = false;
  /// Sparse-mmap areas; empty = the whole region (when shared_memory).
  std::vector<proto::sparse_area> sparse;
  /// Device-specific regions (index 9 and up) carry a TYPE capability with these.
  uint32_t type = 0, subtype = 0;
};

struct device_spec {
  pci_ids ids;
  std::array<bar_spec, 6> bars{};
  /// Regions 0-5 (BARs; size comes from bars[]), 6 ROM, 8 VGA. Region 7 is the config space.
  std::array<region_spec, 9> regions{};
  /// Device-specific regions, numbered from 9 (VFIO_PCI_NUM_REGIONS) on.
  std::vector<region_spec> extra_regions;
  uint16_t msi_vectors = 0;
  msix_spec msix;
  uint32_t intx_vectors = 1;
  /// libvfio-user sets bit 0 (I/O) in BARs it does not use; gpio mimics it.
  bool io_bit_on_unused_bars = false;
  /// A PCI power-management capability (libvfio-user's gpio sample has no capabilities).
  bool pm_capability = true;
  /// A PCI Express capability (endpoint, version 2), as drivers of PCIe devices expect.
  bool pcie_capability = false;
};

class device_context;

/// What a device does. Return 0 or a positive errno from the access hooks.
class device_model {
 public:
  virtual ~device_model() = default;
  virtual const device_spec& spec() const = 0;
  virtual int region_read(uint32_t region, uint64_t offset, uint8_t* buf, uint32_t count) {
    (void)region; (void)offset; (void)buf; (void)count;
    return EINVAL;
  }
  virtual int region_write(uint32_t region, uint64_t offset, const uint8_t* buf, uint32_t count) {
    (void)region; (void)offset; (void)buf; (void)count;
    return EINVAL;
  }
  /// DEVICE_RESET (and nothing else: a disconnect keeps device state).
  virtual void reset() {}
  virtual void attached() {}
  virtual void detached() {}

  // ---- Migration (docs/migration.md). The framework runs the state machine, serves and
  // takes the data stream, and saves config space, IRQ state, the MSI-X table and shared
  // memory regions itself; a model adds only what lives in its own members.
  /// proto::mig_flags the device supports: 0 = not migratable (the migration features
  /// answer ENOTSUP); otherwise STOP_COPY and optionally PRE_COPY and P2P.
  virtual uint64_t migration_flags() const { return 0; }
  /// One direct arc; longer changes are walked arc by arc. An errno puts the device in
  /// ERROR, which only DEVICE_RESET leaves.
  virtual int migration_transition(proto::mig_state from, proto::mig_state to) {
    (void)from; (void)to;
    return 0;
  }
  /// The model's own state, taken when STOP_COPY begins and given back (on the
  /// destination) when RESUMING ends; the stream carries it in pieces of any size.
  virtual std::vector<uint8_t> save_state() { return {}; }
  /// 0, or an errno (EINVAL for state this model cannot take).
  virtual int load_state(const std::vector<uint8_t>& data) { return data.empty() ? 0 : EINVAL; }

  // ---- Answering later, from another thread (an embedding host runs its callbacks on a
  // thread of its own or of ours: capi/vfu.cpp). With answers_later(), the accesses the
  // model serves (not config space, the MSI-X table or PBA, or shared memory) and
  // DEVICE_RESET go to the *_later hooks, which may call `done` from any thread, exactly
  // once; the connection's next requests wait behind it. REGION_WRITE_MULTI still uses
  // region_write (such a server does not offer write_multiple).
  virtual bool answers_later() const { return false; }
  /// `buf` holds `count` bytes (a read's zeroed) and stays valid until `done(0 or errno)`.
  virtual void region_access_later(uint32_t region, uint64_t offset, uint8_t* buf, uint32_t count, bool write,
                                   std::function<void(int)> done) {
    done(write ? region_write(region, offset, buf, count) : region_read(region, offset, buf, count));
  }
  /// After the framework reset config space, IRQs and the MSI-X table.
  virtual void reset_later(std::function<void()> done) {
    reset();
    done();
  }
  /// A DMA window was mapped (with an fd the framework mmapped, or for DMA by messages) or
  /// unmapped (also when its client goes). Notices: the framework keeps the windows and
  /// serves dma_read/dma_write.
  virtual void dma_mapped(uint64_t iova, uint64_t size, uint32_t prot) { (void)iova; (void)size; (void)prot; }
  virtual void dma_unmapped(uint64_t iova, uint64_t size) { (void)iova; (void)size; }

  device_context* ctx = nullptr;  ///< set by the framework before any hook runs
};

/// What a model may ask of the framework.
class device_context {
 public:
  virtual ~device_context() = default;
  /// Raises vector `vector` of IRQ `index` (irq_index::*): signals its eventfd, or sets its
  /// pending bit while masked.
  virtual void trigger(uint32_t index, uint32_t vector) = 0;
  /// Reads guest memory: through an mmapped window when the client gave an fd, otherwise
  /// with DMA_READ messages. The callback runs later on the device actor.
  virtual void dma_read(uint64_t addr, uint64_t len, std::function<void(int err, std::vector<uint8_t> data)> cb) = 0;
  virtual void dma_write(uint64_t addr, std::vector<uint8_t> data, std::function<void(int err)> cb) = 0;
  virtual pci_config& config() = 0;
  /// The shared memory behind a shared_memory region (nullptr otherwise).
  virtual uint8_t* region_memory(uint32_t region) = 0;
  /// Runs `work` on one of the framework's worker threads (blocking work: file I/O), then
  /// `done` with its result on the device actor (docs/nvme.md). `work` must touch nothing
  /// the model's other hooks touch; the model is kept alive until `done` has run.
  virtual void offload(std::function<int()> work, std::function<void(int)> done) = 0;
  /// The migration state (RUNNING unless a client is migrating the device). Outside the
  /// running states, trigger() only sets pending bits and DMA fails with EBUSY.
  virtual proto::mig_state migration_state() const = 0;
};

/// Spawns the device actor that serves `model` (hand it to endpoint::listen/serve_fd).
caf::actor spawn_device(caf::actor_system& sys, std::shared_ptr<device_model> model, proto::quirks quirks = {});

/// Runs `task` on the device actor, where device_context may be used (any thread; a task
/// sent to a device actor that is gone is dropped, and with it what it captured).
using device_task = std::function<void(device_context&)>;
void run_on_device(const caf::actor& device, device_task task);

}  // namespace vfu::dev

CAF_ALLOW_UNSAFE_MESSAGE_TYPE(vfu::dev::device_task)
