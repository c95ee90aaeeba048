// vfu.cpp: the C API (include/vfu/vfu.h) over the C++ one. A C device is a device_model
// that answers later (device.hpp): its accesses go to a queue that the host's thread, or one
// of ours, empties by running the callbacks; the device actor never waits for the host, so
// a callback may do DMA, which the actor serves meanwhile. The client role is remote_device.
#include "vfu/vfu.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <deque>
#include <future>
#include <mutex>
#include <string>
#include <thread>

#include "device/device.hpp"
#include "device/remote_device.hpp"

using namespace vfu;

namespace {

thread_local std::string t_error;

// The one runtime every handle shares: it starts with the first and stops with the last.
std::shared_ptr<runtime> shared_runtime() {
  static std::mutex m;
  static std::weak_ptr<runtime> w;
  std::lock_guard<std::mutex> g(m);
  auto r = w.lock();
  if (!r) {
    r = std::make_shared<runtime>();
    w = r;
  }
  return r;
}

int neg(const proto::error& e) { return -proto::to_wire_errno(e); }

// A callback's result (0 or a negative errno) as the framework's errno.
int errno_of(int r) { return r == 0 ? 0 : (r < 0 && r > -4096 ? -r : EIO); }

// Runs `fn`, turning an escaping exception into -ENOMEM or -EIO with its message.
template <class F>
int guarded(std::string* err, F&& fn) noexcept {
  try {
    return fn();
  } catch (const std::bad_alloc&) {
    t_error = "out of memory";
  } catch (const std::exception& e) {
    t_error = e.what();
  } catch (...) {
    t_error = "unknown error";
  }
  try {
    if (err) *err = t_error;
  } catch (...) {
  }
  return t_error == "out of memory" ? -ENOMEM : -EIO;
}

// Callbacks waiting for a thread to run them, with an eventfd readable while any wait.
class work_queue {
 public:
  work_queue() : efd_(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) {}
  int fd() const { return efd_.get(); }
  bool ok() const { return bool(efd_); }
  // After close(), work is run with `closing` set: it answers without calling the host.
  void push(std::function<void(bool closing)> f) {
    {
      std::lock_guard<std::mutex> g(m_);
      if (!closed_) {
        q_.push_back(std::move(f));
        uint64_t one = 1;
        (void)!::write(efd_.get(), &one, sizeof one);
        return;
      }
    }
    f(true);
  }
  int run() {
    std::lock_guard<std::mutex> one_at_a_time(run_m_);
    std::deque<std::function<void(bool)>> batch;
    {
      std::lock_guard<std::mutex> g(m_);
      batch.swap(q_);
      uint64_t n;
      (void)!::read(efd_.get(), &n, sizeof n);
    }
    for (auto& f : batch) f(false);
    return int(batch.size());
  }
  // No more callbacks: what waits is answered without them.
  void close() {
    std::deque<std::function<void(bool)>> rest;
    {
      std::lock_guard<std::mutex> g(m_);
      closed_ = true;
      rest.swap(q_);
    }
    std::lock_guard<std::mutex> one_at_a_time(run_m_);  // (and none still running)
    for (auto& f : rest) f(true);
  }

 private:
  proto::unique_fd efd_;
  std::mutex m_, run_m_;
  std::deque<std::function<void(bool)>> q_;
  bool closed_ = false;
};

// A device the host describes and whose callbacks it gives (vfub_device_*).
class c_model : public dev::device_model {
 public:
  c_model(dev::device_spec spec, vfub_callbacks cb, void* opaque, std::shared_ptr<work_queue> q)
      : spec_(std::move(spec)), cb_(cb), opaque_(opaque), q_(std::move(q)) {}
  const dev::device_spec& spec() const override { return spec_; }
  bool answers_later() const override { return true; }
  void region_access_later(uint32_t region, uint64_t offset, uint8_t* buf, uint32_t count, bool write,
                           std::function<void(int)> done) override {
    q_->push([this, region, offset, buf, count, write, done](bool closing) {
      if (closing || !cb_.region_access) return done(closing ? ENODEV : EINVAL);
      done(errno_of(cb_.region_access(opaque_, region, offset, buf, count, write)));
    });
  }
  void reset_later(std::function<void()> done) override {
    q_->push([this, done](bool closing) {
      if (!closing && cb_.reset) cb_.reset(opaque_);
      done();
    });
  }
  void dma_mapped(uint64_t iova, uint64_t size, uint32_t prot) override {
    if (cb_.dma_map)
      q_->push([this, iova, size, prot](bool closing) {
        if (!closing) cb_.dma_map(opaque_, iova, size, prot);
      });
  }
  void dma_unmapped(uint64_t iova, uint64_t size) override {
    if (cb_.dma_unmap)
      q_->push([this, iova, size](bool closing) {
        if (!closing) cb_.dma_unmap(opaque_, iova, size);
      });
  }

 private:
  dev::device_spec spec_;
  vfub_callbacks cb_;
  void* opaque_;
  std::shared_ptr<work_queue> q_;
};

// Waits for a task's result on the device actor; -ETIMEDOUT, or -ENODEV if it is gone.
template <class T>
int await(std::future<T>& f, T& out, std::chrono::seconds limit = std::chrono::seconds(120)) {
  if (f.wait_for(limit) != std::future_status::ready) return -ETIMEDOUT;
  try {
    out = f.get();
  } catch (const std::future_error&) {
    return -ENODEV;  // the task was dropped with the actor
  }
  return 0;
}

}  // namespace

struct vfub_device {
  dev::device_spec spec;
  vfub_callbacks cb{};
  void* opaque = nullptr;
};

struct vfub_server {
  std::shared_ptr<runtime> rt;
  std::shared_ptr<work_queue> q;
  std::shared_ptr<c_model> model;
  caf::actor dev;
  std::unique_ptr<endpoint> ep;
  int mode = VFUB_SERVE_OWN_THREAD;
  std::thread th;
  std::atomic<bool> stop{false};
  std::mutex err_m;
  std::string err;
  std::string last_error() {
    std::lock_guard<std::mutex> g(err_m);
    return err;
  }
  int fail(int e, const std::string& why) {
    t_error = why;
    std::lock_guard<std::mutex> g(err_m);
    err = why;
    return e;
  }
};

struct vfub_client {
  std::shared_ptr<runtime> rt;
  std::shared_ptr<dev::guest_memory> mem = std::make_shared<dev::guest_memory>();
  std::unique_ptr<dev::remote_device> d;
  std::mutex err_m;
  std::string err;
  int fail(const proto::error& e) {
    t_error = e.message();
    std::lock_guard<std::mutex> g(err_m);
    err = t_error;
    return neg(e);
  }
  int check(const proto::status& s) { return s ? 0 : fail(s.err()); }
};

extern "C" {

const char* vfub_last_error(void) { return t_error.c_str(); }

// ---- device descriptions --------------------------------------------------------------

vfub_device* vfub_device_new(const vfub_pci_ids* ids) {
  if (!ids) {
    t_error = "no PCI IDs";
    errno = EINVAL;
    return nullptr;
  }
  try {
    auto* d = new vfub_device;
    auto& i = d->spec.ids;
    i.vendor = ids->vendor;
    i.device = ids->device;
    i.subsys_vendor = ids->subsystem_vendor;
    i.subsys_id = ids->subsystem;
    i.class_code = ids->class_code & 0xffffff;
    i.revision = ids->revision;
    d->spec.pm_capability = false;
    d->spec.intx_vectors = 1;
    return d;
  } catch (...) {
    t_error = "out of memory";
    errno = ENOMEM;
    return nullptr;
  }
}

void vfub_device_free(vfub_device* dev) { delete dev; }

int vfub_device_set_bar(vfub_device* dev, uint32_t bar, uint64_t size, uint32_t flags) {
  if (!dev) return -EINVAL;
  return guarded(nullptr, [&] {
    auto bad = [&](const std::string& why) {
      t_error = "BAR " + std::to_string(bar) + ": " + why;
      return -EINVAL;
    };
    if (bar > 5) return bad("there are six BARs, 0 to 5");
    if (size < 16 || (size & (size - 1))) return bad("size " + std::to_string(size) + " is not a power of two of at least 16");
    if (flags & ~uint32_t(VFUB_BAR_IO | VFUB_BAR_MEM64 | VFUB_BAR_PREFETCH | VFUB_REGION_SHARED | VFUB_REGION_READ_ONLY))
      return bad("unknown flags");
    bool io = flags & VFUB_BAR_IO, mem64 = flags & VFUB_BAR_MEM64;
    if (io && (mem64 || (flags & VFUB_BAR_PREFETCH))) return bad("an I/O BAR is neither 64-bit nor prefetchable");
    if (io && size > 256) return bad("an I/O BAR holds at most 256 bytes");
    if (mem64 && bar == 5) return bad("a 64-bit BAR takes the next slot, and BAR 5 has none");
    if (bar > 0 && dev->spec.bars[bar - 1].mem64) return bad("BAR " + std::to_string(bar - 1) + " is 64-bit and takes this slot");
    if (mem64 && dev->spec.bars[bar + 1].size) return bad("a 64-bit BAR needs BAR " + std::to_string(bar + 1) + " unused");
    if (io && (flags & VFUB_REGION_SHARED)) return bad("I/O space cannot be mmapped");
    dev->spec.bars[bar] = dev::bar_spec{size, io, mem64, bool(flags & VFUB_BAR_PREFETCH)};
    auto& r = dev->spec.regions[bar];
    r = dev::region_spec{};
    r.size = size;
    r.writable = !(flags & VFUB_REGION_READ_ONLY);
    r.shared_memory = flags & VFUB_REGION_SHARED;
    return 0;
  });
}

int vfub_device_add_region(vfub_device* dev, uint64_t size, uint32_t flags, uint32_t type, uint32_t subtype) {
  if (!dev) return -EINVAL;
  if (size == 0 || size > (uint64_t(1) << 40)) return t_error = "a region holds 1 byte to 1 TiB", -EINVAL;
  if (flags & ~uint32_t(VFUB_REGION_SHARED | VFUB_REGION_READ_ONLY)) return t_error = "unknown region flags", -EINVAL;
  if (dev->spec.extra_regions.size() >= 64) return t_error = "at most 64 device-specific regions", -ENOSPC;
  return guarded(nullptr, [&] {
    dev::region_spec r;
    r.size = size;
    r.writable = !(flags & VFUB_REGION_READ_ONLY);
    r.shared_memory = flags & VFUB_REGION_SHARED;
    r.type = type;
    r.subtype = subtype;
    dev->spec.extra_regions.push_back(r);
    return int(9 + dev->spec.extra_regions.size() - 1);
  });
}

int vfub_device_add_mmap_area(vfub_device* dev, uint32_t region, uint64_t offset, uint64_t size) {
  if (!dev) return -EINVAL;
  bool extra = region >= 9 && region - 9 < dev->spec.extra_regions.size();
  if (region > 5 && !extra) return t_error = "no region " + std::to_string(region), -EINVAL;
  auto& r = extra ? dev->spec.extra_regions[region - 9] : dev->spec.regions[region];
  if (!r.shared_memory) return t_error = "region " + std::to_string(region) + " is not VFUB_REGION_SHARED", -EINVAL;
  if (size == 0 || offset % 4096 || size % 4096 || offset > r.size || size > r.size - offset)
    return t_error = "an mmap area must be page-aligned and inside its region", -EINVAL;
  return guarded(nullptr, [&] {
    r.sparse.push_back(proto::sparse_area{offset, size});
    return 0;
  });
}

int vfub_device_set_irqs(vfub_device* dev, int intx, uint32_t msi_vectors, uint32_t msix_vectors, uint32_t msix_bar,
                         uint32_t table_offset, uint32_t pba_offset) {
  if (!dev) return -EINVAL;
  if (msi_vectors > 32 || (msi_vectors & (msi_vectors - 1))) return t_error = "MSI vectors: 0, 1, 2, 4, 8, 16 or 32", -EINVAL;
  if (msix_vectors > 2048) return t_error = "MSI-X vectors: at most 2048", -EINVAL;
  if (msix_vectors) {
    uint64_t tlen = uint64_t(msix_vectors) * 16, plen = (uint64_t(msix_vectors) + 63) / 64 * 8;
    if (msix_bar > 5 || !dev->spec.bars[msix_bar].size || dev->spec.bars[msix_bar].io)
      return t_error = "the MSI-X BAR must be a memory BAR set before", -EINVAL;
    uint64_t size = dev->spec.bars[msix_bar].size;
    if (table_offset % 8 || pba_offset % 8 || table_offset + tlen > size || pba_offset + plen > size ||
        (table_offset < pba_offset + plen && pba_offset < table_offset + tlen))
      return t_error = "the MSI-X table and PBA must be 8-byte aligned, inside the BAR, apart", -EINVAL;
    if (dev->spec.regions[msix_bar].shared_memory)
      return t_error = "the MSI-X table cannot live in VFUB_REGION_SHARED memory", -EINVAL;
  }
  dev->spec.intx_vectors = intx ? 1 : 0;
  dev->spec.ids.interrupt_pin = intx ? 1 : 0;
  dev->spec.msi_vectors = uint16_t(msi_vectors);
  dev->spec.msix = dev::msix_spec{uint16_t(msix_vectors), uint8_t(msix_bar), table_offset, pba_offset};
  return 0;
}

int vfub_device_set_callbacks(vfub_device* dev, const vfub_callbacks* cb, void* opaque) {
  if (!dev || !cb) return -EINVAL;
  dev->cb = *cb;
  dev->opaque = opaque;
  return 0;
}

// ---- serving --------------------------------------------------------------------------

static vfub_server* serve(const vfub_device* dev, int mode, std::string* path, int fd) {
  proto::unique_fd owned(fd);
  if (!dev || (mode != VFUB_SERVE_OWN_THREAD && mode != VFUB_SERVE_HOST_LOOP)) {
    t_error = !dev ? "no device" : "unknown serving mode";
    errno = EINVAL;
    return nullptr;
  }
  vfub_server* s = nullptr;
  int r = guarded(nullptr, [&] {
    auto srv = std::make_unique<vfub_server>();
    srv->mode = mode;
    srv->q = std::make_shared<work_queue>();
    if (!srv->q->ok()) return t_error = std::string("eventfd: ") + std::strerror(errno), -errno;
    srv->rt = shared_runtime();
    srv->model = std::make_shared<c_model>(dev->spec, dev->cb, dev->opaque, srv->q);
    srv->dev = dev::spawn_device(srv->rt->system(), srv->model);
    endpoint_config cfg;
    cfg.offer.write_multiple = false;  // REGION_WRITE_MULTI would bypass the callbacks' thread
    auto ep = path ? endpoint::listen(*srv->rt, *path, cfg, srv->dev) : endpoint::serve_fd(*srv->rt, std::move(owned), cfg, srv->dev);
    if (!ep) {
      caf::anon_send_exit(srv->dev, caf::exit_reason::user_shutdown);
      t_error = ep.err().message();
      return neg(ep.err());
    }
    srv->ep = std::move(*ep);
    if (mode == VFUB_SERVE_OWN_THREAD) {
      auto* raw = srv.get();
      srv->th = std::thread([raw] {
        while (!raw->stop.load()) {
          pollfd p{raw->q->fd(), POLLIN, 0};
          if (::poll(&p, 1, -1) > 0) raw->q->run();
        }
      });
    }
    s = srv.release();
    return 0;
  });
  if (r) {
    errno = -r;
    return nullptr;
  }
  return s;
}

vfub_server* vfub_server_listen(const vfub_device* dev, const char* path, int mode) {
  if (!path) {
    t_error = "no socket path";
    errno = EINVAL;
    return nullptr;
  }
  std::string p;
  try {
    p = path;
  } catch (...) {
    errno = ENOMEM;
    return nullptr;
  }
  return serve(dev, mode, &p, -1);
}

vfub_server* vfub_server_serve_fd(const vfub_device* dev, int fd, int mode) {
  if (fd < 0) {
    t_error = "bad fd";
    errno = EBADF;
    return nullptr;
  }
  return serve(dev, mode, nullptr, fd);
}

void vfub_server_destroy(vfub_server* srv) {
  if (!srv) return;
  guarded(nullptr, [&] {
    srv->ep->close();     // no more requests
    srv->q->close();      // what waits is answered ENODEV; no callback runs after this
    if (srv->th.joinable()) {
      srv->stop = true;
      uint64_t one = 1;
      (void)!::write(srv->q->fd(), &one, sizeof one);
      srv->th.join();
    }
    srv->ep.reset();
    caf::anon_send_exit(srv->dev, caf::exit_reason::user_shutdown);
    return 0;
  });
  delete srv;
}

int vfub_server_poll_fd(vfub_server* srv) {
  if (!srv || srv->mode != VFUB_SERVE_HOST_LOOP) return -EINVAL;
  return srv->q->fd();
}

int vfub_server_run(vfub_server* srv) {
  if (!srv || srv->mode != VFUB_SERVE_HOST_LOOP) return -EINVAL;
  return guarded(&srv->err, [&] { return srv->q->run(); });
}

int vfub_server_connected(vfub_server* srv) { return srv && srv->ep->state() == conn_state::ready ? 1 : 0; }

int vfub_server_wait_connected(vfub_server* srv, int timeout_ms) {
  if (!srv || timeout_ms < 0) return -EINVAL;
  return srv->ep->wait_state(conn_state::ready, std::chrono::milliseconds(timeout_ms)) ? 0 : -ETIMEDOUT;
}

int vfub_server_trigger_irq(vfub_server* srv, uint32_t index, uint32_t vector) {
  if (!srv) return -EINVAL;
  auto& sp = srv->model->spec();
  uint32_t n = index == VFUB_IRQ_INTX ? sp.intx_vectors : index == VFUB_IRQ_MSI ? sp.msi_vectors
             : index == VFUB_IRQ_MSIX ? sp.msix.vectors : 0;
  if (vector >= n) return srv->fail(-EINVAL, "IRQ " + std::to_string(index) + " has no vector " + std::to_string(vector));
  return guarded(&srv->err, [&] {
    dev::run_on_device(srv->dev, [index, vector](dev::device_context& ctx) { ctx.trigger(index, vector); });
    return 0;
  });
}

int vfub_server_dma_read(vfub_server* srv, uint64_t iova, void* buf, size_t len) {
  if (!srv || (!buf && len)) return -EINVAL;
  return guarded(&srv->err, [&] {
    auto p = std::make_shared<std::promise<std::pair<int, std::vector<uint8_t>>>>();
    auto f = p->get_future();
    dev::run_on_device(srv->dev, [p, iova, len](dev::device_context& ctx) {
      ctx.dma_read(iova, len, [p](int e, std::vector<uint8_t> d) { p->set_value({e, std::move(d)}); });
    });
    std::pair<int, std::vector<uint8_t>> r;
    if (int e = await(f, r)) return srv->fail(e, "DMA read: no answer");
    if (r.first) return srv->fail(-r.first, "DMA read of " + std::to_string(len) + " bytes at 0x" + [&] {
                                   char h[32];
                                   std::snprintf(h, sizeof h, "%llx", static_cast<unsigned long long>(iova));
                                   return std::string(h);
                                 }() + ": " + std::strerror(r.first));
    if (len) std::memcpy(buf, r.second.data(), std::min(len, r.second.size()));
    return 0;
  });
}

int vfub_server_dma_write(vfub_server* srv, uint64_t iova, const void* buf, size_t len) {
  if (!srv || (!buf && len)) return -EINVAL;
  return guarded(&srv->err, [&] {
    std::vector<uint8_t> data(static_cast<const uint8_t*>(buf), static_cast<const uint8_t*>(buf) + len);
    auto p = std::make_shared<std::promise<int>>();
    auto f = p->get_future();
    dev::run_on_device(srv->dev, [p, iova, data = std::move(data)](dev::device_context& ctx) mutable {
      ctx.dma_write(iova, std::move(data), [p](int e) { p->set_value(e); });
    });
    int r = 0;
    if (int e = await(f, r)) return srv->fail(e, "DMA write: no answer");
    if (r) return srv->fail(-r, "DMA write of " + std::to_string(len) + " bytes: " + std::strerror(r));
    return 0;
  });
}

void* vfub_server_region_memory(vfub_server* srv, uint32_t region) {
  if (!srv) return nullptr;
  void* out = nullptr;
  guarded(&srv->err, [&] {
    auto p = std::make_shared<std::promise<void*>>();
    auto f = p->get_future();
    dev::run_on_device(srv->dev, [p, region](dev::device_context& ctx) { p->set_value(ctx.region_memory(region)); });
    return await(f, out, std::chrono::seconds(10));
  });
  return out;
}

const char* vfub_server_last_error(vfub_server* srv) {
  if (!srv) return "";
  // The handle's own copy: valid until its next error on this thread's watch.
  t_error = srv->last_error();
  return t_error.c_str();
}

// ---- client ---------------------------------------------------------------------------

vfub_client* vfub_client_connect(const char* path, const vfub_client_options* opt) {
  if (!path) {
    t_error = "no socket path";
    errno = EINVAL;
    return nullptr;
  }
  vfub_client* out = nullptr;
  int r = guarded(nullptr, [&] {
    auto c = std::make_unique<vfub_client>();
    c->rt = shared_runtime();
    endpoint_config cfg;
    cfg.reconnect = opt && opt->reconnect;
    if (opt && opt->guest_memory) {
      auto fn = opt->guest_memory;
      void* opaque = opt->opaque;
      c->mem->set_access([fn, opaque](uint64_t iova, uint8_t* buf, uint64_t len, bool write) {
        return errno_of(fn(opaque, iova, buf, len, write));
      });
    }
    dev::remote_options ro;
    ro.dma_own_thread = true;  // the host's callback may block: never on the event loop
    auto d = dev::remote_device::open(*c->rt, path, c->mem, cfg, ro);
    if (!d) {
      t_error = d.err().message();
      return neg(d.err());
    }
    c->d = std::move(*d);
    out = c.release();
    return 0;
  });
  if (r) {
    errno = -r;
    return nullptr;
  }
  return out;
}

void vfub_client_close(vfub_client* c) {
  if (!c) return;
  guarded(nullptr, [&] {
    c->d.reset();
    return 0;
  });
  delete c;
}

int vfub_client_probe(vfub_client* c, uint32_t* num_regions, uint32_t* num_irqs) {
  if (!c) return -EINVAL;
  return guarded(&c->err, [&] {
    if (int e = c->check(c->d->probe())) return e;
    if (num_regions) *num_regions = c->d->info().num_regions;
    if (num_irqs) *num_irqs = c->d->info().num_irqs;
    return 0;
  });
}

int vfub_client_region_info(vfub_client* c, uint32_t region, vfub_region_info* out) {
  if (!c || !out) return -EINVAL;
  return guarded(&c->err, [&] {
    auto& rs = c->d->regions();
    if (region >= rs.size()) return c->fail(proto::error(proto::errc::bad_value, EINVAL, "no region " + std::to_string(region) + " (probe first)"));
    out->size = rs[region].info.size;
    out->flags = rs[region].info.flags;
    out->mapped = rs[region].map;
    return 0;
  });
}

int vfub_client_read(vfub_client* c, uint32_t region, uint64_t offset, void* buf, size_t len) {
  if (!c || (!buf && len)) return -EINVAL;
  return guarded(&c->err, [&] { return c->check(c->d->read(region, offset, buf, len)); });
}

int vfub_client_write(vfub_client* c, uint32_t region, uint64_t offset, const void* buf, size_t len) {
  if (!c || (!buf && len)) return -EINVAL;
  return guarded(&c->err, [&] { return c->check(c->d->write(region, offset, buf, len)); });
}

int vfub_client_write_posted(vfub_client* c, uint32_t region, uint64_t offset, const void* buf, uint32_t len) {
  if (!c || (!buf && len)) return -EINVAL;
  return guarded(&c->err, [&] { return c->check(c->d->write_posted(region, offset, buf, len)); });
}

int vfub_client_dma_map(vfub_client* c, uint64_t iova, uint64_t size, uint32_t prot, int fd, uint64_t fd_offset) {
  if (!c || (prot & ~uint32_t(VFUB_DMA_READ | VFUB_DMA_WRITE))) return -EINVAL;
  return guarded(&c->err, [&] {
    struct borrowed {  // the caller's fd, never closed here (remote_device dups what it keeps)
      proto::unique_fd f;
      ~borrowed() { f.release(); }
    } b{proto::unique_fd(fd)};
    if (int e = c->check(c->d->dma_map(iova, size, prot, fd >= 0 ? &b.f : nullptr, fd_offset))) return e;
    c->mem->add_routed(iova, size, prot);  // the server's DMA messages to it: the callback
    return 0;
  });
}

int vfub_client_dma_unmap(vfub_client* c, uint64_t iova, uint64_t size) {
  if (!c) return -EINVAL;
  return guarded(&c->err, [&] {
    if (int e = c->check(c->d->dma_unmap(iova, size))) return e;
    c->mem->remove(iova);
    return 0;
  });
}

int vfub_client_set_irqs(vfub_client* c, uint32_t index, uint32_t start, uint32_t count, const int* eventfds) {
  if (!c || (!eventfds && count)) return -EINVAL;
  return guarded(&c->err, [&] { return c->check(c->d->set_irq_eventfds(index, start, std::vector<int>(eventfds, eventfds + count))); });
}

int vfub_client_reset(vfub_client* c) {
  if (!c) return -EINVAL;
  return guarded(&c->err, [&] { return c->check(c->d->reset()); });
}

const char* vfub_client_last_error(vfub_client* c) {
  if (!c) return "";
  std::lock_guard<std::mutex> g(c->err_m);
  t_error = c->err;
  return t_error.c_str();
}

}  // extern "C"
