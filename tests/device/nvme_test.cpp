// The NVMe controller (device/nvme, docs/nvme.md) driven by a small NVMe host written with
// our client: registers, admin and I/O queues in guest memory behind a DMA window (mmapped
// by the server, or reached by DMA messages), PRP lists, an MSI-X eventfd per queue,
// controller reset, and what a hostile guest can do.
#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include <gtest/gtest.h>
#include <thread>

#include "device/nvme/nvme.hpp"
#include "device/remote_device.hpp"
#include "tests/test_support.hpp"

namespace {

using namespace vfu;
using namespace vfu::proto;
using namespace std::chrono_literals;
namespace nv = vfu::dev::nvme;

constexpr uint64_t iova = 0x10000000, ram_size = 4 << 20;
// Guest memory layout (offsets from iova).
constexpr uint64_t asq = 0x0000, acq = 0x1000, idbuf = 0x2000, iosq = 0x4000, iocq = 0x8000, list = 0x9000,
                   data = 0x100000, back = 0x200000;

struct cqe {
  uint32_t dw0;
  uint16_t sqhd, sqid, cid, status;  ///< status without the phase bit
};

class nvme_host {
 public:
  nvme_host(dev::remote_device& d, uint8_t* ram) : d_(d), ram_(ram) {
    for (auto& e : efd_) e = unique_fd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  }
  uint32_t r32(uint32_t off) {
    uint32_t v = 0;
    EXPECT_TRUE(d_.read(0, off, &v, 4).ok());
    return v;
  }
  void w32(uint32_t off, uint32_t v) { EXPECT_TRUE(d_.write(0, off, &v, 4).ok()); }
  // What Linux does (core.c nvme_disable_ctrl/nvme_enable_ctrl): CC.EN=0, admin queues, CC.
  bool enable(uint32_t admin_depth = 32) {
    w32(nv::reg::cc, 0);
    if (r32(nv::reg::csts) & nv::reg::csts_rdy) return false;
    w32(nv::reg::aqa, (admin_depth - 1) << 16 | (admin_depth - 1));
    w32(nv::reg::asq, uint32_t(iova + asq)), w32(nv::reg::asq + 4, 0);
    w32(nv::reg::acq, uint32_t(iova + acq)), w32(nv::reg::acq + 4, 0);
    w32(nv::reg::cc, 0x00460000);
    w32(nv::reg::cc, 0x00460001);
    q_[0] = queue{asq, acq, admin_depth, 0, 0, true, 0};
    std::memset(ram_ + acq, 0, admin_depth * 16);  // a host clears its CQs: phase 0 = empty
    for (int i = 0; i < 100; ++i)
      if (r32(nv::reg::csts) & nv::reg::csts_rdy) return true;
    return false;
  }
  // MSI-X on, every vector wired to its eventfd and unmasked.
  void wire_msix() {
    uint16_t cmd = 0x6;
    ASSERT_TRUE(d_.write(region_index::config, 4, &cmd, 2).ok());
    uint8_t cfg[256];
    ASSERT_TRUE(d_.read(region_index::config, 0, cfg, 256).ok());
    uint8_t p = cfg[0x34];
    while (p && cfg[p] != 0x11) p = cfg[p + 1];
    ASSERT_NE(p, 0) << "no MSI-X capability";
    uint8_t ctl = 0x80;
    ASSERT_TRUE(d_.write(region_index::config, p + 3u, &ctl, 1).ok());
    std::vector<int> fds;
    for (auto& e : efd_) fds.push_back(e.get());
    ASSERT_TRUE(d_.set_irq_eventfds(irq_index::msix, 0, fds).ok());
    for (uint32_t v = 0; v < efd_.size(); ++v) {
      uint32_t zero = 0;
      ASSERT_TRUE(d_.write(nv::msix_bar, v * 16 + 12, &zero, 4).ok());
    }
  }
  // Puts an SQE on queue `qid` and rings its doorbell.
  void submit(uint16_t qid, std::array<uint32_t, 16> dw) {
    auto& q = q_[qid];
    dw[0] = (dw[0] & 0xffff) | uint32_t(++cid_) << 16;
    std::memcpy(ram_ + q.sq + uint64_t(q.tail) * 64, dw.data(), 64);
    q.tail = (q.tail + 1) % q.size;
    w32(nv::reg::doorbells + qid * 8, q.tail);
  }
  // The next completion on `qid`'s CQ (or none within the time), its head doorbell rung.
  std::optional<cqe> reap(uint16_t qid, std::chrono::milliseconds within = 5s) {
    auto& q = q_[qid];
    auto end = std::chrono::steady_clock::now() + within;
    uint8_t* e = ram_ + q.cq + uint64_t(q.head) * 16;
    for (;;) {
      uint16_t st;
      std::memcpy(&st, e + 14, 2);
      if ((st & 1) == (q.phase ? 1 : 0)) break;
      if (std::chrono::steady_clock::now() > end) return std::nullopt;
      std::this_thread::sleep_for(100us);
    }
    cqe c;
    std::memcpy(&c.dw0, e, 4);
    std::memcpy(&c.sqhd, e + 8, 2);
    std::memcpy(&c.sqid, e + 10, 2);
    std::memcpy(&c.cid, e + 12, 2);
    std::memcpy(&c.status, e + 14, 2);
    c.status >>= 1;
    if (++q.head == q.size) q.head = 0, q.phase = !q.phase;
    w32(nv::reg::doorbells + qid * 8 + 4, q.head);
    return c;
  }
  std::optional<cqe> run(uint16_t qid, std::array<uint32_t, 16> dw) {
    submit(qid, dw);
    auto c = reap(qid);
    if (c) {
      EXPECT_EQ(c->cid, cid_);
    }
    return c;
  }
  bool irq(uint32_t vector) {
    pollfd p{efd_[vector].get(), POLLIN, 0};
    if (::poll(&p, 1, 5000) != 1) return false;
    uint64_t n;
    return ::read(efd_[vector].get(), &n, 8) == 8;
  }
  static std::array<uint32_t, 16> cmd(uint8_t opc, uint32_t nsid = 0, uint64_t prp1 = 0, uint64_t prp2 = 0,
                                      uint32_t c10 = 0, uint32_t c11 = 0, uint32_t c12 = 0) {
    std::array<uint32_t, 16> d{};
    d[0] = opc, d[1] = nsid;
    d[6] = uint32_t(prp1), d[7] = uint32_t(prp1 >> 32), d[8] = uint32_t(prp2), d[9] = uint32_t(prp2 >> 32);
    d[10] = c10, d[11] = c11, d[12] = c12;
    return d;
  }
  // Set Features (queues), then an I/O CQ (vector `qid`) and SQ of `depth` entries.
  bool io_queue(uint16_t qid, uint32_t depth) {
    auto nq = run(0, cmd(nv::opc::set_features, 0, 0, 0, 0x07, 7 | 7 << 16));
    if (!nq || nq->status) return false;
    std::memset(ram_ + iocq, 0, depth * 16);
    auto cq = run(0, cmd(nv::opc::create_cq, 0, iova + iocq, 0, qid | (depth - 1) << 16, 1 | 2 | uint32_t(qid) << 16));
    auto sq = run(0, cmd(nv::opc::create_sq, 0, iova + iosq, 0, qid | (depth - 1) << 16, 1 | uint32_t(qid) << 16));
    q_[qid] = queue{iosq, iocq, depth, 0, 0, true, 0};
    return cq && sq && cq->status == 0 && sq->status == 0;
  }
  dev::remote_device& d_;
  uint8_t* ram_;
  struct queue {
    uint64_t sq = 0, cq = 0;
    uint32_t size = 0, tail = 0, head = 0;
    bool phase = true;
    int pad = 0;
  };
  std::array<queue, 9> q_{};
  std::array<unique_fd, 9> efd_;
  uint16_t cid_ = 0;
};

class NvmeTest : public test::socket_dir_test, public ::testing::WithParamInterface<bool> {
 protected:
  void SetUp() override {
    socket_dir_test::SetUp();
    rt_ = std::make_unique<runtime>();
    backing_ = dir_ + "/disk.img";
    nv::options o;
    o.backing = backing_;
    o.size = 8 << 20;
    o.size_given = true;
    std::string err;
    auto model = nv::make(o, err);
    ASSERT_TRUE(model) << err;
    dev_ = dev::spawn_device(rt_->system(), model);
    auto ep = endpoint::listen(*rt_, path_, {}, dev_);
    ASSERT_TRUE(ep.ok());
    server_ = std::move(ep.value());
    guest_ = unique_fd(::memfd_create("guest", MFD_CLOEXEC));
    ASSERT_EQ(::ftruncate(guest_.get(), ram_size), 0);
    ram_ = static_cast<uint8_t*>(::mmap(nullptr, ram_size, PROT_READ | PROT_WRITE, MAP_SHARED, guest_.get(), 0));
    mem_ = std::make_shared<dev::guest_memory>();
    mem_->add(iova, ram_size, ram_, dma_flags::read | dma_flags::write);
    endpoint_config cfg;
    cfg.reconnect = false;
    auto d = dev::remote_device::open(*rt_, path_, mem_, cfg);
    ASSERT_TRUE(d.ok());
    client_ = std::move(d.value());
    ASSERT_TRUE(client_->probe().ok());
    // The parameter: the window comes with its fd (the server mmaps it) or without (every
    // byte by DMA_READ/DMA_WRITE messages).
    ASSERT_TRUE(client_->dma_map(iova, ram_size, dma_flags::read | dma_flags::write, GetParam() ? &guest_ : nullptr, 0).ok());
    host_ = std::make_unique<nvme_host>(*client_, ram_);
    host_->wire_msix();
  }
  void TearDown() override {
    host_.reset();
    client_.reset();
    server_.reset();
    caf::anon_send_exit(dev_, caf::exit_reason::user_shutdown);
    rt_.reset();
    if (ram_) ::munmap(ram_, ram_size);
    guest_.reset();
    ::unlink(backing_.c_str());
    socket_dir_test::TearDown();
  }
  std::vector<uint8_t> file_bytes(uint64_t off, size_t n) {
    std::vector<uint8_t> b(n);
    int fd = ::open(backing_.c_str(), O_RDONLY | O_CLOEXEC);
    EXPECT_EQ(::pread(fd, b.data(), n, off_t(off)), ssize_t(n));
    ::close(fd);
    return b;
  }

  std::unique_ptr<runtime> rt_;
  caf::actor dev_;
  std::unique_ptr<endpoint> server_;
  std::unique_ptr<dev::remote_device> client_;
  unique_fd guest_;
  uint8_t* ram_ = nullptr;
  std::shared_ptr<dev::guest_memory> mem_;
  std::unique_ptr<nvme_host> host_;
  std::string backing_;
};

TEST_P(NvmeTest, RegistersIdentifyAndPciLayoutAreWhatLinuxExpects) {
  auto& h = *host_;
  uint32_t cfg0 = 0, cls = 0;
  ASSERT_TRUE(client_->read(region_index::config, 0, &cfg0, 4).ok());
  ASSERT_TRUE(client_->read(region_index::config, 8, &cls, 4).ok());
  EXPECT_EQ(cfg0, uint32_t(nv::device) << 16 | nv::vendor);
  EXPECT_EQ(cls >> 8, 0x010802u);
  EXPECT_EQ(client_->regions()[0].info.size, nv::bar0_size);
  EXPECT_EQ(client_->irqs()[irq_index::msix].count, 9u);
  uint64_t cap = h.r32(nv::reg::cap) | uint64_t(h.r32(nv::reg::cap + 4)) << 32;
  EXPECT_EQ(cap & 0xffff, nv::mqes);
  EXPECT_EQ((cap >> 37) & 0xff, 1u) << "NVM command set only";
  EXPECT_EQ((cap >> 48) & 0xf, 0u) << "MPSMIN 4 KiB";
  EXPECT_EQ(h.r32(nv::reg::vs), 0x00010400u);
  ASSERT_TRUE(h.enable());
  EXPECT_EQ(h.r32(nv::reg::cc), 0x00460001u) << "CC reads back as written";
  auto id = h.run(0, nvme_host::cmd(nv::opc::identify, 0, iova + idbuf, 0, 1));
  ASSERT_TRUE(id);
  EXPECT_EQ(id->status, 0);
  EXPECT_TRUE(h.irq(0)) << "the admin CQ's vector 0 fired";
  uint8_t* ic = ram_ + idbuf;
  EXPECT_EQ(ic[0x4d], nv::mdts);
  EXPECT_EQ(ic[0x20d], 1) << "volatile write cache";
  EXPECT_EQ(std::string(reinterpret_cast<char*>(ic + 0x300), 31), "nqn.2026-12.io.vfu-broker:nvme:");
  auto ns = h.run(0, nvme_host::cmd(nv::opc::identify, 1, iova + idbuf, 0, 0));
  ASSERT_TRUE(ns && ns->status == 0);
  uint64_t nsze;
  std::memcpy(&nsze, ram_ + idbuf, 8);
  EXPECT_EQ(nsze, (8u << 20) / 512);
  EXPECT_EQ(ram_[idbuf + 0x82], 9) << "512-byte blocks";
  auto list = h.run(0, nvme_host::cmd(nv::opc::identify, 0, iova + idbuf, 0, 2));
  ASSERT_TRUE(list && list->status == 0);
  uint32_t first;
  std::memcpy(&first, ram_ + idbuf, 4);
  EXPECT_EQ(first, 1u);
  auto desc = h.run(0, nvme_host::cmd(nv::opc::identify, 1, iova + idbuf, 0, 3));
  ASSERT_TRUE(desc && desc->status == 0);
  EXPECT_EQ(ram_[idbuf], 2) << "an NGUID descriptor";
  // Not a namespace, not a CNS, not an opcode.
  EXPECT_EQ(h.run(0, nvme_host::cmd(nv::opc::identify, 2, iova + idbuf, 0, 0))->status, nv::sc::invalid_ns | nv::sc::dnr);
  EXPECT_EQ(h.run(0, nvme_host::cmd(nv::opc::identify, 0, iova + idbuf, 0, 0x1c))->status, nv::sc::invalid_field | nv::sc::dnr);
  EXPECT_EQ(h.run(0, nvme_host::cmd(0x7f))->status, nv::sc::invalid_opcode | nv::sc::dnr);
  // Logs: SMART, firmware; an unknown one.
  auto smart = h.run(0, nvme_host::cmd(nv::opc::get_log_page, 0xffffffff, iova + idbuf, 0, 0x007f0002));
  ASSERT_TRUE(smart && smart->status == 0);
  EXPECT_EQ(ram_[idbuf + 3], 100) << "available spare";
  EXPECT_EQ(h.run(0, nvme_host::cmd(nv::opc::get_log_page, 0, iova + idbuf, 0, 0x007f0042))->status,
            nv::sc::invalid_log_page | nv::sc::dnr);
  // Four AERs are held; a fifth is refused.
  for (int i = 0; i < 4; ++i) h.submit(0, nvme_host::cmd(nv::opc::aer));
  auto fifth = h.run(0, nvme_host::cmd(nv::opc::aer));
  ASSERT_TRUE(fifth);
  EXPECT_EQ(fifth->status, nv::sc::aer_limit | nv::sc::dnr);
}

TEST_P(NvmeTest, ReadsAndWritesWithPrpListsReachTheFileAndRaiseTheQueuesVector) {
  auto& h = *host_;
  ASSERT_TRUE(h.enable());
  ASSERT_TRUE(h.io_queue(1, 64));
  // 64 KiB from 16 scattered guest pages, the list at offset 0x100 of its page (as Linux's
  // 256-byte pool places it); PRP1 starts 0x200 into its page, so 17 pages are named.
  std::vector<uint64_t> pages;
  for (uint64_t i = 0; i < 17; ++i) pages.push_back(iova + data + (16 - i) * 0x2000);  // descending: not contiguous
  uint64_t prp1 = pages[0] + 0x200;
  for (size_t i = 1; i < pages.size(); ++i) std::memcpy(ram_ + list + 0x100 + (i - 1) * 8, &pages[i], 8);
  std::vector<uint8_t> pattern(64 << 10);
  for (size_t i = 0; i < pattern.size(); ++i) pattern[i] = uint8_t(i * 7 + i / 4096);
  auto scatter = [&](const std::vector<uint8_t>& b) {
    size_t at = 0;
    size_t n0 = 0x1000 - 0x200;
    std::memcpy(ram_ + (prp1 - iova), b.data(), n0), at = n0;
    for (size_t i = 1; at < b.size(); ++i, at += 0x1000)
      std::memcpy(ram_ + (pages[i] - iova), b.data() + at, std::min<size_t>(0x1000, b.size() - at));
  };
  auto gather = [&] {
    std::vector<uint8_t> b(pattern.size());
    size_t n0 = 0x1000 - 0x200, at = n0;
    std::memcpy(b.data(), ram_ + (prp1 - iova), n0);
    for (size_t i = 1; at < b.size(); ++i, at += 0x1000)
      std::memcpy(b.data() + at, ram_ + (pages[i] - iova), std::min<size_t>(0x1000, b.size() - at));
    return b;
  };
  scatter(pattern);
  uint32_t nlb = uint32_t(pattern.size() / 512 - 1);
  auto w = h.run(1, nvme_host::cmd(nv::io::write, 1, prp1, iova + list + 0x100, 100, 0, nlb));
  ASSERT_TRUE(w);
  EXPECT_EQ(w->status, 0);
  EXPECT_TRUE(h.irq(1)) << "the I/O CQ's vector";
  EXPECT_EQ(file_bytes(100 * 512, pattern.size()), pattern);
  auto f = h.run(1, nvme_host::cmd(nv::io::flush, 1));
  ASSERT_TRUE(f && f->status == 0);
  scatter(std::vector<uint8_t>(pattern.size(), 0));
  auto r = h.run(1, nvme_host::cmd(nv::io::read, 1, prp1, iova + list + 0x100, 100, 0, nlb));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 0);
  EXPECT_EQ(gather(), pattern);
  // A 4 KiB read with PRP2 naming the second page; Write Zeroes; past the namespace's end.
  auto r2 = h.run(1, nvme_host::cmd(nv::io::read, 1, iova + back + 0x800, iova + back + 0x1000, 100, 0, 7));
  ASSERT_TRUE(r2 && r2->status == 0);
  EXPECT_EQ(std::vector<uint8_t>(ram_ + back + 0x800, ram_ + back + 0x1800), std::vector<uint8_t>(pattern.begin(), pattern.begin() + 4096));
  auto z = h.run(1, nvme_host::cmd(nv::io::write_zeroes, 1, 0, 0, 100, 0, 7));
  ASSERT_TRUE(z && z->status == 0);
  EXPECT_EQ(file_bytes(100 * 512, 4096), std::vector<uint8_t>(4096, 0));
  EXPECT_EQ(h.run(1, nvme_host::cmd(nv::io::read, 1, iova + back, 0, (8 << 20) / 512 - 1, 0, 1))->status,
            nv::sc::lba_range | nv::sc::dnr);
  EXPECT_EQ(h.run(1, nvme_host::cmd(nv::io::read, 2, iova + back, 0, 0, 0, 0))->status, nv::sc::invalid_ns | nv::sc::dnr);
  EXPECT_EQ(h.run(1, nvme_host::cmd(nv::io::read, 1, iova + back, iova + list, 0, 0, 256))->status,
            nv::sc::invalid_field | nv::sc::dnr) << "128 KiB is the most per command";
}

TEST_P(NvmeTest, AHostileGuestGetsItsStatusOrIsIgnoredAndTheControllerKeepsWorking) {
  auto& h = *host_;
  ASSERT_TRUE(h.enable());
  ASSERT_TRUE(h.io_queue(1, 16));
  // A queue created twice; a CQ for an SQ that does not exist; an SQ tail past the queue.
  EXPECT_EQ(h.run(0, nvme_host::cmd(nv::opc::create_cq, 0, iova + iocq, 0, 1 | 15 << 16, 1 | 2 | 1 << 16))->status,
            nv::sc::invalid_qid | nv::sc::dnr);
  EXPECT_EQ(h.run(0, nvme_host::cmd(nv::opc::create_sq, 0, iova + iosq, 0, 2 | 15 << 16, 1 | 5 << 16))->status,
            nv::sc::cq_invalid | nv::sc::dnr);
  EXPECT_EQ(h.run(0, nvme_host::cmd(nv::opc::delete_cq, 0, 0, 0, 1))->status, nv::sc::invalid_q_deletion | nv::sc::dnr);
  h.w32(nv::reg::doorbells + 8, 5000);  // ignored
  // A PRP outside every window: a data transfer error, nothing else.
  auto bad = h.run(1, nvme_host::cmd(nv::io::read, 1, 0xdead00000000ull, 0, 0, 0, 0));
  ASSERT_TRUE(bad);
  EXPECT_EQ(bad->status, nv::sc::data_transfer);
  auto badw = h.run(1, nvme_host::cmd(nv::io::write, 1, 0xdead00000000ull, 0, 0, 0, 0));
  ASSERT_TRUE(badw);
  EXPECT_EQ(badw->status, nv::sc::data_transfer);
  EXPECT_EQ(file_bytes(0, 512), std::vector<uint8_t>(512, 0)) << "nothing was written";
  // A PRP2 with an offset where it must name a page.
  EXPECT_EQ(h.run(1, nvme_host::cmd(nv::io::read, 1, iova + back, iova + back + 0x1008, 0, 0, 15))->status,
            nv::sc::invalid_prp_offset | nv::sc::dnr);
  // Disabled: a doorbell does nothing; enabled again, queues must be made again.
  h.w32(nv::reg::cc, 0);
  EXPECT_EQ(h.r32(nv::reg::csts) & nv::reg::csts_rdy, 0u);
  h.submit(1, nvme_host::cmd(nv::io::read, 1, iova + back, 0, 0, 0, 0));
  EXPECT_FALSE(h.reap(1, 200ms)) << "no completion after disable";
  ASSERT_TRUE(h.enable());
  h.q_[1] = {};
  ASSERT_TRUE(h.io_queue(1, 16)) << "queue 1 was dropped by the reset";
  auto ok = h.run(1, nvme_host::cmd(nv::io::read, 1, iova + back, 0, 0, 0, 0));
  ASSERT_TRUE(ok);
  EXPECT_EQ(ok->status, 0);
  // Misaligned admin queues: Controller Fatal Status, not ready.
  h.w32(nv::reg::cc, 0);
  h.w32(nv::reg::asq, uint32_t(iova + 0x100));
  h.w32(nv::reg::cc, 0x00460001);
  EXPECT_EQ(h.r32(nv::reg::csts) & (nv::reg::csts_rdy | nv::reg::csts_cfs), nv::reg::csts_cfs);
  // Shutdown: SHST reaches "complete".
  ASSERT_TRUE(h.enable());
  h.w32(nv::reg::cc, 0x00464001);
  uint32_t csts = 0;
  for (int i = 0; i < 200 && (csts & 0xc) != nv::reg::csts_shst_done; ++i) {
    csts = h.r32(nv::reg::csts);
    std::this_thread::sleep_for(1ms);
  }
  EXPECT_EQ(csts & 0xc, nv::reg::csts_shst_done);
}

INSTANTIATE_TEST_SUITE_P(Windows, NvmeTest, ::testing::Values(true, false),
                         [](const auto& i) { return i.param ? "Mmapped" : "ByMessage"; });

}  // namespace
