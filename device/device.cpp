#define CAF_LOG_COMPONENT "vfu"
#include "protocol/bulk_frames.hpp"
#include "device/device.hpp"
#include "device/device_state.hpp"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <mutex>
#include <thread>

#include "actors/answer.hpp"
#include "protocol/limits.hpp"

namespace vfu::dev {

namespace {

using namespace proto;
using namespace impl;


// ---- workers for models' blocking work -------------------------------------------------------
// Two threads for the process, made when a model first offloads (a device that never does
// costs nothing); jobs run in the order given.
class worker_pool {
 public:
  static worker_pool& get() {
    static worker_pool p;
    return p;
  }
  void run(std::function<void()> job) {
    {
      std::lock_guard<std::mutex> g(m_);
      if (threads_.empty())
        for (int i = 0; i < 2; ++i) threads_.emplace_back([this] { loop(); });
      q_.push_back(std::move(job));
    }
    cv_.notify_one();
  }
  ~worker_pool() {
    {
      std::lock_guard<std::mutex> g(m_);
      stop_ = true;
    }
    cv_.notify_all();
    for (auto& t : threads_) t.join();
  }

 private:
  void loop() {
    std::unique_lock<std::mutex> g(m_);
    for (;;) {
      cv_.wait(g, [&] { return stop_ || !q_.empty(); });
      if (q_.empty()) return;
      auto job = std::move(q_.front());
      q_.pop_front();
      g.unlock();
      job();
      g.lock();
    }
  }
  std::mutex m_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> q_;
  std::vector<std::thread> threads_;
  bool stop_ = false;
};

// ---- region access ------------------------------------------------------------------------
int check_access(device_state& st, uint32_t region, uint64_t off, uint32_t count, bool write) {
  if (region >= st.num_regions()) return EINVAL;
  uint64_t size = st.region_size(region), end;
  if (__builtin_add_overflow(off, uint64_t(count), &end) || end > size) return EINVAL;
  if (region != region_index::config) {
    auto& rs = st.rspec(region);
    if (write ? !rs.writable : !rs.readable) return EINVAL;
  }
  return 0;
}

bool in_range(uint64_t off, uint32_t count, uint64_t start, uint64_t len) { return off >= start && off + count <= start + len; }

// Whether the model serves an access that check_access() passed: not config space, the
// MSI-X table or PBA, or framework-owned shared memory.
bool model_serves(device_state& st, uint32_t region, uint64_t off, uint32_t count) {
  if (region == region_index::config || st.shm[region].mem) return false;
  auto& mx = st.spec().msix;
  if (!mx.vectors || region != mx.bar) return true;
  uint64_t tlen = uint64_t(mx.vectors) * 16, plen = (uint64_t(mx.vectors) + 63) / 64 * 8;
  return !in_range(off, count, mx.table_offset, tlen) && !in_range(off, count, mx.pba_offset, plen);
}

// A continuation for a model that answers later (device_model::answers_later): `done` may be
// called from any thread, once; `then` runs on the device actor (through the offload jobs).
std::function<void(int)> later(device_state& st, std::function<void(int)> then) {
  uint64_t id = ++st.next_job;
  st.jobs.emplace(id, std::move(then));
  caf::actor me = caf::actor_cast<caf::actor>(st.self);
  auto once = std::make_shared<std::atomic<bool>>(false);
  return [me, id, once](int e) {
    if (!once->exchange(true)) caf::anon_send(me, offload_atom::value, id, e);
  };
}

int region_access(device_state& st, uint32_t region, uint64_t off, uint8_t* buf, uint32_t count, bool write) {
  if (int e = check_access(st, region, off, count, write)) return e;
  if (count == 0) return 0;  // a zero-length access inside the region: nothing to do
  if (region == region_index::config) {
    bool was_enabled = st.cfg->msix_enabled() && !st.cfg->msix_function_masked();
    if (write) st.cfg->write(uint32_t(off), buf, count);
    else st.cfg->read(uint32_t(off), buf, count);
    if (write && !was_enabled && st.cfg->msix_enabled() && !st.cfg->msix_function_masked())
      st.retry_pending(irq_index::msix);
    return 0;
  }
  auto& mx = st.spec().msix;
  if (mx.vectors && region == mx.bar) {
    uint64_t tlen = uint64_t(mx.vectors) * 16, plen = (uint64_t(mx.vectors) + 63) / 64 * 8;
    if (in_range(off, count, mx.table_offset, tlen)) {
      uint8_t* t = st.msix_table.data() + (off - mx.table_offset);
      if (!write) {
        std::memcpy(buf, t, count);
      } else {
        std::memcpy(t, buf, count);
        st.retry_pending(irq_index::msix);  // a vector may have been unmasked
      }
      return 0;
    }
    if (in_range(off, count, mx.pba_offset, plen)) {
      if (write) return 0;  // PBA is read-only
      std::vector<uint8_t> pba(plen, 0);
      for (uint32_t v = 0; v < st.irqs[irq_index::msix].size(); ++v)
        if (st.irqs[irq_index::msix][v].pending) pba[v / 8] |= uint8_t(1u << (v % 8));
      std::memcpy(buf, pba.data() + (off - mx.pba_offset), count);
      return 0;
    }
  }
  if (uint8_t* mem = st.shm[region].mem) {
    if (write) std::memcpy(mem + off, buf, count);
    else std::memcpy(buf, mem + off, count);
    return 0;
  }
  if (write) return st.model->region_write(region, off, buf, count);
  // A reply's buffer is not zeroed when it is made (make_region_frame): a model that writes
  // fewer bytes than asked must not send the peer whatever the heap held there.
  std::memset(buf, 0, count);
  return st.model->region_read(region, off, buf, count);
}

// REGION_READs at least this large are sent straight from device memory when the device
// has it (smaller ones are copied into a reply, which then leaves batched with others).
constexpr uint32_t gather_min = 64 * 1024;
// REGION_READ replies of at most this many data bytes are built in the device's spare frame.
constexpr uint32_t reply_spare_max = 4096;

// Where a read's bytes already are, if the region is plain memory (framework-owned shared
// memory). Not config space or the MSI-X BAR, which are computed.
const uint8_t* read_memory(device_state& st, const proto::region_access& a) {
  if (check_access(st, a.region, a.offset, a.count, false) || a.region == region_index::config) return nullptr;
  auto& mx = st.spec().msix;
  if (mx.vectors && a.region == mx.bar) return nullptr;
  return st.shm[a.region].mem ? st.shm[a.region].mem + a.offset : nullptr;
}

// ---- command handlers -------------------------------------------------------------------
outbound_ptr on_region_info(device_state& st, const region_info_request& req) {
  if (req.index >= st.num_regions()) return outbound::error(EINVAL);
  region_info_reply rep;
  rep.index = req.index;
  rep.size = st.region_size(req.index);
  if (rep.size) {
    if (req.index == region_index::config) rep.flags = region_flags::read | region_flags::write;
    else {
      auto& rs = st.rspec(req.index);
      rep.flags = (rs.readable ? region_flags::read : 0) | (rs.writable ? region_flags::write : 0);
    }
  }
  fd_list fds;
  auto& sh = st.shm[req.index];
  std::vector<region_cap> caps;
  uint32_t needed = 32;
  if (req.index >= region_index::num_pci) {  // device-specific: say what it is
    region_cap t;
    t.id = region_cap_id::type;
    t.type = st.rspec(req.index).type;
    t.subtype = st.rspec(req.index).subtype;
    caps.push_back(t);
    needed += 16;
  }
  if (sh.mem) {
    rep.flags |= region_flags::mmap;
    region_cap cap;
    cap.id = region_cap_id::sparse_mmap;
    cap.version = 1;
    auto& rs = st.rspec(req.index);
    cap.areas = rs.sparse.empty() ? std::vector<sparse_area>{{0, rep.size}} : rs.sparse;
    needed += uint32_t(16 + 16 * cap.areas.size());
    caps.push_back(std::move(cap));
  }
  rep.argsz = needed;
  // Caps (and the mmap fd with them, as libvfio-user does) go only into a reply whose argsz
  // has room for them: a client probing with argsz 32 learns the size it needs and asks again.
  if (!caps.empty() && req.argsz >= needed) {
    rep.flags |= region_flags::caps;
    rep.cap_offset = 32;
    rep.caps = std::move(caps);
    if (sh.mem) fds.push_back(sh.fd.dup());
  }
  return outbound::of(std::move(rep), std::move(fds));
}

outbound_ptr on_irq_info(device_state& st, const irq_info_request& req) {
  if (req.index >= irq_index::count) return outbound::error(EINVAL);
  irq_info_reply rep;
  rep.index = req.index;
  rep.count = uint32_t(st.irqs[req.index].size());
  rep.flags = irq_info_flags::eventfd;
  if (req.index == irq_index::intx || req.index == irq_index::msix) rep.flags |= irq_info_flags::maskable;
  if (req.index == irq_index::msi || req.index == irq_index::msix) rep.flags |= irq_info_flags::noresize;
  return outbound::of(rep);
}

outbound_ptr on_set_irqs(device_state& st, const set_irqs_request& req, fd_list& fds) {
  using namespace irq_set_flags;
  if (req.index >= irq_index::count) return outbound::error(EINVAL);
  auto& vecs = st.irqs[req.index];
  uint32_t data = req.flags & data_mask, action = req.flags & action_mask_all;
  if (req.count == 0) {
    if (req.start != 0 || data != data_none || action != action_trigger) return outbound::error(EINVAL);
    for (auto& v : vecs) v.efd.reset();  // disable every vector of the index
    return outbound::of(set_irqs_reply{});
  }
  if (req.start >= vecs.size() || req.start + req.count > vecs.size()) return outbound::error(EINVAL);
  if ((req.index == irq_index::err || req.index == irq_index::req) && (action != action_trigger || req.count > 1))
    return outbound::error(EINVAL);
  bool maskable = req.index == irq_index::intx || req.index == irq_index::msix;
  if (action != action_trigger && (!maskable || data == data_eventfd)) return outbound::error(EINVAL);
  for (uint32_t i = 0; i < req.count; ++i) {
    uint32_t v = req.start + i;
    bool sel = data != data_bool || req.bools[i];
    if (action == action_trigger) {
      if (data == data_eventfd) vecs[v].efd = fds.empty() ? unique_fd() : std::move(fds[i]);
      else if (sel) st.fire(req.index, v);
    } else if (sel) {
      vecs[v].masked = action == action_mask;
      if (action == action_unmask && vecs[v].pending) st.fire(req.index, v);
    }
  }
  return outbound::of(set_irqs_reply{});
}

outbound_ptr on_dma_map(device_state& st, const dma_map_request& req, fd_list& fds) {
  if (st.windows.size() >= st.max_dma_maps) return outbound::error(ENOSPC);
  uint64_t end = req.addr + req.size;  // decode checked overflow
  // An overlap is EEXIST (the spec); with a window still being unmapped, EBUSY: that
  // range is free again once its last transfer ends.
  auto overlap = [](const window& w) { return outbound::error(w.unmapping ? EBUSY : EEXIST); };
  auto it = st.windows.lower_bound(req.addr);
  if (it != st.windows.end() && it->first < end) return overlap(it->second);
  if (it != st.windows.begin()) {
    auto p = std::prev(it);
    if (p->first + p->second.size > req.addr) return overlap(p->second);
  }
  window w;
  w.addr = req.addr;
  w.size = req.size;
  w.prot = req.flags;
  if (!fds.empty()) {
    int prot = ((req.flags & dma_flags::read) ? PROT_READ : 0) | ((req.flags & dma_flags::write) ? PROT_WRITE : 0);
    void* p = ::mmap(nullptr, req.size, prot ? prot : PROT_NONE, MAP_SHARED, fds[0].get(), off_t(req.offset));
    if (p == MAP_FAILED) return outbound::error(errno);
    w.map = static_cast<uint8_t*>(p);
  }
  if (!st.windows.emplace(req.addr, w).second) {  // (the checks above rule it out)
    if (w.map) ::munmap(w.map, w.size);
    return outbound::error(EEXIST);
  }
  st.model->dma_mapped(req.addr, req.size, req.flags);
  return outbound::of(dma_map_reply{});
}

caf::result<outbound_ptr> on_dma_unmap(self_t self, const dma_unmap_request& req) {
  auto& st = self->state;
  if (req.bitmap) return outbound::error(ENOTSUP);  // legacy dirty tracking is not offered
  dma_unmap_reply rep;
  rep.argsz = 24;
  rep.flags = req.flags;
  rep.addr = req.addr;
  rep.size = req.size;
  auto out = outbound::of(rep);
  bool busy = false;
  auto drop = [&](window& w) {
    if (w.map) ::munmap(w.map, w.size);
    w.map = nullptr;
    busy = busy || w.inflight > 0;
    if (!w.unmapping) st.model->dma_unmapped(w.addr, w.size);
    w.unmapping = true;  // erased when its last transfer completes
  };
  if (req.flags & dma_flags::unmap_all) {
    for (auto& [a, w] : st.windows) drop(w);
  } else {
    auto it = st.windows.find(req.addr);
    if (it == st.windows.end() || it->second.unmapping || it->second.size != req.size) return outbound::error(ENOENT);
    drop(it->second);
  }
  for (auto i = st.windows.begin(); i != st.windows.end();)
    i = (i->second.unmapping && i->second.inflight == 0) ? st.windows.erase(i) : std::next(i);
  if (!busy) return out;
  // The spec: the server drops every reference, in-flight DMA included, before replying.
  auto rp = self->make_response_promise<outbound_ptr>();
  st.unmap_waiters.emplace_back(rp, out);
  return rp;
}

void set_up(device_state& st, self_t self, const std::shared_ptr<device_model>& model,
            const proto::quirks& quirks) {
  st.self = self;
  st.model = model;
  st.quirks = quirks;
  model->ctx = &st;
  const auto& sp = model->spec();
  st.cfg = std::make_unique<pci_config>(sp.ids, sp.bars, sp.msi_vectors, sp.msix, sp.io_bit_on_unused_bars, sp.pm_capability,
                                        sp.pcie_capability);
  st.irqs[irq_index::intx].resize(sp.intx_vectors);
  st.irqs[irq_index::msi].resize(sp.msi_vectors);
  st.irqs[irq_index::msix].resize(sp.msix.vectors);
  st.irqs[irq_index::err].resize(1);
  st.irqs[irq_index::req].resize(1);
  st.msix_table.assign(size_t(sp.msix.vectors) * 16, 0);
  // The table's mask bits start clear, unlike a PCI function's: QEMU emulates the MSI-X
  // table itself and masks with SET_IRQS, never writing ours (docs/interop.md). A client that
  // reaches the table through the BAR masks and unmasks there as well.
  st.shm.resize(st.num_regions());
  for (uint32_t r = 0; r < st.num_regions(); ++r) {
    if (r == region_index::config || !st.rspec(r).shared_memory) continue;
    uint64_t size = st.region_size(r);
    unique_fd fd(::memfd_create("vfu-region", MFD_CLOEXEC));
    if (!fd || ::ftruncate(fd.get(), off_t(size)) != 0) continue;
    void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(), 0);
    if (p == MAP_FAILED) continue;
    st.shm[r] = shared_region{std::move(fd), static_cast<uint8_t*>(p), size};
  }
}

// Whether an access goes to a model that answers later.
bool deferred(device_state& st, const proto::region_access& a, bool write) {
  return st.model->answers_later() && a.count && !check_access(st, a.region, a.offset, a.count, write) &&
         model_serves(st, a.region, a.offset, a.count);
}

// A REGION_READ answered at once (not by a model that answers later).
outbound_ptr read_now(device_state& st, inbound& in, const region_read_request& r) {
  // A large read of plain memory leaves from there, with no copy; otherwise the reply frame
  // is built first and the device reads straight into it.
  if (r.count >= gather_min)
    if (const uint8_t* src = read_memory(st, r))
      return answer(in, outbound::gathered(make_region_head(0, command::region_read, true, r), src, r.count));
  // A small reply is built in the buffer of the last one, which a reply written at once
  // leaves behind (answer()).
  frame big;
  frame& f = r.count <= reply_spare_max ? st.reply_spare : big;
  build_region_frame(f, 0, command::region_read, true, r);
  if (int e = region_access(st, r.region, r.offset, region_frame_data(f), r.count, false))
    return answer(in, outbound::error(e));
  return answer(in, std::move(f));
}

caf::result<outbound_ptr> read_later(self_t self, const inbound_ptr& in, const region_read_request& r) {
  auto& st = self->state;
  auto fp = std::make_shared<frame>(make_region_frame(0, command::region_read, true, r));
  uint8_t* buf = region_frame_data(*fp);
  std::memset(buf, 0, r.count);
  auto rp = self->make_response_promise<outbound_ptr>();
  st.model->region_access_later(r.region, r.offset, buf, r.count, false, later(st, [in, fp, rp](int e) mutable {
    auto out = std::make_shared<outbound>();
    if (e) out->err = e;
    else out->frame = fp;
    rp.deliver(answer(*in, out));
  }));
  return rp;
}

// (A write only reads from the buffer, which may be the request frame's.)
outbound_ptr write_now(device_state& st, inbound& in, const region_write_request& w) {
  auto* src = const_cast<uint8_t*>(w.data.data());
  if (int e = region_access(st, w.region, w.offset, src, w.count, true)) return answer(in, outbound::error(e));
  return answer(in, outbound::of(region_write_reply{{w.offset, w.region, w.count}}));
}

caf::result<outbound_ptr> write_later(self_t self, const inbound_ptr& in, const region_write_request& w) {
  auto& st = self->state;
  auto* src = const_cast<uint8_t*>(w.data.data());
  region_write_reply rep{{w.offset, w.region, w.count}};
  auto rp = self->make_response_promise<outbound_ptr>();
  // `in` holds the request, and with it the data, until the model is done.
  st.model->region_access_later(w.region, w.offset, src, w.count, true, later(st, [in, rep, rp](int e) mutable {
    rp.deliver(answer(*in, e ? outbound::error(e) : outbound::of(rep)));
  }));
  return rp;
}

outbound_ptr on_write_multi(device_state& st, const write_multi_request& w) {
  for (auto& e : w.writes) {
    auto d = e.data;
    if (int err = region_access(st, e.region, e.offset, d.data(), e.count, true)) return outbound::error(err);
  }
  return outbound::of(write_multi_reply{w.writes.size()});
}

caf::result<outbound_ptr> on_reset(self_t self) {
  auto& st = self->state;
  st.cfg->reset();
  for (auto& idx : st.irqs)
    for (auto& v : idx) {
      v.masked = false;
      v.pending = false;
    }
  std::fill(st.msix_table.begin(), st.msix_table.end(), 0);
  migration_reset(st);
  if (st.model->answers_later()) {
    auto rp = self->make_response_promise<outbound_ptr>();
    st.model->reset_later([done = later(st, [rp](int) mutable { rp.deliver(outbound::of(reset_reply{})); })] { done(0); });
    return rp;
  }
  st.model->reset();
  return outbound::of(reset_reply{});
}

// The requests answered at once, with nothing to wait for: accesses (unless the model
// answers later), REGION_WRITE_MULTI and the queries; nullptr for the others. Both the
// actor (serve) and the dispatcher's direct call (device_actor::serve_now) come here.
outbound_ptr serve_at_once(device_state& st, const inbound_ptr& inp) {
  auto& in = *inp;
  auto& m = in.msg;
  if (int e = migration_gate(st, m)) return outbound::error(e);
  st.correlation = in.correlation;
  if (auto* r = std::get_if<region_read_request>(&m)) return deferred(st, *r, false) ? nullptr : read_now(st, in, *r);
  if (auto* w = std::get_if<region_write_request>(&m)) return deferred(st, *w, true) ? nullptr : write_now(st, in, *w);
  if (auto* w = std::get_if<write_multi_request>(&m)) return on_write_multi(st, *w);
  if (std::holds_alternative<device_info_request>(m)) {
    device_info_reply rep;
    rep.flags = device_info_flags::reset | device_info_flags::pci;
    rep.num_regions = st.num_regions();
    rep.num_irqs = irq_index::count;
    return outbound::of(rep);
  }
  if (auto* r = std::get_if<region_info_request>(&m)) return on_region_info(st, *r);
  if (auto* r = std::get_if<irq_info_request>(&m)) return on_irq_info(st, *r);
  if (auto* io = std::get_if<io_fds_request>(&m)) {
    if (io->index >= st.num_regions()) return outbound::error(EINVAL);
    io_fds_reply rep;
    rep.index = io->index;
    return outbound::of(rep);  // no ioeventfds: count 0
  }
  return nullptr;
}

// One request of the client's, by its message type.
caf::result<outbound_ptr> serve(self_t self, const inbound_ptr& inp) {
  auto& st = self->state;
  if (auto out = serve_at_once(st, inp)) return out;
  auto& in = *inp;
  auto& m = in.msg;
  if (auto* r = std::get_if<region_read_request>(&m)) return read_later(self, inp, *r);
  if (auto* w = std::get_if<region_write_request>(&m)) return write_later(self, inp, *w);
  if (auto* r = std::get_if<set_irqs_request>(&m)) return on_set_irqs(st, *r, in.fds);
  if (auto* r = std::get_if<dma_map_request>(&m)) return on_dma_map(st, *r, in.fds);
  if (auto* r = std::get_if<dma_unmap_request>(&m)) return on_dma_unmap(self, *r);
  if (std::holds_alternative<reset_request>(m)) return on_reset(self);
  if (auto* f = std::get_if<device_feature_request>(&m)) return on_device_feature(self, *f);
  if (auto* r = std::get_if<mig_data_read_request>(&m)) return on_mig_data_read(st, in, *r);
  if (auto* w = std::get_if<mig_data_write_request>(&m)) return on_mig_data_write(st, *w);
  return outbound::error(ENOTSUP);
}

}  // namespace

void impl::device_state::offload(std::function<int()> work, std::function<void(int)> done) {
  uint64_t id = ++next_job;
  jobs.emplace(id, std::move(done));
  // The job holds the model (its work may use it) and a handle to the actor, whose state
  // keeps `done`: an actor gone meanwhile drops the result.
  caf::actor me = caf::actor_cast<caf::actor>(self);
  worker_pool::get().run([work = std::move(work), keep = model, me, id] {
    int r = work();
    caf::anon_send(me, offload_atom::value, id, r);
  });
}

namespace {

caf::behavior device_behavior(self_t self, const std::shared_ptr<device_model>& model, proto::quirks quirks) {
  set_up(self->state, self, model, quirks);
  return {
      [=](inbound_atom, inbound_ptr& in) -> caf::result<outbound_ptr> { return serve(self, in); },
      [=](run_atom, device_task& task) { task(self->state); },
      [=](offload_atom, uint64_t id, int result) {
        auto& jobs = self->state.jobs;
        auto it = jobs.find(id);
        if (it == jobs.end()) return;
        auto done = std::move(it->second);
        jobs.erase(it);
        done(result);
      },
      [=](connup_atom, const proto::negotiated& n) {
        // The spec bounds a DMA message by the client's max_data_xfer_size; QEMU checks
        // it against the server's own (E2BIG), so the smaller of the two serves both.
        self->state.send_max_data = std::min(n.send_max_data(), n.recv_max_data());
        self->state.client_max_data = n.send_max_data();
        self->state.max_dma_maps = n.ours.max_dma_maps;
        self->state.reset_wire();
        if (self->state.wire_known()) CAF_LOG_INFO("DMA messages use " << self->state.wire_name() << " (forced by the quirks)");
        self->state.model->attached();
      },
      [=](connlost_atom) {
        // The client is gone: its windows and eventfds go, the device state stays.
        auto& st = self->state;
        for (auto& [a, w] : st.windows)
          if (!w.unmapping) st.model->dma_unmapped(w.addr, w.size);
        st.drop_connection_state();
        st.dirty.stop();  // its windows are gone; a new client starts its own log
        st.correlation = nullptr;
        for (auto& [rp, out] : st.unmap_waiters) rp.deliver(out);
        st.unmap_waiters.clear();
        // DMA held for the layout probe fails now (its window is gone), not never.
        st.reset_wire();
        auto held = std::move(st.wire_waiters);
        st.wire_waiters.clear();
        for (auto& w : held) w();
        st.qemu_read_busy = false;  // and the DMA_READs queued behind QEMU's last reply
        auto reads = std::move(st.qemu_reads);
        st.qemu_reads.clear();
        for (auto& r : reads) r();
        st.model->detached();
      },
  };
}

// The device actor. Its behavior serves every command; as a direct_handler it also lets a
// dispatcher on the same event loop have the requests answered at once (serve_at_once)
// served in place, while it has nothing else to do: with something in its mailbox (a host's
// task, a DMA reply, the news of a lost connection), the request waits its turn as a message.
class device_actor final : public in_place_actor<device_state>, public direct_handler {
 public:
  device_actor(caf::actor_config& cfg, std::shared_ptr<device_model> model, proto::quirks quirks)
      : in_place_actor(cfg), model_(std::move(model)), quirks_(quirks) {}

  caf::behavior make_behavior() override {
    auto b = device_behavior(this, model_, quirks_);
    model_ = nullptr;  // (the state holds it)
    return b;
  }

  outbound_ptr serve_now(const inbound_ptr& in) override {
    if (!idle()) return nullptr;
    return in_place([&] { return serve_at_once(state, in); }, [] { return outbound::error(EIO); });
  }

 private:
  std::shared_ptr<device_model> model_;
  proto::quirks quirks_;
};

}  // namespace

caf::actor spawn_device(caf::actor_system& sys, std::shared_ptr<device_model> model, proto::quirks quirks) {
  return sys.spawn<device_actor>(std::move(model), quirks);
}

void run_on_device(const caf::actor& device, device_task task) { caf::anon_send(device, run_atom::value, std::move(task)); }

}  // namespace vfu::dev
