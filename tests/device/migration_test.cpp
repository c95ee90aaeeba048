// Migration v2 and dirty logging (docs/migration.md): the state machine's paths, the stream
// parser and the dirty log on their own; then our client migrating each sample device
// between two of our servers while traffic runs, dirty logging through a mapped window, and
// a reconnect in the middle of a migration.
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>

#include <atomic>
#include <gtest/gtest.h>
#include <random>
#include <thread>

#include "device/migrate.hpp"
#include "device/migration.hpp"
#include "device/remote_device.hpp"
#include "device/samples.hpp"
#include "tests/test_support.hpp"

namespace {

using namespace vfu;
using namespace vfu::proto;
using namespace std::chrono_literals;
namespace dt = vfu::dev::dmatest;
using S = mig_state;

// ---- The parts without sockets ---------------------------------------------------------------

TEST(MigPath, ShortestPathsThroughNoSavingState) {
  uint64_t plain = mig_flags::stop_copy, pre = plain | mig_flags::pre_copy, p2p = plain | mig_flags::p2p;
  auto path = [](S a, S b, uint64_t f) { return dev::mig_path(a, b, f); };
  EXPECT_EQ(*path(S::running, S::stop_copy, plain), (std::vector<S>{S::stop, S::stop_copy}));
  EXPECT_EQ(*path(S::stop_copy, S::running, plain), (std::vector<S>{S::stop, S::running}));
  EXPECT_EQ(*path(S::resuming, S::running, plain), (std::vector<S>{S::stop, S::running}));
  EXPECT_EQ(*path(S::running, S::resuming, plain), (std::vector<S>{S::stop, S::resuming}));
  EXPECT_EQ(*path(S::pre_copy, S::stop, pre), (std::vector<S>{S::running, S::stop}));  // not through STOP_COPY
  EXPECT_EQ(*path(S::pre_copy, S::stop_copy, pre), (std::vector<S>{S::stop_copy}));
  EXPECT_EQ(*path(S::stop, S::pre_copy, pre), (std::vector<S>{S::running, S::pre_copy}));
  EXPECT_EQ(*path(S::running, S::stop, p2p), (std::vector<S>{S::running_p2p, S::stop}));
  EXPECT_TRUE(path(S::running, S::running, plain)->empty());
  EXPECT_FALSE(path(S::stop_copy, S::pre_copy, pre));  // the kernel's rule
  EXPECT_FALSE(path(S::resuming, S::pre_copy, pre));
  EXPECT_FALSE(path(S::running, S::pre_copy, plain));  // not offered
  EXPECT_FALSE(path(S::running, S::running_p2p, plain));
  EXPECT_FALSE(path(S::error, S::running, plain));  // only DEVICE_RESET leaves ERROR
  EXPECT_FALSE(path(S::running, S::error, plain));
}

struct recording_sink : dev::mig_sink {
  std::vector<uint8_t> mem = std::vector<uint8_t>(8192);
  std::vector<std::pair<uint32_t, std::vector<uint8_t>>> records;
  uint8_t* pages(uint32_t region, uint64_t off, uint64_t len) override {
    return region == 2 && off <= mem.size() && len <= mem.size() - off ? mem.data() + off : nullptr;
  }
  int record(uint32_t type, uint32_t, std::vector<uint8_t> d) override {
    records.emplace_back(type, std::move(d));
    return 0;
  }
};

std::vector<uint8_t> stream_of(dev::mig_source& s) {
  std::vector<uint8_t> out;
  for (;;) {
    auto pieces = s.take(1000);
    size_t n = 0;
    for (auto& p : pieces) out.insert(out.end(), p.data, p.data + p.len), n += p.len;
    if (n < 1000) return out;
  }
}

TEST(MigStream, PiecesOfAnySizeGiveTheSameDeviceAndBadRecordsAreRefused) {
  std::vector<uint8_t> ram(8192);
  for (size_t i = 0; i < ram.size(); ++i) ram[i] = uint8_t(i * 7);
  dev::mig_source src;
  src.add_record(dev::mig_record::header, dev::mig_record::version, 0, {1, 2, 3});
  src.add_borrowed_pages(2, 4096, ram.data() + 4096, 4096);
  src.add_record(dev::mig_record::model, 0, 0, {9, 9});
  src.add_record(dev::mig_record::end, 0, 0, {});
  auto bytes = stream_of(src);
  for (size_t piece : {size_t(1), size_t(7), size_t(24), bytes.size()}) {
    SCOPED_TRACE("pieces of " + std::to_string(piece));
    dev::mig_parser p;
    recording_sink sink;
    for (size_t at = 0; at < bytes.size(); at += piece)
      ASSERT_EQ(p.feed(bytes.data() + at, std::min(piece, bytes.size() - at), sink), 0);
    EXPECT_TRUE(p.ended());
    EXPECT_TRUE(std::equal(ram.begin() + 4096, ram.end(), sink.mem.begin() + 4096));
    ASSERT_EQ(sink.records.size(), 2u);
    EXPECT_EQ(sink.records[1].second, (std::vector<uint8_t>{9, 9}));
    EXPECT_EQ(p.feed(bytes.data(), 1, sink), EINVAL) << "nothing follows END";
  }
  auto head = [](uint32_t type, uint32_t index, uint64_t off, uint64_t len) {
    std::vector<uint8_t> h(24);
    std::memcpy(h.data(), &type, 4), std::memcpy(h.data() + 4, &index, 4);
    std::memcpy(h.data() + 8, &off, 8), std::memcpy(h.data() + 16, &len, 8);
    return h;
  };
  recording_sink sink;
  auto first_not_header = head(dev::mig_record::pages, 2, 0, 16);
  EXPECT_EQ(dev::mig_parser().feed(first_not_header.data(), 24, sink), EINVAL);
  auto good = head(dev::mig_record::header, 1, 0, 0);
  for (auto bad : {head(dev::mig_record::pages, 2, 8000, 4096), head(dev::mig_record::pages, 5, 0, 1),
                   head(dev::mig_record::model, 0, 0, dev::max_mig_record + 1), head(99, 0, 0, 0),
                   head(dev::mig_record::end, 0, 0, 1)}) {
    dev::mig_parser p;
    ASSERT_EQ(p.feed(good.data(), 24, sink), 0);
    EXPECT_NE(p.feed(bad.data(), 24, sink), 0);
    EXPECT_NE(p.error(), 0) << "the error sticks";
  }
}

TEST(DirtyLog, MarksWholePagesReportsAnyAlignedPartAndClearsWhatItReported) {
  dev::dirty_log log;
  EXPECT_EQ(log.start(3000, {{0, 0x1000}}), EINVAL);
  EXPECT_EQ(log.start(4096, {{0, 0x2000}, {0x1000, 0x1000}}), EINVAL);
  EXPECT_EQ(log.start(4096, {{0x800, 0x1000}}), EINVAL);
  EXPECT_EQ(log.start(4096, {{0, 1ull << 62}}), ENOMEM);
  ASSERT_EQ(log.start(4096, {{0x100000, 0x100000}, {0x400000, 0x1000}}), 0);
  log.mark(0x0ff000, 0x2000);    // half outside: only page 0 of the range
  log.mark(0x150ff0, 0x20);      // two pages: 0x50, 0x51
  log.mark(0x1ff000, 1);         // the last page, 0xff
  log.mark(0x300000, 0x1000);    // not logged
  std::vector<uint8_t> bm(32);
  ASSERT_EQ(log.report(0x100000, 0x100000, 4096, bm.data()), 0);
  auto bit = [&](uint32_t i) { return (bm[i / 8] >> (i % 8)) & 1; };
  for (uint32_t i = 0; i < 256; ++i) EXPECT_EQ(bit(i), i == 0 || i == 0x50 || i == 0x51 || i == 0xff) << i;
  ASSERT_EQ(log.report(0x100000, 0x100000, 4096, bm.data()), 0);
  EXPECT_EQ(bm, std::vector<uint8_t>(32, 0)) << "a report clears what it reported";
  // A part that does not start on a word of the bitmap: pages 0x4f.. of the range.
  log.mark(0x150000, 0x1000);
  std::vector<uint8_t> part(8);
  ASSERT_EQ(log.report(0x14f000, 0x4000, 4096, part.data()), 0);
  EXPECT_EQ(part[0], 0x2);  // page 0x50 is bit 1
  EXPECT_EQ(log.report(0x14f000, 0x4000, 8192, part.data()), EINVAL);
  EXPECT_EQ(log.report(0x1ff000, 0x2000, 4096, part.data()), EINVAL);  // past the range
  EXPECT_EQ(log.report(0x100800, 0x1000, 4096, part.data()), EINVAL);
}

// ---- Our client migrating our servers ----------------------------------------------------------

class MigrationTest : public test::socket_dir_test {
 protected:
  void SetUp() override {
    socket_dir_test::SetUp();
    rt_ = std::make_unique<runtime>();
  }
  void TearDown() override {
    src_.reset();
    dst_.reset();
    for (auto& s : servers_) s.reset();
    for (auto& a : actors_) caf::anon_send_exit(a, caf::exit_reason::user_shutdown);
    rt_.reset();
    for (auto& p : extra_paths_) ::unlink(p.c_str());
    socket_dir_test::TearDown();
  }
  std::string serve(std::shared_ptr<dev::device_model> model, const std::string& name) {
    auto a = dev::spawn_device(rt_->system(), std::move(model));
    actors_.push_back(a);
    std::string p = dir_ + "/" + name;
    extra_paths_.push_back(p);
    auto ep = endpoint::listen(*rt_, p, {}, a);
    EXPECT_TRUE(ep.ok()) << ep.err().message();
    if (ep) servers_.push_back(std::move(ep.value()));
    return p;
  }
  std::unique_ptr<dev::remote_device> open(const std::string& p, std::shared_ptr<dev::guest_memory> mem = nullptr) {
    endpoint_config cfg;
    cfg.reconnect = false;
    auto d = dev::remote_device::open(*rt_, p, mem, cfg);
    EXPECT_TRUE(d.ok()) << d.err().message();
    if (!d) return nullptr;
    EXPECT_TRUE((*d)->probe().ok());
    return std::move(d.value());
  }
  void pair(const std::string& model) {
    src_ = open(serve(dev::make_sample(model), "src.sock"));
    dst_ = open(serve(dev::make_sample(model), "dst.sock"));
    ASSERT_TRUE(src_ && dst_);
  }
  // What vfu-migrate does (dev::migrate); `before_stop` runs just before the source stops.
  void migrate(int rounds, const std::function<void()>& before_stop = {}) {
    dev::migrate_options o;
    o.precopy_rounds = rounds;
    o.before_stop = before_stop;
    auto s = dev::migrate(*src_, *dst_, o, report_);
    ASSERT_TRUE(s.ok()) << s.err().message() << "; source " << report_.source_state << ", destination "
                        << report_.destination_state;
  }
  std::vector<uint8_t> read(dev::remote_device& d, uint32_t region, uint64_t off, size_t n) {
    std::vector<uint8_t> b(n);
    EXPECT_TRUE(d.read(region, off, b.data(), n).ok());
    return b;
  }

  std::unique_ptr<runtime> rt_;
  std::vector<std::unique_ptr<endpoint>> servers_;
  std::vector<caf::actor> actors_;
  std::vector<std::string> extra_paths_;
  std::unique_ptr<dev::remote_device> src_, dst_;
  dev::migrate_report report_;
};

TEST_F(MigrationTest, GpioMovesItsPinsAndConfigSpaceWrittenUpToTheStop) {
  pair("gpio");
  uint16_t cmd = dev::pci_reg::cmd_io;
  ASSERT_TRUE(src_->write(region_index::config, 4, &cmd, 2).ok());
  uint8_t line = 11;
  ASSERT_TRUE(src_->write(region_index::config, 0x3c, &line, 1).ok());
  // Traffic up to the moment the source stops. (Not "until a write is refused": STOP_COPY
  // refuses writes, but the whole of it may pass between two writes, and STOP, where the
  // source ends, takes them again: the loop would never end.)
  std::atomic<uint64_t> writes{0};
  std::atomic<bool> stopping{false};
  std::thread traffic([&] {
    for (uint8_t v = 1; !stopping; ++v) {
      if (!src_->write(2, v % 2 ? 0 : 4, &v, 1).ok()) return;
      ++writes;
    }
  });
  while (writes < 50) std::this_thread::sleep_for(1ms);
  migrate(0, [&] {
    stopping = true;
    traffic.join();
  });
  EXPECT_EQ(src_->migration_state().value(), S::stop);
  EXPECT_EQ(dst_->migration_state().value(), S::running);
  // The pins are computed from each pin's write count: all 16 match only if every count
  // came across.
  EXPECT_EQ(read(*dst_, 2, 1, 1), read(*src_, 2, 1, 1));
  EXPECT_EQ(read(*dst_, 2, 5, 1), read(*src_, 2, 5, 1));
  EXPECT_NE(read(*dst_, 2, 1, 1), std::vector<uint8_t>{0xff}) << "the traffic changed nothing";
  EXPECT_EQ(read(*dst_, region_index::config, 0, 256), read(*src_, region_index::config, 0, 256));
  EXPECT_EQ(read(*dst_, region_index::config, 0x3c, 1)[0], 11);
}

struct irq_rig {
  unique_fd guest{::memfd_create("guest", MFD_CLOEXEC)};
  uint8_t* ram = nullptr;
  unique_fd efd{::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)};
  std::shared_ptr<dev::guest_memory> mem = std::make_shared<dev::guest_memory>();
  irq_rig() {
    if (::ftruncate(guest.get(), 2 << 20) != 0) std::abort();
    ram = static_cast<uint8_t*>(::mmap(nullptr, 2 << 20, PROT_READ | PROT_WRITE, MAP_SHARED, guest.get(), 0));
    mem->add(0x100000, 2 << 20, ram, dma_flags::read | dma_flags::write);
  }
  ~irq_rig() { ::munmap(ram, 2 << 20); }
  bool wait_irq() {
    pollfd p{efd.get(), POLLIN, 0};
    if (::poll(&p, 1, 10000) != 1) return false;
    uint64_t c;
    return ::read(efd.get(), &c, 8) == 8;
  }
};

void msix_on(dev::remote_device& d) {
  uint16_t cmd = dev::pci_reg::cmd_mem | dev::pci_reg::cmd_master;
  ASSERT_TRUE(d.write(region_index::config, 4, &cmd, 2).ok());
  uint8_t ctl = 0x80;
  ASSERT_TRUE(d.write(region_index::config, 0x63, &ctl, 1).ok());
}

void copy(dev::remote_device& d, uint64_t src, uint64_t dst, uint32_t len) {
  ASSERT_TRUE(d.write(0, dt::src, &src, 8).ok());
  ASSERT_TRUE(d.write(0, dt::dst, &dst, 8).ok());
  ASSERT_TRUE(d.write(0, dt::len, &len, 4).ok());
  uint32_t one = 1;
  ASSERT_TRUE(d.write(0, dt::doorbell, &one, 4).ok());
}

TEST_F(MigrationTest, DmaTestMovesRegistersScratchMemoryMsixTableAndAPendingInterrupt) {
  irq_rig rig;
  src_ = open(serve(dev::make_sample("dma-test"), "src.sock"), rig.mem);
  dst_ = open(serve(dev::make_sample("dma-test"), "dst.sock"));
  ASSERT_TRUE(src_ && dst_);
  msix_on(*src_);
  ASSERT_TRUE(src_->dma_map(0x100000, 2 << 20, dma_flags::read | dma_flags::write, &rig.guest, 0).ok());
  // Vector 1's table entry gets an address and data; vector 0 stays masked, so the copy's
  // completion interrupt is left pending.
  uint32_t entry[3] = {0xfee00000, 0, 0x4041}, masked = 1;
  ASSERT_TRUE(src_->write(1, 16, entry, 12).ok());
  ASSERT_TRUE(src_->write(1, 12, &masked, 4).ok());
  std::memset(rig.ram, 0x5a, 4096);
  copy(*src_, 0x100000, 0x200000, 4096);
  uint32_t status = 0;
  ASSERT_TRUE(src_->read(0, dt::status, &status, 4).ok());
  ASSERT_EQ(status, dt::status_done);
  std::vector<uint8_t> scratch(dt::scratch_size), shm(0x10000);
  for (size_t i = 0; i < scratch.size(); ++i) scratch[i] = uint8_t(i ^ 0x3c);
  for (size_t i = 0; i < shm.size(); ++i) shm[i] = uint8_t(i * 13);
  ASSERT_TRUE(src_->write(dt::scratch_region, 0, scratch.data(), scratch.size()).ok());
  ASSERT_TRUE(src_->write(2, 0, shm.data(), shm.size()).ok());
  migrate(1, [&] { shm[0x8000] = 0xee; ASSERT_TRUE(src_->write(2, 0x8000, &shm[0x8000], 1).ok()); });
  EXPECT_GT(report_.precopy.at(0).bytes, 0x10000u);  // all of BAR2 in the first round
  // STOP_COPY: the one page written after the round (not BAR2's 64 KiB again), the
  // registers with the 4 KiB scratch area, config space and the MSI-X state.
  EXPECT_LT(report_.stopcopy_bytes, 0x4000u);
  EXPECT_EQ(read(*dst_, 0, 0, 0x24), read(*src_, 0, 0, 0x24));  // every register
  EXPECT_EQ(read(*dst_, 0, dt::copies, 4), (std::vector<uint8_t>{1, 0, 0, 0}));
  EXPECT_EQ(read(*dst_, dt::scratch_region, 0, scratch.size()), scratch);
  EXPECT_EQ(read(*dst_, 2, 0, shm.size()), shm);
  EXPECT_EQ(read(*dst_, 1, 0, 64), read(*src_, 1, 0, 64));  // the MSI-X table
  EXPECT_EQ(read(*dst_, 1, 0x800, 8)[0] & 1, 1) << "vector 0's pending bit came across";
  EXPECT_EQ(read(*dst_, region_index::config, 0, 256), read(*src_, region_index::config, 0, 256));
  // The destination's host wires the vector and unmasks it: the pending interrupt fires.
  ASSERT_TRUE(dst_->set_irq_eventfds(irq_index::msix, 0, {rig.efd.get()}).ok());
  uint32_t zero = 0;
  ASSERT_TRUE(dst_->write(1, 12, &zero, 4).ok());
  EXPECT_TRUE(rig.wait_irq());
}

TEST_F(MigrationTest, RamMovesEveryByteWrittenThroughTheMappingAndByMessageDuringPreCopy) {
  pair("ram");
  std::atomic<bool> guest_paused{false}, stopping{false};
  std::atomic<uint64_t> writes{0};
  // The guest writes through the mapped half until it is paused, and by message to the other
  // half up to the moment the source stops (as in the gpio test: not until a write is refused).
  std::thread traffic([&] {
    std::mt19937 rng(7);
    std::vector<uint8_t> b(4096);
    while (!stopping) {
      for (auto& x : b) x = uint8_t(rng());
      bool mapped = !guest_paused && rng() % 2;
      uint64_t off = (mapped ? 0 : dev::ram::mmap_size) + rng() % (dev::ram::mmap_size - b.size());
      if (!src_->write(0, off, b.data(), b.size()).ok()) return;
      ++writes;
    }
  });
  while (writes < 100) std::this_thread::sleep_for(1ms);
  migrate(2, [&] {
    guest_paused = true;
    stopping = true;
    traffic.join();
  });
  EXPECT_GE(report_.precopy.at(0).bytes, dev::ram::size) << "the first round sends everything";
  EXPECT_EQ(read(*dst_, 0, 0, dev::ram::size), read(*src_, 0, 0, dev::ram::size));
}

TEST_F(MigrationTest, DirtyLoggingNamesExactlyThePagesTheDeviceWroteThroughAMappedWindow) {
  irq_rig rig;
  src_ = open(serve(dev::make_sample("dma-test"), "src.sock"), rig.mem);
  ASSERT_TRUE(src_);
  auto& d = *src_;
  msix_on(d);
  ASSERT_TRUE(d.dma_map(0x100000, 1 << 20, dma_flags::read | dma_flags::write, &rig.guest, 0).ok());
  // A second window without an fd: the device writes it by DMA_WRITE messages, which the
  // client sees itself and the log does not count.
  ASSERT_TRUE(d.dma_map(0x200000, 1 << 20, dma_flags::read | dma_flags::write).ok());
  ASSERT_TRUE(d.start_dirty_logging(4096).ok());  // no ranges: everything mapped
  auto status = [&] {
    uint32_t s = 0;
    EXPECT_TRUE(d.read(0, dt::status, &s, 4).ok());
    return s;
  };
  copy(d, 0x100000, 0x180000, 16);          // page 0x80
  copy(d, 0x100000, 0x1a0ff0, 32);          // pages 0xa0 and 0xa1
  copy(d, 0x100000, 0x1fffff, 1);           // the last page, 0xff
  copy(d, 0x100000, 0x240000, 4096);        // by message
  for (int i = 0; i < 1000 && status() != dt::status_done; ++i) std::this_thread::sleep_for(1ms);
  auto bm = d.dirty_bitmap(0x100000, 2 << 20, 4096);
  ASSERT_TRUE(bm.ok()) << bm.err().message();
  ASSERT_EQ(bm->size(), 64u);
  std::vector<uint32_t> pages;
  for (uint32_t i = 0; i < 512; ++i)
    if (((*bm)[i / 8] >> (i % 8)) & 1) pages.push_back(i);
  EXPECT_EQ(pages, (std::vector<uint32_t>{0x80, 0xa0, 0xa1, 0xff}));
  auto again = d.dirty_bitmap(0x100000, 2 << 20, 4096);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(*again, std::vector<uint8_t>(64, 0)) << "reported pages are cleared";
  EXPECT_EQ(d.dirty_bitmap(0x100000, 1 << 20, 8192).err().errnum, EINVAL);
  ASSERT_TRUE(d.stop_dirty_logging().ok());
  EXPECT_EQ(d.dirty_bitmap(0x100000, 1 << 20, 4096).err().errnum, EINVAL);
}

TEST_F(MigrationTest, AReconnectLeavesAMigrationInProgressAloneAndRestoresOnceTheDeviceRuns) {
  irq_rig rig;
  auto a = dev::spawn_device(rt_->system(), dev::make_sample("dma-test"));
  actors_.push_back(a);
  auto ep = endpoint::listen(*rt_, path_, {}, a);
  ASSERT_TRUE(ep.ok());
  auto d = dev::remote_device::open(*rt_, path_, rig.mem);  // reconnects (the default)
  ASSERT_TRUE(d.ok());
  auto& dv = **d;
  ASSERT_TRUE(dv.probe().ok());
  msix_on(dv);
  ASSERT_TRUE(dv.dma_map(0x100000, 2 << 20, dma_flags::read | dma_flags::write).ok());  // by message
  ASSERT_TRUE(dv.set_migration_state(S::stop).ok());
  // The connection drops; the same server (the same device actor) takes the next one.
  ep.value().reset();
  auto ep2 = endpoint::listen(*rt_, path_, {}, a);
  ASSERT_TRUE(ep2.ok());
  for (int i = 0; i < 500 && dv.replays() == 0; ++i) std::this_thread::sleep_for(10ms);
  ASSERT_EQ(dv.replays(), 1u) << dv.last_replay_error().message();
  ASSERT_TRUE(dv.wait_ready(5s));
  // The replay did not move the device or send what STOP refuses.
  EXPECT_EQ(dv.migration_state().value(), S::stop);
  uint32_t copies = 0;
  EXPECT_TRUE(dv.read(0, dt::copies, &copies, 4).ok());  // STOP takes region reads
  // Back to RUNNING: the DMA window comes back, and the device copies through it.
  auto run = dv.set_migration_state(S::running);
  ASSERT_TRUE(run.ok()) << run.err().message();
  std::memset(rig.ram, 0x77, 64);
  copy(dv, 0x100000, 0x180000, 64);
  uint32_t status = 0;
  for (int i = 0; i < 1000 && status != dt::status_done; ++i) {
    EXPECT_TRUE(dv.read(0, dt::status, &status, 4).ok());
    if (status != dt::status_done) std::this_thread::sleep_for(1ms);
  }
  EXPECT_EQ(status, dt::status_done);
  EXPECT_EQ(rig.ram[0x80000 + 63], 0x77);
  d.value().reset();
  ep2.value().reset();
}

}  // namespace
