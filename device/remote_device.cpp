#include "device/remote_device.hpp"

#include <fcntl.h>
#include <sys/mman.h>

#include <cstring>

#include "actors/handler.hpp"

namespace vfu::dev {

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
uint8_t* guest_memory::find(uint64_t iova, uint64_t len, uint32_t need) {
  uint64_t end;
  if (__builtin_add_overflow(iova, len, &end)) return nullptr;
  auto it = wins_.upper_bound(iova);
  if (it == wins_.begin()) return nullptr;
  --it;
  if (iova < it->first || end > it->first + it->second.size || !(it->second.prot & need)) return nullptr;
  return it->second.host + (iova - it->first);
}
int guest_memory::read(uint64_t iova, uint8_t* out, uint64_t len) {
  std::lock_guard<std::mutex> g(m_);
  auto* p = find(iova, len, dma_flags::read);
  if (!p) return EFAULT;
  std::memcpy(out, p, len);
  return 0;
}
int guest_memory::write(uint64_t iova, const uint8_t* in, uint64_t len) {
  std::lock_guard<std::mutex> g(m_);
  auto* p = find(iova, len, dma_flags::write);
  if (!p) return EFAULT;
  std::memcpy(p, in, len);
  return 0;
}

caf::actor spawn_guest_memory_server(caf::actor_system& sys, std::shared_ptr<guest_memory> mem, quirks q) {
  return spawn_handler(sys, [mem, q](inbound& in) -> outbound_ptr {
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
  });
}

// ---- remote device ------------------------------------------------------------------------
remote_device::~remote_device() {
  for (auto& r : regions_) {
    for (auto& [a, p] : r.areas) ::munmap(p, a.size);
  }
  if (ep_) ep_->close();
}

result<std::unique_ptr<remote_device>> remote_device::open(runtime& rt, const std::string& path,
                                                           std::shared_ptr<guest_memory> mem, endpoint_config cfg) {
  std::unique_ptr<remote_device> d(new remote_device());
  d->mem_ = mem ? mem : std::make_shared<guest_memory>();
  auto h = spawn_guest_memory_server(rt.system(), d->mem_, cfg.quirks);
  auto ep = endpoint::connect(rt, path, cfg, h);
  if (!ep) return ep.err();
  d->ep_ = std::move(ep.value());
  return d;
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
    if (fds.size() > 1) return error(errc::bad_fds, "more than one fd with a region");
    if (!fds.empty()) rr.fd = std::move(fds[0]);
    break;
  }
  if (rr.fd && (rr.info.flags & region_flags::mmap)) {
    int prot = ((rr.info.flags & region_flags::read) ? PROT_READ : 0) | ((rr.info.flags & region_flags::write) ? PROT_WRITE : 0);
    std::vector<sparse_area> areas;
    if (auto* sp = rr.info.sparse()) areas = sp->areas;
    else areas = {{0, rr.info.size}};
    for (auto& a : areas) {
      void* p = ::mmap(nullptr, a.size, prot, MAP_SHARED, rr.fd.get(), off_t(rr.info.offset + a.offset));
      if (p != MAP_FAILED) rr.areas.emplace_back(a, static_cast<uint8_t*>(p));
    }
  }
  regions_.push_back(std::move(rr));
  return {};
}

status remote_device::probe() {
  auto m = ep_->call_decoded(device_info_request{});
  if (!m) return m.err();
  info_ = std::get<device_info_reply>(*m);
  if (info_.num_regions > limits::max_regions || info_.num_irqs > limits::max_irq_types)
    return error(errc::too_large, "device reports too many regions or IRQ types");
  regions_.clear();
  for (uint32_t i = 0; i < info_.num_regions; ++i)
    if (auto s = fetch_region(i); !s) return s;
  irqs_.clear();
  for (uint32_t i = 0; i < info_.num_irqs; ++i) {
    irq_info_request q;
    q.index = i;
    auto r = ep_->call_decoded(q);
    if (!r) return r.err();
    irqs_.push_back(std::get<irq_info_reply>(*r));
  }
  return {};
}

status remote_device::read(uint32_t region, uint64_t offset, void* buf, uint64_t count) {
  if (region < regions_.size())
    for (auto& [a, p] : regions_[region].areas)
      if (offset >= a.offset && offset + count <= a.offset + a.size) {
        std::memcpy(buf, p + (offset - a.offset), count);
        return {};
      }
  uint64_t chunk = std::max<uint64_t>(1, ep_->negotiated().send_max_data());
  auto* out = static_cast<uint8_t*>(buf);
  for (uint64_t done = 0; done < count;) {
    uint32_t n = uint32_t(std::min(chunk, count - done));
    region_read_request r;
    r.offset = offset + done;
    r.region = region;
    r.count = n;
    auto m = ep_->call_decoded(r);
    if (!m) return m.err();
    auto* rep = std::get_if<region_read_reply>(&*m);
    if (!rep || rep->count != n) return error(errc::protocol_violation, "REGION_READ reply with another count");
    std::memcpy(out + done, rep->data.data(), n);
    done += n;
  }
  return {};
}

status remote_device::write(uint32_t region, uint64_t offset, const void* buf, uint64_t count) {
  if (region < regions_.size())
    for (auto& [a, p] : regions_[region].areas)
      if (offset >= a.offset && offset + count <= a.offset + a.size) {
        std::memcpy(p + (offset - a.offset), buf, count);
        return {};
      }
  uint64_t chunk = std::max<uint64_t>(1, ep_->negotiated().send_max_data());
  auto* in = static_cast<const uint8_t*>(buf);
  for (uint64_t done = 0; done < count;) {
    uint32_t n = uint32_t(std::min(chunk, count - done));
    region_write_request w;
    w.offset = offset + done;
    w.region = region;
    w.count = n;
    w.data.assign(in + done, in + done + n);
    auto m = ep_->call_decoded(w);
    if (!m) return m.err();
    done += n;
  }
  return {};
}

void remote_device::write_posted(uint32_t region, uint64_t offset, const void* buf, uint32_t count) {
  region_write_request w;
  w.offset = offset;
  w.region = region;
  w.count = count;
  w.data.assign(static_cast<const uint8_t*>(buf), static_cast<const uint8_t*>(buf) + count);
  ep_->post_noreply(w);
}

status remote_device::dma_map(uint64_t iova, uint64_t size, uint32_t prot, const unique_fd* fd, uint64_t fd_offset) {
  dma_map_request m;
  m.flags = prot;
  m.addr = iova;
  m.size = size;
  m.offset = fd ? fd_offset : 0;
  fd_list fds;
  if (fd) fds.push_back(fd->dup());
  auto r = ep_->call_decoded(m, std::move(fds));
  if (!r) return r.err();
  return {};
}

status remote_device::dma_unmap(uint64_t iova, uint64_t size) {
  dma_unmap_request u;
  u.addr = iova;
  u.size = size;
  auto r = ep_->call_decoded(u);
  if (!r) return r.err();
  return {};
}

status remote_device::dma_unmap_all() {
  dma_unmap_request u;
  u.flags = dma_flags::unmap_all;
  auto r = ep_->call_decoded(u);
  if (!r) return r.err();
  return {};
}

status remote_device::set_irq_eventfds(uint32_t index, uint32_t start, const std::vector<int>& efds) {
  uint32_t per = std::max<uint32_t>(1, ep_->negotiated().send_max_fds());
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
    done += n;
  }
  return {};
}

status remote_device::irq_action(uint32_t index, uint32_t start, uint32_t count, uint32_t action) {
  set_irqs_request s;
  s.flags = irq_set_flags::data_none | action;
  s.index = index;
  s.start = start;
  s.count = count;
  auto r = ep_->call_decoded(s);
  if (!r) return r.err();
  return {};
}

status remote_device::irq_disable(uint32_t index) { return irq_action(index, 0, 0, irq_set_flags::action_trigger); }

status remote_device::reset() {
  auto r = ep_->call_decoded(reset_request{});
  if (!r) return r.err();
  return {};
}

}  // namespace vfu::dev
