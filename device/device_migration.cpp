#define CAF_LOG_COMPONENT "vfu"
// device_migration.cpp: the device framework's side of VFIO migration v2 (docs/migration.md):
// which commands each state takes, DEVICE_FEATURE, MIG_DATA_READ/WRITE, the stream's
// contents, and dirty logging.
#include "device/device_state.hpp"

#include <string_view>

#include "actors/answer.hpp"
#include "protocol/wire.hpp"

namespace vfu::dev::impl {

namespace {

constexpr uint64_t page = 4096;  // the granule of pre-copy's change detection
// A MIG_DATA_READ reply leaves gathered from device memory when at least this much of it is.
constexpr size_t gather_min = 64 * 1024;

uint64_t page_hash(const uint8_t* p, size_t n) {
  return std::hash<std::string_view>{}(std::string_view(reinterpret_cast<const char*>(p), n)) | 1;  // 0: not sent
}

template <class T>
void put(std::vector<uint8_t>& b, T v) {
  auto* p = reinterpret_cast<const uint8_t*>(&v);
  b.insert(b.end(), p, p + sizeof v);
}

// What a destination must be to take this stream: the same IDs and region sizes.
std::vector<uint8_t> identity(device_state& st) {
  std::vector<uint8_t> b;
  auto& ids = st.spec().ids;
  put(b, ids.vendor), put(b, ids.device), put(b, ids.subsys_vendor), put(b, ids.subsys_id);
  put(b, st.num_regions());
  for (uint32_t r = 0; r < st.num_regions(); ++r) put(b, st.region_size(r));
  return b;
}

std::vector<uint8_t> irq_record(device_state& st) {
  std::vector<uint8_t> b;
  for (auto& idx : st.irqs) {
    put(b, uint32_t(idx.size()));
    for (auto& v : idx) b.push_back(uint8_t((v.masked ? 1 : 0) | (v.pending ? 2 : 0)));
  }
  return b;
}

int load_irqs(device_state& st, const std::vector<uint8_t>& b) {
  size_t at = 0;
  for (auto& idx : st.irqs) {
    uint32_t n;
    if (b.size() - at < 4) return EINVAL;
    std::memcpy(&n, b.data() + at, 4);
    at += 4;
    if (n != idx.size() || b.size() - at < n) return EINVAL;
    for (auto& v : idx) {
      v.masked = b[at] & 1;
      v.pending = b[at] & 2;
      ++at;
    }
  }
  return at == b.size() ? 0 : EINVAL;
}

void start_stop_copy(device_state& st, bool after_pre_copy) {
  auto src = std::make_unique<mig_source>();
  src->add_record(mig_record::header, mig_record::version, 0, identity(st));
  for (uint32_t r = 0; r < st.shm.size(); ++r) {
    auto& sh = st.shm[r];
    if (!sh.mem) continue;
    bool hashed = after_pre_copy && r < st.sent_hash.size() && !st.sent_hash[r].empty();
    if (!hashed) {
      // Pages a client wrote through its own mapping are not yet in ours: mapping them in
      // one call costs less than a fault each while they are sent (docs/performance.md).
      ::madvise(sh.mem, sh.size, MADV_POPULATE_READ);
      src->add_borrowed_pages(r, 0, sh.mem, sh.size);
      continue;
    }
    // Only the pages that differ from what pre-copy sent, as runs.
    auto& hs = st.sent_hash[r];
    for (uint64_t p = 0; p < hs.size();) {
      auto same = [&](uint64_t q) { return page_hash(sh.mem + q * page, std::min(page, sh.size - q * page)) == hs[q]; };
      if (same(p)) {
        ++p;
        continue;
      }
      uint64_t first = p;
      while (p < hs.size() && !same(p)) ++p;
      uint64_t off = first * page, len = std::min(p * page, sh.size) - off;
      src->add_borrowed_pages(r, off, sh.mem + off, len);
    }
  }
  auto& raw = st.cfg->raw();
  src->add_record(mig_record::config, 0, 0, std::vector<uint8_t>(raw.begin(), raw.end()));
  src->add_record(mig_record::irqs, 0, 0, irq_record(st));
  src->add_record(mig_record::msix, 0, 0, st.msix_table);
  src->add_record(mig_record::model, 0, 0, st.model->save_state());
  src->add_record(mig_record::end, 0, 0, {});
  st.source = std::move(src);
}

// Pre-copy rounds: each serves the pages that differ from what was sent before (all of them
// in the first), copied and hashed as they are served (the device runs meanwhile), and ends
// with a read of 0 bytes; the next read begins another round.
void start_pre_copy(device_state& st) {
  st.sent_hash.assign(st.shm.size(), {});
  for (uint32_t r = 0; r < st.shm.size(); ++r)
    if (st.shm[r].mem) st.sent_hash[r].assign((st.shm[r].size + page - 1) / page, 0);
  st.pc_region = 0, st.pc_page = 0;
  st.header_sent = false;
  st.source = std::make_unique<mig_source>();
  st.source->more = [&st](mig_source& s) {
    if (!st.header_sent) {
      st.header_sent = true;
      s.add_record(mig_record::header, mig_record::version, 0, identity(st));
      return true;
    }
    for (; st.pc_region < st.shm.size(); ++st.pc_region, st.pc_page = 0) {
      auto& sh = st.shm[st.pc_region];
      if (!sh.mem) continue;
      auto& hs = st.sent_hash[st.pc_region];
      auto size_of = [&](uint64_t q) { return std::min(page, sh.size - q * page); };
      while (st.pc_page < hs.size() && page_hash(sh.mem + st.pc_page * page, size_of(st.pc_page)) == hs[st.pc_page])
        ++st.pc_page;
      if (st.pc_page == hs.size()) continue;
      uint64_t first = st.pc_page;
      std::vector<uint8_t> copy;
      while (st.pc_page < hs.size() && st.pc_page - first < 64) {
        uint64_t n = size_of(st.pc_page);
        size_t at = copy.size();
        copy.insert(copy.end(), sh.mem + st.pc_page * page, sh.mem + st.pc_page * page + n);
        uint64_t h = page_hash(copy.data() + at, n);
        if (h == hs[st.pc_page]) {  // unchanged after all: the run ends before it
          copy.resize(at);
          break;
        }
        hs[st.pc_page++] = h;
      }
      if (copy.empty()) continue;
      s.add_record(mig_record::pages, st.pc_region, first * page, std::move(copy));
      return true;
    }
    return false;
  };
}

// RESUMING: where the stream's records go.
struct resume_sink : mig_sink {
  device_state& st;
  explicit resume_sink(device_state& s) : st(s) {}
  uint8_t* pages(uint32_t region, uint64_t offset, uint64_t len) override {
    if (region >= st.shm.size() || !st.shm[region].mem) return nullptr;
    uint64_t end;
    if (__builtin_add_overflow(offset, len, &end) || end > st.shm[region].size) return nullptr;
    return st.shm[region].mem + offset;
  }
  int record(uint32_t type, uint32_t index, std::vector<uint8_t> data) override {
    switch (type) {
      case mig_record::header:
        return index == mig_record::version && data == identity(st) ? 0 : EINVAL;
      case mig_record::config:
        if (data.size() != pci_config::size) return EINVAL;
        break;
      case mig_record::msix:
        if (data.size() != st.msix_table.size()) return EINVAL;
        break;
      default: break;
    }
    st.resumed[type] = std::move(data);
    return 0;
  }
};

// RESUMING -> STOP: what the stream carried takes effect.
int apply_resumed(device_state& st) {
  auto& in = st.resumed;
  if (in.count(mig_record::config)) {
    std::array<uint8_t, pci_config::size> raw;
    std::memcpy(raw.data(), in[mig_record::config].data(), raw.size());
    st.cfg->load(raw);
  }
  if (in.count(mig_record::irqs))
    if (int e = load_irqs(st, in[mig_record::irqs])) return e;
  if (in.count(mig_record::msix)) st.msix_table = in[mig_record::msix];
  int e = st.model->load_state(in.count(mig_record::model) ? in[mig_record::model] : std::vector<uint8_t>{});
  in.clear();
  return e;
}

void drop_streams(device_state& st) {
  st.source.reset();
  st.parser.reset();
  st.resumed.clear();
  st.sent_hash.clear();
}

outbound_ptr echo(const device_feature_request& req) {
  device_feature_reply rep;
  static_cast<device_feature_body&>(rep) = req;
  return outbound::of(std::move(rep));
}

// Walks the path to the requested state, one direct arc at a time.
outbound_ptr set_state_now(device_state& st, const device_feature_request& req) {
  auto target = mig_state(std::get<feature_device_state>(req.data).device_state);
  auto path = mig_path(st.mstate, target, st.model->migration_flags() | mig_flags::stop_copy);
  if (!path) return outbound::error(EINVAL);
  for (mig_state to : *path) {
    mig_state from = st.mstate;
    // Leaving RESUMING with part of a stream: refused, the device stays RESUMING (a stream
    // never begun is a cancelled resume: the device keeps its state).
    bool resumed = from == mig_state::resuming && st.parser && st.parser->started();
    if (resumed && !st.parser->ended()) return outbound::error(EINVAL);
    int e = st.model->migration_transition(from, to);
    if (!e && resumed) e = apply_resumed(st);
    if (e) {
      CAF_LOG_WARNING("migration " << to_string(from) << " -> " << to_string(to) << " failed: errno " << e);
      st.mstate = mig_state::error;
      drop_streams(st);
      return outbound::error(e);
    }
    st.mstate = to;
    if (to == mig_state::stop_copy) start_stop_copy(st, from == mig_state::pre_copy || from == mig_state::pre_copy_p2p);
    else if ((to == mig_state::pre_copy || to == mig_state::pre_copy_p2p) && !mig_saving(from)) start_pre_copy(st);
    else if (!mig_saving(to)) drop_streams(st);
    if (to == mig_state::resuming) st.parser = std::make_unique<mig_parser>();
    if (mig_running(to) && !mig_running(from))
      for (uint32_t i = 0; i < irq_index::count; ++i) st.retry_pending(i);
    CAF_LOG_DEBUG("migration state " << to_string(from) << " -> " << to_string(to));
  }
  return echo(req);
}

caf::result<outbound_ptr> on_set_state(self_t self, const device_feature_request& req) {
  auto& st = self->state;
  if (!std::holds_alternative<feature_device_state>(req.data)) return outbound::error(EINVAL);
  auto target = mig_state(std::get<feature_device_state>(req.data).device_state);
  auto path = mig_path(st.mstate, target, st.model->migration_flags() | mig_flags::stop_copy);
  if (!path) return outbound::error(EINVAL);
  bool stops = false;
  for (auto s : *path) stops = stops || (mig_running(st.mstate) && !mig_running(s));
  if (!stops || st.msg_dma == 0) return set_state_now(st, req);
  // The device stops once the DMA it is doing by message has completed (its replies
  // come in meanwhile); the answer waits until then.
  auto rp = self->make_response_promise<outbound_ptr>();
  st.quiesce_waiters.push_back([self, req, rp]() mutable { rp.deliver(set_state_now(self->state, req)); });
  return rp;
}

outbound_ptr on_logging_start(device_state& st, const device_feature_request& req) {
  auto* ctl = std::get_if<feature_logging_ctl>(&req.data);
  if (!ctl) return outbound::error(EINVAL);
  if (st.dirty.active())  // libvfio-user: again with the same page size changes nothing
    return ctl->page_size == st.dirty.page_size() ? echo(req) : outbound::error(EINVAL);
  auto ranges = ctl->ranges;
  if (ranges.empty()) {  // everything mapped now, in whole pages
    uint64_t pg = ctl->page_size;
    if (!pg || (pg & (pg - 1))) return outbound::error(EINVAL);
    for (auto& [a, w] : st.windows) {
      if (w.unmapping) continue;
      uint64_t lo = a / pg * pg, hi = (a + w.size + pg - 1) / pg * pg;
      if (!ranges.empty() && ranges.back().iova + ranges.back().length >= lo)
        ranges.back().length = std::max(ranges.back().iova + ranges.back().length, hi) - ranges.back().iova;
      else
        ranges.push_back({lo, hi - lo});
    }
  }
  if (int e = st.dirty.start(ctl->page_size, std::move(ranges))) return outbound::error(e);
  return echo(req);
}

outbound_ptr on_logging_report(device_state& st, const device_feature_request& req) {
  auto* r = std::get_if<feature_logging_report>(&req.data);
  if (!r) return outbound::error(EINVAL);
  uint64_t bm = dirty_log::bitmap_bytes(r->length, r->page_size);
  if (uint64_t(req.argsz) < 32 + bm) return outbound::error(EINVAL);
  if (bm > st.client_max_data) return outbound::error(E2BIG);
  device_feature_reply rep;
  rep.argsz = uint32_t(32 + bm);
  rep.flags = req.flags;
  feature_logging_report out{r->iova, r->length, r->page_size, std::vector<uint8_t>(bm)};
  if (int e = st.dirty.report(r->iova, r->length, r->page_size, out.bitmap.data())) return outbound::error(e);
  rep.data = std::move(out);
  return outbound::of(std::move(rep));
}

}  // namespace

int migration_gate(const device_state& st, const proto::message& m) {
  auto is = [&](auto tag) { return std::holds_alternative<decltype(tag)>(m); };
  if (is(device_feature_request{})) return 0;
  switch (st.mstate) {
    case mig_state::stop:
      return is(region_read_request{}) || is(region_write_request{}) || is(write_multi_request{}) ||
                     is(mig_data_read_request{})
                 ? 0
                 : EINVAL;
    case mig_state::stop_copy:  // the state being saved does not change: reads only
      return is(region_read_request{}) || is(mig_data_read_request{}) ? 0 : EINVAL;
    case mig_state::error:  // left by DEVICE_RESET; the client may always take its memory back
      return is(reset_request{}) || is(dma_unmap_request{}) ? 0 : EINVAL;
    default: return 0;
  }
}

caf::result<outbound_ptr> on_device_feature(self_t self, const device_feature_request& req) {
  auto& st = self->state;
  if (!st.model->migration_flags()) return outbound::error(ENOTSUP);  // not migratable
  using namespace feature_flags;
  uint32_t ops = req.flags & ~index_mask, idx = req.index(), supported = 0;
  switch (idx) {
    case feature::migration: supported = get | probe; break;
    case feature::mig_device_state: supported = get | set | probe; break;
    case feature::dma_logging_start:
    case feature::dma_logging_stop: supported = set | probe; break;
    case feature::dma_logging_report: supported = get | probe; break;
  }
  if (!supported || (ops & ~supported)) return outbound::error(EINVAL);
  size_t data = std::visit(
      [](auto& d) -> size_t {
        using D = std::decay_t<decltype(d)>;
        if constexpr (std::is_same_v<D, feature_logging_ctl>) return 16 + 16 * d.ranges.size();
        else if constexpr (std::is_same_v<D, feature_logging_report>) return 24;
        else if constexpr (std::is_same_v<D, std::monostate>) return 0;
        else return 8;
      },
      req.data);
  if (ops != get && req.argsz < 8 + data) return outbound::error(EINVAL);  // room for the echo
  if (ops & probe) return echo(req);
  if (ops == get) {
    if (idx == feature::dma_logging_report) return on_logging_report(st, req);
    if (req.argsz < 16) return outbound::error(EINVAL);
    device_feature_reply rep;
    rep.argsz = 16;
    rep.flags = req.flags;
    if (idx == feature::migration) rep.data = feature_migration{st.model->migration_flags() | mig_flags::stop_copy};
    else rep.data = feature_device_state{uint32_t(st.mstate), 0xffffffff};
    return outbound::of(std::move(rep));
  }
  if (idx == feature::mig_device_state) return on_set_state(self, req);
  if (idx == feature::dma_logging_start) return on_logging_start(st, req);
  st.dirty.stop();
  return echo(req);
}

outbound_ptr on_mig_data_read(device_state& st, inbound& in, const mig_data_read_request& r) {
  if (!mig_saving(st.mstate) || !st.source) return answer(in, outbound::error(EINVAL));
  if (uint64_t(r.argsz) < 8 + uint64_t(r.size)) return answer(in, outbound::error(EINVAL));
  if (r.size > st.client_max_data) return answer(in, outbound::error(E2BIG));
  auto pieces = st.source->take(r.size);
  size_t total = 0, owned = 0;
  for (auto& p : pieces) total += p.len, owned += p.borrowed ? 0 : p.len;
  if (total == 0 && (st.mstate == mig_state::pre_copy || st.mstate == mig_state::pre_copy_p2p))
    st.pc_region = 0, st.pc_page = 0;  // this round has ended: the next read begins another
  size_t padded = st.quirks.mig_read_padding ? r.size : total;  // libvfio-user's clients expect it
  bool gather = !pieces.empty() && pieces.back().borrowed && pieces.back().len >= gather_min &&
                total - pieces.back().len == owned && padded == total;
  proto::frame f;
  f.bytes.reserve(header_size + 8 + (gather ? owned : padded));
  f.bytes.resize(header_size);
  wire::writer w(f.bytes);
  w.put(uint32_t(8 + total));
  w.put(uint32_t(total));
  for (size_t i = 0; i + (gather ? 1 : 0) < pieces.size(); ++i) w.bytes(pieces[i].data, pieces[i].len);
  if (padded > total) w.zeros(padded - total);
  header h;
  h.command = uint16_t(command::mig_data_read);
  h.flags = hflags::type_reply;
  h.msg_size = uint32_t(header_size + 8 + (gather ? total : padded));
  f.set_hdr(h);
  if (gather) return answer(in, outbound::gathered(std::move(f), pieces.back().data, pieces.back().len));
  return answer(in, std::move(f));
}

outbound_ptr on_mig_data_write(device_state& st, const mig_data_write_request& w) {
  if (st.mstate != mig_state::resuming || !st.parser) return outbound::error(EINVAL);
  if (uint64_t(w.argsz) < 8 + uint64_t(w.size)) return outbound::error(EINVAL);  // libvfio-user's rule
  resume_sink sink(st);
  if (int e = st.parser->feed(w.data.data(), w.data.size(), sink)) return outbound::error(e);
  return outbound::of(mig_data_write_reply{});
}

void migration_reset(device_state& st) {
  if (st.mstate != mig_state::running) CAF_LOG_INFO("DEVICE_RESET: migration state " << to_string(st.mstate) << " -> RUNNING");
  st.mstate = mig_state::running;
  drop_streams(st);
  st.dirty.stop();
}

}  // namespace vfu::dev::impl
