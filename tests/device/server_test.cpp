// Server role over real sockets: our client (remote_device) against our device framework
// serving the sample devices.
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>

#include <gtest/gtest.h>
#include <thread>

#include "protocol/bulk_frames.hpp"
#include "actors/syscalls.hpp"
#include "device/remote_device.hpp"
#include "device/samples.hpp"
#include "tests/test_support.hpp"

namespace {

using namespace vfu;
using namespace vfu::proto;
using namespace std::chrono_literals;
namespace dt = vfu::dev::dmatest;

class ServerTest : public test::socket_dir_test {
 protected:
  // The fd baseline is counted before the runtime exists: its threads' start-up cannot
  // overlap the count.
  void SetUp() override {
    socket_dir_test::SetUp();
    rt_ = std::make_unique<runtime>();
  }
  void TearDown() override {
    client_.reset();
    server_.reset();
    rt_.reset();
    socket_dir_test::TearDown();
  }
  void serve(const std::string& name) {
    auto dev = dev::spawn_device(rt_->system(), dev::make_sample(name));
    auto ep = endpoint::listen(*rt_, path_, {}, dev);
    ASSERT_TRUE(ep.ok()) << ep.err().message();
    server_ = std::move(ep.value());
  }
  std::unique_ptr<dev::remote_device> open(std::shared_ptr<dev::guest_memory> mem = nullptr) {
    endpoint_config cfg;
    cfg.reconnect = false;
    auto d = dev::remote_device::open(*rt_, path_, mem, cfg);
    EXPECT_TRUE(d.ok()) << d.err().message();
    if (!d) return nullptr;
    auto s = (*d)->probe();
    EXPECT_TRUE(s.ok()) << s.err().message();
    return std::move(d.value());
  }
  uint32_t cfg32(dev::remote_device& d, uint32_t off) {
    uint32_t v = 0;
    EXPECT_TRUE(d.read(region_index::config, off, &v, 4).ok());
    return v;
  }
  void start_copy_device(struct copy_rig& rig);
  void set_cfg32(dev::remote_device& d, uint32_t off, uint32_t v) {
    EXPECT_TRUE(d.write(region_index::config, off, &v, 4).ok());
  }

  std::unique_ptr<runtime> rt_;  ///< made in SetUp, after the fd baseline
  std::unique_ptr<endpoint> server_;
  std::unique_ptr<dev::remote_device> client_;
};

TEST_F(ServerTest, EnumeratesRegionsCapsMmapAndIrqs) {
  serve("dma-test");
  client_ = open();
  ASSERT_TRUE(client_);
  auto& d = *client_;
  EXPECT_EQ(d.info().flags, device_info_flags::pci | device_info_flags::reset);
  ASSERT_EQ(d.regions().size(), 10u);
  EXPECT_EQ(d.regions()[0].info.size, dt::bar0_size);
  // Region 9 is device-specific and says what it is with a TYPE capability.
  auto& scratch = d.regions()[dt::scratch_region].info;
  EXPECT_EQ(scratch.size, dt::scratch_size);
  ASSERT_EQ(scratch.caps.size(), 1u);
  EXPECT_EQ(scratch.caps[0].id, region_cap_id::type);
  EXPECT_EQ(scratch.caps[0].type, dt::scratch_type);
  EXPECT_EQ(scratch.caps[0].subtype, dt::scratch_subtype);
  uint32_t word = 0xfeedf00d, back = 0;
  ASSERT_TRUE(d.write(dt::scratch_region, 0xffc, &word, 4).ok());
  ASSERT_TRUE(d.read(dt::scratch_region, 0xffc, &back, 4).ok());
  EXPECT_EQ(back, word);
  fd_list iofds;
  auto io = d.io_fds(0, iofds);
  ASSERT_TRUE(io.ok()) << io.err().message();
  EXPECT_EQ(io->count, 0u);  // no ioeventfds offered
  EXPECT_TRUE(iofds.empty());
  EXPECT_EQ(d.regions()[7].info.size, 256u);
  auto& bar2 = d.regions()[2];
  EXPECT_EQ(bar2.info.size, 0x10000u);
  EXPECT_TRUE(bar2.info.flags & region_flags::mmap);
  EXPECT_TRUE(bar2.info.flags & region_flags::caps);
  ASSERT_NE(bar2.info.sparse(), nullptr);
  EXPECT_EQ(bar2.info.sparse()->areas.size(), 2u);
  EXPECT_EQ(bar2.areas.size(), 2u);  // both areas mapped
  EXPECT_EQ(d.regions()[3].info.size, 0u);
  ASSERT_EQ(d.irqs().size(), 5u);
  EXPECT_EQ(d.irqs()[irq_index::msix].count, dt::msix_vectors);
  EXPECT_TRUE(d.irqs()[irq_index::msix].flags & irq_info_flags::eventfd);
  // Writes through the mapping are seen by region reads, and the other way round.
  std::memcpy(bar2.areas[1].second + 0x10, "mmap", 4);
  char buf[4];
  ASSERT_TRUE(d.ep().call_decoded(region_read_request{{0x8010, 2, 4}}).ok());
  auto r = d.ep().call_decoded(region_read_request{{0x8010, 2, 4}});
  std::memcpy(buf, std::get<region_read_reply>(*r).data.data(), 4);
  EXPECT_EQ(std::string(buf, 4), "mmap");
}

TEST_F(ServerTest, RegionInfoWithSmallArgszAsksForMoreAndCarriesNoFd) {
  serve("dma-test");
  client_ = open();
  ASSERT_TRUE(client_);
  region_info_request q;
  q.index = 2;
  fd_list fds;
  auto r = client_->ep().call_decoded(q, {}, fds);
  ASSERT_TRUE(r.ok());
  auto& rep = std::get<region_info_reply>(*r);
  EXPECT_EQ(rep.argsz, 32u + 16 + 2 * 16);
  EXPECT_TRUE(rep.flags & region_flags::mmap);
  EXPECT_FALSE(rep.flags & region_flags::caps);
  EXPECT_TRUE(rep.caps.empty());
  EXPECT_TRUE(fds.empty());
}

TEST_F(ServerTest, ConfigSpaceHasIdsBarSizingAndCapabilityList) {
  serve("dma-test");
  client_ = open();
  ASSERT_TRUE(client_);
  auto& d = *client_;
  EXPECT_EQ(cfg32(d, 0), uint32_t(dt::device) << 16 | dt::vendor);
  set_cfg32(d, 0x10, 0xffffffff);
  EXPECT_EQ(cfg32(d, 0x10), 0xfffff000u);  // 4 KiB memory BAR
  set_cfg32(d, 0x18, 0xffffffff);
  set_cfg32(d, 0x1c, 0xffffffff);
  EXPECT_EQ(cfg32(d, 0x18), 0xffff000cu);  // 64 KiB, 64-bit, prefetchable
  EXPECT_EQ(cfg32(d, 0x1c), 0xffffffffu);
  set_cfg32(d, 0, 0x12345678);
  EXPECT_EQ(cfg32(d, 0), uint32_t(dt::device) << 16 | dt::vendor) << "IDs are read-only";
  // Walk the capability list: PM, MSI, MSI-X.
  std::vector<uint8_t> ids;
  uint8_t cfg[256];
  ASSERT_TRUE(d.read(region_index::config, 0, cfg, 256).ok());
  EXPECT_TRUE(cfg[6] & 0x10);
  for (uint8_t p = cfg[0x34]; p && ids.size() < 8; p = cfg[p + 1]) ids.push_back(cfg[p]);
  EXPECT_EQ(ids, (std::vector<uint8_t>{0x01, 0x05, 0x11}));
  EXPECT_EQ(cfg[0x62] + 1, dt::msix_vectors);
}

// REGION_READ replies are built without zeroing (the device fills them in place): a model
// that says it read but wrote nothing must still send zeros, never stale heap bytes.
TEST_F(ServerTest, ReadReplyOfAModelThatWritesNothingIsZeroNotStaleHeap) {
  // BAR0 remembers what is written to it; BAR2's reads succeed and write nothing. Both are
  // reached by messages only (no shared memory).
  struct lazy_model : dev::device_model {
    dev::device_spec spec_;
    std::vector<uint8_t> bar0 = std::vector<uint8_t>(0x1000);
    lazy_model() {
      spec_.ids.vendor = 0x1234;
      spec_.bars[0] = dev::bar_spec{0x1000, false, false, false};
      spec_.bars[2] = dev::bar_spec{0x1000, false, false, false};
      spec_.regions[0].size = 0x1000;
      spec_.regions[2].size = 0x1000;
    }
    const dev::device_spec& spec() const override { return spec_; }
    int region_read(uint32_t region, uint64_t off, uint8_t* buf, uint32_t n) override {
      if (region == 0) std::memcpy(buf, bar0.data() + off, n);
      return 0;
    }
    int region_write(uint32_t region, uint64_t off, const uint8_t* buf, uint32_t n) override {
      if (region == 0) std::memcpy(bar0.data() + off, buf, n);
      return 0;
    }
  };
  auto dev = dev::spawn_device(rt_->system(), std::make_shared<lazy_model>());
  auto ep = endpoint::listen(*rt_, path_, {}, dev);
  ASSERT_TRUE(ep.ok()) << ep.err().message();
  server_ = std::move(ep.value());
  client_ = open();
  ASSERT_TRUE(client_);
  // Small enough for glibc's per-thread cache, which hands a freed block straight back to
  // the next allocation of its size (larger blocks may come back from the OS as zeros).
  std::vector<uint8_t> pattern(512, 0xa5), got(512, 0x11);
  for (int round = 0; round < 8; ++round) {
    // A heap block of the reply's size has just held 0xa5 bytes on the server...
    ASSERT_TRUE(client_->write(0, 0, pattern.data(), pattern.size()).ok());
    ASSERT_TRUE(client_->read(0, 0, got.data(), got.size()).ok());
    ASSERT_EQ(got, pattern);
    // ...and a read of the same size from the model that writes nothing must be zeros.
    ASSERT_TRUE(client_->read(2, 0, got.data(), got.size()).ok());
    ASSERT_EQ(got, std::vector<uint8_t>(got.size(), 0)) << "round " << round;
  }
  client_.reset();
  server_.reset();
  caf::anon_send_exit(dev, caf::exit_reason::user_shutdown);
}

// A large REGION_READ of plain memory (the ram sample) is sent straight from the device's
// memory. It must still answer with the bytes as they were when the read was handled: here
// the peer does not read while three 1 MiB reads and then a write of new bytes arrive, so
// the socket fills, the replies that find no room are copied into the send queue, and the
// write changes the memory before they leave. Each reply holds the old bytes, the read
// after the write the new ones.
TEST_F(ServerTest, LargeReadsLeaveStraightFromDeviceMemoryWithTheBytesOfTheirTurn) {
  serve("ram");
  test::raw_peer peer(test::dial_unix(path_));
  ASSERT_TRUE(peer.version());
  constexpr uint32_t mib = 1u << 20;
  std::vector<uint8_t> a(mib), b(mib);
  for (uint32_t i = 0; i < mib; ++i) {
    a[i] = uint8_t(i * 7 + 1);
    b[i] = uint8_t(i * 13 + 5);
  }
  auto write_req = [&](const std::vector<uint8_t>& data) {
    region_write_request w;
    w.region = 0;
    w.offset = 0;
    w.count = mib;
    w.data = data;
    return w;
  };
  region_read_request rd;
  rd.region = 0;
  rd.offset = 0;
  rd.count = mib;
  ASSERT_TRUE(peer.send(write_req(a), 1));
  auto w1 = peer.recv();
  ASSERT_TRUE(w1 && !w1->hdr().is_error());
  for (uint16_t id = 10; id < 13; ++id) ASSERT_TRUE(peer.send(rd, id));
  ASSERT_TRUE(peer.send(write_req(b), 13));
  ASSERT_TRUE(peer.send(rd, 14));
  std::this_thread::sleep_for(200ms);  // the server handles all five while nobody reads
  for (uint16_t id = 10; id <= 14; ++id) {
    auto r = peer.recv();
    ASSERT_TRUE(r) << "reply " << id;
    ASSERT_EQ(r->hdr().msg_id, id);
    ASSERT_FALSE(r->hdr().is_error()) << "reply " << id;
    if (id == 13) continue;
    const uint8_t* got = region_read_reply_data(*r, rd);
    ASSERT_NE(got, nullptr) << "reply " << id;
    EXPECT_EQ(std::memcmp(got, (id < 13 ? a : b).data(), mib), 0) << "reply " << id << " has the wrong bytes";
  }
  auto stats = server_->stats();
  EXPECT_EQ(test::stat_value(stats, "gathered"), 4) << stats;
  EXPECT_GE(test::stat_value(stats, "gathered_copied"), 1) << stats;  // the socket cannot hold three replies
}

// A reply built in place that nothing waits behind is written from the device actor at
// once (reply_writer::send_now): here five of 1,000,000 bytes from a model (not plain
// memory), each handled alone while the peer does not read: more than the socket holds,
// so one leaves in part and waits with the rest in the queue. Each reply arrives intact,
// in order, and the next request's reply after them.
TEST_F(ServerTest, LargeRepliesBuiltInPlaceLeaveInPiecesIntactAndInOrder) {
  struct pattern_model : dev::device_model {
    dev::device_spec spec_;
    pattern_model() {
      spec_.ids.vendor = 0x1234;
      spec_.bars[0] = dev::bar_spec{1u << 20, false, false, false};
      spec_.regions[0].size = 1u << 20;
    }
    const dev::device_spec& spec() const override { return spec_; }
    int region_read(uint32_t, uint64_t off, uint8_t* buf, uint32_t n) override {
      for (uint32_t i = 0; i < n; ++i) buf[i] = uint8_t((off + i) * 7 + 1);
      return 0;
    }
    int region_write(uint32_t, uint64_t, const uint8_t*, uint32_t) override { return 0; }
  };
  auto dev = dev::spawn_device(rt_->system(), std::make_shared<pattern_model>());
  auto ep = endpoint::listen(*rt_, path_, {}, dev);
  ASSERT_TRUE(ep.ok()) << ep.err().message();
  server_ = std::move(ep.value());
  test::raw_peer peer(test::dial_unix(path_));
  ASSERT_TRUE(peer.version());
  auto sent_now = [&] { return test::stat_value(server_->stats(), "sent_now"); };
  std::vector<region_read_request> reqs;
  for (uint16_t k = 0; k < 5; ++k) {
    reqs.push_back(region_read_request{{uint64_t(k) * 1000, 0, 1000000}});
    int64_t before = sent_now();
    ASSERT_TRUE(peer.send(reqs.back(), uint16_t(k + 1)));
    // (Handled alone: the next request comes once this one is answered.)
    for (auto until = std::chrono::steady_clock::now() + 10s; sent_now() == before;) {
      ASSERT_LT(std::chrono::steady_clock::now(), until) << "request " << k + 1 << " not answered";
      std::this_thread::sleep_for(1ms);
    }
  }
  reqs.push_back(region_read_request{{5, 0, 16}});
  ASSERT_TRUE(peer.send(reqs.back(), 6));
  for (uint16_t id = 1; id <= 6; ++id) {
    auto& want = reqs[id - 1];
    auto r = peer.recv();
    ASSERT_TRUE(r) << "reply " << id;
    ASSERT_EQ(r->hdr().msg_id, id);
    const uint8_t* got = region_read_reply_data(*r, want);
    ASSERT_NE(got, nullptr) << "reply " << id;
    for (uint32_t i = 0; i < want.count; ++i)
      ASSERT_EQ(got[i], uint8_t((want.offset + i) * 7 + 1)) << "reply " << id << ", byte " << i;
  }
  server_.reset();
  caf::anon_send_exit(dev, caf::exit_reason::user_shutdown);
}

// The reply to a request that nothing waits behind leaves at once, written by the device
// actor (reply_writer::send_now), errors included; a pipelined batch is still answered in
// order and gathered into one sendmsg, with only its last reply written that way.
TEST_F(ServerTest, ALoneRequestIsAnsweredAtOnceAndABatchInOneSendmsg) {
  serve("ram");
  test::raw_peer peer(test::dial_unix(path_));
  ASSERT_TRUE(peer.version());
  auto counter = [&](const char* key) { return test::stat_value(server_->stats(), key); };
  region_write_request w;
  w.region = 0;
  w.offset = 0;
  w.count = 4096;
  for (uint32_t i = 0; i < 4096; ++i) w.data.push_back(uint8_t(i * 5 + 3));
  int64_t now0 = counter("sent_now");
  ASSERT_GE(now0, 0);
  ASSERT_TRUE(peer.send(w, 1));
  auto wr = peer.recv();
  ASSERT_TRUE(wr && wr->hdr().msg_id == 1 && !wr->hdr().is_error());
  auto rd = [](uint64_t off) {
    region_read_request r;
    r.region = 0;
    r.offset = off;
    r.count = 4;
    return r;
  };
  for (uint16_t id = 2; id < 22; ++id) {
    ASSERT_TRUE(peer.send(rd(id * 64), id));
    auto r = peer.recv();
    ASSERT_TRUE(r && r->hdr().msg_id == id && !r->hdr().is_error()) << "reply " << id;
    const uint8_t* got = region_read_reply_data(*r, rd(id * 64));
    ASSERT_NE(got, nullptr);
    EXPECT_EQ(std::memcmp(got, w.data.data() + id * 64, 4), 0) << "reply " << id;
  }
  region_read_request bad = rd(0);
  bad.region = 0;
  bad.offset = 1ull << 40;  // past the region's end (the device says so, not the codec)
  ASSERT_TRUE(peer.send(bad, 22));
  auto e = peer.recv();
  ASSERT_TRUE(e && e->hdr().msg_id == 22 && e->hdr().is_error());
  EXPECT_EQ(counter("sent_now") - now0, 22);

  // 16 reads in one write: the server reads them in one pass.
  int64_t now1 = counter("sent_now"), writes1 = counter("writes");
  ASSERT_GE(writes1, 0);
  std::vector<uint8_t> batch;
  for (uint16_t i = 0; i < 16; ++i) {
    auto f = make_frame(uint16_t(100 + i), rd(i * 4));
    batch.insert(batch.end(), f.bytes.begin(), f.bytes.end());
  }
  ASSERT_TRUE(peer.send_bytes(batch.data(), batch.size()));
  for (uint16_t i = 0; i < 16; ++i) {
    auto r = peer.recv();
    ASSERT_TRUE(r && r->hdr().msg_id == 100 + i && !r->hdr().is_error()) << "reply " << i;
    const uint8_t* got = region_read_reply_data(*r, rd(i * 4));
    ASSERT_NE(got, nullptr);
    EXPECT_EQ(std::memcmp(got, w.data.data() + i * 4, 4), 0) << "reply " << i;
  }
  EXPECT_EQ(counter("sent_now") - now1, 1) << "only the batch's last reply goes out on its own";
  // One sendmsg, or two when the loop looked at its io in the middle of the batch.
  EXPECT_LE(counter("writes") - writes1, 2);
}

// On the event loop (the default runtime) an idle device is called in place, and the
// transport hands the dispatcher each read batch in place: a posted write and the reads
// behind it in one batch are answered in order with what the write put there, every one of
// them served in place. With a separate io thread and workers (single_loop off) the same
// traffic goes by messages, with the same answers.
TEST_F(ServerTest, AnIdleDeviceIsServedInPlaceOnTheLoopAndByMessagesOtherwise) {
  for (bool loop : {true, false}) {
    SCOPED_TRACE(loop ? "event loop" : "io thread and workers");
    server_.reset();
    rt_.reset();
    runtime_options opts;
    opts.single_loop = loop;
    rt_ = std::make_unique<runtime>(std::vector<std::string>{}, opts);
    serve("ram");
    test::raw_peer peer(test::dial_unix(path_));
    ASSERT_TRUE(peer.version());
    auto counter = [&](const char* key) { return test::stat_value(server_->stats(), key); };
    int64_t served0 = counter("served"), in_place0 = counter("in_place"), handed0 = counter("handed");
    ASSERT_GE(served0, 0);
    ASSERT_GE(in_place0, 0);
    ASSERT_GE(handed0, 0);
    region_write_request w;
    w.region = 0;
    w.offset = 512;
    w.count = 8;
    w.data = {1, 2, 3, 4, 5, 6, 7, 8};
    std::vector<uint8_t> batch;
    auto add = [&](const proto::frame& f) { batch.insert(batch.end(), f.bytes.begin(), f.bytes.end()); };
    add(make_frame(1, w, hflags::no_reply));
    for (uint16_t i = 0; i < 8; ++i) add(make_frame(uint16_t(10 + i), region_read_request{{512u + i, 0, 1}}));
    ASSERT_TRUE(peer.send_bytes(batch.data(), batch.size()));
    for (uint16_t i = 0; i < 8; ++i) {
      auto r = peer.recv();
      ASSERT_TRUE(r && r->hdr().msg_id == 10 + i && !r->hdr().is_error()) << "reply " << i;
      const uint8_t* got = region_read_reply_data(*r, region_read_request{{512u + i, 0, 1}});
      ASSERT_NE(got, nullptr);
      EXPECT_EQ(*got, w.data[i]) << "reply " << i;
    }
    for (uint16_t i = 0; i < 20; ++i) {  // one at a time
      ASSERT_TRUE(peer.send(region_read_request{{512, 0, 4}}, uint16_t(100 + i)));
      auto r = peer.recv();
      ASSERT_TRUE(r && r->hdr().msg_id == 100 + i && !r->hdr().is_error());
    }
    EXPECT_EQ(counter("served") - served0, 29);
    EXPECT_EQ(counter("in_place") - in_place0, loop ? 29 : 0);
    if (loop) EXPECT_GE(counter("handed") - handed0, 20);  // (the first batch may come in pieces)
    else EXPECT_EQ(counter("handed") - handed0, 0);
  }
}

// Our client writes bulk data straight from the caller's buffer (gathered after the
// REGION_WRITE head), and the server applies it from the request frame without a copy:
// what a later read returns is what was written, in every chunk.
TEST_F(ServerTest, BulkWritesGoFromTheCallersBufferIntoDeviceMemory) {
  serve("ram");
  client_ = open();
  ASSERT_TRUE(client_);
  constexpr uint32_t mib = 1u << 20;
  std::vector<uint8_t> out(mib), back(mib, 0);
  for (uint32_t i = 0; i < mib; ++i) out[i] = uint8_t(i * 31 + 7);
  ASSERT_TRUE(client_->write(0, 0, out.data(), out.size()).ok());
  ASSERT_TRUE(client_->read(0, 0, back.data(), back.size()).ok());
  EXPECT_TRUE(back == out) << "the bytes read back differ from those written";
  std::vector<uint8_t> small(100, 0x5a), got(100);
  constexpr uint64_t at = dev::ram::mmap_size + 4096 + 3;  // in the half that is not mmapped
  ASSERT_TRUE(client_->write(0, at, small.data(), small.size()).ok());
  ASSERT_TRUE(client_->read(0, at, got.data(), got.size()).ok());
  EXPECT_EQ(got, small);
  auto stats = client_->ep().stats();
  EXPECT_NE(stats.find(" gathered=2 "), std::string::npos) << stats;  // both writes left gathered
}

TEST_F(ServerTest, GpioAnswersLikeLibvfioUsersSample) {
  serve("gpio");
  client_ = open();
  ASSERT_TRUE(client_);
  auto& d = *client_;
  EXPECT_EQ(cfg32(d, 0), 0x0dc8494fu);
  EXPECT_EQ(d.regions()[2].info.size, 0x100u);
  EXPECT_EQ(d.regions()[2].info.flags, region_flags::read | region_flags::write);
  EXPECT_EQ(cfg32(d, 0x10), 1u);  // unused BARs read as I/O, as libvfio-user's do
  EXPECT_EQ(cfg32(d, 4) >> 16, 0u) << "no capability list, like libvfio-user's sample";
  set_cfg32(d, 0x18, 0xffffffff);
  EXPECT_EQ(cfg32(d, 0x18), 0xffffff01u);
  uint8_t v = 0;
  ASSERT_TRUE(d.read(2, 1, &v, 1).ok());
  EXPECT_EQ(v, 0xff);
  uint8_t w = 0x03;
  ASSERT_TRUE(d.write(2, 0, &w, 1).ok());
  ASSERT_TRUE(d.read(2, 1, &v, 1).ok());
  EXPECT_EQ(v, 0xfc);
  w = 0x01;
  ASSERT_TRUE(d.write(2, 0, &w, 1).ok());
  ASSERT_TRUE(d.write(2, 0, &w, 1).ok());
  ASSERT_TRUE(d.read(2, 1, &v, 1).ok());
  EXPECT_EQ(v, 0xfd);
  uint8_t four[4];
  ASSERT_TRUE(d.read(2, 1, four, 4).ok());
  EXPECT_EQ(four[1] | four[2] | four[3], 0);
  auto oob = d.ep().call_decoded(region_read_request{{0xff, 2, 2}});
  ASSERT_FALSE(oob.ok());
  EXPECT_EQ(oob.err().errnum, EINVAL);
  EXPECT_EQ(d.irqs()[irq_index::intx].count, 1u);
  EXPECT_EQ(d.irqs()[irq_index::msix].count, 0u);
}

struct copy_rig {
  unique_fd guest{::memfd_create("guest", MFD_CLOEXEC)};
  uint8_t* ram = nullptr;
  unique_fd efd{::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)};
  std::shared_ptr<dev::guest_memory> mem = std::make_shared<dev::guest_memory>();
  copy_rig() {
    if (::ftruncate(guest.get(), 2 << 20) != 0) std::abort();
    ram = static_cast<uint8_t*>(::mmap(nullptr, 2 << 20, PROT_READ | PROT_WRITE, MAP_SHARED, guest.get(), 0));
    mem->add(0x100000, 1 << 20, ram, dma_flags::read | dma_flags::write);
    mem->add(0x200000, 1 << 20, ram + (1 << 20), dma_flags::read | dma_flags::write);
  }
  ~copy_rig() { ::munmap(ram, 2 << 20); }
  bool wait_irq() {
    pollfd p{efd.get(), POLLIN, 0};
    if (::poll(&p, 1, 10000) != 1) return false;
    uint64_t c;
    return ::read(efd.get(), &c, 8) == 8;
  }
};

void enable(dev::remote_device& d, copy_rig& rig, bool unmask = true) {
  uint16_t cmd = dev::pci_reg::cmd_mem | dev::pci_reg::cmd_master;
  ASSERT_TRUE(d.write(region_index::config, 4, &cmd, 2).ok());
  uint8_t ctl = 0x80;
  ASSERT_TRUE(d.write(region_index::config, 0x63, &ctl, 1).ok());
  ASSERT_TRUE(d.set_irq_eventfds(irq_index::msix, 0, {rig.efd.get()}).ok());
  if (unmask) {
    uint32_t zero = 0;
    ASSERT_TRUE(d.write(1, 12, &zero, 4).ok());
  }
}

uint32_t ring(dev::remote_device& d, uint64_t src, uint64_t dst, uint32_t len) {
  EXPECT_TRUE(d.write(0, dt::src, &src, 8).ok());
  EXPECT_TRUE(d.write(0, dt::dst, &dst, 8).ok());
  EXPECT_TRUE(d.write(0, dt::len, &len, 4).ok());
  uint32_t one = 1;
  EXPECT_TRUE(d.write(0, dt::doorbell, &one, 4).ok());
  return 0;
}

uint32_t reg(dev::remote_device& d, uint32_t off) {
  uint32_t v = 0;
  EXPECT_TRUE(d.read(0, off, &v, 4).ok());
  return v;
}

// dma-test served and opened with `rig`'s guest memory, bus mastering and MSI-X on.
void ServerTest::start_copy_device(copy_rig& rig) {
  serve("dma-test");
  client_ = open(rig.mem);
  ASSERT_TRUE(client_);
  enable(*client_, rig);
}

TEST_F(ServerTest, DmaThroughMmappedAndMessageWindowsRaisesMsix) {
  copy_rig rig;
  ASSERT_NO_FATAL_FAILURE(start_copy_device(rig));
  auto& d = *client_;
  ASSERT_TRUE(d.dma_map(0x100000, 1 << 20, dma_flags::read | dma_flags::write, &rig.guest, 0).ok());
  ASSERT_TRUE(d.dma_map(0x200000, 1 << 20, dma_flags::read | dma_flags::write, nullptr).ok());
  // Copies within each window, and one from the mmapped window to the message window.
  struct { uint64_t src, dst; uint32_t len; } cases[] = {
      {0x100000, 0x180000, 4096}, {0x200000, 0x280000, 300000}, {0x100100, 0x2f0000, 65536}};
  int n = 0;
  for (auto& c : cases) {
    uint8_t* s = rig.ram + (c.src - 0x100000);
    uint8_t* t = rig.ram + (c.dst - 0x100000);
    for (uint32_t i = 0; i < c.len; ++i) s[i] = uint8_t(i * 13 + n);
    std::memset(t, 0, c.len);
    ring(d, c.src, c.dst, c.len);
    ASSERT_TRUE(rig.wait_irq()) << "no MSI-X for copy " << n;
    EXPECT_EQ(reg(d, dt::status), dt::status_done);
    EXPECT_EQ(std::memcmp(s, t, c.len), 0) << "copy " << n;
    ++n;
  }
  EXPECT_EQ(reg(d, dt::copies), 3u);
}

// EINTR and EAGAIN on every socket call, in both roles at once (server and client share this
// process): every 3rd recvmsg/sendmsg fails with EINTR and every 5th with a spurious EAGAIN,
// while DMA flows by messages in both directions, fds are passed and large frames are
// written in pieces. Everything must complete, in order and intact, with no fd leaked (the
// fixture checks).
TEST_F(ServerTest, EintrAndEagainStormsOnEverySocketCall) {
  copy_rig rig;
  ASSERT_NO_FATAL_FAILURE(start_copy_device(rig));
  auto& d = *client_;
  auto& faults = sys::faults();
  struct disarm {
    ~disarm() { sys::faults().eintr_every = 0, sys::faults().eagain_every = 0; }
  } disarm_at_exit;
  faults.eintr_every = 3;
  faults.eagain_every = 5;
  constexpr uint32_t rw = dma_flags::read | dma_flags::write;
  ASSERT_TRUE(d.dma_map(0x100000, 1 << 20, rw, &rig.guest, 0).ok());  // an fd under the storm
  ASSERT_TRUE(d.dma_map(0x200000, 1 << 20, rw, nullptr).ok());
  for (int n = 0; n < 12; ++n) {
    SCOPED_TRACE("round " + std::to_string(n));
    // A copy by DMA messages (300000 bytes: large frames, partial writes), then one from
    // the mmapped window into the message window.
    uint32_t len = n % 2 ? 300000 : 4096;
    uint64_t src = n % 2 ? 0x200000 : 0x100000, dst = 0x280000;
    uint8_t* s = rig.ram + (src - 0x100000);
    uint8_t* t = rig.ram + (dst - 0x100000);
    for (uint32_t i = 0; i < len; ++i) s[i] = uint8_t(i * 7 + n);
    std::memset(t, 0, len);
    ring(d, src, dst, len);
    ASSERT_TRUE(rig.wait_irq());
    ASSERT_EQ(std::memcmp(s, t, len), 0);
    // Register traffic through messages: the scratch region, posted writes and a fence.
    std::vector<uint8_t> pat(dt::scratch_size, uint8_t(n));
    ASSERT_TRUE(d.write(dt::scratch_region, 0, pat.data(), pat.size()).ok());
    for (uint32_t i = 0; i < 32; ++i) {
      uint8_t v = uint8_t(i + n);
      ASSERT_TRUE(d.write_posted(dt::scratch_region, i, &v, 1).ok());
      pat[i] = v;
    }
    std::vector<uint8_t> back(pat.size());
    ASSERT_TRUE(d.read(dt::scratch_region, 0, back.data(), back.size()).ok());
    ASSERT_EQ(back, pat);
  }
  EXPECT_EQ(reg(d, dt::copies), 12u);
  EXPECT_GT(faults.injected.load(), 100u) << "the storm did not happen";
}

TEST_F(ServerTest, MaskedMsixVectorSetsPendingBitUntilUnmasked) {
  serve("dma-test");
  copy_rig rig;
  client_ = open(rig.mem);
  ASSERT_TRUE(client_);
  auto& d = *client_;
  enable(d, rig, /*unmask=*/false);
  uint32_t one = 1;
  ASSERT_TRUE(d.write(1, 12, &one, 4).ok());  // vector 0 masked in the table
  ASSERT_TRUE(d.dma_map(0x100000, 1 << 20, dma_flags::read | dma_flags::write, &rig.guest, 0).ok());
  ring(d, 0x100000, 0x180000, 16);
  // The copy finished (STATUS read after the doorbell write is ordered behind it) while
  // vector 0 was masked: its PBA bit is set and the eventfd was not signalled.
  EXPECT_EQ(reg(d, dt::status), dt::status_done);
  uint64_t pba = 0;
  ASSERT_TRUE(d.read(1, 0x800, &pba, 8).ok());
  EXPECT_EQ(pba & 1, 1u);
  uint64_t cnt;
  EXPECT_EQ(::read(rig.efd.get(), &cnt, 8), -1);
  EXPECT_EQ(errno, EAGAIN);
  uint32_t zero = 0;
  ASSERT_TRUE(d.write(1, 12, &zero, 4).ok());  // unmask: the pending interrupt is delivered
  ASSERT_TRUE(rig.wait_irq());
  ASSERT_TRUE(d.read(1, 0x800, &pba, 8).ok());
  EXPECT_EQ(pba & 1, 0u);
}

TEST_F(ServerTest, DmaWindowRulesAndBadRequestsGetErrnos) {
  serve("dma-test");
  copy_rig rig;
  client_ = open(rig.mem);
  ASSERT_TRUE(client_);
  auto& d = *client_;
  ASSERT_TRUE(d.dma_map(0x100000, 0x10000, dma_flags::read, nullptr).ok());
  auto overlap = d.dma_map(0x108000, 0x10000, dma_flags::read, nullptr);
  EXPECT_EQ(overlap.err().errnum, EEXIST);
  EXPECT_EQ(d.dma_unmap(0x100000, 0x1000).err().errnum, ENOENT);  // no partial unmap
  EXPECT_TRUE(d.dma_unmap(0x100000, 0x10000).ok());
  EXPECT_EQ(d.dma_unmap(0x100000, 0x10000).err().errnum, ENOENT);
  ASSERT_TRUE(d.dma_map(0x300000, 0x1000, dma_flags::read, nullptr).ok());
  EXPECT_TRUE(d.dma_unmap_all().ok());
  EXPECT_EQ(d.dma_unmap(0x300000, 0x1000).err().errnum, ENOENT);
  EXPECT_EQ(d.irq_action(irq_index::msix, 4, 1, irq_set_flags::action_trigger).err().errnum, EINVAL);
  EXPECT_EQ(d.irq_action(irq_index::err, 0, 1, irq_set_flags::action_mask).err().errnum, EINVAL);
  EXPECT_EQ(d.ep().call_decoded(region_read_request{{0, 99, 4}}).err().errnum, EINVAL);
  EXPECT_EQ(d.ep().call_decoded(region_read_request{{0xffe, 0, 4}}).err().errnum, EINVAL);
  EXPECT_EQ(d.ep().call_decoded(irq_info_request{{16, 0, 9, 0}}).err().errnum, EINVAL);
  EXPECT_EQ(d.ep().call_decoded(device_feature_request{{8, feature_flags::probe | 3u, {}}}).err().errnum,
            ENOTSUP);  // a feature that does not exist
  // The connection is still usable after all of that.
  EXPECT_EQ(reg(d, dt::status), 0u);
}

TEST_F(ServerTest, DmaOutsideAnyWindowIsReportedByTheDevice) {
  serve("dma-test");
  copy_rig rig;
  client_ = open(rig.mem);
  ASSERT_TRUE(client_);
  enable(*client_, rig);
  ring(*client_, 0x900000, 0x100000, 64);  // nothing mapped there
  ASSERT_TRUE(rig.wait_irq());
  EXPECT_EQ(reg(*client_, dt::status), dt::status_done | dt::status_error);
  EXPECT_EQ(reg(*client_, dt::error), uint32_t(EFAULT));
}

TEST_F(ServerTest, ResetRestoresPowerOnState) {
  serve("dma-test");
  client_ = open();
  ASSERT_TRUE(client_);
  auto& d = *client_;
  uint64_t src = 0x1234;
  ASSERT_TRUE(d.write(0, dt::src, &src, 8).ok());
  uint16_t cmd = 6;
  ASSERT_TRUE(d.write(region_index::config, 4, &cmd, 2).ok());
  ASSERT_TRUE(d.reset().ok());
  EXPECT_EQ(reg(d, dt::src), 0u);
  EXPECT_EQ(cfg32(d, 4) & 0xffff, 0u);
}

TEST_F(ServerTest, DisconnectDropsWindowsKeepsStateAndTheNextClientWorks) {
  serve("gpio");
  client_ = open();
  ASSERT_TRUE(client_);
  uint8_t w = 0x01;
  ASSERT_TRUE(client_->write(2, 0, &w, 1).ok());  // pin 0 counted once
  ASSERT_TRUE(client_->dma_map(0x100000, 0x1000, dma_flags::read, nullptr).ok());
  client_.reset();
  ASSERT_TRUE(server_->wait_state(conn_state::connecting, 5s));
  client_ = open();
  ASSERT_TRUE(client_);
  uint8_t v = 0;
  ASSERT_TRUE(client_->read(2, 1, &v, 1).ok());
  EXPECT_EQ(v, 0xfe) << "pin state survives the disconnect";
  // The old window is gone: mapping the same range again succeeds.
  EXPECT_TRUE(client_->dma_map(0x100000, 0x1000, dma_flags::read, nullptr).ok());
}

TEST_F(ServerTest, SecondClientWaitsUntilTheFirstLeaves) {
  serve("gpio");
  client_ = open();
  ASSERT_TRUE(client_);
  std::unique_ptr<dev::remote_device> second;
  std::thread t([&] {
    endpoint_config cfg;
    cfg.reconnect = false;
    auto d = dev::remote_device::open(*rt_, path_, nullptr, cfg);
    if (d) second = std::move(d.value());
  });
  EXPECT_EQ(server_->generation(), 1u);  // the second is queued in the backlog, not served
  uint8_t v = 0;
  EXPECT_TRUE(client_->read(2, 1, &v, 1).ok());
  client_.reset();
  t.join();
  ASSERT_TRUE(second);
  EXPECT_TRUE(second->read(2, 1, &v, 1).ok());
  EXPECT_EQ(server_->generation(), 2u);
  second.reset();
}

}  // namespace

namespace {

// A client-side memory service that holds DMA_READs until told to answer them.
struct hold_state {
  std::vector<std::pair<caf::typed_response_promise<vfu::outbound_ptr>, vfu::inbound_ptr>> held;
};
using release_atom = caf::atom_constant<caf::atom("release")>;

caf::behavior holding_memory(caf::stateful_actor<hold_state>* self, int) {
  return {
      [=](vfu::inbound_atom, vfu::inbound_ptr& in) -> caf::result<vfu::outbound_ptr> {
        // The server's first DMA message asks our layout (a DMA_WRITE of no bytes).
        if (auto* w = std::get_if<vfu::proto::dma_write_request>(&in->msg))
          return vfu::outbound::of(vfu::proto::dma_write_reply{{w->addr, w->count, vfu::proto::dma_layout::spec}});
        auto rp = self->make_response_promise<vfu::outbound_ptr>();
        self->state.held.emplace_back(rp, in);
        return rp;
      },
      [=](release_atom) {
        for (auto& [rp, in] : self->state.held) {
          auto& r = std::get<vfu::proto::dma_read_request>(in->msg);
          rp.deliver(vfu::outbound::of(vfu::proto::dma_read_reply{r, std::vector<uint8_t>(r.count, 0x5a)}));
        }
        self->state.held.clear();
      },
      [=](vfu::stats_atom) { return uint32_t(self->state.held.size()); },
      [](vfu::connup_atom, const vfu::proto::negotiated&) {},
      [](vfu::connlost_atom) {},
  };
}

TEST_F(ServerTest, UnmapWaitsForInFlightMessageDma) {
  serve("dma-test");
  // The client lives in its own actor system so that a held DMA_READ cannot stall the
  // server's scheduler.
  auto crt = std::make_unique<runtime>();
  auto holder = crt->system().spawn(holding_memory, 0);
  endpoint_config cfg;
  cfg.reconnect = false;
  auto ep = endpoint::connect(*crt, path_, cfg, holder);
  ASSERT_TRUE(ep.ok()) << ep.err().message();
  auto& c = **ep;
  auto wr = [&](uint32_t region, uint64_t off, std::vector<uint8_t> data) {
    region_write_request w{{off, region, uint32_t(data.size())}, std::move(data)};
    return c.call_decoded(w).ok();
  };
  ASSERT_TRUE(wr(region_index::config, 4, {0x06, 0x00}));  // memory + bus master
  dma_map_request map;
  map.flags = dma_flags::read | dma_flags::write;
  map.addr = 0x200000;
  map.size = 1 << 20;
  ASSERT_TRUE(c.call_decoded(map).ok());
  ASSERT_TRUE(wr(0, dt::src, {0, 0, 0x20, 0, 0, 0, 0, 0}));
  ASSERT_TRUE(wr(0, dt::dst, {0, 0, 0x28, 0, 0, 0, 0, 0}));
  ASSERT_TRUE(wr(0, dt::len, {16, 0, 0, 0}));
  ASSERT_TRUE(wr(0, dt::doorbell, {1, 0, 0, 0}));
  caf::scoped_actor self{crt->system()};
  auto held = [&] {
    uint32_t n = 0;
    self->request(holder, 1s, stats_atom::value).receive([&](uint32_t x) { n = x; }, [](caf::error&) {});
    return n;
  };
  for (int i = 0; i < 100000 && held() == 0; ++i) std::this_thread::yield();
  ASSERT_EQ(held(), 1u) << "the device's DMA_READ is being held by the client";
  auto frames_in = [&] {
    auto s = server_->stats();
    return std::stoul(s.substr(s.find("frames_in=") + 10));
  };
  auto before = frames_in();
  std::atomic<bool> unmapped{false};
  status unmap_result;
  std::thread t([&] {
    dma_unmap_request u;
    u.addr = 0x200000;
    u.size = 1 << 20;
    auto r = c.call_decoded(u);
    unmap_result = r.ok() ? status{} : status{r.err()};
    unmapped = true;
  });
  for (int i = 0; i < 100000 && frames_in() == before; ++i) std::this_thread::yield();
  ASSERT_GT(frames_in(), before) << "the server received the DMA_UNMAP";
  EXPECT_FALSE(unmapped.load()) << "DMA_UNMAP answered while DMA on its window was in flight";
  caf::anon_send(holder, release_atom::value);
  t.join();
  EXPECT_TRUE(unmapped.load());
  EXPECT_TRUE(unmap_result.ok()) << unmap_result.err().message();
  c.close();
  ep.value().reset();
  caf::anon_send_exit(holder, caf::exit_reason::user_shutdown);
  holder = nullptr;
  self->send_exit(self, caf::exit_reason::normal);
}

}  // namespace
