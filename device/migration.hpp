// migration.hpp: the parts of VFIO migration v2 that need no actor (docs/migration.md):
// the state machine's paths, the device-state stream's records (written by a source,
// parsed in pieces by a destination), and the dirty-page log of DMA writes.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <optional>
#include <vector>

#include "protocol/messages.hpp"

namespace vfu::dev {

using proto::mig_state;

/// The states a device supports with these migration flags (mig_flags::*).
bool mig_state_supported(mig_state s, uint64_t flags);
/// The states a device goes through from `from` to `to`, `to` included (empty when from ==
/// to): the shortest path over direct arcs through no saving state (the kernel's
/// vfio_mig_get_next_state). nullopt: no such path (STOP_COPY or RESUMING to a PRE_COPY
/// state, anything from ERROR, an unsupported state).
std::optional<std::vector<mig_state>> mig_path(mig_state from, mig_state to, uint64_t flags);
/// States whose data the device is saving (MIG_DATA_READ is served).
inline bool mig_saving(mig_state s) {
  return s == mig_state::pre_copy || s == mig_state::pre_copy_p2p || s == mig_state::stop_copy;
}
/// States in which the device runs (it may raise interrupts and do DMA).
inline bool mig_running(mig_state s) {
  return s == mig_state::running || s == mig_state::pre_copy || s == mig_state::running_p2p ||
         s == mig_state::pre_copy_p2p;
}

// ---- The device-state stream ----------------------------------------------------------------
// A sequence of records, each a 24-byte head {type u32, index u32, offset u64, length u64}
// then `length` bytes. The stream opens with HEADER and a complete one ends with END.
namespace mig_record {
inline constexpr uint32_t header = 1;  ///< index = format version; data = device identity
inline constexpr uint32_t pages = 2;   ///< index = region, offset in it: shared memory contents
inline constexpr uint32_t config = 3;  ///< config space (256 bytes)
inline constexpr uint32_t irqs = 4;    ///< per IRQ index: count u32, then a flags byte per vector
inline constexpr uint32_t msix = 5;    ///< the MSI-X table
inline constexpr uint32_t model = 6;   ///< the model's own state (save_state)
inline constexpr uint32_t end = 7;
inline constexpr uint32_t head_size = 24;
inline constexpr uint32_t version = 1;
}  // namespace mig_record
/// Records other than PAGES are held until END; this bounds each (a peer sets the length).
inline constexpr uint64_t max_mig_record = 16u << 20;

/// The bytes a source serves, in order: owned bytes or spans of device memory that stay
/// where they are until read (the device is stopped while its stop-copy data is read).
class mig_source {
 public:
  struct piece {
    const uint8_t* data;
    size_t len;
    bool borrowed;  ///< device memory, not this source's
  };
  void add_record(uint32_t type, uint32_t index, uint64_t offset, std::vector<uint8_t> data);
  /// A PAGES record whose data is read from `mem` when it is served.
  void add_borrowed_pages(uint32_t region, uint64_t offset, const uint8_t* mem, uint64_t len);
  /// Called when the queue runs dry: appends more, or returns false at the end.
  std::function<bool(mig_source&)> more;
  /// Takes up to n bytes (fewer only at the end), as pieces valid until the next take.
  std::vector<piece> take(size_t n);
  uint64_t served() const { return served_; }

 private:
  struct chunk {
    std::vector<uint8_t> own;
    const uint8_t* mem = nullptr;
    uint64_t len = 0, pos = 0;
  };
  std::deque<chunk> q_;
  std::deque<chunk> done_;  ///< owned chunks taken last time (their pieces are still in use)
  uint64_t served_ = 0;
};

/// What a destination does with the records it parses.
class mig_sink {
 public:
  virtual ~mig_sink() = default;
  /// Where the `len` bytes of region `region` at `offset` go, or nullptr when that is not a
  /// shared memory range of this device (the stream is refused).
  virtual uint8_t* pages(uint32_t region, uint64_t offset, uint64_t len) = 0;
  /// Any other record, complete; 0 or an errno.
  virtual int record(uint32_t type, uint32_t index, std::vector<uint8_t> data) = 0;
};

/// Parses a stream written in pieces of any size. The first error sticks.
class mig_parser {
 public:
  /// 0, or an errno (EINVAL: not a stream of ours, bad record; E2BIG: record too large).
  int feed(const uint8_t* p, size_t n, mig_sink& sink);
  bool ended() const { return ended_; }
  bool started() const { return records_ > 0 || got_ > 0; }
  int error() const { return err_; }

 private:
  int fail(int e) { return err_ = e; }
  uint8_t head_[mig_record::head_size] = {};
  size_t got_ = 0;  ///< bytes of head_ read
  bool in_body_ = false;
  uint32_t type_ = 0, index_ = 0;
  uint64_t offset_ = 0, left_ = 0;
  uint8_t* dst_ = nullptr;       ///< PAGES: where the body goes
  std::vector<uint8_t> body_;    ///< other records
  uint64_t records_ = 0;
  bool ended_ = false;
  int err_ = 0;
};

// ---- Dirty logging ---------------------------------------------------------------------------
/// Pages written by the device through mapped DMA windows, over the ranges the client asked
/// to log, at its page size. Memory: one bit per page, bounded when logging starts.
class dirty_log {
 public:
  /// 0, or EINVAL (page size not a power of two >= 4096, ranges empty, unaligned,
  /// overlapping), or ENOMEM (bitmaps above limits::max_dirty_bitmap).
  int start(uint64_t page_size, std::vector<proto::dma_range> ranges);
  void stop() { ranges_.clear(); page_ = 0; }
  bool active() const { return page_ != 0; }
  uint64_t page_size() const { return page_; }
  void mark(uint64_t iova, uint64_t len);
  /// Bitmap bytes a report of `len` needs.
  static uint64_t bitmap_bytes(uint64_t len, uint64_t page) { return (len / page + 63) / 64 * 8; }
  /// Copies the bits of [iova, iova+len) into out (bitmap_bytes of them) and clears them.
  /// EINVAL: not logging, another page size, unaligned, or not inside one logged range.
  int report(uint64_t iova, uint64_t len, uint64_t page_size, uint8_t* out);

 private:
  struct range {
    uint64_t iova, len;
    std::vector<uint64_t> bits;
  };
  std::vector<range> ranges_;  ///< sorted by iova, disjoint
  uint64_t page_ = 0;
};

}  // namespace vfu::dev
