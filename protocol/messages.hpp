// messages.hpp: typed request and reply bodies for every vfio-user command, and the codec.
//
// Each struct holds every wire field verbatim (including argsz, reserved words and
// padding-carrying fields), so decoding a real peer's frame and encoding it again gives the
// same bytes. Offsets are relative to the end of the 16-byte header; layouts follow QEMU's
// docs/interop/vfio-user.rst, and each struct names its section and the kernel VFIO struct
// it mirrors. Peer variants (libvfio-user, QEMU) are accepted only where `quirks` says so.
//
// decode() validates every peer-controlled field and never allocates from a size it has not
// checked against a named limit (limits.hpp). It does not know the negotiated state of a
// connection: rules that need it (region sizes, pending requests, max_data_xfer_size) are
// checked by the layer that has it, using `decode_limits`.
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "protocol/errc.hpp"
#include "protocol/frame.hpp"
#include "protocol/header.hpp"

namespace vfu::proto {

/// Known deviations of real peers from the spec. All off = the spec, except that a server
/// finds out the DMA layout of each client by itself unless `dma_layout_forced` is set.
struct quirks {
  /// QEMU (10.1-10.2) lays DMA_READ/DMA_WRITE out as {offset u64, count u32, data@12}:
  /// DMA_WRITE requests we send put data at @12 (+4 pad), DMA_READ replies we receive carry
  /// data at @12, and a header-only DMA_WRITE reply is accepted.
  bool qemu_dma_layout = false;
  /// qemu_dma_layout is a decision, not a default: a server does not detect the layout
  /// (device.cpp, docs/interop.md) but uses the one given.
  bool dma_layout_forced = false;
  /// libvfio-user sends error replies that echo the request's payload after the header.
  bool error_reply_payload = false;
  /// libvfio-user pads a short MIG_DATA_READ reply to the requested length (the `size`
  /// field says how many bytes are valid; the rest is padding).
  bool mig_read_padding = false;

  static quirks spec() { quirks q; q.dma_layout_forced = true; return q; }
  static quirks libvfio_user() {
    quirks q = spec();
    q.error_reply_payload = true;
    q.mig_read_padding = true;
    return q;
  }
  static quirks qemu() { quirks q; q.qemu_dma_layout = true; q.dma_layout_forced = true; return q; }
  quirks operator|(const quirks& o) const {
    quirks q;
    q.qemu_dma_layout = qemu_dma_layout || o.qemu_dma_layout;
    q.dma_layout_forced = dma_layout_forced || o.dma_layout_forced;
    q.error_reply_payload = error_reply_payload || o.error_reply_payload;
    q.mig_read_padding = mig_read_padding || o.mig_read_padding;
    return q;
  }
};

/// Limits that depend on the connection (negotiated); decode checks data counts with them.
struct decode_limits {
  uint64_t max_data_xfer = 64u << 20;  ///< count in REGION/DMA/MIG data messages
};

/// Bulk bytes of a message (a REGION_WRITE's data): its own, or shared with the frame it
/// was decoded from (decode() of a shared frame), which spares copying up to
/// max_data_xfer_size bytes. A copy of the message shares them as well, so the bytes live
/// as long as any copy: no reader is left with a dangling pointer. Reading goes through
/// data()/size(); changing them makes them the message's own first.
class shared_bytes {
 public:
  shared_bytes() = default;
  shared_bytes(std::vector<uint8_t> v) : own_(std::move(v)) {}  // NOLINT: a vector is the common case
  shared_bytes(std::initializer_list<uint8_t> l) : own_(l) {}
  /// `n` bytes at `p`, kept alive by `owner`.
  shared_bytes(std::shared_ptr<const void> owner, const uint8_t* p, size_t n) : owner_(std::move(owner)), p_(p), n_(n) {}
  const uint8_t* data() const noexcept { return owner_ ? p_ : own_.data(); }
  size_t size() const noexcept { return owner_ ? n_ : own_.size(); }
  bool empty() const noexcept { return size() == 0; }
  const uint8_t* begin() const noexcept { return data(); }
  const uint8_t* end() const noexcept { return data() + size(); }
  uint8_t operator[](size_t i) const noexcept { return data()[i]; }
  /// Whether the bytes are shared with a frame (not copied).
  bool shared() const noexcept { return bool(owner_); }
  std::vector<uint8_t>& own() {
    if (owner_) {
      own_.assign(p_, p_ + n_);
      owner_.reset();
    }
    return own_;
  }
  void assign(size_t n, uint8_t v) { own().assign(n, v); }
  void resize(size_t n) { own().resize(n); }
  void push_back(uint8_t v) { own().push_back(v); }
  uint8_t& operator[](size_t i) { return own()[i]; }
  bool operator==(const shared_bytes& o) const noexcept {
    return size() == o.size() && std::equal(begin(), end(), o.begin());
  }
  bool operator!=(const shared_bytes& o) const noexcept { return !(*this == o); }
  friend bool operator==(const shared_bytes& a, const std::vector<uint8_t>& b) noexcept {
    return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin());
  }
  friend bool operator==(const std::vector<uint8_t>& b, const shared_bytes& a) noexcept { return a == b; }

 private:
  std::vector<uint8_t> own_;
  std::shared_ptr<const void> owner_;
  const uint8_t* p_ = nullptr;
  size_t n_ = 0;
};

// ---------------------------------------------------------------------------------------
// 1 VERSION: major u16@0, minor u16@2, optional NUL-terminated JSON@4.
struct version_body {
  uint16_t major = 0;
  uint16_t minor = 0;
  std::optional<std::string> caps_json;  ///< without the NUL; absent = no JSON at all
};
struct version_request : version_body {};
struct version_reply : version_body {};

// 2 DMA_MAP (vfio_iommu_type1_dma_map): argsz u32@0 flags u32@4 offset u64@8 addr u64@16
// size u64@24. Reply: empty.
namespace dma_flags {
inline constexpr uint32_t read = 1u << 0;
inline constexpr uint32_t write = 1u << 1;
inline constexpr uint32_t map_known = read | write;
inline constexpr uint32_t unmap_get_dirty_bitmap = 1u << 0;  ///< legacy, libvfio-user
inline constexpr uint32_t unmap_all = 1u << 1;               ///< QEMU and libvfio-user
}  // namespace dma_flags
struct dma_map_request {
  uint32_t argsz = 32;
  uint32_t flags = 0;
  uint64_t offset = 0;  ///< into the fd (0 without one)
  uint64_t addr = 0;    ///< IOVA
  uint64_t size = 0;
};
struct dma_map_reply {};

// 3 DMA_UNMAP (vfio_iommu_type1_dma_unmap): argsz u32@0 flags u32@4 addr u64@8 size u64@16,
// then with GET_DIRTY_BITMAP a vfio_bitmap head {pgsize u64, size u64} (+ bitmap in reply).
struct dirty_bitmap_head {
  uint64_t pgsize = 0;
  uint64_t size = 0;  ///< bitmap bytes
};
struct dma_unmap_request {
  uint32_t argsz = 24;
  uint32_t flags = 0;
  uint64_t addr = 0;
  uint64_t size = 0;
  std::optional<dirty_bitmap_head> bitmap;
};
struct dma_unmap_reply {
  uint32_t argsz = 24;
  uint32_t flags = 0;
  uint64_t addr = 0;
  uint64_t size = 0;
  std::optional<dirty_bitmap_head> bitmap;
  std::vector<uint8_t> bitmap_data;
};

// 4 DEVICE_GET_INFO (vfio_device_info): argsz u32@0 flags u32@4 num_regions u32@8
// num_irqs u32@12, request and reply.
namespace device_info_flags {
inline constexpr uint32_t reset = 1u << 0;
inline constexpr uint32_t pci = 1u << 1;
}  // namespace device_info_flags
struct device_info_body {
  uint32_t argsz = 16;
  uint32_t flags = 0;
  uint32_t num_regions = 0;
  uint32_t num_irqs = 0;
};
struct device_info_request : device_info_body {};
struct device_info_reply : device_info_body {};

// 5 DEVICE_GET_REGION_INFO (vfio_region_info): argsz u32@0 flags u32@4 index u32@8
// cap_offset u32@12 size u64@16 offset u64@24; reply adds a capability chain.
namespace region_flags {
inline constexpr uint32_t read = 1u << 0;
inline constexpr uint32_t write = 1u << 1;
inline constexpr uint32_t mmap = 1u << 2;
inline constexpr uint32_t caps = 1u << 3;
inline constexpr uint32_t known = read | write | mmap | caps;
}  // namespace region_flags
namespace region_cap_id {
inline constexpr uint16_t sparse_mmap = 1;
inline constexpr uint16_t type = 2;
}  // namespace region_cap_id
/// Standard PCI region indexes (VFIO_PCI_*_REGION_INDEX).
namespace region_index {
inline constexpr uint32_t bar0 = 0;
inline constexpr uint32_t bar5 = 5;
inline constexpr uint32_t rom = 6;
inline constexpr uint32_t config = 7;
inline constexpr uint32_t vga = 8;
inline constexpr uint32_t num_pci = 9;
}  // namespace region_index
struct sparse_area {
  uint64_t offset = 0;
  uint64_t size = 0;
};
/// One capability of the chain. `offset` is where it sits (from the start of the 32-byte
/// struct); 0 means "right after the previous one" when encoding.
struct region_cap {
  uint16_t id = 0;
  uint16_t version = 1;
  uint32_t offset = 0;
  uint32_t sparse_reserved = 0;           ///< SPARSE_MMAP: reserved u32@12
  std::vector<sparse_area> areas;         ///< SPARSE_MMAP: nr_areas entries @16
  uint32_t type = 0, subtype = 0;         ///< TYPE: u32@8, u32@12
  std::vector<uint8_t> raw;               ///< any other id: body after the 8-byte cap header
};
struct region_info_body {
  uint32_t argsz = 32;
  uint32_t flags = 0;
  uint32_t index = 0;
  uint32_t cap_offset = 0;
  uint64_t size = 0;
  uint64_t offset = 0;
};
struct region_info_request : region_info_body {
  /// Clients may send a buffer of argsz bytes (libvfio-user's does); the bytes after the
  /// 32-byte struct carry nothing and are kept only so re-encoding is exact.
  std::vector<uint8_t> pad;
};
struct region_info_reply : region_info_body {
  std::vector<region_cap> caps;  ///< in chain order
  /// The sparse-mmap cap if present.
  const region_cap* sparse() const;
};

// 6 DEVICE_GET_REGION_IO_FDS: head argsz u32@0 flags u32@4 index u32@8 count u32@12, then
// count entries. Spec entry is 40 bytes; libvfio-user's is 48 (shadow ioeventfds). The
// stride is derived from the payload (never assumed).
struct io_fd_entry {
  uint64_t offset = 0;
  uint64_t size = 0;
  uint32_t fd_index = 0;
  uint32_t type = 0;        ///< 0 ioeventfd, 1 ioregionfd, 2 shadow ioeventfd (LVU)
  uint32_t flags = 0;
  uint32_t word28 = 0;      ///< spec: padding; LVU: shadow_mem_fd_index
  uint64_t qword32 = 0;     ///< spec: datamatch / user_data; LVU: shadow_offset
  uint64_t qword40 = 0;     ///< LVU only: datamatch
};
struct io_fds_request {
  uint32_t argsz = 16;
  uint32_t flags = 0;
  uint32_t index = 0;
  uint32_t count = 0;
};
struct io_fds_reply {
  uint32_t argsz = 16;
  uint32_t flags = 0;
  uint32_t index = 0;
  uint32_t count = 0;
  uint32_t entry_size = 40;          ///< 40 (spec) or 48 (libvfio-user)
  std::vector<io_fd_entry> entries;  ///< empty when argsz was too small for them
};

// 7 DEVICE_GET_IRQ_INFO (vfio_irq_info): argsz u32@0 flags u32@4 index u32@8 count u32@12.
namespace irq_info_flags {
inline constexpr uint32_t eventfd = 1u << 0;
inline constexpr uint32_t maskable = 1u << 1;
inline constexpr uint32_t automasked = 1u << 2;
inline constexpr uint32_t noresize = 1u << 3;
}  // namespace irq_info_flags
namespace irq_index {
inline constexpr uint32_t intx = 0, msi = 1, msix = 2, err = 3, req = 4, count = 5;
}
struct irq_info_body {
  uint32_t argsz = 16;
  uint32_t flags = 0;
  uint32_t index = 0;
  uint32_t count = 0;
};
struct irq_info_request : irq_info_body {};
struct irq_info_reply : irq_info_body {};

// 8 DEVICE_SET_IRQS (vfio_irq_set): argsz u32@0 flags u32@4 index u32@8 start u32@12
// count u32@16, data@20 (DATA_BOOL: count bytes). Reply: empty.
namespace irq_set_flags {
inline constexpr uint32_t data_none = 1u << 0;
inline constexpr uint32_t data_bool = 1u << 1;
inline constexpr uint32_t data_eventfd = 1u << 2;
inline constexpr uint32_t action_mask = 1u << 3;
inline constexpr uint32_t action_unmask = 1u << 4;
inline constexpr uint32_t action_trigger = 1u << 5;
inline constexpr uint32_t data_mask = data_none | data_bool | data_eventfd;
inline constexpr uint32_t action_mask_all = action_mask | action_unmask | action_trigger;
}  // namespace irq_set_flags
struct set_irqs_request {
  uint32_t argsz = 20;
  uint32_t flags = 0;
  uint32_t index = 0;
  uint32_t start = 0;
  uint32_t count = 0;
  std::vector<uint8_t> bools;  ///< DATA_BOOL only
};
struct set_irqs_reply {};

// 9 REGION_READ / 10 REGION_WRITE: offset u64@0 region u32@8 count u32@12 (+ data@16).
struct region_access {
  uint64_t offset = 0;
  uint32_t region = 0;
  uint32_t count = 0;
};
struct region_read_request : region_access {};
struct region_read_reply : region_access { std::vector<uint8_t> data; };
struct region_write_request : region_access { shared_bytes data; };
struct region_write_reply : region_access {};

// 11 DMA_READ / 12 DMA_WRITE (server -> client): address u64@0 count u64@8 (+ data@16).
/// How a DMA message is laid out: the spec's, or QEMU's {offset u64, count u32, data@12}
/// (qemu_dma_layout quirk); `empty` is QEMU's header-only DMA_WRITE reply.
enum class dma_layout : uint8_t { spec = 0, qemu = 1, empty = 2 };
struct dma_access {
  uint64_t addr = 0;
  uint64_t count = 0;
  dma_layout layout = dma_layout::spec;
};
struct dma_read_request : dma_access {};
struct dma_read_reply : dma_access { std::vector<uint8_t> data; };
struct dma_write_request : dma_access { std::vector<uint8_t> data; };
struct dma_write_reply : dma_access {};

// 13 DEVICE_RESET: no payload either way.
struct reset_request {};
struct reset_reply {};

// 15 REGION_WRITE_MULTI: wr_cnt u64@0, then wr_cnt x {offset u64, region u32, count u32
// (<= 8), data[8]}. Reply: wr_cnt u64 (completed).
struct write_multi_entry {
  uint64_t offset = 0;
  uint32_t region = 0;
  uint32_t count = 0;
  std::array<uint8_t, 8> data{};
};
struct write_multi_request { std::vector<write_multi_entry> writes; };
struct write_multi_reply { uint64_t wr_cnt = 0; };

// 16 DEVICE_FEATURE (vfio_device_feature): argsz u32@0 flags u32@4 data@8.
namespace feature_flags {
inline constexpr uint32_t index_mask = 0xffff;
inline constexpr uint32_t get = 1u << 16;
inline constexpr uint32_t set = 1u << 17;
inline constexpr uint32_t probe = 1u << 18;
}  // namespace feature_flags
namespace feature {
inline constexpr uint32_t migration = 1;
inline constexpr uint32_t mig_device_state = 2;
inline constexpr uint32_t dma_logging_start = 6;
inline constexpr uint32_t dma_logging_stop = 7;
inline constexpr uint32_t dma_logging_report = 8;
}  // namespace feature
namespace mig_flags {
inline constexpr uint64_t stop_copy = 1u << 0;
inline constexpr uint64_t p2p = 1u << 1;
inline constexpr uint64_t pre_copy = 1u << 2;
}  // namespace mig_flags
/// VFIO migration v2 device states.
enum class mig_state : uint32_t {
  error = 0, stop = 1, running = 2, stop_copy = 3, resuming = 4, running_p2p = 5,
  pre_copy = 6, pre_copy_p2p = 7,
};
const char* to_string(mig_state s) noexcept;
struct feature_migration { uint64_t flags = 0; };
struct feature_device_state { uint32_t device_state = 0; uint32_t data_fd = 0xffffffff; };
struct dma_range { uint64_t iova = 0; uint64_t length = 0; };
struct feature_logging_ctl {  ///< START (and the same shape that STOP may carry)
  uint64_t page_size = 0;
  uint32_t reserved = 0;
  std::vector<dma_range> ranges;  ///< num_ranges u32@8 counts them
};
struct feature_logging_report {
  uint64_t iova = 0;
  uint64_t length = 0;
  uint64_t page_size = 0;
  std::vector<uint8_t> bitmap;  ///< reply only: ceil(pages / 64) * 8 bytes
};
using feature_data = std::variant<std::monostate, feature_migration, feature_device_state,
                                  feature_logging_ctl, feature_logging_report>;
struct device_feature_body {
  uint32_t argsz = 8;
  uint32_t flags = 0;
  feature_data data;
  uint32_t index() const noexcept { return flags & feature_flags::index_mask; }
};
struct device_feature_request : device_feature_body {};
struct device_feature_reply : device_feature_body {};

// 17 MIG_DATA_READ: argsz u32@0 size u32@4; reply adds data@8. 18 MIG_DATA_WRITE: argsz,
// size, data@8; reply empty.
struct mig_data_read_request { uint32_t argsz = 8; uint32_t size = 0; };
struct mig_data_read_reply {
  uint32_t argsz = 8;
  uint32_t size = 0;
  std::vector<uint8_t> data;  ///< `size` valid bytes (+ padding with the mig_read_padding quirk)
};
struct mig_data_write_request { uint32_t argsz = 8; uint32_t size = 0; std::vector<uint8_t> data; };
struct mig_data_write_reply {};

/// An error reply: the header's ERROR flag and error_no say it all. libvfio-user echoes the
/// request's payload after the header (error_reply_payload quirk); it is kept but meaningless.
struct error_reply {
  uint16_t command = 0;
  uint32_t error_no = 0;
  std::vector<uint8_t> echoed;
};

using message = std::variant<
    version_request, version_reply, dma_map_request, dma_map_reply, dma_unmap_request,
    dma_unmap_reply, device_info_request, device_info_reply, region_info_request,
    region_info_reply, io_fds_request, io_fds_reply, irq_info_request, irq_info_reply,
    set_irqs_request, set_irqs_reply, region_read_request, region_read_reply,
    region_write_request, region_write_reply, dma_read_request, dma_read_reply,
    dma_write_request, dma_write_reply, reset_request, reset_reply, write_multi_request,
    write_multi_reply, device_feature_request, device_feature_reply, mig_data_read_request,
    mig_data_read_reply, mig_data_write_request, mig_data_write_reply, error_reply>;

/// What each message type is, stated per type rather than derived from its place in
/// `message`: a type added to the variant without its line here does not compile.
template <class T>
struct message_traits;  // (no definition)
#define VFU_MESSAGE_TRAITS(T, CMD, REPLY)              \
  template <>                                          \
  struct message_traits<T> {                           \
    static constexpr command cmd = command::CMD;       \
    static constexpr bool reply = REPLY;               \
  };
VFU_MESSAGE_TRAITS(version_request, version, false)
VFU_MESSAGE_TRAITS(version_reply, version, true)
VFU_MESSAGE_TRAITS(dma_map_request, dma_map, false)
VFU_MESSAGE_TRAITS(dma_map_reply, dma_map, true)
VFU_MESSAGE_TRAITS(dma_unmap_request, dma_unmap, false)
VFU_MESSAGE_TRAITS(dma_unmap_reply, dma_unmap, true)
VFU_MESSAGE_TRAITS(device_info_request, device_get_info, false)
VFU_MESSAGE_TRAITS(device_info_reply, device_get_info, true)
VFU_MESSAGE_TRAITS(region_info_request, device_get_region_info, false)
VFU_MESSAGE_TRAITS(region_info_reply, device_get_region_info, true)
VFU_MESSAGE_TRAITS(io_fds_request, device_get_region_io_fds, false)
VFU_MESSAGE_TRAITS(io_fds_reply, device_get_region_io_fds, true)
VFU_MESSAGE_TRAITS(irq_info_request, device_get_irq_info, false)
VFU_MESSAGE_TRAITS(irq_info_reply, device_get_irq_info, true)
VFU_MESSAGE_TRAITS(set_irqs_request, device_set_irqs, false)
VFU_MESSAGE_TRAITS(set_irqs_reply, device_set_irqs, true)
VFU_MESSAGE_TRAITS(region_read_request, region_read, false)
VFU_MESSAGE_TRAITS(region_read_reply, region_read, true)
VFU_MESSAGE_TRAITS(region_write_request, region_write, false)
VFU_MESSAGE_TRAITS(region_write_reply, region_write, true)
VFU_MESSAGE_TRAITS(dma_read_request, dma_read, false)
VFU_MESSAGE_TRAITS(dma_read_reply, dma_read, true)
VFU_MESSAGE_TRAITS(dma_write_request, dma_write, false)
VFU_MESSAGE_TRAITS(dma_write_reply, dma_write, true)
VFU_MESSAGE_TRAITS(reset_request, device_reset, false)
VFU_MESSAGE_TRAITS(reset_reply, device_reset, true)
VFU_MESSAGE_TRAITS(write_multi_request, region_write_multi, false)
VFU_MESSAGE_TRAITS(write_multi_reply, region_write_multi, true)
VFU_MESSAGE_TRAITS(device_feature_request, device_feature, false)
VFU_MESSAGE_TRAITS(device_feature_reply, device_feature, true)
VFU_MESSAGE_TRAITS(mig_data_read_request, mig_data_read, false)
VFU_MESSAGE_TRAITS(mig_data_read_reply, mig_data_read, true)
VFU_MESSAGE_TRAITS(mig_data_write_request, mig_data_write, false)
VFU_MESSAGE_TRAITS(mig_data_write_reply, mig_data_write, true)
#undef VFU_MESSAGE_TRAITS

/// The command number a typed message belongs to.
uint16_t command_of(const message& m) noexcept;
/// True for replies (including error_reply).
bool is_reply(const message& m) noexcept;
/// "REGION_READ reply" etc.
std::string message_name(const message& m);

/// Decodes a payload. `h` supplies the command, direction and error bits; `nfds` is how many
/// fds arrived with it (fd counts are part of each command's rules).
result<message> decode(const header& h, byte_view payload, size_t nfds, const quirks& q = {},
                       const decode_limits& lim = {});
inline result<message> decode(const frame& f, const quirks& q = {}, const decode_limits& lim = {}) {
  return decode(f.hdr(), f.payload(), f.fds.size(), q, lim);
}
/// decode() of a frame held in a shared_ptr: a REGION_WRITE's data is then shared with the
/// frame (shared_bytes), not copied.
result<message> decode(const std::shared_ptr<const frame>& f, const quirks& q = {}, const decode_limits& lim = {});

/// Encodes the payload of a typed message (no header).
std::vector<uint8_t> encode_payload(const message& m);

/// Builds a whole frame: header (msg_size computed; flags from the message's direction plus
/// `extra_flags`, e.g. NO_REPLY) + payload + fds. An error_reply gets REPLY|ERROR.
frame make_frame(uint16_t msg_id, const message& m, uint32_t extra_flags = 0, fd_list fds = {});

/// A header-only error reply to `request` (flags REPLY|ERROR, error_no = errnum).
frame make_error_reply(const header& request, int errnum);

}  // namespace vfu::proto
