// remote_device.hpp: the client role, what an emulator does with a vfio-user device:
// negotiate, enumerate (device info, regions with caps and mmap, IRQs), access regions,
// map guest memory for DMA and serve the server's DMA_READ/DMA_WRITE, wire IRQ eventfds,
// and reset. Defends against a hostile server: counts, sizes and chains are bounded by the
// codec and limits.hpp, and unexpected fds are closed.
//
// Threading: every method may be called from any non-CAF thread; they block.
#pragma once

#include <array>
#include <atomic>
#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <thread>
#include <string>
#include <vector>

#include "actors/endpoint.hpp"

namespace vfu::dev {

/// Guest memory the host exposes to the device: IOVA ranges backed by host memory. The
/// client serves DMA_READ/DMA_WRITE from it, bounds-checked against the mapped windows.
class guest_memory {
 public:
  void add(uint64_t iova, uint64_t size, uint8_t* host, uint32_t prot);
  void remove(uint64_t iova);
  /// 0, or EFAULT when [iova, iova+len) is not inside one window with that permission.
  int read(uint64_t iova, uint8_t* out, uint64_t len);
  int write(uint64_t iova, const uint8_t* in, uint64_t len);
  /// A host that keeps its guest memory itself (the C API's callback): accesses that lie in
  /// one add_routed() window, with its permission, go to `fn` (0 or an errno), on the thread
  /// that serves the server's DMA; anything else is EFAULT, as for add().
  using access_fn = std::function<int(uint64_t iova, uint8_t* buf, uint64_t len, bool write)>;
  void set_access(access_fn fn);
  void add_routed(uint64_t iova, uint64_t size, uint32_t prot) { add(iova, size, nullptr, prot); }

 private:
  struct win { uint64_t size; uint8_t* host; uint32_t prot; };  ///< host null: routed
  using entry = std::pair<const uint64_t, win>;
  const entry* find(uint64_t iova, uint64_t len, uint32_t need);
  int access(uint64_t iova, uint8_t* buf, uint64_t len, bool write);
  std::mutex m_;
  std::map<uint64_t, win> wins_;
  access_fn access_;
};

struct remote_region {
  proto::region_info_reply info;
  proto::unique_fd fd;        ///< mmap fd from the server, if any
  uint8_t* map = nullptr;     ///< whole-region mapping when every sparse area could be mapped
  std::vector<std::pair<proto::sparse_area, uint8_t*>> areas;  ///< mapped sparse areas
};

/// What requests do while the server is away and the device is being restored.
enum class outage_policy : uint8_t {
  fail_fast,  ///< fail at once with errc::not_connected
  wait,       ///< wait (up to outage_wait) until the device is back
};

struct remote_options {
  outage_policy outage = outage_policy::fail_fast;
  std::chrono::milliseconds outage_wait{10000};
  /// Called (on the replay thread) after a reconnect, once DMA windows and IRQ eventfds are
  /// restored: the device was reset by its restart, and the host must treat it so.
  std::function<void(uint64_t generation)> on_reset;
  /// Serve the server's DMA messages on a thread of their own rather than the event loop's:
  /// for guest memory behind a host's code that may block (the C API's callback).
  bool dma_own_thread = false;
};

/// A server-side posted write for write_posted_many (at most 8 bytes).
struct posted_write {
  uint32_t region = 0;
  uint64_t offset = 0;
  uint32_t count = 0;
  std::array<uint8_t, 8> data{};
};

class remote_device {
 public:
  ~remote_device();
  /// Connects to `path` and negotiates. DMA requests from the server are served from `mem`.
  /// With cfg.reconnect (the default) a lost server is redialled; once it is back the
  /// device is re-probed and its DMA windows and IRQ eventfds are replayed.
  static proto::result<std::unique_ptr<remote_device>> open(runtime& rt, const std::string& path,
                                                            std::shared_ptr<guest_memory> mem = nullptr,
                                                            endpoint_config cfg = {}, remote_options opts = {});
  /// Device info, every region (with argsz retry and mmap of the sparse areas), every IRQ.
  proto::status probe();

  /// Enumeration results. A replay after a reconnect rebuilds them: read them while ready().
  const proto::device_info_reply& info() const { return info_; }
  const std::vector<remote_region>& regions() const { return regions_; }
  const std::vector<proto::irq_info_reply>& irqs() const { return irqs_; }

  /// Region access of any size: split at the server's max_data_xfer_size, or done directly
  /// through an mmapped sparse area when the whole range lies in one.
  proto::status read(uint32_t region, uint64_t offset, void* buf, uint64_t count);
  proto::status write(uint32_t region, uint64_t offset, const void* buf, uint64_t count);
  /// Posted write (NO_REPLY); stays ordered with later requests, and with later accesses
  /// through an mmapped area (which first wait for the posted writes before them: one
  /// round trip, only when there are any). Into an mmapped area it is a plain write.
  proto::status write_posted(uint32_t region, uint64_t offset, const void* buf, uint32_t count);
  /// Several posted writes of at most 8 bytes: coalesced into REGION_WRITE_MULTI messages
  /// (up to 200 entries, as QEMU does) when the server advertised write_multiple, otherwise
  /// sent one by one. Either way they stay in order with everything else.
  proto::status write_posted_many(const std::vector<posted_write>& writes);

  /// True while the device is usable (false during an outage and while replaying).
  bool ready();
  /// Waits until ready() (true) or the timeout passes (false).
  bool wait_ready(std::chrono::milliseconds timeout);
  /// Reconnects whose replay completed (0 before the first outage).
  uint64_t replays();
  /// Why the last replay failed, if it did.
  proto::error last_replay_error();

  /// DMA windows: with an fd (the server may mmap it) or without (DMA by messages).
  proto::status dma_map(uint64_t iova, uint64_t size, uint32_t prot, const proto::unique_fd* fd = nullptr,
                        uint64_t fd_offset = 0);
  proto::status dma_unmap(uint64_t iova, uint64_t size);
  proto::status dma_unmap_all();

  /// Wires eventfds to vectors [start, start+n) of IRQ `index`, in chunks of the server's
  /// max_msg_fds.
  proto::status set_irq_eventfds(uint32_t index, uint32_t start, const std::vector<int>& efds);
  proto::status irq_action(uint32_t index, uint32_t start, uint32_t count, uint32_t action);
  proto::status irq_disable(uint32_t index);

  proto::status reset();

  // ---- Migration v2 and dirty logging (docs/migration.md) ------------------------------
  // Never replayed: a call in progress when the connection is lost fails with that loss.
  // After a reconnect the replay asks the device's state first; a server that kept the
  // device STOP, STOP_COPY or ERROR refuses enumeration, DMA_MAP and SET_IRQS, so restoring
  // those waits until set_migration_state() takes the device to a state that takes them.
  /// The server's proto::mig_flags (errc::remote_error with ENOTSUP or EINVAL: none).
  proto::result<uint64_t> migration_flags();
  proto::result<proto::mig_state> migration_state();
  /// The server walks multi-step changes; a failed step leaves the device where the
  /// server says (ask migration_state()).
  proto::status set_migration_state(proto::mig_state s);
  /// Reads the device's data until a read returns nothing (libvfio-user's end, which a
  /// server following the spec also gives after its short read), in reads of `chunk`
  /// bytes (0: the server's max_data_xfer_size); each piece goes to `sink`, whose error
  /// stops the read. Returns the bytes read. In PRE_COPY it reads one round.
  proto::result<uint64_t> read_migration_data(const std::function<proto::status(const uint8_t*, size_t)>& sink,
                                              uint32_t chunk = 0);
  /// Writes data to a RESUMING device, split at the server's max_data_xfer_size.
  proto::status write_migration_data(const uint8_t* data, size_t len);
  /// DMA_LOGGING_START at `page_size` over `ranges` (empty: everything mapped).
  proto::status start_dirty_logging(uint64_t page_size, const std::vector<proto::dma_range>& ranges = {});
  proto::status stop_dirty_logging();
  /// DMA_LOGGING_REPORT: bit i (LSB first, in u64 words) = page i of [iova, iova+length)
  /// was written since it was last reported. Asked in as many reports as the server's
  /// max_data_xfer_size needs (one when it fits, which libvfio-user requires).
  proto::result<std::vector<uint8_t>> dirty_bitmap(uint64_t iova, uint64_t length, uint64_t page_size);
  /// The same into `out` (resized): a host reporting every round keeps its buffer.
  proto::status dirty_bitmap(uint64_t iova, uint64_t length, uint64_t page_size, std::vector<uint8_t>& out);

  /// DEVICE_GET_REGION_IO_FDS for one region (argsz retry); the fds come in `fds`.
  proto::result<proto::io_fds_reply> io_fds(uint32_t region, proto::fd_list& fds);
  endpoint& ep() { return *ep_; }

 private:
  remote_device() = default;
  proto::status fetch_region(uint32_t index);
  /// Where [offset, offset+count) of `region` is mapped, if one sparse area holds all of
  /// it (probe_m_ held).
  uint8_t* mapping(uint32_t region, uint64_t offset, uint64_t count) const;
  /// Waits until the server has applied every posted write sent so far (a round trip, if
  /// any is not known to be applied); fenced() records that those up to `posted` are.
  proto::status fence();
  void fenced(uint64_t posted);

  proto::status probe_locked();
  proto::status gate();
  proto::status replay();
  proto::status restore_locked();
  proto::result<proto::message> feature(const proto::device_feature_request& q);
  void replay_loop();
  void unmap_regions();

  std::unique_ptr<endpoint> ep_;
  std::shared_ptr<guest_memory> mem_;
  remote_options opts_;
  proto::device_info_reply info_;
  std::vector<remote_region> regions_;
  std::vector<proto::irq_info_reply> irqs_;

  // What a reconnect must restore, with our own duplicates of the fds.
  struct dma_record {
    uint64_t size = 0;
    uint32_t prot = 0;
    proto::unique_fd fd;
    uint64_t fd_offset = 0;
  };
  std::mutex records_m_;
  std::map<uint64_t, dma_record> dma_records_;
  std::map<std::pair<uint32_t, uint32_t>, proto::unique_fd> irq_records_;

  // regions_/info_/irqs_ are rebuilt by a replay: readers hold it shared.
  std::shared_mutex probe_m_;
  // Device readiness across outages (guarded by m_).
  std::mutex m_;
  std::condition_variable cv_;
  bool ready_ = true;
  bool stop_ = false;
  uint64_t seen_generation_ = 1;
  uint64_t replays_ = 0;
  std::atomic<bool> restore_deferred_{false};  ///< a replay met the device mid-migration
  proto::error replay_error_;
  std::thread replayer_;
  // Posted writes sent by message, and how many of them the server is known to have
  // applied (an answer to a later request says so).
  std::atomic<uint64_t> posted_{0}, fenced_{0};
};

/// The device actor a client registers to serve DMA_READ/DMA_WRITE from `mem`.
caf::actor spawn_guest_memory_server(caf::actor_system& sys, std::shared_ptr<guest_memory> mem, proto::quirks q,
                                     bool own_thread = false);

}  // namespace vfu::dev
