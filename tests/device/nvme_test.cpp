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

#include "device/nvme/host.hpp"
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

using nv::cqe;
using cmd = nv::host;

// The library's host (device/nvme/host.hpp) at this layout, with an eventfd per vector.
class nvme_host : public nv::host {
 public:
  nvme_host(dev::remote_device& d, uint8_t* ram) : nv::host(d, ram, iova) {
    for (auto& e : efd_) e = unique_fd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  }
  bool enable() { return nv::host::enable(asq, acq); }
  bool io_queue(uint16_t qid, uint32_t depth) { return nv::host::io_queue(qid, iosq, iocq, depth); }
  void wire_msix() {
    std::vector<int> fds;
    for (auto& e : efd_) fds.push_back(e.get());
    auto s = nv::host::wire_msix(fds);
    ASSERT_TRUE(s.ok()) << s.err().message();
  }
  bool irq(uint32_t vector) {
    pollfd p{efd_[vector].get(), POLLIN, 0};
    if (::poll(&p, 1, 5000) != 1) return false;
    uint64_t n;
    return ::read(efd_[vector].get(), &n, 8) == 8;
  }
  std::array<unique_fd, 9> efd_;
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
  auto id = h.run(0, cmd::cmd(nv::opc::identify, 0, iova + idbuf, 0, 1));
  ASSERT_TRUE(id);
  EXPECT_EQ(id->status, 0);
  EXPECT_TRUE(h.irq(0)) << "the admin CQ's vector 0 fired";
  uint8_t* ic = ram_ + idbuf;
  EXPECT_EQ(ic[0x4d], nv::mdts);
  EXPECT_EQ(ic[0x20d], 1) << "volatile write cache";
  EXPECT_EQ(std::string(reinterpret_cast<char*>(ic + 0x300), 31), "nqn.2026-12.io.vfu-broker:nvme:");
  auto ns = h.run(0, cmd::cmd(nv::opc::identify, 1, iova + idbuf, 0, 0));
  ASSERT_TRUE(ns && ns->status == 0);
  uint64_t nsze;
  std::memcpy(&nsze, ram_ + idbuf, 8);
  EXPECT_EQ(nsze, (8u << 20) / 512);
  EXPECT_EQ(ram_[idbuf + 0x82], 9) << "512-byte blocks";
  auto list = h.run(0, cmd::cmd(nv::opc::identify, 0, iova + idbuf, 0, 2));
  ASSERT_TRUE(list && list->status == 0);
  uint32_t first;
  std::memcpy(&first, ram_ + idbuf, 4);
  EXPECT_EQ(first, 1u);
  auto desc = h.run(0, cmd::cmd(nv::opc::identify, 1, iova + idbuf, 0, 3));
  ASSERT_TRUE(desc && desc->status == 0);
  EXPECT_EQ(ram_[idbuf], 2) << "an NGUID descriptor";
  // Not a namespace, not a CNS, not an opcode.
  EXPECT_EQ(h.run(0, cmd::cmd(nv::opc::identify, 2, iova + idbuf, 0, 0))->status, nv::sc::invalid_ns | nv::sc::dnr);
  EXPECT_EQ(h.run(0, cmd::cmd(nv::opc::identify, 0, iova + idbuf, 0, 0x1c))->status, nv::sc::invalid_field | nv::sc::dnr);
  EXPECT_EQ(h.run(0, cmd::cmd(0x7f))->status, nv::sc::invalid_opcode | nv::sc::dnr);
  // Logs: SMART, firmware; an unknown one.
  auto smart = h.run(0, cmd::cmd(nv::opc::get_log_page, 0xffffffff, iova + idbuf, 0, 0x007f0002));
  ASSERT_TRUE(smart && smart->status == 0);
  EXPECT_EQ(ram_[idbuf + 3], 100) << "available spare";
  EXPECT_EQ(h.run(0, cmd::cmd(nv::opc::get_log_page, 0, iova + idbuf, 0, 0x007f0042))->status,
            nv::sc::invalid_log_page | nv::sc::dnr);
  // Four AERs are held; a fifth is refused.
  for (int i = 0; i < 4; ++i) h.submit(0, cmd::cmd(nv::opc::aer));
  auto fifth = h.run(0, cmd::cmd(nv::opc::aer));
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
  auto w = h.run(1, cmd::cmd(nv::io::write, 1, prp1, iova + list + 0x100, 100, 0, nlb));
  ASSERT_TRUE(w);
  EXPECT_EQ(w->status, 0);
  EXPECT_TRUE(h.irq(1)) << "the I/O CQ's vector";
  EXPECT_EQ(file_bytes(100 * 512, pattern.size()), pattern);
  auto f = h.run(1, cmd::cmd(nv::io::flush, 1));
  ASSERT_TRUE(f && f->status == 0);
  scatter(std::vector<uint8_t>(pattern.size(), 0));
  auto r = h.run(1, cmd::cmd(nv::io::read, 1, prp1, iova + list + 0x100, 100, 0, nlb));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 0);
  EXPECT_EQ(gather(), pattern);
  // A 4 KiB read with PRP2 naming the second page; Write Zeroes; past the namespace's end.
  auto r2 = h.run(1, cmd::cmd(nv::io::read, 1, iova + back + 0x800, iova + back + 0x1000, 100, 0, 7));
  ASSERT_TRUE(r2 && r2->status == 0);
  EXPECT_EQ(std::vector<uint8_t>(ram_ + back + 0x800, ram_ + back + 0x1800), std::vector<uint8_t>(pattern.begin(), pattern.begin() + 4096));
  auto z = h.run(1, cmd::cmd(nv::io::write_zeroes, 1, 0, 0, 100, 0, 7));
  ASSERT_TRUE(z && z->status == 0);
  EXPECT_EQ(file_bytes(100 * 512, 4096), std::vector<uint8_t>(4096, 0));
  EXPECT_EQ(h.run(1, cmd::cmd(nv::io::read, 1, iova + back, 0, (8 << 20) / 512 - 1, 0, 1))->status,
            nv::sc::lba_range | nv::sc::dnr);
  EXPECT_EQ(h.run(1, cmd::cmd(nv::io::read, 2, iova + back, 0, 0, 0, 0))->status, nv::sc::invalid_ns | nv::sc::dnr);
  EXPECT_EQ(h.run(1, cmd::cmd(nv::io::read, 1, iova + back, iova + list, 0, 0, 256))->status,
            nv::sc::invalid_field | nv::sc::dnr) << "128 KiB is the most per command";
}

TEST_P(NvmeTest, AHostileGuestGetsItsStatusOrIsIgnoredAndTheControllerKeepsWorking) {
  auto& h = *host_;
  ASSERT_TRUE(h.enable());
  ASSERT_TRUE(h.io_queue(1, 16));
  // A queue created twice; a CQ for an SQ that does not exist; an SQ tail past the queue.
  EXPECT_EQ(h.run(0, cmd::cmd(nv::opc::create_cq, 0, iova + iocq, 0, 1 | 15 << 16, 1 | 2 | 1 << 16))->status,
            nv::sc::invalid_qid | nv::sc::dnr);
  EXPECT_EQ(h.run(0, cmd::cmd(nv::opc::create_sq, 0, iova + iosq, 0, 2 | 15 << 16, 1 | 5 << 16))->status,
            nv::sc::cq_invalid | nv::sc::dnr);
  EXPECT_EQ(h.run(0, cmd::cmd(nv::opc::delete_cq, 0, 0, 0, 1))->status, nv::sc::invalid_q_deletion | nv::sc::dnr);
  h.w32(nv::reg::doorbells + 8, 5000);  // ignored
  // A PRP outside every window: a data transfer error, nothing else.
  auto bad = h.run(1, cmd::cmd(nv::io::read, 1, 0xdead00000000ull, 0, 0, 0, 0));
  ASSERT_TRUE(bad);
  EXPECT_EQ(bad->status, nv::sc::data_transfer);
  auto badw = h.run(1, cmd::cmd(nv::io::write, 1, 0xdead00000000ull, 0, 0, 0, 0));
  ASSERT_TRUE(badw);
  EXPECT_EQ(badw->status, nv::sc::data_transfer);
  EXPECT_EQ(file_bytes(0, 512), std::vector<uint8_t>(512, 0)) << "nothing was written";
  // A PRP2 with an offset where it must name a page.
  EXPECT_EQ(h.run(1, cmd::cmd(nv::io::read, 1, iova + back, iova + back + 0x1008, 0, 0, 15))->status,
            nv::sc::invalid_prp_offset | nv::sc::dnr);
  // Disabled: a doorbell does nothing; enabled again, queues must be made again.
  h.w32(nv::reg::cc, 0);
  EXPECT_EQ(h.r32(nv::reg::csts) & nv::reg::csts_rdy, 0u);
  h.submit(1, cmd::cmd(nv::io::read, 1, iova + back, 0, 0, 0, 0));
  EXPECT_FALSE(h.reap(1, 200ms)) << "no completion after disable";
  ASSERT_TRUE(h.enable());
  h.q[1] = {};
  ASSERT_TRUE(h.io_queue(1, 16)) << "queue 1 was dropped by the reset";
  auto ok = h.run(1, cmd::cmd(nv::io::read, 1, iova + back, 0, 0, 0, 0));
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
