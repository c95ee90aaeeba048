// Defects found by reading the code (issue 17), each with the test that showed it: a
// hostile or unlucky peer, or concurrent callers, against the broker and the device
// framework over real sockets. docs/security.md lists them and how each was closed.
#include <sys/eventfd.h>
#include <sys/mman.h>

#include <atomic>
#include <gtest/gtest.h>
#include <thread>

#include "actors/endpoint.hpp"
#include "actors/answer.hpp"
#include "actors/handler.hpp"
#include "device/remote_device.hpp"
#include "device/samples.hpp"
#include "tests/test_support.hpp"

namespace {

using namespace vfu;
using namespace vfu::proto;
using namespace std::chrono_literals;

class RobustnessTest : public test::socket_dir_test {
 protected:
  void SetUp() override {
    socket_dir_test::SetUp();
    rt_ = std::make_unique<runtime>();
  }
  void TearDown() override {
    server_.reset();
    rt_.reset();
    socket_dir_test::TearDown();
  }
  /// A server endpoint for `device` on one end of a socketpair; returns the other end.
  unique_fd serve(caf::actor device, endpoint_config cfg = {}) {
    auto [a, b] = test::socket_pair();
    auto ep = endpoint::serve_fd(*rt_, std::move(a), cfg, device);
    EXPECT_TRUE(ep.ok());
    if (ep) server_ = std::move(ep.value());
    return std::move(b);
  }
  unique_fd serve_sample(const std::string& name, endpoint_config cfg = {}) {
    return serve(dev::spawn_device(rt_->system(), dev::make_sample(name)), cfg);
  }
  std::unique_ptr<runtime> rt_;
  std::unique_ptr<endpoint> server_;
};

/// The errno of an error reply, or 0 for a reply that is not an error, or -1 for none.
int answer(test::raw_peer& p, uint16_t id, std::chrono::milliseconds wait = 5s) {
  auto r = p.recv(wait);
  if (!r) return -1;
  EXPECT_EQ(r->hdr().msg_id, id);
  return r->hdr().is_error() ? int(r->hdr().error_no) : 0;
}

// 5. A second VERSION is refused (EINVAL): the limits it would renegotiate are in force for
// requests already in flight. The connection stays up.
TEST_F(RobustnessTest, ASecondVersionIsRefusedAndTheConnectionStays) {
  test::raw_peer peer(serve_sample("gpio"));
  ASSERT_TRUE(peer.version());
  version_request v;
  v.major = 0;
  v.minor = 2;
  v.caps_json = R"({"capabilities":{"max_data_xfer_size":65536}})";
  ASSERT_TRUE(peer.send(v, 7));
  EXPECT_EQ(answer(peer, 7), EINVAL) << "a second VERSION was answered with success";
  ASSERT_TRUE(peer.send(device_info_request{}, 8));
  EXPECT_EQ(answer(peer, 8), 0) << "the connection did not stay usable";
}

// A device that never answers a REGION_READ of offset 0x666 in time: it answers `late_ms`
// late, through answer() (written at once when nothing waits behind it) and as
// its reply to the dispatcher. Every other read is answered at once.
using late_atom = caf::atom_constant<caf::atom("late")>;
struct slow_state {
  std::vector<std::pair<caf::response_promise, inbound_ptr>> held;
};
caf::behavior slow_device(caf::stateful_actor<slow_state>* self, int late_ms) {
  return {
      [=](inbound_atom, inbound_ptr& in) -> caf::result<outbound_ptr> {
        auto* r = std::get_if<region_read_request>(&in->msg);
        if (!r) return outbound::error(ENOTSUP);
        region_read_reply rep{*r, std::vector<uint8_t>(r->count, 0x11)};
        if (r->offset != 0x666) return answer(*in, outbound::of(rep));
        self->state.held.emplace_back(self->make_response_promise(), in);
        self->delayed_send(self, std::chrono::milliseconds(late_ms), late_atom::value);
        return caf::delegated<outbound_ptr>{};
      },
      [=](late_atom) {
        for (auto& [rp, in] : self->state.held) {
          auto* r = std::get_if<region_read_request>(&in->msg);
          rp.deliver(answer(*in, outbound::of(region_read_reply{*r, std::vector<uint8_t>(r->count, 0x22)})));
        }
        self->state.held.clear();
      },
      [](connup_atom, const negotiated&) {},
      [](connlost_atom) {},
  };
}

// 3. A handler that does not answer within endpoint_config::handler_timeout: its request is
// answered ETIMEDOUT, the requests behind it are served in order, and its late answer never
// reaches the peer (whichever way it is written).
TEST_F(RobustnessTest, AHandlerPastItsDeadlineIsAnsweredEtimedoutAndItsLateAnswerDropped) {
  endpoint_config cfg;
  cfg.handler_timeout = 100ms;
  auto dev = rt_->system().spawn(slow_device, 300);
  test::raw_peer peer(serve(dev, cfg));
  ASSERT_TRUE(peer.version());
  region_read_request held{{0x666, 0, 4}}, quick{{0, 0, 4}};
  ASSERT_TRUE(peer.send(held, 1));
  ASSERT_TRUE(peer.send(quick, 2));
  EXPECT_EQ(answer(peer, 1), ETIMEDOUT) << "the silent handler's request was not answered ETIMEDOUT";
  EXPECT_EQ(answer(peer, 2), 0) << "the request behind it was not served";
  std::this_thread::sleep_for(500ms);  // the late answer comes meanwhile
  ASSERT_TRUE(peer.send(quick, 3));
  EXPECT_EQ(answer(peer, 3), 0) << "the late answer reached the peer";
  // (A reply written by the device itself leaves before the dispatcher counts it answered.)
  for (int i = 0; i < 100 && test::stat_value(server_->stats(), "unanswered") != 0; ++i) std::this_thread::sleep_for(10ms);
  EXPECT_EQ(test::stat_value(server_->stats(), "unanswered"), 0) << "the timed-out request is still counted";
  ASSERT_TRUE(peer.send(held, 4));  // nothing waits behind this one: written by answer() itself
  EXPECT_EQ(answer(peer, 4), ETIMEDOUT);
  std::this_thread::sleep_for(500ms);
  ASSERT_TRUE(peer.send(quick, 5));
  EXPECT_EQ(answer(peer, 5), 0) << "the late answer reached the peer";
  server_.reset();
  caf::anon_send_exit(dev, caf::exit_reason::user_shutdown);
}

// A client's guest memory that holds the server's DMA_READs until released (answering the
// layout probe, a DMA_WRITE of no bytes, at once).
using release_atom = caf::atom_constant<caf::atom("release")>;
struct hold_state {
  std::vector<std::pair<caf::response_promise, inbound_ptr>> held;
};
caf::behavior holding_memory(caf::stateful_actor<hold_state>* self, int) {
  return {
      [=](inbound_atom, inbound_ptr& in) -> caf::result<outbound_ptr> {
        if (auto* w = std::get_if<dma_write_request>(&in->msg))
          return outbound::of(dma_write_reply{{w->addr, w->count, dma_layout::spec}});
        self->state.held.emplace_back(self->make_response_promise(), in);
        return caf::delegated<outbound_ptr>{};
      },
      [=](release_atom) {
        for (auto& [rp, in] : self->state.held) {
          auto& r = std::get<dma_read_request>(in->msg);
          rp.deliver(outbound::of(dma_read_reply{r, std::vector<uint8_t>(r.count, 0x5a)}));
        }
        self->state.held.clear();
      },
      [=](stats_atom) { return uint32_t(self->state.held.size()); },
      [](connup_atom, const negotiated&) {},
      [](connlost_atom) {},
  };
}

// 1. A DMA_UNMAP that waits for message DMA in flight keeps its window until the transfer
// ends. If it times out (handler_timeout_long) and the client maps the same IOVA again,
// that map used to pass the overlap check (the old window was marked by size 0), do
// nothing (the key was taken) and still answer success: the new mmap leaked, and once the
// old window went, the range the client believes mapped was gone. Now the map is refused
// (EBUSY) while the old window drains, and succeeds after.
TEST_F(RobustnessTest, AMapOverAWindowStillBeingUnmappedIsRefusedUntilItIsGone) {
  endpoint_config scfg;
  scfg.handler_timeout_long = 200ms;  // DMA_UNMAP's
  auto [a, b] = test::socket_pair();
  auto sep = endpoint::serve_fd(*rt_, std::move(a), scfg, dev::spawn_device(rt_->system(), dev::make_sample("dma-test")));
  ASSERT_TRUE(sep.ok());
  server_ = std::move(sep.value());
  // The client in a runtime of its own, so that a held DMA_READ cannot stall the server's.
  auto crt = std::make_unique<runtime>();
  auto holder = crt->system().spawn(holding_memory, 0);
  endpoint_config ccfg;
  ccfg.reconnect = false;
  auto cep = endpoint::connect_fd(*crt, std::move(b), ccfg, holder);
  ASSERT_TRUE(cep.ok()) << cep.err().message();
  auto& c = **cep;
  namespace dt = dev::dmatest;
  auto wr = [&](uint32_t region, uint64_t off, std::vector<uint8_t> data) {
    region_write_request w{{off, region, uint32_t(data.size())}, std::move(data)};
    return c.call_decoded(w).ok();
  };
  auto map = [&](unique_fd* fd) {
    dma_map_request m;
    m.flags = dma_flags::read | dma_flags::write;
    m.addr = 0x200000;
    m.size = 1 << 20;
    fd_list fds;
    if (fd) fds.push_back(unique_fd(::dup(fd->get())));
    auto f = c.call(m, std::move(fds)).failure();
    return f ? (f.errnum ? f.errnum : -1) : 0;
  };
  ASSERT_TRUE(wr(region_index::config, 4, {0x06, 0x00}));  // memory + bus master
  ASSERT_EQ(map(nullptr), 0);
  ASSERT_TRUE(wr(0, dt::src, {0, 0, 0x20, 0, 0, 0, 0, 0}));
  ASSERT_TRUE(wr(0, dt::dst, {0, 0x10, 0x20, 0, 0, 0, 0, 0}));
  ASSERT_TRUE(wr(0, dt::len, {16, 0, 0, 0}));
  ASSERT_TRUE(wr(0, dt::doorbell, {1, 0, 0, 0}));
  caf::scoped_actor self{crt->system()};
  auto held = [&] {
    uint32_t n = 0;
    self->request(holder, 1s, stats_atom::value).receive([&](uint32_t x) { n = x; }, [](caf::error&) {});
    return n;
  };
  for (int i = 0; i < 100000 && held() == 0; ++i) std::this_thread::yield();
  ASSERT_EQ(held(), 1u) << "the device's DMA_READ is held by the client";
  dma_unmap_request u;
  u.addr = 0x200000;
  u.size = 1 << 20;
  auto un = c.call(u);
  EXPECT_EQ(un.failure().errnum, ETIMEDOUT) << "the unmap did not wait for the DMA in flight";
  unique_fd mem(::memfd_create("guest", MFD_CLOEXEC));
  ASSERT_EQ(::ftruncate(mem.get(), 1 << 20), 0);
  EXPECT_EQ(map(&mem), EBUSY) << "a map over a window still being unmapped was accepted";
  caf::anon_send(holder, release_atom::value);  // the transfer ends, and the old window goes
  int r = -1;
  for (int i = 0; i < 200 && (r = map(&mem)) == EBUSY; ++i) std::this_thread::sleep_for(10ms);
  EXPECT_EQ(r, 0) << "the range could not be mapped again once the old window was gone";
  // The new window is the one the device uses: a copy through it lands in the memfd.
  auto* p = static_cast<uint8_t*>(::mmap(nullptr, 1 << 20, PROT_READ | PROT_WRITE, MAP_SHARED, mem.get(), 0));
  ASSERT_NE(p, MAP_FAILED);
  std::memset(p, 0x77, 16);
  uint32_t copies = 0;
  auto copies_now = [&] {
    auto m = c.call_decoded(region_read_request{{dt::copies, 0, 4}});
    if (m) std::memcpy(&copies, std::get<region_read_reply>(*m).data.data(), 4);
    return copies;
  };
  uint32_t before = copies_now();
  ASSERT_TRUE(wr(0, dt::doorbell, {1, 0, 0, 0}));
  for (int i = 0; i < 500 && copies_now() == before; ++i) std::this_thread::sleep_for(2ms);
  EXPECT_EQ(copies, before + 1) << "the copy through the new window did not complete";
  EXPECT_EQ(p[0x1000], 0x77) << "the copy did not go through the new window";
  ::munmap(p, 1 << 20);
  c.close();
  cep.value().reset();
  caf::anon_send_exit(holder, caf::exit_reason::user_shutdown);
  holder = nullptr;
  self->send_exit(self, caf::exit_reason::normal);
}

// A device that, for a REGION_READ of offset 0x999, first reads 8 bytes of guest memory
// with DMA_READ and answers with them; every other read is answered at once.
caf::behavior dma_then_answer(caf::event_based_actor* self, int) {
  return {
      [=](inbound_atom, inbound_ptr& in) -> caf::result<outbound_ptr> {
        auto* r = std::get_if<region_read_request>(&in->msg);
        if (!r) return outbound::error(ENOTSUP);
        if (r->offset != 0x999) return outbound::of(region_read_reply{*r, std::vector<uint8_t>(r->count, 0)});
        auto rp = self->make_response_promise<outbound_ptr>();
        auto req = *r;
        self->request(in->correlation, caf::infinite, request_atom::value,
                      make_frame_ptr(make_frame(0, dma_read_request{{0x1000, 8}})), uint32_t(0))
            .then([=](call_result& res) mutable {
              auto m = res.failure() ? result<message>(res.failure()) : decode(*res.reply);
              auto* d = m ? std::get_if<dma_read_reply>(&*m) : nullptr;
              if (!d) {
                rp.deliver(outbound::error(EIO));
                return;
              }
              region_read_reply rep{req, d->data};
              rep.count = uint32_t(d->data.size());
              rp.deliver(outbound::of(rep));
            });
        return rp;
      },
      [](connup_atom, const negotiated&) {},
      [](connlost_atom) {},
  };
}

// 2. With 4096 of the peer's requests unanswered, the connection stops reading (flow
// control). If the request at the device waits for a reply of the same peer (a DMA_READ),
// that reply sits behind requests the connection no longer reads: it stalled until the
// DMA timed out. Now, while a request of ours awaits its reply, reading goes on (up to four
// times the bound). The peer here pipelines 12000 requests behind the one that does DMA.
TEST_F(RobustnessTest, AReplyTheDeviceWaitsForIsReadWhileThePeerOutrunsIt) {
  auto dev = rt_->system().spawn(dma_then_answer, 0);
  test::raw_peer peer(serve(dev));
  ASSERT_TRUE(peer.version());
  constexpr int n = 12000;  // 384 KiB: more than the socket holds once the server stops reading
  std::vector<uint8_t> burst;
  auto add = [&](uint16_t id, uint64_t off) {
    auto f = make_frame(id, region_read_request{{off, 0, 8}});
    burst.insert(burst.end(), f.bytes.begin(), f.bytes.end());
  };
  add(1, 0x999);
  for (int i = 0; i < n; ++i) add(uint16_t(2 + i), 0);
  std::atomic<bool> written{false};
  std::thread writer([&] {
    peer.send_bytes(burst.data(), burst.size());
    written = true;
  });
  auto dma = peer.recv();
  ASSERT_TRUE(dma && dma->hdr().command == uint16_t(command::dma_read) && dma->hdr().is_command());
  for (int i = 0; i < 300 && !written; ++i) std::this_thread::sleep_for(10ms);  // (the DMA times out in 5 s)
  EXPECT_TRUE(written.load()) << "the server stopped reading: the DMA reply could not be sent";
  if (!written) {  // let the DMA time out, so that the server reads again and the writer ends
    writer.join();
    peer.recv(10s);
    server_.reset();
    caf::anon_send_exit(dev, caf::exit_reason::user_shutdown);
    return;
  }
  writer.join();
  ASSERT_TRUE(peer.send(dma_read_reply{{0x1000, 8}, std::vector<uint8_t>(8, 0xab)}, dma->hdr().msg_id));
  auto first = peer.recv();
  ASSERT_TRUE(first && first->hdr().msg_id == 1 && !first->hdr().is_error()) << "no answer to the request at the device";
  EXPECT_EQ(first->bytes.back(), 0xab) << "the read that waited for DMA has the DMA's bytes";
  int got = 0;
  for (int i = 0; i < n; ++i) {
    auto r = peer.recv();
    if (!r || r->hdr().msg_id != uint16_t(2 + i) || r->hdr().is_error()) break;
    ++got;
  }
  EXPECT_EQ(got, n) << "replies missing or out of order";
  server_.reset();
  caf::anon_send_exit(dev, caf::exit_reason::user_shutdown);
}

// 4. A header that declares more than the negotiated maximum is answered E2BIG at once,
// without waiting for its body. Up to 1 MiB over the limit the body is then read and
// dropped, and the stream stays in sync; further over, the connection is closed after
// the answer (draining up to 4 GiB from a peer that may never send it keeps nothing in
// sync). A header alone declaring 4 GiB used to get no answer at all.
TEST_F(RobustnessTest, ADeclaredSizeOverTheLimitIsAnsweredBeforeItsBody) {
  test::raw_peer peer(serve_sample("ram"));
  ASSERT_TRUE(peer.version());  // max_data_xfer_size 1 MiB: frames up to 1 MiB + 4 KiB
  region_write_request w{{0, 0, (1u << 20) + 64 * 1024}, {}};
  w.data.assign(w.count, 0x5a);
  auto f = make_frame(1, w);
  ASSERT_TRUE(peer.send_bytes(f.bytes.data(), header_size));  // the header alone
  EXPECT_EQ(answer(peer, 1, 2s), E2BIG) << "no E2BIG before the body";
  ASSERT_TRUE(peer.send_bytes(f.bytes.data() + header_size, f.bytes.size() - header_size));
  ASSERT_TRUE(peer.send(region_read_request{{0, 0, 4}}, 2));
  EXPECT_EQ(answer(peer, 2), 0) << "the stream is out of sync after the drained body";
}

TEST_F(RobustnessTest, ADeclaredSizeFarOverTheLimitIsAnsweredAndTheConnectionClosed) {
  test::raw_peer peer(serve_sample("ram"));
  ASSERT_TRUE(peer.version());
  header h{};
  h.msg_id = 1;
  h.command = uint16_t(command::region_write);
  h.msg_size = 0xffffffff;  // 4 GiB, and nothing of it sent
  uint8_t b[header_size];
  write_header(b, h);
  ASSERT_TRUE(peer.send_bytes(b, sizeof b));
  EXPECT_EQ(answer(peer, 1, 2s), E2BIG) << "a 4 GiB declaration got no answer";
  EXPECT_TRUE(peer.wait_eof(2s)) << "the connection was not closed";
}

// A device whose region 0 is shared memory with one mmap-able page, and whose region 1 is a
// register: writing it stores the value at the start of region 0.
class mirror_device : public dev::device_model {
 public:
  mirror_device() {
    spec_.ids = dev::pci_ids{0x7675, 0x00ee, 0x7675, 0, 0x050000, 1, 1};
    spec_.bars[0] = dev::bar_spec{0x2000, false, false, false};
    spec_.regions[0].size = 0x2000;
    spec_.regions[0].shared_memory = true;
    spec_.regions[0].sparse = {{0, 0x1000}};
    spec_.bars[1] = dev::bar_spec{0x1000, false, false, false};
    spec_.regions[1].size = 0x1000;
  }
  const dev::device_spec& spec() const override { return spec_; }
  int region_write(uint32_t region, uint64_t off, const uint8_t* buf, uint32_t n) override {
    if (region != 1 || off != 0 || n != 4) return EINVAL;
    std::memcpy(ctx->region_memory(0), buf, 4);
    return 0;
  }
  int region_read(uint32_t, uint64_t, uint8_t* buf, uint32_t n) override {
    std::memset(buf, 0, n);
    return 0;
  }

 private:
  dev::device_spec spec_;
};

// 6. Posted writes (NO_REPLY messages) and accesses through an mmapped area must keep
// program order: a read through the mapping right after a posted write has to see what
// that write did. The client used to read the mapping at once, before the server had
// applied the write (QEMU avoids it by not posting writes to a device with mmap-able
// regions). Now a direct access after posted writes waits for them first (one round
// trip, only then). And the range checks of the direct path no longer wrap around.
TEST_F(RobustnessTest, AReadThroughTheMappingSeesTheWritesPostedBeforeIt) {
  auto dev = dev::spawn_device(rt_->system(), std::make_shared<mirror_device>());
  auto lst = endpoint::listen(*rt_, path_, {}, dev);
  ASSERT_TRUE(lst.ok());
  server_ = std::move(lst.value());
  endpoint_config cfg;
  cfg.reconnect = false;
  auto d = dev::remote_device::open(*rt_, path_, nullptr, cfg);
  ASSERT_TRUE(d.ok());
  auto& dv = **d;
  ASSERT_TRUE(dv.probe().ok());
  ASSERT_EQ(dv.regions()[0].areas.size(), 1u) << "region 0's page is mapped";
  int stale = 0;
  for (uint32_t i = 1; i <= 300; ++i) {
    ASSERT_TRUE(dv.write_posted(1, 0, &i, 4).ok());
    uint32_t seen = 0;
    ASSERT_TRUE(dv.read(0, 0, &seen, 4).ok());
    if (seen != i) ++stale;
  }
  EXPECT_EQ(stale, 0) << stale << " of 300 reads through the mapping missed the write posted just before";
  // offset + count wraps: not a read through the mapping (the server refuses it).
  uint8_t buf[0x200];
  EXPECT_FALSE(dv.read(0, ~uint64_t(0) - 0xff, buf, sizeof buf).ok());
  EXPECT_FALSE(dv.write(0, ~uint64_t(0) - 0xff, buf, sizeof buf).ok());
  d.value().reset();
}

// 7. A call that waits for room among the outstanding requests (back-pressure) gives up at
// its own deadline, not after the longest timeout of any command (60 s).
TEST_F(RobustnessTest, ACallWaitingForRoomKeepsItsOwnTimeout) {
  endpoint_config scfg;
  scfg.handler_timeout = 30s;
  auto dev = rt_->system().spawn(slow_device, 20000);  // holds offset 0x666 for 20 s
  auto sock = serve(dev, scfg);
  endpoint_config cfg;
  cfg.reconnect = false;
  cfg.correlation.max_outstanding = 1;
  auto crt = std::make_unique<runtime>();
  auto ep = endpoint::connect_fd(*crt, std::move(sock), cfg);
  ASSERT_TRUE(ep.ok());
  auto& c = **ep;
  std::thread first([&] { c.call(region_read_request{{0x666, 0, 4}}, {}, 3s); });  // holds the only slot
  std::this_thread::sleep_for(100ms);
  auto t0 = std::chrono::steady_clock::now();
  auto r = c.call(region_read_request{{0, 0, 4}}, {}, 200ms);
  auto took = std::chrono::steady_clock::now() - t0;
  EXPECT_TRUE(r.failure()) << "the call got through without room";
  EXPECT_LT(took, 1500ms) << "a call with a 200 ms timeout waited "
                          << std::chrono::duration_cast<std::chrono::milliseconds>(took).count() << " ms for room";
  first.join();
  c.close();
  ep.value().reset();
  server_.reset();
  caf::anon_send_exit(dev, caf::exit_reason::user_shutdown);
}

// 8. close() may be called from any thread, concurrently, as endpoint.hpp promises: it used
// to test and set a plain bool, so a second caller could return at once, before the
// endpoint was closed (and TSan saw the race).
TEST_F(RobustnessTest, CloseFromManyThreadsAtOnceReturnsWhenClosed) {
  for (int round = 0; round < 20; ++round) {
    auto sock = serve_sample("gpio");
    endpoint_config cfg;
    cfg.reconnect = false;
    auto ep = endpoint::connect_fd(*rt_, std::move(sock), cfg);
    ASSERT_TRUE(ep.ok());
    auto& c = **ep;
    std::atomic<int> ready{0}, early{0};
    std::vector<std::thread> ts;
    for (int i = 0; i < 6; ++i)
      ts.emplace_back([&] {
        ++ready;
        while (ready < 6) std::this_thread::yield();
        c.close();
        if (c.state() != conn_state::closed) ++early;
      });
    for (auto& t : ts) t.join();
    EXPECT_EQ(early.load(), 0) << "close() returned before the endpoint was closed (round " << round << ")";
    ep.value().reset();
    server_.reset();
    if (early) break;
  }
}

// 9. A frame with more fds than one sendmsg can carry (SCM_MAX_FD, 253) is refused with a
// clear error. send_iov used to drop the fds past 253, and the frame went out with fewer
// fds than its payload names.
TEST_F(RobustnessTest, AFrameWithMoreFdsThanOneMessageCarriesIsRefused) {
  auto sock = serve_sample("dma-test");
  endpoint_config cfg;
  cfg.reconnect = false;
  auto ep = endpoint::connect_fd(*rt_, std::move(sock), cfg);
  ASSERT_TRUE(ep.ok());
  set_irqs_request s;
  s.flags = irq_set_flags::data_eventfd | irq_set_flags::action_trigger;
  s.index = irq_index::msix;
  s.count = limits::scm_max_fd + 1;
  fd_list fds;
  for (uint32_t i = 0; i < s.count; ++i) fds.emplace_back(::eventfd(0, EFD_CLOEXEC));
  auto r = (*ep)->call(s, std::move(fds));
  auto f = r.failure();
  EXPECT_EQ(f.code, errc::bad_fds) << "got: " << f.message();
  EXPECT_TRUE((*ep)->call(device_info_request{}).ok()) << "the connection did not stay usable";
  (*ep)->close();
}

// A handler that keeps every REGION_WRITE it is handed (a copy of the message) and reads
// the kept ones' bytes later. Named as the device framework's actor is, which was the only
// one handed a REGION_WRITE's data borrowed from its frame.
using check_atom = caf::atom_constant<caf::atom("check")>;
struct keeper_state {
  std::vector<region_write_request> kept;
  static inline const char* name = "vfu.device";
};
caf::behavior keeping_device(caf::stateful_actor<keeper_state>* self, int) {
  return {
      [=](inbound_atom, inbound_ptr& in) -> outbound_ptr {
        auto* w = std::get_if<region_write_request>(&in->msg);
        if (!w) return outbound::error(ENOTSUP);
        self->state.kept.push_back(*w);
        return outbound::of(region_write_reply{{w->offset, w->region, w->count}});
      },
      [=](check_atom) {  // how many kept writes still hold the bytes they were sent with
        uint32_t good = 0;
        for (auto& w : self->state.kept) {
          const uint8_t* p = w.data.data();
          bool same = w.data.size() == w.count;
          for (uint32_t i = 0; same && i < w.count; ++i) same = p[i] == uint8_t(w.offset + i);
          good += same;
        }
        return good;
      },
      [](connup_atom, const negotiated&) {},
      [](connlost_atom) {},
  };
}

// 10. A REGION_WRITE's data borrowed from its frame lived in a copyable message as a bare
// pointer: a handler that kept the message read freed memory once the request was
// answered. Whether a handler was handed borrowed data was decided by its actor's name.
// Now the message shares the frame's bytes (a copy keeps them alive), for every handler.
TEST_F(RobustnessTest, AKeptRegionWriteStillHoldsItsBytesAfterTheRequestIsGone) {
  auto dev = rt_->system().spawn(keeping_device, 0);
  auto sock = serve(dev);
  endpoint_config cfg;
  cfg.reconnect = false;
  auto ep = endpoint::connect_fd(*rt_, std::move(sock), cfg);
  ASSERT_TRUE(ep.ok());
  constexpr int n = 8;
  for (int k = 0; k < n; ++k) {
    region_write_request w{{uint64_t(k * 16), 0, 64 * 1024}, {}};
    for (uint32_t i = 0; i < w.count; ++i) w.data.push_back(uint8_t(w.offset + i));
    ASSERT_TRUE((*ep)->call(w).ok());
  }
  caf::scoped_actor self{rt_->system()};
  uint32_t good = 0;
  self->request(dev, 5s, check_atom::value).receive([&](uint32_t g) { good = g; }, [](caf::error&) {});
  EXPECT_EQ(good, uint32_t(n)) << "kept REGION_WRITE messages lost their bytes with their frames";
  (*ep)->close();
  server_.reset();
  caf::anon_send_exit(dev, caf::exit_reason::user_shutdown);
}

}  // namespace
