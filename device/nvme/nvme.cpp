#include "device/nvme/nvme.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstring>
#include <deque>
#include <functional>
#include <vector>

namespace vfu::dev::nvme {

namespace {

constexpr uint32_t page = 4096;
constexpr uint16_t max_q = 64;  // queue ids 0..max_q
constexpr uint32_t aerl = 3;    // AERL: four AERs may be held

template <class T>
void put(uint8_t* p, T v) { std::memcpy(p, &v, sizeof v); }
template <class T>
T get(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
void put_str(uint8_t* p, const std::string& s, size_t n) {  // ASCII, space padded
  std::memset(p, ' ', n);
  std::memcpy(p, s.data(), std::min(n, s.size()));
}

struct sqe {
  uint8_t opc = 0, fuse = 0, psdt = 0;
  uint16_t cid = 0;
  uint32_t nsid = 0;
  uint64_t prp1 = 0, prp2 = 0;
  uint32_t cdw10 = 0, cdw11 = 0, cdw12 = 0, cdw13 = 0, cdw14 = 0, cdw15 = 0;
  explicit sqe(const uint8_t* e) {
    uint32_t dw0 = get<uint32_t>(e);
    opc = uint8_t(dw0), fuse = uint8_t((dw0 >> 8) & 3), psdt = uint8_t((dw0 >> 14) & 3), cid = uint16_t(dw0 >> 16);
    nsid = get<uint32_t>(e + 4);
    prp1 = get<uint64_t>(e + 0x18), prp2 = get<uint64_t>(e + 0x20);
    cdw10 = get<uint32_t>(e + 0x28), cdw11 = get<uint32_t>(e + 0x2c), cdw12 = get<uint32_t>(e + 0x30);
    cdw13 = get<uint32_t>(e + 0x34), cdw14 = get<uint32_t>(e + 0x38), cdw15 = get<uint32_t>(e + 0x3c);
  }
};

struct segment {
  uint64_t addr, len;
};

class controller : public device_model {
 public:
  controller(options o, int fd, uint64_t size) : opts_(std::move(o)), fd_(fd), size_(size) {
    if (fd_ < 0) mem_.assign(size_, 0);
    spec_.ids = pci_ids{vendor, device, vendor, 0x0001, 0x010802, 0x02, 1};
    spec_.bars[0] = bar_spec{bar0_size, false, true, false};  // 64-bit, not mmapped: doorbells trap
    spec_.regions[0].size = bar0_size;
    spec_.bars[msix_bar] = bar_spec{0x1000, false, false, false};
    spec_.regions[msix_bar].size = 0x1000;
    spec_.msix = msix_spec{uint16_t(opts_.io_queues + 1), msix_bar, 0x0, 0x800};
    spec_.pcie_capability = true;
    // Unique per instance: Linux refuses a second controller with the same subsystem NQN.
    static uint32_t instances = 0;
    char sn[21];
    std::snprintf(sn, sizeof sn, "VFU%08X%04X", unsigned(::getpid()), ++instances & 0xffff);
    serial_ = sn;
  }
  ~controller() override {
    if (fd_ >= 0) ::close(fd_);
  }
  const device_spec& spec() const override { return spec_; }

  int region_read(uint32_t region, uint64_t off, uint8_t* buf, uint32_t n) override {
    if (region != 0) return EINVAL;
    std::memset(buf, 0, n);
    if (off >= 0x40) return 0;  // doorbells and reserved space read 0
    uint8_t regs[0x40] = {};
    uint64_t cap = uint64_t(mqes) | 1ull << 16 /* CQR */ | 0x0full << 24 /* TO */ | 1ull << 37 /* CSS: NVM */;
    put(regs + reg::cap, cap);
    put(regs + reg::vs, uint32_t(0x00010400));
    put(regs + reg::intms, intms_);
    put(regs + reg::intmc, intms_);
    put(regs + reg::cc, cc_);
    put(regs + reg::csts, csts_);
    put(regs + reg::aqa, aqa_);
    put(regs + reg::asq, asq_);
    put(regs + reg::acq, acq_);
    std::memcpy(buf, regs + off, std::min<uint64_t>(n, 0x40 - off));
    return 0;
  }

  int region_write(uint32_t region, uint64_t off, const uint8_t* buf, uint32_t n) override {
    if (region != 0) return EINVAL;
    if (off >= reg::doorbells) {
      for (uint64_t at = off & ~3ull; at < off + n && at + 4 <= bar0_size; at += 4) {
        if (at < off || at + 4 > off + n) continue;  // only whole doorbells
        doorbell(uint32_t((at - reg::doorbells) / 4), get<uint32_t>(buf + (at - off)));
      }
      return 0;
    }
    if (off + n > 0x40) return 0;  // reserved: ignored
    uint8_t regs[0x40] = {};
    put(regs + reg::cc, cc_);
    put(regs + reg::aqa, aqa_);
    put(regs + reg::asq, asq_);
    put(regs + reg::acq, acq_);
    std::memcpy(regs + off, buf, n);
    auto touches = [&](uint32_t r, uint32_t len) { return off < r + len && off + n > r; };
    if (touches(reg::intms, 4)) intms_ |= get<uint32_t>(regs + reg::intms);
    if (touches(reg::intmc, 4)) intms_ &= ~get<uint32_t>(regs + reg::intmc);
    aqa_ = get<uint32_t>(regs + reg::aqa) & 0x0fff0fff;
    asq_ = get<uint64_t>(regs + reg::asq);
    acq_ = get<uint64_t>(regs + reg::acq);
    if (touches(reg::cc, 4)) write_cc(get<uint32_t>(regs + reg::cc));
    return 0;
  }

  void reset() override {  // DEVICE_RESET: the controller's power-on state; the data stays
    drop_queues();
    cc_ = 0, csts_ = 0, aqa_ = 0, asq_ = 0, acq_ = 0, intms_ = 0;
  }

 private:
  struct sq_state {
    bool live = false;
    uint64_t base = 0;
    uint32_t size = 0, head = 0, tail = 0;
    uint16_t cqid = 0;
    bool fetching = false;
    uint64_t gen = 0;  ///< commands from an older one are not completed
  };
  struct cq_state {
    bool live = false;
    uint64_t base = 0;
    uint32_t size = 0, head = 0, tail = 0;
    bool phase = true, ien = true;
    uint16_t iv = 0;
    uint32_t sqs = 0;
    std::deque<std::array<uint8_t, 16>> waiting;  ///< completions while the queue is full
  };

  // ---- registers ----------------------------------------------------------------------
  void write_cc(uint32_t v) {
    uint32_t old = cc_;
    cc_ = v;
    bool was = old & reg::cc_en, now = v & reg::cc_en;
    if (was && !now) {  // a controller reset
      drop_queues();
      csts_ = 0;
      return;
    }
    if (!was && now) enable();
    uint32_t shn = (v >> 14) & 3;
    if (shn && !(old >> 14 & 3)) {
      // Shutdown: the data reaches the backing store, then SHST says so.
      uint64_t gen = gen_;
      ctx->offload([this] { return sync(); }, [this, gen](int) {
        if (gen == gen_ && ((cc_ >> 14) & 3)) csts_ = (csts_ & ~(3u << 2)) | reg::csts_shst_done;
      });
    } else if (!shn) {
      csts_ &= ~(3u << 2);
    }
  }

  void enable() {
    uint32_t asqs = (aqa_ & 0xfff) + 1, acqs = ((aqa_ >> 16) & 0xfff) + 1;
    uint32_t mps = (cc_ >> 7) & 0xf, css = (cc_ >> 4) & 7;
    if ((asq_ & (page - 1)) || (acq_ & (page - 1)) || asqs < 2 || acqs < 2 || mps != 0 || css != 0) {
      csts_ |= reg::csts_cfs;  // Controller Fatal Status: the host resets
      return;
    }
    sqs_[0] = sq_state{true, asq_, asqs, 0, 0, 0, false, ++gen_};
    cqs_[0] = cq_state{};
    cqs_[0].live = true, cqs_[0].base = acq_, cqs_[0].size = acqs, cqs_[0].sqs = 1;
    csts_ = reg::csts_rdy;
  }

  void drop_queues() {
    ++gen_;  // what is in flight completes into nothing
    for (auto& s : sqs_) s = sq_state{};
    for (auto& c : cqs_) c = cq_state{};
    aers_.clear();
    queues_allowed_ = 0;
  }

  // ---- doorbells and queues -------------------------------------------------------------
  void doorbell(uint32_t idx, uint32_t value) {
    uint32_t qid = idx / 2;
    if (!(csts_ & reg::csts_rdy) || qid > max_q) return;
    if (idx % 2) {  // CQ head
      auto& cq = cqs_[qid];
      if (!cq.live || value >= cq.size) return;  // ignored, as QEMU does
      cq.head = value;
      while (!cq.waiting.empty() && (cq.tail + 1) % cq.size != cq.head) {
        auto e = cq.waiting.front();
        cq.waiting.pop_front();
        post(qid, e);
      }
      return;
    }
    auto& sq = sqs_[qid];
    if (!sq.live || value >= sq.size) return;
    sq.tail = value;
    fetch(uint16_t(qid));
  }

  // Reads the entries between head and tail (up to the wrap) and runs them.
  void fetch(uint16_t qid) {
    auto& sq = sqs_[qid];
    if (sq.fetching || sq.head == sq.tail) return;
    uint32_t n = sq.tail > sq.head ? sq.tail - sq.head : sq.size - sq.head;
    sq.fetching = true;
    uint64_t gen = sq.gen;
    ctx->dma_read(sq.base + uint64_t(sq.head) * 64, uint64_t(n) * 64, [this, qid, gen, n](int err, std::vector<uint8_t> d) {
      auto& q = sqs_[qid];
      if (!q.live || q.gen != gen) return;
      q.fetching = false;
      if (err) {  // the host gave a queue we cannot read: fatal, it resets us
        csts_ |= reg::csts_cfs;
        return;
      }
      for (uint32_t i = 0; i < n; ++i) {
        q.head = (q.head + 1) % q.size;
        sqe e(d.data() + size_t(i) * 64);
        if (qid == 0) admin(e);
        else io_command(qid, e);
        if (!sqs_[qid].live || sqs_[qid].gen != gen) return;  // deleted or reset by that command
      }
      fetch(qid);
    });
  }

  // The completion of `cid` from SQ `sqid`, if that queue is still the one it came from.
  void complete(uint16_t sqid, uint64_t gen, uint16_t cid, uint16_t status, uint32_t dw0 = 0) {
    auto& sq = sqs_[sqid];
    if (!sq.live || sq.gen != gen) return;
    std::array<uint8_t, 16> e{};
    put(e.data(), dw0);
    put(e.data() + 8, uint16_t(sq.head));
    put(e.data() + 10, sqid);
    put(e.data() + 12, cid);
    put(e.data() + 14, uint16_t(status << 1));
    auto& cq = cqs_[sq.cqid];
    if (!cq.waiting.empty() || (cq.tail + 1) % cq.size == cq.head) {
      cq.waiting.push_back(e);
      return;
    }
    post(sq.cqid, e);
  }

  // Writes a CQE with the phase bit, its status word last, then raises the queue's vector.
  void post(uint16_t cqid, std::array<uint8_t, 16> e) {
    auto& cq = cqs_[cqid];
    uint64_t addr = cq.base + uint64_t(cq.tail) * 16;
    put(e.data() + 14, uint16_t(get<uint16_t>(e.data() + 14) | (cq.phase ? 1 : 0)));
    if (++cq.tail == cq.size) cq.tail = 0, cq.phase = !cq.phase;
    uint64_t gen = gen_;
    bool ien = cq.ien;
    uint16_t iv = cq.iv;
    ctx->dma_write(addr, std::vector<uint8_t>(e.begin(), e.begin() + 12), [](int) {});
    ctx->dma_write(addr + 12, std::vector<uint8_t>(e.begin() + 12, e.end()), [this, gen, ien, iv](int err) {
      if (!err && gen == gen_ && ien) ctx->trigger(2 /* MSI-X */, iv);
    });
  }

  // ---- data: PRPs ------------------------------------------------------------------------
  using segs_cb = std::function<void(uint16_t status, std::vector<segment>)>;
  // The guest pages a command's PRP1/PRP2 name for `len` bytes (PRP lists read by DMA).
  void map_prps(uint64_t prp1, uint64_t prp2, uint64_t len, segs_cb cb) {
    if (prp1 & 3) return cb(sc::invalid_prp_offset | sc::dnr, {});
    std::vector<segment> segs;
    uint64_t first = std::min<uint64_t>(len, page - (prp1 & (page - 1)));
    segs.push_back({prp1, first});
    uint64_t rem = len - first;
    if (rem == 0) return cb(0, std::move(segs));
    if (rem <= page) {
      if (prp2 & (page - 1)) return cb(sc::invalid_prp_offset | sc::dnr, {});
      segs.push_back({prp2, rem});
      return cb(0, std::move(segs));
    }
    if (prp2 & 7) return cb(sc::invalid_prp_offset | sc::dnr, {});
    read_list(prp2, rem, std::move(segs), std::move(cb));
  }
  void read_list(uint64_t list, uint64_t rem, std::vector<segment> segs, segs_cb cb) {
    uint64_t slots = (page - (list & (page - 1))) / 8, need = (rem + page - 1) / page;
    bool chained = need > slots;
    uint64_t n = chained ? slots : need;
    uint64_t gen = gen_;
    ctx->dma_read(list, n * 8, [=, segs = std::move(segs)](int err, std::vector<uint8_t> d) mutable {
      if (gen != gen_) return;
      if (err) return cb(sc::data_transfer, {});
      uint64_t left = rem;
      for (uint64_t i = 0; i < (chained ? n - 1 : n); ++i) {
        uint64_t e = get<uint64_t>(d.data() + i * 8);
        if (e & (page - 1)) return cb(sc::invalid_prp_offset | sc::dnr, {});
        uint64_t k = std::min<uint64_t>(left, page);
        segs.push_back({e, k});
        left -= k;
      }
      if (!chained) return cb(0, std::move(segs));
      uint64_t next = get<uint64_t>(d.data() + (n - 1) * 8);
      if (next & (page - 1)) return cb(sc::invalid_prp_offset | sc::dnr, {});
      read_list(next, left, std::move(segs), std::move(cb));
    });
  }
  static std::vector<segment> coalesce(const std::vector<segment>& s) {
    std::vector<segment> out;
    for (auto& x : s)
      if (!out.empty() && out.back().addr + out.back().len == x.addr) out.back().len += x.len;
      else out.push_back(x);
    return out;
  }
  // Guest memory -> buffer, segment by segment.
  void dma_in(std::vector<segment> segs, size_t i, std::shared_ptr<std::vector<uint8_t>> buf, std::function<void(int)> done) {
    if (i == segs.size()) return done(0);
    auto s = segs[i];
    ctx->dma_read(s.addr, s.len, [=](int err, std::vector<uint8_t> d) {
      if (err) return done(err);
      buf->insert(buf->end(), d.begin(), d.end());
      dma_in(segs, i + 1, buf, done);
    });
  }
  // Buffer -> guest memory.
  void dma_out(std::vector<segment> segs, size_t i, size_t at, std::shared_ptr<std::vector<uint8_t>> buf,
               std::function<void(int)> done) {
    if (i == segs.size()) return done(0);
    auto s = segs[i];
    std::vector<uint8_t> part(buf->begin() + long(at), buf->begin() + long(at + s.len));
    ctx->dma_write(s.addr, std::move(part), [=](int err) {
      if (err) return done(err);
      dma_out(segs, i + 1, at + s.len, buf, done);
    });
  }
  // A transfer to or from the host's buffer of an admin command (Identify, logs).
  void send_to_host(const sqe& e, std::vector<uint8_t> data, uint32_t dw0 = 0) {
    uint64_t gen = sqs_[0].gen;
    uint16_t cid = e.cid;
    auto buf = std::make_shared<std::vector<uint8_t>>(std::move(data));
    map_prps(e.prp1, e.prp2, buf->size(), [=](uint16_t st, std::vector<segment> segs) {
      if (st) return complete(0, gen, cid, st);
      dma_out(coalesce(segs), 0, 0, buf, [=](int err) { complete(0, gen, cid, err ? sc::data_transfer : 0, dw0); });
    });
  }

  // ---- admin commands ---------------------------------------------------------------------
  void admin(const sqe& e) {
    uint64_t gen = sqs_[0].gen;
    auto done = [&](uint16_t st, uint32_t dw0 = 0) { complete(0, gen, e.cid, st, dw0); };
    if (e.fuse || e.psdt) return done(sc::invalid_field | sc::dnr);
    switch (e.opc) {
      case opc::identify: return identify(e);
      case opc::get_log_page: return get_log_page(e);
      case opc::set_features: return set_features(e);
      case opc::get_features: return get_features(e);
      case opc::create_cq: return done(create_cq(e));
      case opc::create_sq: return done(create_sq(e));
      case opc::delete_sq: return done(delete_sq(uint16_t(e.cdw10)));
      case opc::delete_cq: return done(delete_cq(uint16_t(e.cdw10)));
      case opc::abort: return done(0, 1);  // bit 0: not aborted
      case opc::aer:
        if (aers_.size() > aerl) return done(sc::aer_limit | sc::dnr);
        aers_.push_back(e.cid);  // held: nothing to report
        return;
      default: return done(sc::invalid_opcode | sc::dnr);
    }
  }

  void identify(const sqe& e) {
    uint8_t cns = uint8_t(e.cdw10);
    std::vector<uint8_t> d(4096, 0);
    auto fail = [&](uint16_t st) { complete(0, sqs_[0].gen, e.cid, st); };
    switch (cns) {
      case 0x00:  // namespace
        if (e.nsid != 1) return fail(sc::invalid_ns | sc::dnr);
        put(d.data() + 0x00, size_ / lba_size);  // NSZE, NCAP, NUSE
        put(d.data() + 0x08, size_ / lba_size);
        put(d.data() + 0x10, size_ / lba_size);
        d[0x80 + 2] = 9;  // LBAF0: LBADS 9 (512 B)
        std::memcpy(d.data() + 0x68, nguid().data(), 16);
        break;
      case 0x01: {  // controller
        put(d.data() + 0x000, vendor);
        put(d.data() + 0x002, vendor);
        put_str(d.data() + 0x004, serial_, 20);
        put_str(d.data() + 0x018, "vfu-broker NVMe", 40);
        put_str(d.data() + 0x040, "1.0", 8);
        d[0x048] = 6;     // RAB
        d[0x04d] = mdts;  // MDTS
        put(d.data() + 0x04e, uint16_t(1));           // CNTLID
        put(d.data() + 0x050, uint32_t(0x00010400));  // VER
        d[0x06f] = 1;                                 // CNTRLTYPE: I/O
        d[0x102] = 3;                                 // ACL
        d[0x103] = aerl;                              // AERL
        d[0x104] = 0x03;                              // FRMW: slot 1 read-only, one slot
        put(d.data() + 0x10a, uint16_t(0x157));       // WCTEMP
        put(d.data() + 0x10c, uint16_t(0x175));       // CCTEMP
        d[0x200] = 0x66;                              // SQES
        d[0x201] = 0x44;                              // CQES
        put(d.data() + 0x204, uint32_t(1));           // NN
        put(d.data() + 0x208, uint16_t(0x0008));      // ONCS: Write Zeroes
        d[0x20d] = 0x01;                              // VWC
        std::string nqn = "nqn.2026-12.io.vfu-broker:nvme:" + serial_;
        std::memcpy(d.data() + 0x300, nqn.data(), nqn.size());
        put(d.data() + 0x800, uint16_t(0x09c4));  // PSD0 MP
        put(d.data() + 0x804, uint32_t(0x10));    // ENLAT
        put(d.data() + 0x808, uint32_t(4));       // EXLAT
        break;
      }
      case 0x02:  // active namespace list
        if (e.nsid >= 0xfffffffe) return fail(sc::invalid_ns | sc::dnr);
        if (e.nsid < 1) put(d.data(), uint32_t(1));
        break;
      case 0x03: {  // namespace identification descriptors: NGUID, CSI 0
        if (e.nsid != 1) return fail(sc::invalid_ns | sc::dnr);
        d[0] = 2, d[1] = 16;
        std::memcpy(d.data() + 4, nguid().data(), 16);
        d[20] = 4, d[21] = 1, d[24] = 0;
        break;
      }
      case 0x06:  // I/O command set specific controller data (NVM): no limits
        if ((e.cdw11 >> 24) != 0) return fail(sc::invalid_field | sc::dnr);
        break;
      default: return fail(sc::invalid_field | sc::dnr);
    }
    send_to_host(e, std::move(d));
  }

  std::array<uint8_t, 16> nguid() const {
    std::array<uint8_t, 16> g{};
    std::memcpy(g.data(), "vfu-", 4);
    std::memcpy(g.data() + 4, serial_.data() + 3, std::min<size_t>(12, serial_.size() - 3));
    return g;
  }

  void get_log_page(const sqe& e) {
    uint8_t lid = uint8_t(e.cdw10);
    uint64_t numd = ((e.cdw10 >> 16) | (uint64_t(e.cdw11 & 0xffff) << 16)) + 1, len = numd * 4;
    uint64_t off = e.cdw12 | (uint64_t(e.cdw13) << 32);
    auto fail = [&](uint16_t st) { complete(0, sqs_[0].gen, e.cid, st); };
    std::vector<uint8_t> log;
    switch (lid) {
      case 0x01: log.assign(64, 0); break;  // error information: no errors
      case 0x02: {                          // SMART / health
        log.assign(512, 0);
        log[0] = 0;                                       // critical warning
        put(log.data() + 1, uint16_t(0x0143));            // composite temperature, K
        log[3] = 100, log[4] = 10, log[5] = 0;            // spare, threshold, percentage used
        put(log.data() + 0x20, (blocks_read_ + 999) / 1000);     // data units read (1000 x 512 B)
        put(log.data() + 0x30, (blocks_written_ + 999) / 1000);  // data units written
        put(log.data() + 0x40, reads_);                          // host read commands
        put(log.data() + 0x50, writes_);                         // host write commands
        break;
      }
      case 0x03:  // firmware slot information
        log.assign(512, 0);
        log[0] = 1;
        put_str(log.data() + 8, "1.0", 8);
        break;
      default: return fail(sc::invalid_log_page | sc::dnr);
    }
    if (off % 4 || off > log.size()) return fail(sc::invalid_field | sc::dnr);
    log.erase(log.begin(), log.begin() + long(off));
    if (log.size() > len) log.resize(len);
    if (len > max_transfer) return fail(sc::invalid_field | sc::dnr);
    log.resize(len, 0);  // what the host asked beyond the log reads 0
    send_to_host(e, std::move(log));
  }

  void set_features(const sqe& e) {
    uint8_t fid = uint8_t(e.cdw10);
    uint64_t gen = sqs_[0].gen;
    auto done = [&](uint16_t st, uint32_t dw0 = 0) { complete(0, gen, e.cid, st, dw0); };
    if (e.cdw10 >> 31) return done(sc::not_saveable | sc::dnr);
    switch (fid) {
      case 0x07: {  // number of queues
        for (uint16_t q = 1; q <= max_q; ++q)
          if (cqs_[q].live || sqs_[q].live) return done(sc::cmd_seq_error);
        uint32_t nsq = e.cdw11 & 0xffff, ncq = e.cdw11 >> 16;
        if (nsq == 0xffff || ncq == 0xffff) return done(sc::invalid_field | sc::dnr);
        queues_allowed_ = uint16_t(std::min<uint32_t>(std::min(nsq, ncq) + 1, opts_.io_queues));
        uint32_t n = queues_allowed_ - 1u;
        return done(0, n | n << 16);
      }
      case 0x06: {  // volatile write cache
        bool was = vwc_;
        vwc_ = e.cdw11 & 1;
        if (was && !vwc_) {
          uint16_t cid = e.cid;
          return ctx->offload([this] { return sync(); }, [this, gen, cid](int err) {
            complete(0, gen, cid, err ? sc::internal : 0);
          });
        }
        return done(0);
      }
      case 0x04: temp_threshold_ = e.cdw11; return done(0);
      case 0x08: coalescing_ = e.cdw11; return done(0);  // accepted; every completion interrupts
      case 0x0b: aen_config_ = e.cdw11; return done(0);
      default: return done(sc::invalid_field | sc::dnr);
    }
  }

  void get_features(const sqe& e) {
    uint8_t fid = uint8_t(e.cdw10);
    uint64_t gen = sqs_[0].gen;
    auto done = [&](uint16_t st, uint32_t dw0 = 0) { complete(0, gen, e.cid, st, dw0); };
    switch (fid) {
      case 0x07: {
        uint32_t n = (queues_allowed_ ? queues_allowed_ : opts_.io_queues) - 1u;
        return done(0, n | n << 16);
      }
      case 0x06: return done(0, vwc_ ? 1 : 0);
      case 0x04: return done(0, temp_threshold_);
      case 0x08: return done(0, coalescing_);
      case 0x0b: return done(0, aen_config_);
      default: return done(sc::invalid_field | sc::dnr);
    }
  }

  uint16_t create_cq(const sqe& e) {
    uint16_t qid = uint16_t(e.cdw10);
    uint32_t qsize = (e.cdw10 >> 16) + 1, iv = e.cdw11 >> 16;
    if (qid == 0 || qid > queues_allowed_ || cqs_[qid].live) return sc::invalid_qid | sc::dnr;
    if (qsize < 2 || qsize > mqes + 1) return sc::invalid_qsize | sc::dnr;
    if (iv >= spec_.msix.vectors) return sc::invalid_iv | sc::dnr;
    if (!(e.cdw11 & 1)) return sc::invalid_field | sc::dnr;  // only contiguous queues
    if (e.prp1 & (page - 1) || e.prp1 == 0) return sc::invalid_prp_offset | sc::dnr;
    auto& cq = cqs_[qid];
    cq = cq_state{};
    cq.live = true, cq.base = e.prp1, cq.size = qsize, cq.ien = (e.cdw11 >> 1) & 1, cq.iv = uint16_t(iv);
    return 0;
  }
  uint16_t create_sq(const sqe& e) {
    uint16_t qid = uint16_t(e.cdw10), cqid = uint16_t(e.cdw11 >> 16);
    uint32_t qsize = (e.cdw10 >> 16) + 1;
    if (cqid == 0 || cqid > max_q || !cqs_[cqid].live) return sc::cq_invalid | sc::dnr;
    if (qid == 0 || qid > queues_allowed_ || sqs_[qid].live) return sc::invalid_qid | sc::dnr;
    if (qsize < 2 || qsize > mqes + 1) return sc::invalid_qsize | sc::dnr;
    if (!(e.cdw11 & 1)) return sc::invalid_field | sc::dnr;
    if (e.prp1 & (page - 1) || e.prp1 == 0) return sc::invalid_prp_offset | sc::dnr;
    sqs_[qid] = sq_state{true, e.prp1, qsize, 0, 0, cqid, false, ++gen_};
    ++cqs_[cqid].sqs;
    return 0;
  }
  uint16_t delete_sq(uint16_t qid) {
    if (qid == 0 || qid > max_q || !sqs_[qid].live) return sc::invalid_qid | sc::dnr;
    --cqs_[sqs_[qid].cqid].sqs;
    sqs_[qid] = sq_state{};  // its commands in flight complete into nothing
    return 0;
  }
  uint16_t delete_cq(uint16_t qid) {
    if (qid == 0 || qid > max_q || !cqs_[qid].live) return sc::invalid_qid | sc::dnr;
    if (cqs_[qid].sqs) return sc::invalid_q_deletion | sc::dnr;
    cqs_[qid] = cq_state{};
    return 0;
  }

  // ---- I/O commands -----------------------------------------------------------------------
  void io_command(uint16_t qid, const sqe& e) {
    uint64_t gen = sqs_[qid].gen;
    uint16_t cid = e.cid;
    auto done = [=](uint16_t st) { complete(qid, gen, cid, st); };
    if (e.fuse || e.psdt) return done(sc::invalid_field | sc::dnr);
    if (e.opc != io::flush && e.opc != io::read && e.opc != io::write && e.opc != io::write_zeroes)
      return done(sc::invalid_opcode | sc::dnr);
    if (e.nsid != 1 && !(e.opc == io::flush && e.nsid == 0xffffffff)) return done(sc::invalid_ns | sc::dnr);
    if (e.opc == io::flush)
      return ctx->offload([this] { return sync(); }, [done](int err) { done(err ? sc::internal : 0); });
    uint64_t slba = e.cdw10 | uint64_t(e.cdw11) << 32, nlb = (e.cdw12 & 0xffff) + 1ull;
    bool fua = (e.cdw12 >> 30) & 1;
    uint64_t end;
    if (__builtin_add_overflow(slba, nlb, &end) || end > size_ / lba_size) return done(sc::lba_range | sc::dnr);
    uint64_t off = slba * lba_size, len = nlb * lba_size;
    if (len > max_transfer) return done(sc::invalid_field | sc::dnr);
    if (e.opc == io::write_zeroes) {
      return ctx->offload([this, off, len, fua] { return store(off, nullptr, len, fua); },
                          [done](int err) { done(err ? sc::internal : 0); });
    }
    map_prps(e.prp1, e.prp2, len, [=](uint16_t st, std::vector<segment> segs) {
      if (st) return done(st);
      auto buf = std::make_shared<std::vector<uint8_t>>();
      if (e.opc == io::write) {
        buf->reserve(len);
        return dma_in(coalesce(segs), 0, buf, [=](int err) {
          if (err) return done(sc::data_transfer);
          ctx->offload([this, off, buf, fua] { return store(off, buf->data(), buf->size(), fua); },
                       [=](int err2) {
                         if (!err2) ++writes_, blocks_written_ += nlb;
                         done(err2 ? sc::internal : 0);
                       });
        });
      }
      buf->resize(len);
      ctx->offload([this, off, buf] { return load(off, buf->data(), buf->size()); }, [=](int err) {
        if (err) return done(sc::internal);
        dma_out(coalesce(segs), 0, 0, buf, [=](int err2) {
          if (!err2) ++reads_, blocks_read_ += nlb;
          done(err2 ? sc::data_transfer : 0);
        });
      });
    });
  }

  // ---- the backing store (on a worker thread) ----------------------------------------------
  int load(uint64_t off, uint8_t* p, uint64_t n) {
    if (fd_ < 0) {
      std::memcpy(p, mem_.data() + off, n);
      return 0;
    }
    for (uint64_t done = 0; done < n;) {
      ssize_t r = ::pread(fd_, p + done, n - done, off_t(off + done));
      if (r < 0 && errno == EINTR) continue;
      if (r < 0) return errno;
      if (r == 0) std::memset(p + done, 0, n - done), r = ssize_t(n - done);  // past the file's end: zeros
      done += uint64_t(r);
    }
    return 0;
  }
  int store(uint64_t off, const uint8_t* p, uint64_t n, bool fua) {
    static const std::vector<uint8_t> zeros(max_transfer, 0);
    if (!p) p = zeros.data();
    if (fd_ < 0) {
      std::memcpy(mem_.data() + off, p, n);
      return 0;
    }
    for (uint64_t done = 0; done < n;) {
      ssize_t w = ::pwrite(fd_, p + done, n - done, off_t(off + done));
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) return w < 0 ? errno : EIO;
      done += uint64_t(w);
    }
    return fua ? sync() : 0;
  }
  int sync() { return fd_ >= 0 && ::fdatasync(fd_) != 0 ? errno : 0; }

  options opts_;
  int fd_;
  uint64_t size_;
  std::vector<uint8_t> mem_;
  device_spec spec_;
  std::string serial_;
  uint32_t cc_ = 0, csts_ = 0, aqa_ = 0, intms_ = 0;
  uint64_t asq_ = 0, acq_ = 0;
  std::array<sq_state, max_q + 1> sqs_{};
  std::array<cq_state, max_q + 1> cqs_{};
  uint16_t queues_allowed_ = 0;  ///< after Set Features (Number of Queues)
  std::vector<uint16_t> aers_;
  uint64_t gen_ = 0;
  bool vwc_ = true;
  uint32_t temp_threshold_ = 0x157, coalescing_ = 0, aen_config_ = 0;
  uint64_t reads_ = 0, writes_ = 0, blocks_read_ = 0, blocks_written_ = 0;
};

}  // namespace

std::shared_ptr<device_model> make(const options& o, std::string& err) {
  if (o.io_queues < 1 || o.io_queues > max_q) {
    err = "io_queues must be 1 to " + std::to_string(max_q);
    return nullptr;
  }
  uint64_t size = o.size;
  int fd = -1;
  if (!o.backing.empty()) {
    fd = ::open(o.backing.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) {
      err = "cannot open " + o.backing + ": " + std::strerror(errno);
      return nullptr;
    }
    struct stat st {};
    if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
      err = o.backing + " is not a regular file";
      ::close(fd);
      return nullptr;
    }
    if (!o.size_given && uint64_t(st.st_size) >= lba_size) size = uint64_t(st.st_size);
    if (uint64_t(st.st_size) < size && ::ftruncate(fd, off_t(size)) != 0) {
      err = "cannot size " + o.backing + ": " + std::strerror(errno);
      ::close(fd);
      return nullptr;
    }
  }
  size = size / lba_size * lba_size;
  if (size < 1u << 20 || size > (16ull << 40)) {
    err = "the namespace must be 1 MiB to 16 TiB";
    if (fd >= 0) ::close(fd);
    return nullptr;
  }
  return std::make_shared<controller>(o, fd, size);
}

}  // namespace vfu::dev::nvme
