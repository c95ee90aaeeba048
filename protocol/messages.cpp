#include "protocol/messages.hpp"

#include <cstring>

#include "protocol/limits.hpp"
#include "protocol/wire.hpp"

namespace vfu::proto {

namespace {

using wire::reader;
using wire::writer;

template <class... Ts>
struct overloaded : Ts... { using Ts::operator()...; };
template <class... Ts>
overloaded(Ts...) -> overloaded<Ts...>;

std::string ctx(uint16_t cmd, bool reply, const std::string& what) {
  std::string s = command_name(cmd);
  s += reply ? " reply: " : ": ";
  s += what;
  return s;
}

// Decoding context shared by the per-command functions below.
struct dctx {
  const header& h;
  byte_view p;
  size_t nfds;
  const quirks& q;
  const decode_limits& lim;
  std::shared_ptr<const void> owner;  ///< of the payload's bytes, when they may be shared
  bool reply() const { return h.is_reply(); }
  error fail(errc c, const std::string& what) const { return error(c, ctx(h.command, reply(), what)); }
  error short_payload(size_t need) const {
    return fail(errc::truncated, "payload " + std::to_string(p.size) + " < " + std::to_string(need));
  }
  // Each check: the test inline, its error (strings) out of line: they run for every message.
  // Exact payload size rule: one short -> truncated, one over -> trailing_bytes.
  std::optional<error> exact(size_t n) const {
    if (p.size == n) return std::nullopt;
    return not_exact(n);
  }
  std::optional<error> no_fds() const {
    if (nfds == 0) return std::nullopt;
    return unexpected_fds();
  }
  std::optional<error> max_fds(size_t n) const {
    if (nfds <= n) return std::nullopt;
    return too_many_fds(n);
  }
  std::optional<error> data_count(uint64_t count) const {
    if (count <= lim.max_data_xfer) return std::nullopt;
    return too_large(count);
  }
  [[gnu::noinline, gnu::cold]] error not_exact(size_t n) const {
    if (p.size < n) return short_payload(n);
    return fail(errc::trailing_bytes, "payload " + std::to_string(p.size) + " > " + std::to_string(n));
  }
  [[gnu::noinline, gnu::cold]] error unexpected_fds() const {
    return fail(errc::bad_fds, std::to_string(nfds) + " unexpected fds");
  }
  [[gnu::noinline, gnu::cold]] error too_many_fds(size_t n) const {
    return fail(errc::bad_fds, std::to_string(nfds) + " fds, at most " + std::to_string(n));
  }
  [[gnu::noinline, gnu::cold]] error too_large(uint64_t count) const {
    return fail(errc::too_large,
                "count " + std::to_string(count) + " > max_data_xfer_size " + std::to_string(lim.max_data_xfer));
  }
};

#define VFU_TRY(expr)                \
  do {                               \
    if (auto e_ = (expr)) return *e_; \
  } while (0)

bool is_pow2(uint64_t v) { return v && !(v & (v - 1)); }

// ---- VERSION --------------------------------------------------------------------------
template <class T>
result<message> dec_version(const dctx& c) {
  if (c.p.size < 4) return c.short_payload(4);
  VFU_TRY(c.max_fds(c.reply() ? 1 : 0));  // the reply may hand over the twin socket
  T v;
  reader r(c.p);
  r.get(v.major);
  r.get(v.minor);
  if (c.p.size > 4) {
    size_t n = c.p.size - 4;
    if (n - 1 > limits::max_caps_json)
      return c.fail(errc::too_large, "capabilities JSON " + std::to_string(n - 1) + " > " +
                                         std::to_string(limits::max_caps_json));
    const char* s = reinterpret_cast<const char*>(c.p.data + 4);
    if (s[n - 1] != '\0') return c.fail(errc::bad_json, "capabilities JSON not NUL-terminated");
    size_t len = strnlen(s, n);
    if (len != n - 1) return c.fail(errc::bad_json, "NUL inside capabilities JSON");
    v.caps_json = std::string(s, len);
  }
  return message{std::move(v)};
}

// ---- DMA_MAP / DMA_UNMAP --------------------------------------------------------------
result<message> dec_dma_map(const dctx& c) {
  if (c.reply()) {
    VFU_TRY(c.exact(0));
    VFU_TRY(c.no_fds());
    return message{dma_map_reply{}};
  }
  VFU_TRY(c.exact(32));
  VFU_TRY(c.max_fds(1));
  dma_map_request m;
  reader r(c.p);
  r.get(m.argsz); r.get(m.flags); r.get(m.offset); r.get(m.addr); r.get(m.size);
  if (m.argsz != 32) return c.fail(errc::bad_argsz, "argsz " + std::to_string(m.argsz) + " != 32");
  if (m.flags & ~dma_flags::map_known) return c.fail(errc::bad_flags, "unknown flags");
  if (m.size == 0) return c.fail(errc::bad_value, "size 0");
  uint64_t end;
  if (wire::add_overflows(m.addr, m.size, end) || wire::add_overflows(m.offset, m.size, end))
    return c.fail(errc::overflow, "addr/offset + size wraps");
  if (m.size > limits::max_dma_window) return c.fail(errc::too_large, "window larger than 8 TiB");
  return message{m};
}

std::optional<error> dec_bitmap_head(const dctx& c, reader& r, dirty_bitmap_head& b) {
  r.get(b.pgsize);
  r.get(b.size);
  if (!is_pow2(b.pgsize)) return c.fail(errc::bad_value, "bitmap pgsize not a power of two");
  if (b.size > limits::max_dirty_bitmap || b.size > c.lim.max_data_xfer)
    return c.fail(errc::too_large, "bitmap size " + std::to_string(b.size));
  return std::nullopt;
}

template <class T>
result<message> dec_dma_unmap(const dctx& c) {
  if (c.p.size < 24) return c.short_payload(24);
  VFU_TRY(c.no_fds());
  T m;
  reader r(c.p);
  r.get(m.argsz); r.get(m.flags); r.get(m.addr); r.get(m.size);
  if (m.argsz < 24) return c.fail(errc::bad_argsz, "argsz " + std::to_string(m.argsz) + " < 24");
  if (m.flags & ~(dma_flags::unmap_all | dma_flags::unmap_get_dirty_bitmap))
    return c.fail(errc::bad_flags, "unknown flags");
  bool all = m.flags & dma_flags::unmap_all;
  bool bitmap = m.flags & dma_flags::unmap_get_dirty_bitmap;
  if (all && bitmap) return c.fail(errc::bad_flags, "ALL with GET_DIRTY_BITMAP");
  if (all && (m.addr != 0 || m.size != 0)) return c.fail(errc::bad_value, "unmap-all needs addr=size=0");
  uint64_t end;
  if (wire::add_overflows(m.addr, m.size, end)) return c.fail(errc::overflow, "addr + size wraps");
  if (!bitmap) {
    VFU_TRY(c.exact(24));
    return message{std::move(m)};
  }
  if (c.p.size < 40) return c.short_payload(40);
  dirty_bitmap_head b;
  VFU_TRY(dec_bitmap_head(c, r, b));
  m.bitmap = b;
  if constexpr (std::is_same_v<T, dma_unmap_reply>) {
    VFU_TRY(c.exact(40 + b.size));
    r.bytes(b.size, m.bitmap_data);
  } else {
    VFU_TRY(c.exact(40));
    if (m.argsz < 40 + b.size) return c.fail(errc::bad_argsz, "argsz too small for the bitmap");
  }
  return message{std::move(m)};
}

// ---- DEVICE_GET_INFO / GET_IRQ_INFO: four u32 ---------------------------------------------
template <class T>
result<message> dec_four_u32(const dctx& c, uint32_t min_argsz) {
  VFU_TRY(c.exact(16));
  VFU_TRY(c.no_fds());
  T m;
  reader r(c.p);
  uint32_t* f[4];
  if constexpr (std::is_base_of_v<device_info_body, T>) {
    f[0] = &m.argsz; f[1] = &m.flags; f[2] = &m.num_regions; f[3] = &m.num_irqs;
  } else {
    f[0] = &m.argsz; f[1] = &m.flags; f[2] = &m.index; f[3] = &m.count;
  }
  for (auto* x : f) r.get(*x);
  if (m.argsz < min_argsz) return c.fail(errc::bad_argsz, "argsz " + std::to_string(m.argsz) + " < 16");
  if constexpr (std::is_same_v<T, device_info_reply>) {
    if (m.num_regions > limits::max_regions) return c.fail(errc::too_large, "num_regions " + std::to_string(m.num_regions));
    if (m.num_irqs > limits::max_irq_types) return c.fail(errc::too_large, "num_irqs " + std::to_string(m.num_irqs));
    if (m.flags & ~(device_info_flags::reset | device_info_flags::pci))
      return c.fail(errc::bad_flags, "unknown device flags");
  }
  if constexpr (std::is_same_v<T, irq_info_reply>) {
    if (m.count > limits::max_irq_vectors) return c.fail(errc::too_large, "irq count " + std::to_string(m.count));
    if (m.flags & ~0xfu) return c.fail(errc::bad_flags, "unknown irq flags");
  }
  return message{m};
}

// ---- DEVICE_GET_REGION_INFO ------------------------------------------------------------
void read_region_info(reader& r, region_info_body& m) {
  r.get(m.argsz); r.get(m.flags); r.get(m.index); r.get(m.cap_offset); r.get(m.size); r.get(m.offset);
}

result<message> dec_region_info(const dctx& c) {
  if (!c.reply()) {
    if (c.p.size < 32) return c.short_payload(32);
    VFU_TRY(c.no_fds());
    region_info_request m;
    reader r(c.p);
    read_region_info(r, m);
    if (m.argsz < 32) return c.fail(errc::bad_argsz, "argsz " + std::to_string(m.argsz) + " < 32");
    if (c.p.size > m.argsz || c.p.size > limits::max_region_info_argsz)
      return c.fail(errc::trailing_bytes, "request larger than its argsz");
    r.bytes(c.p.size - 32, m.pad);
    return message{std::move(m)};
  }
  if (c.p.size < 32) return c.short_payload(32);
  if (c.p.size > limits::max_region_info_argsz) return c.fail(errc::too_large, "reply larger than 16 KiB");
  VFU_TRY(c.max_fds(1));
  region_info_reply m;
  reader r(c.p);
  read_region_info(r, m);
  if (m.argsz < 32) return c.fail(errc::bad_argsz, "argsz " + std::to_string(m.argsz) + " < 32");
  if (m.flags & ~region_flags::known) return c.fail(errc::bad_flags, "unknown region flags");
  uint64_t end;
  if (wire::add_overflows(m.offset, m.size, end)) return c.fail(errc::overflow, "offset + size wraps");
  bool has_caps = (m.flags & region_flags::caps) && c.p.size > 32;
  if (!has_caps) {
    if (c.p.size > 32) return c.fail(errc::trailing_bytes, "bytes after the struct without CAPS");
    return message{std::move(m)};
  }
  // Walk the chain. Offsets must strictly increase (loop guard), every cap must lie inside
  // the payload, and the payload must end where the last cap ends.
  const size_t n = c.p.size;
  uint64_t off = m.cap_offset;
  uint64_t min_off = 32;
  size_t last_end = 32;
  for (uint32_t i = 0; off != 0; ++i) {
    if (i >= limits::max_region_caps) return c.fail(errc::bad_cap_chain, "more than 16 capabilities");
    if (off < min_off || off + 8 > n)
      return c.fail(errc::bad_cap_chain, "capability offset " + std::to_string(off) + " out of bounds");
    region_cap cap;
    reader cr(byte_view{c.p.data + off, n - off});
    uint32_t next = 0;
    cr.get(cap.id); cr.get(cap.version); cr.get(next);
    cap.offset = uint32_t(off);
    uint64_t body_end;
    if (cap.id == region_cap_id::sparse_mmap) {
      uint32_t nr = 0;
      if (!cr.get(nr) || !cr.get(cap.sparse_reserved)) return c.fail(errc::bad_cap_chain, "sparse cap truncated");
      if (nr > limits::max_sparse_areas) return c.fail(errc::too_large, "nr_areas " + std::to_string(nr));
      if (cr.remaining() < uint64_t(nr) * 16) return c.fail(errc::bad_cap_chain, "sparse areas past the end");
      cap.areas.resize(nr);
      for (auto& a : cap.areas) {
        cr.get(a.offset); cr.get(a.size);
        uint64_t e;
        if (wire::add_overflows(a.offset, a.size, e)) return c.fail(errc::overflow, "sparse area wraps");
        if (e > m.size) return c.fail(errc::bad_value, "sparse area beyond the region");
      }
      body_end = off + cr.offset();
    } else if (cap.id == region_cap_id::type) {
      if (!cr.get(cap.type) || !cr.get(cap.subtype)) return c.fail(errc::bad_cap_chain, "type cap truncated");
      body_end = off + cr.offset();
    } else {
      uint64_t stop = next ? next : n;
      if (stop < off + 8 || stop > n) return c.fail(errc::bad_cap_chain, "capability next out of bounds");
      cr.bytes(stop - off - 8, cap.raw);
      body_end = stop;
    }
    if (next != 0 && next < body_end) return c.fail(errc::bad_cap_chain, "capability next overlaps or loops");
    min_off = body_end;
    last_end = body_end;
    m.caps.push_back(std::move(cap));
    off = next;
  }
  if (last_end != n) return c.fail(errc::trailing_bytes, "bytes after the capability chain");
  return message{std::move(m)};
}

// ---- DEVICE_GET_REGION_IO_FDS ------------------------------------------------------------
result<message> dec_io_fds(const dctx& c) {
  if (c.p.size < 16) return c.short_payload(16);
  if (!c.reply()) {
    VFU_TRY(c.exact(16));
    VFU_TRY(c.no_fds());
    io_fds_request m;
    reader r(c.p);
    r.get(m.argsz); r.get(m.flags); r.get(m.index); r.get(m.count);
    if (m.argsz < 16) return c.fail(errc::bad_argsz, "argsz < 16");
    if (m.flags != 0) return c.fail(errc::bad_flags, "flags must be 0");
    return message{m};
  }
  io_fds_reply m;
  reader r(c.p);
  r.get(m.argsz); r.get(m.flags); r.get(m.index); r.get(m.count);
  if (m.argsz < 16) return c.fail(errc::bad_argsz, "argsz < 16");
  if (m.count > limits::max_io_fd_entries) return c.fail(errc::too_large, "count " + std::to_string(m.count));
  size_t body = c.p.size - 16;
  if (body == 0) {  // argsz was too small: head only, and no fds
    VFU_TRY(c.no_fds());
    return message{std::move(m)};
  }
  if (m.count == 0) return c.fail(errc::trailing_bytes, "entries with count 0");
  if (body == size_t(m.count) * 40) m.entry_size = 40;
  else if (body == size_t(m.count) * 48) m.entry_size = 48;
  else return c.fail(errc::bad_argsz, "entry bytes " + std::to_string(body) + " not count x 40 or 48");
  // libvfio-user's shadow ioeventfd entries (type 2) reference a second fd
  // (shadow_mem_fd_index), so a 48-byte-entry reply may carry up to 2 fds per entry.
  VFU_TRY(c.max_fds(size_t(m.count) * (m.entry_size == 48 ? 2 : 1)));
  m.entries.resize(m.count);
  for (auto& e : m.entries) {
    r.get(e.offset); r.get(e.size); r.get(e.fd_index); r.get(e.type); r.get(e.flags);
    r.get(e.word28); r.get(e.qword32);
    if (m.entry_size == 48) r.get(e.qword40);
    if (e.fd_index >= c.nfds) return c.fail(errc::bad_fds, "fd_index " + std::to_string(e.fd_index) + " without an fd");
    if (e.type > 2) return c.fail(errc::bad_value, "io fd type " + std::to_string(e.type));
    if (e.type == 2 && m.entry_size == 48 && e.word28 >= c.nfds)
      return c.fail(errc::bad_fds, "shadow_mem_fd_index " + std::to_string(e.word28) + " without an fd");
    uint64_t x;
    if (wire::add_overflows(e.offset, e.size, x)) return c.fail(errc::overflow, "io fd range wraps");
  }
  return message{std::move(m)};
}

// ---- DEVICE_SET_IRQS -----------------------------------------------------------------
result<message> dec_set_irqs(const dctx& c) {
  if (c.reply()) {
    VFU_TRY(c.exact(0));
    VFU_TRY(c.no_fds());
    return message{set_irqs_reply{}};
  }
  if (c.p.size < 20) return c.short_payload(20);
  set_irqs_request m;
  reader r(c.p);
  r.get(m.argsz); r.get(m.flags); r.get(m.index); r.get(m.start); r.get(m.count);
  if (m.argsz < 20) return c.fail(errc::bad_argsz, "argsz " + std::to_string(m.argsz) + " < 20");
  using namespace irq_set_flags;
  if (m.flags & ~(data_mask | action_mask_all)) return c.fail(errc::bad_flags, "unknown flags");
  if (__builtin_popcount(m.flags & data_mask) != 1) return c.fail(errc::bad_flags, "not exactly one DATA_ flag");
  if (__builtin_popcount(m.flags & action_mask_all) != 1) return c.fail(errc::bad_flags, "not exactly one ACTION_ flag");
  if (m.count > limits::max_irq_vectors) return c.fail(errc::too_large, "count " + std::to_string(m.count));
  uint32_t e;
  if (__builtin_add_overflow(m.start, m.count, &e)) return c.fail(errc::overflow, "start + count wraps");
  if (m.flags & data_bool) {
    VFU_TRY(c.exact(20 + size_t(m.count)));
    r.bytes(m.count, m.bools);
  } else {
    VFU_TRY(c.exact(20));
  }
  if (m.flags & data_eventfd) {
    if (c.nfds != 0 && c.nfds != m.count)
      return c.fail(errc::bad_fds, std::to_string(c.nfds) + " fds for count " + std::to_string(m.count));
  } else {
    VFU_TRY(c.no_fds());
  }
  return message{std::move(m)};
}

// ---- REGION_READ / REGION_WRITE --------------------------------------------------------
void read_access(reader& r, region_access& a) { r.get(a.offset); r.get(a.region); r.get(a.count); }
void write_access(writer& w, const region_access& a) { w.put(a.offset); w.put(a.region); w.put(a.count); }

result<message> dec_region_rw(const dctx& c, bool write) {
  if (c.p.size < 16) return c.short_payload(16);
  VFU_TRY(c.no_fds());
  region_access a;
  reader r(c.p);
  read_access(r, a);
  VFU_TRY(c.data_count(a.count));
  uint64_t end;
  if (wire::add_overflows(a.offset, a.count, end)) return c.fail(errc::overflow, "offset + count wraps");
  bool has_data = write != c.reply();  // write request or read reply
  VFU_TRY(c.exact(16 + (has_data ? size_t(a.count) : 0)));
  if (!write && !c.reply()) return message{region_read_request{a}};
  if (write && c.reply()) return message{region_write_reply{a}};
  if (!write) {
    region_read_reply m{a, {}};
    r.bytes(a.count, m.data);
    return message{std::move(m)};
  }
  region_write_request m{a, {}};
  if (c.owner) m.data = shared_bytes(c.owner, r.here(), a.count);
  else r.bytes(a.count, m.data.own());
  return message{std::move(m)};
}

// ---- DMA_READ / DMA_WRITE ------------------------------------------------------------
result<message> dec_dma_rw(const dctx& c, bool write) {
  VFU_TRY(c.no_fds());
  bool has_data = write != c.reply();  // DMA_WRITE request or DMA_READ reply
  if (write && c.reply() && c.p.size == 0 && c.q.qemu_dma_layout)
    return message{dma_write_reply{{0, 0, dma_layout::empty}}};
  if (c.p.size < (c.q.qemu_dma_layout && has_data ? 12 : 16)) return c.short_payload(16);
  dma_access a;
  reader r(c.p);
  r.get(a.addr);
  uint64_t count64 = 0;
  std::memcpy(&count64, c.p.data + 8, c.p.size >= 16 ? 8 : 4);
  a.count = count64;
  size_t data_at = 16;
  if (has_data) {
    auto qemu_fits = [&] {
      uint32_t count32;
      std::memcpy(&count32, c.p.data + 8, 4);
      // QEMU's unpacked struct: data@12, then 4 bytes of tail padding.
      if (count32 > c.lim.max_data_xfer || c.p.size != 12 + size_t(count32) + 4) return false;
      a.count = count32;
      a.layout = dma_layout::qemu;
      data_at = 12;
      return true;
    };
    // A QEMU DMA_READ reply whose first 4 data bytes are zero also reads as a valid spec frame
    // (count u64 == count u32) with the data shifted by 4. QEMU always sends that reply with
    // data@12, so with the quirk its layout is tried first. Other DMA data messages (the
    // DMA_WRITE requests a spec server sends) keep the spec reading first.
    bool qemu_first = c.q.qemu_dma_layout && !write && c.reply();
    bool spec_ok = qemu_first && qemu_fits();
    if (!spec_ok) spec_ok = c.p.size >= 16 && count64 <= c.lim.max_data_xfer && c.p.size == 16 + count64;
    if (!spec_ok && c.q.qemu_dma_layout && !qemu_first) spec_ok = qemu_fits();
    if (!spec_ok) {
      VFU_TRY(c.data_count(count64));
      VFU_TRY(c.exact(16 + count64));
    }
  } else {
    VFU_TRY(c.exact(16));
    VFU_TRY(c.data_count(a.count));
  }
  uint64_t end;
  if (wire::add_overflows(a.addr, a.count, end)) return c.fail(errc::overflow, "address + count wraps");
  std::vector<uint8_t> data;
  if (has_data) data.assign(c.p.data + data_at, c.p.data + data_at + a.count);
  if (!write && !c.reply()) return message{dma_read_request{a}};
  if (!write) return message{dma_read_reply{a, std::move(data)}};
  if (!c.reply()) return message{dma_write_request{a, std::move(data)}};
  return message{dma_write_reply{a}};
}

// ---- REGION_WRITE_MULTI ----------------------------------------------------------------
result<message> dec_write_multi(const dctx& c) {
  VFU_TRY(c.no_fds());
  if (c.p.size < 8) return c.short_payload(8);
  uint64_t cnt = 0;
  reader r(c.p);
  r.get(cnt);
  if (c.reply()) {
    VFU_TRY(c.exact(8));
    return message{write_multi_reply{cnt}};
  }
  if (cnt == 0) return c.fail(errc::bad_value, "wr_cnt 0");
  if (cnt > limits::max_write_multi_entries) return c.fail(errc::too_large, "wr_cnt " + std::to_string(cnt));
  VFU_TRY(c.exact(8 + cnt * 24));
  write_multi_request m;
  m.writes.resize(cnt);
  for (auto& w : m.writes) {
    r.get(w.offset); r.get(w.region); r.get(w.count);
    for (auto& b : w.data) r.get(b);
    if (w.count == 0 || w.count > limits::write_multi_data)
      return c.fail(errc::bad_value, "entry count " + std::to_string(w.count));
    uint64_t e;
    if (wire::add_overflows(w.offset, w.count, e)) return c.fail(errc::overflow, "entry offset wraps");
  }
  return message{std::move(m)};
}

// ---- DEVICE_FEATURE ----------------------------------------------------------------------
uint64_t report_bitmap_bytes(uint64_t length, uint64_t page_size) {
  uint64_t pages = length / page_size + (length % page_size != 0);
  return (pages / 64 + (pages % 64 != 0)) * 8;  // (pages + 63) / 64 wraps for huge lengths
}

template <class T>
result<message> dec_feature(const dctx& c) {
  if (c.p.size < 8) return c.short_payload(8);
  VFU_TRY(c.no_fds());
  T m;
  reader r(c.p);
  r.get(m.argsz); r.get(m.flags);
  using namespace feature_flags;
  if (m.argsz < 8) return c.fail(errc::bad_argsz, "argsz < 8");
  if (m.flags & ~(index_mask | get | set | probe)) return c.fail(errc::bad_flags, "unknown flags");
  bool g = m.flags & get, s = m.flags & set, pr = m.flags & probe;
  if (!g && !s && !pr) return c.fail(errc::bad_flags, "none of GET, SET, PROBE");
  if (g && s && !pr) return c.fail(errc::bad_flags, "GET and SET without PROBE");
  size_t n = r.remaining();
  uint32_t idx = m.index();
  if (idx != feature::migration && idx != feature::mig_device_state && idx != feature::dma_logging_start &&
      idx != feature::dma_logging_stop && idx != feature::dma_logging_report)
    return c.fail(errc::unsupported, "feature " + std::to_string(idx));
  if (n == 0) return message{std::move(m)};
  switch (idx) {
    case feature::migration: {
      VFU_TRY(c.exact(16));
      feature_migration f;
      r.get(f.flags);
      m.data = f;
      break;
    }
    case feature::mig_device_state: {
      VFU_TRY(c.exact(16));
      feature_device_state f;
      r.get(f.device_state); r.get(f.data_fd);
      if (f.device_state > uint32_t(mig_state::pre_copy_p2p))
        return c.fail(errc::bad_value, "device_state " + std::to_string(f.device_state));
      m.data = f;
      break;
    }
    case feature::dma_logging_start:
    case feature::dma_logging_stop: {
      if (n < 16) return c.short_payload(24);
      feature_logging_ctl f;
      uint32_t nr = 0;
      r.get(f.page_size); r.get(nr); r.get(f.reserved);
      if (nr > limits::max_dma_logging_ranges) return c.fail(errc::too_large, "num_ranges " + std::to_string(nr));
      VFU_TRY(c.exact(24 + size_t(nr) * 16));
      f.ranges.resize(nr);
      for (auto& x : f.ranges) {
        r.get(x.iova); r.get(x.length);
        uint64_t e;
        if (wire::add_overflows(x.iova, x.length, e)) return c.fail(errc::overflow, "range wraps");
      }
      m.data = std::move(f);
      break;
    }
    case feature::dma_logging_report: {
      if (n < 24) return c.short_payload(32);
      feature_logging_report f;
      r.get(f.iova); r.get(f.length); r.get(f.page_size);
      if (!is_pow2(f.page_size)) return c.fail(errc::bad_value, "page_size not a power of two");
      uint64_t e;
      if (wire::add_overflows(f.iova, f.length, e)) return c.fail(errc::overflow, "iova + length wraps");
      uint64_t bm = report_bitmap_bytes(f.length, f.page_size);
      if (bm > limits::max_dirty_bitmap || bm > c.lim.max_data_xfer)
        return c.fail(errc::too_large, "dirty bitmap of " + std::to_string(bm) + " bytes");
      if (c.reply() && g) {
        VFU_TRY(c.exact(32 + bm));
        r.bytes(bm, f.bitmap);
      } else {
        VFU_TRY(c.exact(32));
      }
      m.data = std::move(f);
      break;
    }
  }
  return message{std::move(m)};
}

// ---- MIG_DATA_READ / MIG_DATA_WRITE ----------------------------------------------------
result<message> dec_mig_data(const dctx& c, bool write) {
  VFU_TRY(c.no_fds());
  if (write && c.reply()) {
    VFU_TRY(c.exact(0));
    return message{mig_data_write_reply{}};
  }
  if (c.p.size < 8) return c.short_payload(8);
  uint32_t argsz = 0, size = 0;
  reader r(c.p);
  r.get(argsz); r.get(size);
  if (argsz < 8) return c.fail(errc::bad_argsz, "argsz < 8");
  VFU_TRY(c.data_count(size));
  bool has_data = write || c.reply();
  if (!write && c.reply() && c.q.mig_read_padding && c.p.size > 8 + size_t(size)) {
    VFU_TRY(c.data_count(c.p.size - 8));  // padded to the requested length
  } else {
    VFU_TRY(c.exact(8 + (has_data ? size_t(size) : 0)));
  }
  if (!write && !c.reply()) return message{mig_data_read_request{argsz, size}};
  std::vector<uint8_t> data;
  r.bytes(r.remaining(), data);
  if (!write) return message{mig_data_read_reply{argsz, size, std::move(data)}};
  return message{mig_data_write_request{argsz, size, std::move(data)}};
}

}  // namespace

// ======================================================================================
namespace {
result<message> decode_in(const dctx& c);
}  // namespace

result<message> decode(const std::shared_ptr<const frame>& f, const quirks& q, const decode_limits& lim) {
  return decode_in(dctx{f->hdr(), f->payload(), f->fds.size(), q, lim, f});
}

result<message> decode(const header& h, byte_view p, size_t nfds, const quirks& q, const decode_limits& lim) {
  return decode_in(dctx{h, p, nfds, q, lim, nullptr});
}

namespace {
result<message> decode_in(const dctx& c) {
  const header& h = c.h;
  byte_view p = c.p;
  const quirks& q = c.q;
  if (h.msg_size != p.size + header_size)
    return error(errc::bad_header, "msg_size " + std::to_string(h.msg_size) + " != frame length");
  uint32_t type = h.flags & hflags::type_mask;
  if (type != hflags::type_command && type != hflags::type_reply)
    return error(errc::bad_header, "message type " + std::to_string(type));
  if (h.flags & ~hflags::known_mask) return c.fail(errc::bad_flags, "reserved header flag bits set");
  // An error reply is valid for any command number (ENOSYS answers unknown ones).
  if (h.is_reply() && h.is_error() && !is_known_command(h.command)) {
    if (h.no_reply()) return c.fail(errc::bad_flags, "NO_REPLY flag on a reply");
    if (p.size != 0 && !q.error_reply_payload) return c.fail(errc::trailing_bytes, "payload on an error reply");
    if (auto e = c.no_fds()) return *e;
    error_reply m{h.command, h.error_no, {}};
    m.echoed.assign(p.begin(), p.end());
    return message{std::move(m)};
  }
  if (!is_known_command(h.command)) return error(errc::unknown_command, command_name(h.command));
  if (h.is_command()) {
    if (h.is_error()) return c.fail(errc::bad_flags, "ERROR flag on a command");
    if (h.error_no != 0) return c.fail(errc::bad_value, "error_no set on a command");
  } else {
    if (h.no_reply()) return c.fail(errc::bad_flags, "NO_REPLY flag on a reply");
    if (h.is_error()) {
      if (p.size != 0 && !q.error_reply_payload) return c.fail(errc::trailing_bytes, "payload on an error reply");
      if (auto e = c.no_fds()) return *e;
      error_reply m{h.command, h.error_no, {}};
      m.echoed.assign(p.begin(), p.end());
      return message{std::move(m)};
    }
    if (h.error_no != 0) return c.fail(errc::bad_value, "error_no without ERROR flag");
  }
  bool rep = h.is_reply();
  switch (command(h.command)) {
    case command::version: return rep ? dec_version<version_reply>(c) : dec_version<version_request>(c);
    case command::dma_map: return dec_dma_map(c);
    case command::dma_unmap: return rep ? dec_dma_unmap<dma_unmap_reply>(c) : dec_dma_unmap<dma_unmap_request>(c);
    case command::device_get_info:
      return rep ? dec_four_u32<device_info_reply>(c, 16) : dec_four_u32<device_info_request>(c, 16);
    case command::device_get_region_info: return dec_region_info(c);
    case command::device_get_region_io_fds: return dec_io_fds(c);
    case command::device_get_irq_info:
      return rep ? dec_four_u32<irq_info_reply>(c, 16) : dec_four_u32<irq_info_request>(c, 16);
    case command::device_set_irqs: return dec_set_irqs(c);
    case command::region_read: return dec_region_rw(c, false);
    case command::region_write: return dec_region_rw(c, true);
    case command::dma_read: return dec_dma_rw(c, false);
    case command::dma_write: return dec_dma_rw(c, true);
    case command::device_reset: {
      if (auto e = c.exact(0)) return *e;
      if (auto e = c.no_fds()) return *e;
      return rep ? message{reset_reply{}} : message{reset_request{}};
    }
    case command::region_write_multi: return dec_write_multi(c);
    case command::device_feature:
      return rep ? dec_feature<device_feature_reply>(c) : dec_feature<device_feature_request>(c);
    case command::mig_data_read: return dec_mig_data(c, false);
    case command::mig_data_write: return dec_mig_data(c, true);
  }
  return error(errc::unknown_command, command_name(h.command));
}
}  // namespace

// ======================================================================================
namespace {

void enc_region_info(writer& w, const region_info_body& m, uint32_t cap_offset) {
  w.put(m.argsz); w.put(m.flags); w.put(m.index); w.put(cap_offset); w.put(m.size); w.put(m.offset);
}

void enc_caps(writer& w, const region_info_reply& m) {
  // Lay out each cap at its recorded offset (or right after the previous), then patch
  // the `next` words. Offsets are relative to the start of the 32-byte struct.
  auto& buf = w.buffer();
  size_t base = buf.size() - 32;
  size_t prev_next_at = 0;
  bool first = true;
  for (auto& cap : m.caps) {
    size_t at = buf.size() - base;
    if (cap.offset > at) {
      w.zeros(cap.offset - at);
      at = cap.offset;
    }
    if (first) {
      uint32_t off32 = uint32_t(at);
      std::memcpy(buf.data() + base + 12, &off32, 4);
      first = false;
    } else {
      uint32_t off32 = uint32_t(at);
      std::memcpy(buf.data() + prev_next_at, &off32, 4);
    }
    w.put(cap.id); w.put(cap.version);
    prev_next_at = buf.size();
    w.put(uint32_t(0));
    if (cap.id == region_cap_id::sparse_mmap) {
      w.put(uint32_t(cap.areas.size()));
      w.put(cap.sparse_reserved);
      for (auto& a : cap.areas) { w.put(a.offset); w.put(a.size); }
    } else if (cap.id == region_cap_id::type) {
      w.put(cap.type); w.put(cap.subtype);
    } else {
      w.bytes(cap.raw);
    }
  }
}

void enc_feature(writer& w, const device_feature_body& m) {
  w.put(m.argsz); w.put(m.flags);
  std::visit(overloaded{
      [](const std::monostate&) {},
      [&](const feature_migration& f) { w.put(f.flags); },
      [&](const feature_device_state& f) { w.put(f.device_state); w.put(f.data_fd); },
      [&](const feature_logging_ctl& f) {
        w.put(f.page_size); w.put(uint32_t(f.ranges.size())); w.put(f.reserved);
        for (auto& r : f.ranges) { w.put(r.iova); w.put(r.length); }
      },
      [&](const feature_logging_report& f) {
        w.put(f.iova); w.put(f.length); w.put(f.page_size); w.bytes(f.bitmap);
      }}, m.data);
}

void enc_dma(writer& w, const dma_access& a, const std::vector<uint8_t>* data) {
  if (a.layout == dma_layout::empty) return;
  w.put(a.addr);
  if (a.layout == dma_layout::qemu && data) {
    w.put(uint32_t(a.count));
    w.bytes(*data);
    w.zeros(4);
    return;
  }
  w.put(a.count);
  if (data) w.bytes(*data);
}

}  // namespace

namespace {
// Appends msg's payload to `out` (a frame's bytes after its header, or an empty vector).
void encode_into(const message& msg, frame_bytes& out) {
  writer w(out);
  auto four = [&](uint32_t a, uint32_t b, uint32_t c2, uint32_t d) { w.put(a); w.put(b); w.put(c2); w.put(d); };
  std::visit(overloaded{
      [&](const version_request& m) { w.put(m.major); w.put(m.minor); if (m.caps_json) { w.bytes(reinterpret_cast<const uint8_t*>(m.caps_json->data()), m.caps_json->size()); w.put(uint8_t(0)); } },
      [&](const version_reply& m) { w.put(m.major); w.put(m.minor); if (m.caps_json) { w.bytes(reinterpret_cast<const uint8_t*>(m.caps_json->data()), m.caps_json->size()); w.put(uint8_t(0)); } },
      [&](const dma_map_request& m) { w.put(m.argsz); w.put(m.flags); w.put(m.offset); w.put(m.addr); w.put(m.size); },
      [&](const dma_map_reply&) {},
      [&](const dma_unmap_request& m) {
        w.put(m.argsz); w.put(m.flags); w.put(m.addr); w.put(m.size);
        if (m.bitmap) { w.put(m.bitmap->pgsize); w.put(m.bitmap->size); }
      },
      [&](const dma_unmap_reply& m) {
        w.put(m.argsz); w.put(m.flags); w.put(m.addr); w.put(m.size);
        if (m.bitmap) { w.put(m.bitmap->pgsize); w.put(m.bitmap->size); w.bytes(m.bitmap_data); }
      },
      [&](const device_info_request& m) { four(m.argsz, m.flags, m.num_regions, m.num_irqs); },
      [&](const device_info_reply& m) { four(m.argsz, m.flags, m.num_regions, m.num_irqs); },
      [&](const region_info_request& m) { enc_region_info(w, m, m.cap_offset); w.bytes(m.pad); },
      [&](const region_info_reply& m) { enc_region_info(w, m, m.cap_offset); enc_caps(w, m); },
      [&](const io_fds_request& m) { four(m.argsz, m.flags, m.index, m.count); },
      [&](const io_fds_reply& m) {
        four(m.argsz, m.flags, m.index, m.count);
        for (auto& e : m.entries) {
          w.put(e.offset); w.put(e.size); w.put(e.fd_index); w.put(e.type); w.put(e.flags);
          w.put(e.word28); w.put(e.qword32);
          if (m.entry_size == 48) w.put(e.qword40);
        }
      },
      [&](const irq_info_request& m) { four(m.argsz, m.flags, m.index, m.count); },
      [&](const irq_info_reply& m) { four(m.argsz, m.flags, m.index, m.count); },
      [&](const set_irqs_request& m) {
        w.put(m.argsz); w.put(m.flags); w.put(m.index); w.put(m.start); w.put(m.count); w.bytes(m.bools);
      },
      [&](const set_irqs_reply&) {},
      [&](const region_read_request& m) { write_access(w, m); },
      [&](const region_read_reply& m) { write_access(w, m); w.bytes(m.data); },
      [&](const region_write_request& m) {
        write_access(w, m);
        w.bytes(m.data.data(), m.data.size());
      },
      [&](const region_write_reply& m) { write_access(w, m); },
      [&](const dma_read_request& m) { enc_dma(w, m, nullptr); },
      [&](const dma_read_reply& m) { enc_dma(w, m, &m.data); },
      [&](const dma_write_request& m) { enc_dma(w, m, &m.data); },
      [&](const dma_write_reply& m) { enc_dma(w, m, nullptr); },
      [&](const reset_request&) {},
      [&](const reset_reply&) {},
      [&](const write_multi_request& m) {
        w.put(uint64_t(m.writes.size()));
        for (auto& e : m.writes) { w.put(e.offset); w.put(e.region); w.put(e.count); w.bytes(e.data.data(), 8); }
      },
      [&](const write_multi_reply& m) { w.put(m.wr_cnt); },
      [&](const device_feature_request& m) { enc_feature(w, m); },
      [&](const device_feature_reply& m) { enc_feature(w, m); },
      [&](const mig_data_read_request& m) { w.put(m.argsz); w.put(m.size); },
      [&](const mig_data_read_reply& m) { w.put(m.argsz); w.put(m.size); w.bytes(m.data); },
      [&](const mig_data_write_request& m) { w.put(m.argsz); w.put(m.size); w.bytes(m.data); },
      [&](const mig_data_write_reply&) {},
      [&](const error_reply& m) { w.bytes(m.echoed); },
  }, msg);
}
}  // namespace

std::vector<uint8_t> encode_payload(const message& msg) {
  frame_bytes out;
  encode_into(msg, out);
  return std::vector<uint8_t>(out.begin(), out.end());
}

uint16_t command_of(const message& m) noexcept {
  return std::visit(
      [](const auto& x) -> uint16_t {
        using T = std::decay_t<decltype(x)>;
        if constexpr (std::is_same_v<T, error_reply>) return x.command;
        else return uint16_t(message_traits<T>::cmd);
      },
      m);
}

bool is_reply(const message& m) noexcept {
  return std::visit(
      [](const auto& x) {
        using T = std::decay_t<decltype(x)>;
        if constexpr (std::is_same_v<T, error_reply>) return true;
        else return message_traits<T>::reply;
      },
      m);
}

std::string message_name(const message& m) {
  std::string s = command_name(command_of(m));
  if (std::holds_alternative<error_reply>(m)) return s + " error reply";
  return s + (is_reply(m) ? " reply" : " request");
}

frame make_frame(uint16_t msg_id, const message& m, uint32_t extra_flags, fd_list fds) {
  frame f;
  f.bytes.resize(header_size);
  encode_into(m, f.bytes);  // in place: a 1 MiB payload is copied once
  header h;
  h.msg_id = msg_id;
  h.command = command_of(m);
  h.msg_size = uint32_t(f.bytes.size());
  h.flags = (is_reply(m) ? hflags::type_reply : hflags::type_command) | extra_flags;
  if (auto* e = std::get_if<error_reply>(&m)) {
    h.flags |= hflags::error;
    h.error_no = e->error_no;
  }
  f.set_hdr(h);
  f.fds = std::move(fds);
  return f;
}

frame make_error_reply(const header& request, int errnum) {
  frame f;
  f.bytes.resize(header_size);
  header h;
  h.msg_id = request.msg_id;
  h.command = request.command;
  h.msg_size = header_size;
  h.flags = hflags::type_reply | hflags::error;
  h.error_no = uint32_t(errnum > 0 ? errnum : EINVAL);
  f.set_hdr(h);
  return f;
}

const region_cap* region_info_reply::sparse() const {
  for (auto& c : caps)
    if (c.id == region_cap_id::sparse_mmap) return &c;
  return nullptr;
}

const char* to_string(mig_state s) noexcept {
  switch (s) {
    case mig_state::error: return "ERROR";
    case mig_state::stop: return "STOP";
    case mig_state::running: return "RUNNING";
    case mig_state::stop_copy: return "STOP_COPY";
    case mig_state::resuming: return "RESUMING";
    case mig_state::running_p2p: return "RUNNING_P2P";
    case mig_state::pre_copy: return "PRE_COPY";
    case mig_state::pre_copy_p2p: return "PRE_COPY_P2P";
  }
  return "?";
}

}  // namespace vfu::proto
