// device_state.hpp: the device actor's state (internal to device/): the model, config
// space, IRQs, shared memory regions, DMA windows, the DMA message layout, and migration.
// device.cpp serves the commands; device_migration.cpp the migration ones.
#pragma once

#include <caf/all.hpp>

#include <sys/mman.h>
#include <unistd.h>

#include <cstring>
#include <deque>

#include "actors/types.hpp"
#include "device/device.hpp"
#include "device/migration.hpp"
#include "protocol/limits.hpp"

namespace vfu::dev::impl {

using namespace proto;

struct window {
  uint64_t addr = 0, size = 0;
  uint32_t prot = 0;        ///< dma_flags: what the device may do
  uint8_t* map = nullptr;   ///< nullptr: message-based DMA
  int inflight = 0;         ///< message-based transfers in progress
  /// DMA_UNMAP came while transfers were in flight: no new transfer may use it, its range
  /// may not be mapped again, and it goes when the last transfer ends.
  bool unmapping = false;
};

struct irq_vec {
  unique_fd efd;
  bool masked = false;
  bool pending = false;
};

struct shared_region {
  unique_fd fd;
  uint8_t* mem = nullptr;
  uint64_t size = 0;
};

struct device_state;
using self_t = caf::stateful_actor<device_state>*;

struct device_state : device_context {
  self_t self = nullptr;
  std::shared_ptr<device_model> model;
  std::unique_ptr<pci_config> cfg;
  proto::quirks quirks;
  std::array<std::vector<irq_vec>, irq_index::count> irqs;
  std::vector<shared_region> shm;
  std::vector<uint8_t> msix_table;  ///< 16 bytes per vector
  std::map<uint64_t, window> windows;
  std::vector<std::pair<caf::response_promise, outbound_ptr>> unmap_waiters;
  caf::actor correlation;
  uint64_t send_max_data = limits::default_max_data_xfer;
  uint64_t max_dma_maps = limits::default_max_dma_maps;
  /// How this connection's client lays DMA messages out (docs/interop.md): known once
  /// forced by the quirks or answered by the probe (await_wire).
  enum class dma_wire : uint8_t { unknown, probing, spec, qemu };
  dma_wire wire = dma_wire::unknown;
  std::vector<std::function<void()>> wire_waiters;  ///< message DMA held until it is known
  bool qemu_read_busy = false;                      ///< a DMA_READ to QEMU awaits its reply
  std::deque<std::function<void()>> qemu_reads;     ///< the DMA_READs waiting behind it
  uint64_t conn_gen = 0;                            ///< which connection a probe belongs to

  // ---- migration (device_migration.cpp) ----
  mig_state mstate = mig_state::running;
  /// The data being saved (PRE_COPY rounds or STOP_COPY); `drained`: its end was served.
  std::unique_ptr<mig_source> source;
  bool drained = false;
  bool header_sent = false;  ///< pre-copy's HEADER record went out
  uint32_t pc_region = 0;    ///< where the pre-copy round is
  uint64_t pc_page = 0;
  uint64_t client_max_data = limits::default_max_data_xfer;  ///< the client's max_data_xfer_size
  /// Per shared memory region, a hash per page of the bytes pre-copy sent (0: not sent).
  std::vector<std::vector<uint64_t>> sent_hash;
  std::unique_ptr<mig_parser> parser;                 ///< RESUMING: the stream coming in
  std::map<uint32_t, std::vector<uint8_t>> resumed;   ///< its records other than PAGES
  dirty_log dirty;
  /// Message DMA in progress (a stop waits until it is 0), and what waits for that.
  int msg_dma = 0;
  /// The buffer of the last small REGION_READ reply written at once, for the next (read_now).
  frame reply_spare;
  std::vector<std::function<void()>> quiesce_waiters;
  mig_state migration_state() const override { return mstate; }

  // ---- offload: blocking work on the framework's workers (docs/nvme.md) ----
  uint64_t next_job = 0;
  std::map<uint64_t, std::function<void(int)>> jobs;  ///< what runs when a worker is done
  void offload(std::function<int()> work, std::function<void(int)> done) override;
  void dma_done() {
    if (--msg_dma > 0) return;
    auto w = std::move(quiesce_waiters);
    quiesce_waiters.clear();
    for (auto& f : w) f();
  }
  static inline const char* name = "vfu.device";

  ~device_state() override { drop_connection_state(); for (auto& s : shm) if (s.mem) ::munmap(s.mem, s.size); }

  const device_spec& spec() const { return model->spec(); }
  uint32_t num_regions() const { return region_index::num_pci + uint32_t(spec().extra_regions.size()); }
  const region_spec& rspec(uint32_t r) const {
    return r < region_index::num_pci ? spec().regions[r] : spec().extra_regions[r - region_index::num_pci];
  }
  uint64_t region_size(uint32_t r) const {
    if (r == region_index::config) return pci_config::size;
    if (r <= region_index::bar5) return spec().bars[r].size;
    if (r < num_regions()) return rspec(r).size;
    return 0;
  }

  // ---- IRQs ---------------------------------------------------------------------------
  bool msix_vector_masked(uint32_t v) const {
    if (v * 16 + 16 > msix_table.size()) return true;
    return msix_table[v * 16 + 12] & 1;
  }
  void fire(uint32_t index, uint32_t v) {
    auto& iv = irqs[index][v];
    bool masked = iv.masked || !mig_running(mstate);  // a stopped device raises nothing
    if (index == irq_index::msix) masked = masked || cfg->msix_function_masked() || msix_vector_masked(v);
    if (masked || !iv.efd) {
      iv.pending = true;
      return;
    }
    iv.pending = false;
    uint64_t one = 1;
    if (::write(iv.efd.get(), &one, sizeof one) != sizeof one) CAF_LOG_WARNING("eventfd write failed");
  }
  void trigger(uint32_t index, uint32_t vector) override {
    if (index >= irq_index::count || vector >= irqs[index].size()) return;
    fire(index, vector);
  }
  void retry_pending(uint32_t index) {
    for (uint32_t v = 0; v < irqs[index].size(); ++v)
      if (irqs[index][v].pending) fire(index, v);
  }

  // ---- DMA ----------------------------------------------------------------------------
  window* find_window(uint64_t addr, uint64_t len) {
    uint64_t end;
    if (__builtin_add_overflow(addr, len, &end)) return nullptr;
    auto it = windows.upper_bound(addr);
    if (it == windows.begin()) return nullptr;
    --it;
    auto& w = it->second;
    if (w.unmapping || addr < w.addr || end > w.addr + w.size) return nullptr;
    return &w;
  }
  void release(uint64_t window_addr) {
    auto it = windows.find(window_addr);
    if (it != windows.end()) --it->second.inflight;
    // Windows unmapped while busy go when their last transfer ends; deferred unmap
    // replies go when no such window is left.
    bool busy = false;
    for (auto i = windows.begin(); i != windows.end();) {
      if (i->second.unmapping && i->second.inflight == 0) {
        i = windows.erase(i);
        continue;
      }
      busy = busy || i->second.unmapping;
      ++i;
    }
    if (busy) return;
    for (auto& [rp, out] : unmap_waiters) rp.deliver(out);
    unmap_waiters.clear();
  }
  // ---- DMA message layout ----------------------------------------------------------------
  bool wire_known() const { return wire == dma_wire::spec || wire == dma_wire::qemu; }
  proto::quirks wire_quirks() const {
    auto q = quirks;
    q.qemu_dma_layout = wire == dma_wire::qemu;
    return q;
  }
  void reset_wire() {
    ++conn_gen;
    wire = !quirks.dma_layout_forced ? dma_wire::unknown : quirks.qemu_dma_layout ? dma_wire::qemu : dma_wire::spec;
  }
  const char* wire_name() const {
    return wire == dma_wire::qemu ? "QEMU's layout {offset u64, count u32, data@12}" : "the spec's layout {address u64, count u64, data@16}";
  }
  // Runs `go` once the layout is known. The first message DMA of a connection asks first,
  // with a DMA_WRITE of zero bytes to `addr`: QEMU answers it with a bare header, a client
  // that follows the spec echoes address and count. No byte of guest memory moves.
  void await_wire(uint64_t addr, std::function<void()> go) {
    wire_waiters.push_back(std::move(go));
    if (wire == dma_wire::probing) return;
    wire = dma_wire::probing;
    dma_write_request probe;
    probe.addr = addr;
    uint64_t gen = conn_gen;
    self->request(correlation, caf::infinite, request_atom::value, make_frame_ptr(make_frame(0, probe)), uint32_t(0))
        .then([=](call_result& r) {
          if (gen != conn_gen) return;  // that connection is gone (its waiters ran then)
          if (auto f = r.failure()) {
            wire = dma_wire::spec;
            CAF_LOG_WARNING("the client refused a DMA_WRITE of zero bytes (" << f.message() << "): DMA messages use "
                                                                            << wire_name());
          } else {
            wire = r.reply->hdr().msg_size == header_size ? dma_wire::qemu : dma_wire::spec;
            CAF_LOG_INFO("DMA messages use " << wire_name() << " (detected)");
          }
          auto waiters = std::move(wire_waiters);
          wire_waiters.clear();
          for (auto& w : waiters) w();
        });
  }

  void dma_read(uint64_t addr, uint64_t len, std::function<void(int, std::vector<uint8_t>)> cb) override {
    if (!mig_running(mstate)) return cb(EBUSY, {});
    auto* w = find_window(addr, len);
    if (!w || !(w->prot & dma_flags::read)) return cb(EFAULT, {});
    if (!cfg->bus_master()) return cb(EPERM, {});
    if (w->map) {
      std::vector<uint8_t> out(w->map + (addr - w->addr), w->map + (addr - w->addr) + len);
      return cb(0, std::move(out));
    }
    if (!correlation) return cb(ENOTCONN, {});
    ++msg_dma;
    msg_dma_read(addr, len, [this, cb](int e, std::vector<uint8_t> d) {
      cb(e, std::move(d));
      dma_done();
    });
  }
  void msg_dma_read(uint64_t addr, uint64_t len, std::function<void(int, std::vector<uint8_t>)> cb) {
    auto* w = find_window(addr, len);
    if (!w || !correlation) return cb(w ? ENOTCONN : EFAULT, {});
    if (!wire_known()) return await_wire(addr, [=] { msg_dma_read(addr, len, cb); });
    auto acc = std::make_shared<std::vector<uint8_t>>();
    acc->reserve(len);
    w->inflight++;
    chunked_read(w->addr, addr, len, acc, std::move(cb));
  }
  void chunked_read(uint64_t waddr, uint64_t addr, uint64_t left, std::shared_ptr<std::vector<uint8_t>> acc,
                    std::function<void(int, std::vector<uint8_t>)> cb) {
    // QEMU takes a partial sendmsg() of a reply for the whole and drops the rest
    // (limits.hpp): its DMA_READ replies must never pile up in the socket, so with QEMU's
    // layout one is asked for at a time, in chunks that always fit.
    bool serial = wire == dma_wire::qemu;
    if (serial && qemu_read_busy) {
      qemu_reads.push_back([=] { chunked_read(waddr, addr, left, acc, cb); });
      return;
    }
    qemu_read_busy = serial;
    uint64_t n = std::min(left, serial ? std::min(send_max_data, limits::qemu_dma_read_chunk) : send_max_data);
    auto fail_now = [&](int e) {
      next_qemu_read(serial);
      release(waddr);
      cb(e, {});
    };
    if (!correlation) return fail_now(ENOTCONN);
    dma_read_request req;
    req.addr = addr;
    req.count = n;
    auto q = wire_quirks();
    self->request(correlation, caf::infinite, request_atom::value, make_frame_ptr(make_frame(0, req)), uint32_t(0))
        .then([=](call_result& r) {
          next_qemu_read(serial);
          auto fail = [&](int e) { release(waddr); cb(e, {}); };
          if (auto f = r.failure()) return fail(f.errnum ? f.errnum : EIO);
          auto m = decode(*r.reply, q);
          auto* rep = m ? std::get_if<dma_read_reply>(&*m) : nullptr;
          if (!rep || rep->count != n || rep->data.size() != n) return fail(EIO);
          acc->insert(acc->end(), rep->data.begin(), rep->data.end());
          if (left > n) return chunked_read(waddr, addr + n, left - n, acc, cb);
          release(waddr);
          cb(0, std::move(*acc));
        });
  }
  // The next DMA_READ waiting for QEMU's previous reply, if this one was such a read.
  void next_qemu_read(bool serial) {
    if (!serial) return;
    qemu_read_busy = false;
    if (qemu_reads.empty()) return;
    auto next = std::move(qemu_reads.front());
    qemu_reads.pop_front();
    next();
  }
  void dma_write(uint64_t addr, std::vector<uint8_t> data, std::function<void(int)> cb) override {
    if (!mig_running(mstate)) return cb(EBUSY);
    auto* w = find_window(addr, data.size());
    if (!w || !(w->prot & dma_flags::write)) return cb(EFAULT);
    if (!cfg->bus_master()) return cb(EPERM);
    if (w->map) {
      if (!data.empty()) std::memcpy(w->map + (addr - w->addr), data.data(), data.size());
      dirty.mark(addr, data.size());  // message DMA is not logged: the client sees it
      return cb(0);
    }
    if (!correlation) return cb(ENOTCONN);
    ++msg_dma;
    msg_dma_write(addr, std::move(data), [this, cb](int e) {
      cb(e);
      dma_done();
    });
  }
  void msg_dma_write(uint64_t addr, std::vector<uint8_t> data, std::function<void(int)> cb) {
    auto* w = find_window(addr, data.size());
    if (!w || !correlation) return cb(w ? ENOTCONN : EFAULT);
    if (!wire_known()) {
      auto held = std::make_shared<std::vector<uint8_t>>(std::move(data));
      return await_wire(addr, [=] { msg_dma_write(addr, std::move(*held), cb); });
    }
    w->inflight++;
    chunked_write(w->addr, addr, std::make_shared<std::vector<uint8_t>>(std::move(data)), 0, std::move(cb));
  }
  void chunked_write(uint64_t waddr, uint64_t addr, std::shared_ptr<std::vector<uint8_t>> data, uint64_t done,
                     std::function<void(int)> cb) {
    uint64_t n = std::min<uint64_t>(data->size() - done, send_max_data);
    dma_write_request req;
    req.addr = addr + done;
    req.count = n;
    req.layout = wire == dma_wire::qemu ? dma_layout::qemu : dma_layout::spec;
    req.data.assign(data->begin() + long(done), data->begin() + long(done + n));
    auto q = wire_quirks();
    self->request(correlation, caf::infinite, request_atom::value, make_frame_ptr(make_frame(0, req)), uint32_t(0))
        .then([=](call_result& r) {
          if (auto f = r.failure()) {
            release(waddr);
            return cb(f.errnum ? f.errnum : EIO);
          }
          auto m = decode(*r.reply, q);
          if (!m || !std::holds_alternative<dma_write_reply>(*m)) {
            release(waddr);
            return cb(EIO);
          }
          if (done + n < data->size()) return chunked_write(waddr, addr, data, done + n, cb);
          release(waddr);
          cb(0);
        });
  }
  pci_config& config() override { return *cfg; }
  uint8_t* region_memory(uint32_t r) override { return r < shm.size() ? shm[r].mem : nullptr; }

  void drop_connection_state() {
    for (auto& [a, w] : windows)
      if (w.map) ::munmap(w.map, w.size);
    windows.clear();
    for (auto& idx : irqs)
      for (auto& v : idx) v.efd.reset();
  }
};

using offload_atom = caf::atom_constant<caf::atom("offload")>;
using run_atom = caf::atom_constant<caf::atom("run")>;

// device_migration.cpp
/// EINVAL when the device's migration state does not take `m` now, else 0.
int migration_gate(const device_state& st, const proto::message& m);
caf::result<outbound_ptr> on_device_feature(self_t self, const device_feature_request& req);
outbound_ptr on_mig_data_read(device_state& st, inbound& in, const mig_data_read_request& r);
outbound_ptr on_mig_data_write(device_state& st, const mig_data_write_request& w);
/// DEVICE_RESET: RUNNING again, with no stream and no dirty logging.
void migration_reset(device_state& st);

}  // namespace vfu::dev::impl
