#include "protocol/bulk_frames.hpp"
#include "device/remote_device.hpp"

#include <fcntl.h>
#include <sys/mman.h>

#include <cstring>

#include "actors/handler.hpp"

namespace vfu::dev {

namespace {
// Reads at least this large ask for their data to land straight in the caller's buffer.
constexpr size_t bulk_landing_min = 64 * 1024;
// States in which a device takes enumeration, DMA_MAP and SET_IRQS.
bool takes_restore(proto::mig_state s) {
  return s != proto::mig_state::stop && s != proto::mig_state::stop_copy && s != proto::mig_state::error;
}
}  // namespace

using namespace proto;

// ---- guest memory -----------------------------------------------------------------------
void guest_memory::add(uint64_t iova, uint64_t size, uint8_t* host, uint32_t prot) {
  std::lock_guard<std::mutex> g(m_);
  wins_[iova] = win{size, host, prot};
}
void guest_memory::remove(uint64_t iova) {
  std::lock_guard<std::mutex> g(m_);
  wins_.erase(iova);
}
const guest_memory::entry* guest_memory::find(uint64_t iova, uint64_t len, uint32_t need) {
  uint64_t end;
  if (__builtin_add_overflow(iova, len, &end)) return nullptr;
  auto it = wins_.upper_bound(iova);
  if (it == wins_.begin()) return nullptr;
  --it;
  if (iova < it->first || end > it->first + it->second.size || !(it->second.prot & need)) return nullptr;
  return &*it;
}
void guest_memory::set_access(access_fn fn) {
  std::lock_guard<std::mutex> g(m_);
  access_ = std::move(fn);
}
int guest_memory::access(uint64_t iova, uint8_t* buf, uint64_t len, bool write) {
  access_fn fn;
  {
    std::lock_guard<std::mutex> g(m_);
    auto* e = find(iova, len, write ? dma_flags::write : dma_flags::read);
    if (!e) return EFAULT;
    if (uint8_t* host = e->second.host) {
      uint8_t* at = host + (iova - e->first);
      // (A zero-length transfer may come with no buffer: the layout probe writes none.)
      if (len) write ? std::memcpy(at, buf, len) : std::memcpy(buf, at, len);
      return 0;
    }
    if (!len) return 0;  // (the layout probe: nothing to move, and maybe no buffer)
    fn = access_;
  }
  return fn ? fn(iova, buf, len, write) : EFAULT;  // (the host's code runs without our lock)
}
int guest_memory::read(uint64_t iova, uint8_t* out, uint64_t len) { return access(iova, out, len, false); }
int guest_memory::write(uint64_t iova, const uint8_t* in, uint64_t len) {
  return access(iova, const_cast<uint8_t*>(in), len, true);  // (only read from)
}

caf::actor spawn_guest_memory_server(caf::actor_system& sys, std::shared_ptr<guest_memory> mem, quirks q, bool own_thread) {
  handler_fn fn = [mem, q](inbound& in) -> outbound_ptr {
    if (!in.fds.empty()) return outbound::error(EINVAL);  // nothing the server sends carries fds
    if (auto* r = std::get_if<dma_read_request>(&in.msg)) {
      dma_read_reply rep{*r, std::vector<uint8_t>(r->count)};
      if (q.qemu_dma_layout) rep.layout = dma_layout::qemu;
      if (int e = mem->read(r->addr, rep.data.data(), r->count)) return outbound::error(e);
      return outbound::of(std::move(rep));
    }
    if (auto* w = std::get_if<dma_write_request>(&in.msg)) {
      if (int e = mem->write(w->addr, w->data.data(), w->count)) return outbound::error(e);
      dma_write_reply rep{{w->addr, w->count, dma_layout::spec}};
      if (q.qemu_dma_layout) rep.layout = dma_layout::empty;
      return outbound::of(rep);
    }
    return outbound::error(ENOSYS);  // QEMU's answer to server->client commands it lacks
  };
  return own_thread ? sys.spawn<caf::detached>(function_handler, std::move(fn)) : spawn_handler(sys, std::move(fn));
}

// ---- remote device ------------------------------------------------------------------------
remote_device::~remote_device() {
  {
    std::lock_guard<std::mutex> g(m_);
    stop_ = true;
  }
  cv_.notify_all();
  if (ep_) ep_->on_state(nullptr);
  if (replayer_.joinable()) replayer_.join();
  unmap_regions();
  if (ep_) ep_->close();
}

void remote_device::unmap_regions() {
  for (auto& r : regions_)
    for (auto& [a, p] : r.areas) ::munmap(p, a.size);
  regions_.clear();
}

result<std::unique_ptr<remote_device>> remote_device::open(runtime& rt, const std::string& path,
                                                           std::shared_ptr<guest_memory> mem, endpoint_config cfg,
                                                           remote_options opts) {
  std::unique_ptr<remote_device> d(new remote_device());
  d->mem_ = mem ? mem : std::make_shared<guest_memory>();
  d->opts_ = std::move(opts);
  auto h = spawn_guest_memory_server(rt.system(), d->mem_, cfg.quirks, opts.dma_own_thread);
  auto ep = endpoint::connect(rt, path, cfg, h);
  if (!ep) return ep.err();
  d->ep_ = std::move(ep.value());
  auto* raw = d.get();
  // Runs on a CAF worker: only flips flags and wakes the replay thread.
  d->ep_->on_state([raw](conn_state s, const error&) {
    {
      std::lock_guard<std::mutex> g(raw->m_);
      if (s != conn_state::ready) raw->ready_ = false;
    }
    raw->cv_.notify_all();
  });
  d->replayer_ = std::thread([raw] { raw->replay_loop(); });
  return d;
}

// Ready = replay done (ready_) and the connection up. The endpoint's state changes before
// its callback clears ready_, so both are checked.
bool remote_device::ready() {
  std::lock_guard<std::mutex> g(m_);
  return ready_ && ep_->state() == conn_state::ready;
}

bool remote_device::wait_ready(std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> g(m_);
  return cv_.wait_for(g, timeout, [&] { return (ready_ && ep_->state() == conn_state::ready) || stop_; }) && ready_;
}

uint64_t remote_device::replays() {
  std::lock_guard<std::mutex> g(m_);
  return replays_;
}

error remote_device::last_replay_error() {
  std::lock_guard<std::mutex> g(m_);
  return replay_error_;
}

status remote_device::gate() {
  std::unique_lock<std::mutex> g(m_);
  auto up = [&] { return ready_ && ep_->state() == conn_state::ready; };
  if (up()) return {};
  if (opts_.outage == outage_policy::fail_fast) return error(errc::not_connected, "device is reconnecting");
  if (!cv_.wait_for(g, opts_.outage_wait, [&] { return up() || stop_; }))
    return error(errc::timeout, "device did not come back within the outage wait");
  if (!up()) return error(errc::not_connected, "device closed");
  return {};
}

void remote_device::replay_loop() {
  std::unique_lock<std::mutex> g(m_);
  for (;;) {
    cv_.wait(g, [&] {
      return stop_ || (ep_->state() == conn_state::ready && ep_->generation() != seen_generation_);
    });
    if (stop_) return;
    uint64_t gen = ep_->generation();
    g.unlock();
    status s = replay();
    g.lock();
    if (!s) {
      // Leave the device not ready; the next reconnect tries again.
      replay_error_ = s.err();
      seen_generation_ = gen;
      continue;
    }
    seen_generation_ = gen;
    ready_ = true;
    ++replays_;
    cv_.notify_all();
    auto cb = opts_.on_reset;
    g.unlock();
    if (cb) cb(gen);
    g.lock();
  }
}

status remote_device::replay() {
  // A server that kept the device mid-migration refuses what a restore sends (the state
  // machine's gating): leave the migration alone until the device leaves those states.
  device_feature_request q;
  q.argsz = 16;
  q.flags = feature_flags::get | feature::mig_device_state;
  auto m = feature(q);  // (an error: the device has no migration; restore as usual)
  auto* rep = m ? std::get_if<device_feature_reply>(&*m) : nullptr;
  auto* st = rep ? std::get_if<feature_device_state>(&rep->data) : nullptr;
  if (st && !takes_restore(mig_state(st->device_state))) {
    restore_deferred_ = true;
    return {};
  }
  std::unique_lock<std::shared_mutex> w(probe_m_);
  return restore_locked();
}

status remote_device::restore_locked() {
  restore_deferred_ = false;
  // The server restarted: its regions' fds and sizes may have changed.
  if (auto s = probe_locked(); !s) return s;
  std::lock_guard<std::mutex> g(records_m_);
  for (auto& [iova, r] : dma_records_) {
    dma_map_request m;
    m.flags = r.prot;
    m.addr = iova;
    m.size = r.size;
    m.offset = r.fd ? r.fd_offset : 0;
    fd_list fds;
    if (r.fd) fds.push_back(r.fd.dup());
    auto rep = ep_->call_decoded(m, std::move(fds));
    if (!rep) return error(rep.err().code, rep.err().errnum, "replaying DMA_MAP: " + rep.err().message());
  }
  for (auto& [key, fd] : irq_records_) {
    set_irqs_request q;
    q.flags = irq_set_flags::data_eventfd | irq_set_flags::action_trigger;
    q.index = key.first;
    q.start = key.second;
    q.count = 1;
    fd_list fds;
    fds.push_back(fd.dup());
    auto rep = ep_->call_decoded(q, std::move(fds));
    if (!rep) return error(rep.err().code, rep.err().errnum, "replaying SET_IRQS: " + rep.err().message());
  }
  return {};
}

status remote_device::fetch_region(uint32_t index) {
  region_info_request req;
  req.index = index;
  req.argsz = 32;
  remote_region rr;
  for (int attempt = 0; attempt < 2; ++attempt) {
    fd_list fds;
    auto m = ep_->call_decoded(req, {}, fds);
    if (!m) return m.err();
    auto* rep = std::get_if<region_info_reply>(&*m);
    if (!rep || rep->index != index) return error(errc::protocol_violation, "GET_REGION_INFO answered for another region");
    if (rep->argsz > req.argsz && attempt == 0) {  // caps did not fit: ask again with the size it needs
      if (rep->argsz > limits::max_region_info_argsz) return error(errc::too_large, "region info argsz");
      req.argsz = rep->argsz;
      continue;
    }
    rr.info = *rep;
    if (!fds.empty() && !(rep->flags & region_flags::mmap))
      return error(errc::bad_fds, "region " + std::to_string(index) + " sent an fd without MMAP");
    if (!fds.empty()) rr.fd = std::move(fds[0]);
    break;
  }
  if (rr.fd && (rr.info.flags & region_flags::mmap)) {
    int prot = ((rr.info.flags & region_flags::read) ? PROT_READ : 0) | ((rr.info.flags & region_flags::write) ? PROT_WRITE : 0);
    std::vector<sparse_area> areas;
    if (auto* sp = rr.info.sparse()) areas = sp->areas;
    else areas = {{0, rr.info.size}};
    for (auto& a : areas) {
      uint64_t off;
      if (__builtin_add_overflow(rr.info.offset, a.offset, &off) || a.size == 0) continue;
      void* p = ::mmap(nullptr, a.size, prot, MAP_SHARED, rr.fd.get(), off_t(off));
      if (p != MAP_FAILED) rr.areas.emplace_back(a, static_cast<uint8_t*>(p));
    }
  }
  regions_.push_back(std::move(rr));
  return {};
}

status remote_device::probe() {
  std::unique_lock<std::shared_mutex> w(probe_m_);
  return probe_locked();
}

status remote_device::probe_locked() {
  auto m = ep_->call_decoded(device_info_request{});
  if (!m) return m.err();
  auto* di = std::get_if<device_info_reply>(&*m);
  if (!di) return error(errc::protocol_violation, "DEVICE_GET_INFO answered with another message");
  info_ = *di;
  unmap_regions();
  for (uint32_t i = 0; i < info_.num_regions; ++i)
    if (auto s = fetch_region(i); !s) return s;
  irqs_.clear();
  for (uint32_t i = 0; i < info_.num_irqs; ++i) {
    irq_info_request q;
    q.index = i;
    auto r = ep_->call_decoded(q);
    if (!r) return r.err();
    auto* ii = std::get_if<irq_info_reply>(&*r);
    if (!ii || ii->index != i) return error(errc::protocol_violation, "GET_IRQ_INFO answered for another index");
    irqs_.push_back(*ii);
  }
  return {};
}

uint8_t* remote_device::mapping(uint32_t region, uint64_t offset, uint64_t count) const {
  uint64_t end;
  if (region >= regions_.size() || __builtin_add_overflow(offset, count, &end)) return nullptr;
  for (auto& [a, p] : regions_[region].areas)
    if (offset >= a.offset && end <= a.offset + a.size) return p + (offset - a.offset);
  return nullptr;
}

status remote_device::fence() {
  uint64_t posted = posted_.load(std::memory_order_acquire);
  if (fenced_.load(std::memory_order_acquire) >= posted) return {};
  // The server handles commands in order: any answer says the posted writes before it are
  // done. DEVICE_GET_INFO has no side effects.
  auto r = ep_->call(device_info_request{});
  if (auto e = r.failure()) return e;
  fenced(posted);
  return {};
}

void remote_device::fenced(uint64_t posted) {
  uint64_t f = fenced_.load(std::memory_order_relaxed);
  while (f < posted && !fenced_.compare_exchange_weak(f, posted, std::memory_order_release)) {
  }
}

status remote_device::read(uint32_t region, uint64_t offset, void* buf, uint64_t count) {
  if (auto s = gate(); !s) return s;
  std::shared_lock<std::shared_mutex> rl(probe_m_);
  if (uint8_t* p = mapping(region, offset, count)) {
    if (auto s = fence(); !s) return s;
    std::memcpy(buf, p, count);
    return {};
  }
  uint64_t posted = posted_.load(std::memory_order_acquire);
  uint64_t chunk = std::max<uint64_t>(1, ep_->limits().send_max_data);
  auto* out = static_cast<uint8_t*>(buf);
  for (uint64_t done = 0; done < count;) {
    uint32_t n = uint32_t(std::min(chunk, count - done));
    region_access a{offset + done, region, n};
    // Bulk data is received straight into `buf` when this thread reads its own reply
    // (reply_landing); what did not land there is copied from the received frame.
    reply_landing land;
    land.frame_offset = header_size + region_access_size;
    land.dest = out + done;
    land.len = n;
    auto r = ep_->call_frame(make_region_frame(0, command::region_read, false, a), std::chrono::milliseconds(0),
                             n >= bulk_landing_min ? &land : nullptr);
    if (auto e = r.failure()) return e;
    const uint8_t* data = region_read_reply_data(*r.reply, a);
    if (!data) return error(errc::protocol_violation, "REGION_READ reply does not match the request");
    std::memcpy(out + done, data, land.from);
    std::memcpy(out + done + land.to, data + land.to, n - land.to);
    done += n;
  }
  fenced(posted);
  return {};
}

status remote_device::write(uint32_t region, uint64_t offset, const void* buf, uint64_t count) {
  if (auto s = gate(); !s) return s;
  std::shared_lock<std::shared_mutex> rl(probe_m_);
  if (uint8_t* p = mapping(region, offset, count)) {
    if (auto s = fence(); !s) return s;
    std::memcpy(p, buf, count);
    return {};
  }
  uint64_t posted = posted_.load(std::memory_order_acquire);
  uint64_t chunk = std::max<uint64_t>(1, ep_->limits().send_max_data);
  auto* in = static_cast<const uint8_t*>(buf);
  for (uint64_t done = 0; done < count;) {
    uint32_t n = uint32_t(std::min(chunk, count - done));
    region_access a{offset + done, region, n};
    // The data goes from `buf` into the socket (gathered after the head): no copy.
    auto r = ep_->call_frame(make_region_head(0, command::region_write, false, a), std::chrono::milliseconds(0), nullptr,
                             byte_view{in + done, n});
    if (auto e = r.failure()) return e;
    auto m = decode(*r.reply, ep_->config().quirks);
    auto* rep = m ? std::get_if<region_write_reply>(&*m) : nullptr;
    if (!rep || rep->count != n || rep->region != region || rep->offset != a.offset)
      return error(errc::protocol_violation, "REGION_WRITE reply does not match the request");
    done += n;
  }
  fenced(posted);
  return {};
}

status remote_device::write_posted(uint32_t region, uint64_t offset, const void* buf, uint32_t count) {
  if (auto s = gate(); !s) return s;
  {
    std::shared_lock<std::shared_mutex> rl(probe_m_);
    if (uint8_t* p = mapping(region, offset, count)) {  // plain memory: write it, in its turn
      if (auto s = fence(); !s) return s;
      std::memcpy(p, buf, count);
      return {};
    }
  }
  if (count > ep_->limits().send_max_data) return error(errc::too_large, "posted write above max_data_xfer_size");
  ep_->post_frame(make_region_frame(0, command::region_write, false, region_access{offset, region, count},
                                    static_cast<const uint8_t*>(buf), hflags::no_reply));
  posted_.fetch_add(1, std::memory_order_release);  // (once it is on its way: fence())
  return {};
}

status remote_device::write_posted_many(const std::vector<posted_write>& writes) {
  if (auto s = gate(); !s) return s;
  for (auto& w : writes)
    if (w.count == 0 || w.count > limits::write_multi_data) return error(errc::bad_value, "posted write of 0 or more than 8 bytes");
  if (!ep_->limits().write_multiple) {
    for (auto& w : writes)
      if (auto s = write_posted(w.region, w.offset, w.data.data(), w.count); !s) return s;
    return {};
  }
  constexpr size_t per_message = 200;  // QEMU's batch size
  for (size_t i = 0; i < writes.size(); i += per_message) {
    write_multi_request m;
    for (size_t k = i; k < std::min(writes.size(), i + per_message); ++k)
      m.writes.push_back(write_multi_entry{writes[k].offset, writes[k].region, writes[k].count, writes[k].data});
    ep_->post_noreply(m);
    posted_.fetch_add(1, std::memory_order_release);
  }
  return {};
}

status remote_device::dma_map(uint64_t iova, uint64_t size, uint32_t prot, const unique_fd* fd, uint64_t fd_offset) {
  if (auto s = gate(); !s) return s;
  dma_map_request m;
  m.flags = prot;
  m.addr = iova;
  m.size = size;
  m.offset = fd ? fd_offset : 0;
  fd_list fds;
  if (fd) fds.push_back(fd->dup());
  auto r = ep_->call_decoded(m, std::move(fds));
  if (!r) return r.err();
  std::lock_guard<std::mutex> g(records_m_);
  dma_records_[iova] = dma_record{size, prot, fd ? fd->dup() : unique_fd(), fd_offset};
  return {};
}

status remote_device::dma_unmap(uint64_t iova, uint64_t size) {
  if (auto s = gate(); !s) return s;
  dma_unmap_request u;
  u.addr = iova;
  u.size = size;
  auto r = ep_->call_decoded(u);
  if (!r) return r.err();
  std::lock_guard<std::mutex> g(records_m_);
  dma_records_.erase(iova);
  return {};
}

status remote_device::dma_unmap_all() {
  if (auto s = gate(); !s) return s;
  dma_unmap_request u;
  u.flags = dma_flags::unmap_all;
  auto r = ep_->call_decoded(u);
  if (!r) return r.err();
  std::lock_guard<std::mutex> g(records_m_);
  dma_records_.clear();
  return {};
}

status remote_device::set_irq_eventfds(uint32_t index, uint32_t start, const std::vector<int>& efds) {
  if (auto s = gate(); !s) return s;
  uint32_t per = std::max<uint32_t>(1, ep_->limits().send_max_fds);
  for (size_t done = 0; done < efds.size();) {
    uint32_t n = uint32_t(std::min<size_t>(per, efds.size() - done));
    set_irqs_request s;
    s.flags = irq_set_flags::data_eventfd | irq_set_flags::action_trigger;
    s.index = index;
    s.start = start + uint32_t(done);
    s.count = n;
    fd_list fds;
    for (uint32_t i = 0; i < n; ++i) {
      unique_fd dup(::fcntl(efds[done + i], F_DUPFD_CLOEXEC, 0));  // the caller keeps its own
      if (!dup) return error(errc::io_error, errno, "dup eventfd");
      fds.push_back(std::move(dup));
    }
    auto r = ep_->call_decoded(s, std::move(fds));
    if (!r) return r.err();
    std::lock_guard<std::mutex> g(records_m_);
    for (uint32_t i = 0; i < n; ++i)
      irq_records_[{index, s.start + i}] = unique_fd(::fcntl(efds[done + i], F_DUPFD_CLOEXEC, 0));
    done += n;
  }
  return {};
}

status remote_device::irq_action(uint32_t index, uint32_t start, uint32_t count, uint32_t action) {
  if (auto s = gate(); !s) return s;
  set_irqs_request s;
  s.flags = irq_set_flags::data_none | action;
  s.index = index;
  s.start = start;
  s.count = count;
  auto r = ep_->call_decoded(s);
  if (!r) return r.err();
  if (count == 0 && action == irq_set_flags::action_trigger) {  // disable: forget the eventfds
    std::lock_guard<std::mutex> g(records_m_);
    for (auto it = irq_records_.begin(); it != irq_records_.end();)
      it = it->first.first == index ? irq_records_.erase(it) : std::next(it);
  }
  return {};
}

status remote_device::irq_disable(uint32_t index) { return irq_action(index, 0, 0, irq_set_flags::action_trigger); }

result<io_fds_reply> remote_device::io_fds(uint32_t region, fd_list& fds) {
  if (auto s = gate(); !s) return s.err();
  io_fds_request q;
  q.index = region;
  for (int attempt = 0; attempt < 2; ++attempt) {
    fds.clear();
    auto m = ep_->call_decoded(q, {}, fds);
    if (!m) return m.err();
    auto* rep = std::get_if<io_fds_reply>(&*m);
    if (!rep || rep->index != region) return error(errc::protocol_violation, "GET_REGION_IO_FDS answered for another region");
    if (rep->count && rep->entries.empty() && attempt == 0) {  // head only: ask with room for the entries
      q.argsz = uint32_t(16 + size_t(rep->count) * 48);
      continue;
    }
    return *rep;
  }
  return error(errc::protocol_violation, "GET_REGION_IO_FDS never returned its entries");
}

status remote_device::reset() {
  if (auto s = gate(); !s) return s;
  auto r = ep_->call_decoded(reset_request{});
  if (!r) return r.err();
  return {};
}

}  // namespace vfu::dev
