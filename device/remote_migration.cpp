// remote_migration.cpp: remote_device's migration v2 and dirty-logging calls (the client
// role of docs/migration.md).
#include <cstring>

#include "device/remote_device.hpp"
#include "protocol/wire.hpp"

namespace vfu::dev {

using namespace proto;

namespace {
// The largest data a MIG_DATA or REPORT message may carry both ways: the server checks a
// read's size against the client's max_data_xfer_size (libvfio-user) or its own (the spec).
uint64_t data_limit(endpoint& ep) {
  auto n = ep.negotiated();
  return std::min(n.send_max_data(), n.recv_max_data());
}
}  // namespace

result<message> remote_device::feature(const device_feature_request& q) { return ep_->call_decoded(q); }

namespace {
// A DEVICE_FEATURE GET of `index`, and the data of type D its reply must carry.
template <class D>
result<D> get_feature(uint32_t index, const char* what,
                      const std::function<result<message>(const device_feature_request&)>& call) {
  device_feature_request q;
  q.argsz = 16;
  q.flags = feature_flags::get | index;
  auto m = call(q);
  if (!m) return m.err();
  auto* rep = std::get_if<device_feature_reply>(&*m);
  auto* f = rep ? std::get_if<D>(&rep->data) : nullptr;
  if (!f) return error(errc::protocol_violation, std::string("DEVICE_FEATURE(") + what + ") answered without its data");
  return *f;
}
}  // namespace

result<uint64_t> remote_device::migration_flags() {
  if (auto s = gate(); !s) return s.err();
  auto f = get_feature<feature_migration>(feature::migration, "MIGRATION", [this](auto& q) { return feature(q); });
  if (!f) return f.err();
  return f->flags;
}

result<mig_state> remote_device::migration_state() {
  if (auto s = gate(); !s) return s.err();
  auto f = get_feature<feature_device_state>(feature::mig_device_state, "MIG_DEVICE_STATE",
                                             [this](auto& q) { return feature(q); });
  if (!f) return f.err();
  return mig_state(f->device_state);
}

status remote_device::set_migration_state(mig_state s) {
  if (auto g = gate(); !g) return g;
  device_feature_request q;
  q.argsz = 16;
  q.flags = feature_flags::set | feature::mig_device_state;
  q.data = feature_device_state{uint32_t(s), 0xffffffff};
  auto m = feature(q);
  if (!m) return m.err();
  // A replay that met the device mid-migration restores now, if this state takes it.
  if (restore_deferred_ && s != mig_state::stop && s != mig_state::stop_copy) {
    std::unique_lock<std::shared_mutex> w(probe_m_);
    if (restore_deferred_)
      if (auto r = restore_locked(); !r) return error(r.err().code, r.err().errnum, "restoring after the reconnect: " + r.err().context);
  }
  return {};
}

result<uint64_t> remote_device::read_migration_data(const std::function<status(const uint8_t*, size_t)>& sink,
                                                    uint32_t chunk) {
  if (auto s = gate(); !s) return s.err();
  uint64_t lim = data_limit(*ep_);
  uint32_t n = uint32_t(chunk ? std::min<uint64_t>(chunk, lim) : lim);
  uint64_t total = 0;
  for (;;) {
    mig_data_read_request q{8 + n, n};
    auto r = ep_->call(q);
    if (auto e = r.failure()) return e;
    // Read in place: {argsz u32, size u32, data}, the data perhaps padded to n (libvfio-user).
    auto p = r.reply->payload();
    uint32_t size = 0;
    if (p.size >= 8) std::memcpy(&size, p.data + 4, 4);
    if (p.size < 8 || size > n || (p.size != 8 + size_t(size) && p.size != 8 + size_t(n)))
      return error(errc::protocol_violation, "MIG_DATA_READ reply of " + std::to_string(p.size) + " bytes for size " +
                                                 std::to_string(size));
    if (size == 0) return total;
    if (auto s = sink(p.data + 8, size); !s) return s.err();
    total += size;
  }
}

status remote_device::write_migration_data(const uint8_t* data, size_t len) {
  if (auto s = gate(); !s) return s;
  uint64_t lim = data_limit(*ep_);
  for (size_t done = 0; done < len;) {
    uint32_t n = uint32_t(std::min<uint64_t>(len - done, lim));
    // The head here, the data straight from the caller's buffer.
    frame f;
    f.bytes.resize(header_size);
    wire::writer w(f.bytes);
    w.put(uint32_t(8 + n));
    w.put(n);
    header h;
    h.command = uint16_t(command::mig_data_write);
    h.msg_size = uint32_t(header_size + 8 + n);
    h.flags = hflags::type_command;
    f.set_hdr(h);
    auto r = ep_->call_frame(std::move(f), std::chrono::milliseconds(0), nullptr, byte_view{data + done, n});
    if (auto e = r.failure()) return e;
    done += n;
  }
  return {};
}

status remote_device::start_dirty_logging(uint64_t page_size, const std::vector<dma_range>& ranges) {
  if (auto s = gate(); !s) return s;
  if (ranges.size() > limits::max_dma_logging_ranges)
    return error(errc::too_large, "more than " + std::to_string(limits::max_dma_logging_ranges) + " logging ranges");
  device_feature_request q;
  q.flags = feature_flags::set | feature::dma_logging_start;
  q.argsz = uint32_t(8 + 16 + 16 * ranges.size());
  q.data = feature_logging_ctl{page_size, 0, ranges};
  auto m = feature(q);
  if (!m) return m.err();
  return {};
}

status remote_device::stop_dirty_logging() {
  if (auto s = gate(); !s) return s;
  device_feature_request q;
  q.flags = feature_flags::set | feature::dma_logging_stop;
  q.argsz = 8 + 16;
  q.data = feature_logging_ctl{};  // libvfio-user expects START's shape, with no ranges
  auto m = feature(q);
  if (!m) return m.err();
  return {};
}

result<std::vector<uint8_t>> remote_device::dirty_bitmap(uint64_t iova, uint64_t length, uint64_t page_size) {
  std::vector<uint8_t> out;
  if (auto s = dirty_bitmap(iova, length, page_size, out); !s) return s.err();
  return out;
}

status remote_device::dirty_bitmap(uint64_t iova, uint64_t length, uint64_t page_size, std::vector<uint8_t>& out) {
  if (auto s = gate(); !s) return s;
  if (!page_size || (page_size & (page_size - 1)) || !length || length % page_size)
    return error(errc::bad_value, "a report needs a power-of-two page size and a length that is a multiple of it");
  uint64_t pages = length / page_size;
  // Each report's bitmap must fit a message: split at whole u64 words of it.
  uint64_t per = std::min<uint64_t>(data_limit(*ep_), limits::max_dirty_bitmap) / 8 * 64;  // pages per report
  out.resize((pages + 63) / 64 * 8);
  for (uint64_t first = 0; first < pages; first += per) {
    uint64_t n = std::min(per, pages - first), bm = (n + 63) / 64 * 8;
    device_feature_request q;
    q.flags = feature_flags::get | feature::dma_logging_report;
    q.argsz = uint32_t(32 + bm);
    feature_logging_report ask{iova + first * page_size, n * page_size, page_size, {}};
    q.data = ask;
    auto r = ep_->call(q);
    if (auto e = r.failure()) return e;
    // Read in place: {argsz, flags, iova, length, page_size, bitmap}, the request echoed.
    auto p = r.reply->payload();
    uint64_t echo[3] = {};
    if (p.size == 32 + bm) std::memcpy(echo, p.data + 8, sizeof echo);
    if (p.size != 32 + bm || echo[0] != ask.iova || echo[1] != ask.length || echo[2] != ask.page_size)
      return error(errc::protocol_violation, "DMA_LOGGING_REPORT reply of " + std::to_string(p.size) +
                                                 " bytes is not the report asked for (" + std::to_string(32 + bm) + ")");
    std::memcpy(out.data() + first / 8, p.data + 32, bm);
  }
  return {};
}

}  // namespace vfu::dev
