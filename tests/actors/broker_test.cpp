// Broker core over real sockets: socket, correlation, dispatcher and supervisor actors.
// No test sleeps to prove that something did not happen; waits are on explicit events.
#include <sys/eventfd.h>
#include <sys/mman.h>

#include <atomic>
#include <gtest/gtest.h>
#include <thread>

#include "protocol/bulk_frames.hpp"
#include "actors/endpoint.hpp"
#include "actors/event_loop.hpp"
#include "actors/handler.hpp"
#include "tests/actors/pair_fixture.hpp"
#include "tests/test_support.hpp"

namespace {

using namespace vfu;
using namespace std::chrono_literals;
using proto::errc;

// A device that answers REGION_READ with bytes (offset + i) and REGION_WRITE with an echo.
outbound_ptr pattern_device(inbound& in) {
  if (auto* r = std::get_if<proto::region_read_request>(&in.msg)) {
    proto::region_read_reply rep{*r, {}};
    rep.data.resize(r->count);
    for (uint32_t i = 0; i < r->count; ++i) rep.data[i] = uint8_t(r->offset + i);
    return outbound::of(rep);
  }
  if (auto* w = std::get_if<proto::region_write_request>(&in.msg))
    return outbound::of(proto::region_write_reply{{w->offset, w->region, w->count}});
  return outbound::error(ENOTSUP);
}

proto::region_read_request rr(uint64_t off, uint32_t count, uint32_t region = 0) {
  proto::region_read_request r;
  r.offset = off;
  r.region = region;
  r.count = count;
  return r;
}

class BrokerTest : public test::pair_fixture<> {
 protected:
  // Replaces the fixture's runtime (before any endpoint exists).
  void restart_runtime(runtime_options opts) {
    rt_.reset();
    rt_ = std::make_unique<runtime>(std::vector<std::string>{}, opts);
  }
  runtime_options polling(int64_t poll_max_ns) {
    runtime_options o;
    o.poll_max_ns = poll_max_ns;
    return o;
  }
  // `n` reads of a pattern_device from this thread, a posted write before every second one;
  // each read's bytes checked. With `pause`, each read waits that long first.
  void calls_with_posts_between(endpoint& ep, uint64_t n, std::chrono::microseconds pause = {}) {
    for (uint64_t i = 0; i < n; ++i) {
      if (i % 2) ep.post(proto::region_write_request{{i, 0, 1}, {uint8_t(i)}});
      if (pause.count()) std::this_thread::sleep_for(pause);
      auto r = ep.call_decoded(rr(i, 4));
      ASSERT_TRUE(r.ok()) << r.err().message();
      EXPECT_EQ(std::get<proto::region_read_reply>(*r).data,
                (std::vector<uint8_t>{uint8_t(i), uint8_t(i + 1), uint8_t(i + 2), uint8_t(i + 3)}));
    }
  }
  // `n` 2-byte reads of a pattern_device through a raw peer, ids and offsets from `from`;
  // each reply's id and bytes checked.
  static void raw_reads(test::raw_peer& p, uint16_t from, uint16_t n) {
    for (uint16_t i = from; i < from + n; ++i) {
      ASSERT_TRUE(p.send(rr(i, 2), i));
      auto r = p.recv();
      ASSERT_TRUE(r);
      ASSERT_EQ(r->hdr().msg_id, i);
      auto m = proto::decode(*r);
      ASSERT_TRUE(m.ok());
      EXPECT_EQ(std::get<proto::region_read_reply>(*m).data, (std::vector<uint8_t>{uint8_t(i), uint8_t(i + 1)}));
    }
  }
  // Server endpoint on one end of a socketpair; returns the other end.
  proto::unique_fd start_server(handler_fn fn, endpoint_config cfg = {}) {
    auto [a, b] = test::socket_pair();
    auto dev = spawn_handler(rt_->system(), std::move(fn));
    auto ep = endpoint::serve_fd(*rt_, std::move(a), cfg, dev);
    EXPECT_TRUE(ep.ok());
    server_ = std::move(ep.value());
    return std::move(b);
  }
  // A pattern_device server on the fixture's runtime, and a client endpoint on `crt`, a
  // runtime of the test's own (so that its loop's counters are the client's alone).
  std::unique_ptr<endpoint> client_on(runtime& crt, endpoint_config cfg) {
    auto ep = endpoint::connect_fd(crt, start_server(pattern_device), cfg);
    EXPECT_TRUE(ep.ok()) << ep.err().message();
    return ep.ok() ? std::move(ep.value()) : nullptr;
  }
  void start_pair(handler_fn server_fn, handler_fn client_fn = nullptr, endpoint_config ccfg = {}) {
    auto fd = start_server(std::move(server_fn));
    caf::actor ch;
    if (client_fn) ch = spawn_handler(rt_->system(), std::move(client_fn));
    auto ep = endpoint::connect_fd(*rt_, std::move(fd), ccfg, ch);
    ASSERT_TRUE(ep.ok()) << ep.err().message();
    client_ = std::move(ep.value());
  }

};

TEST_F(BrokerTest, NegotiatesAndRoundTripsARead) {
  start_pair(pattern_device);
  EXPECT_EQ(client_->state(), conn_state::ready);
  ASSERT_TRUE(server_->wait_state(conn_state::ready, 5s));
  EXPECT_EQ(client_->negotiated().minor, proto::our_minor);
  EXPECT_EQ(client_->negotiated().theirs.max_msg_fds, proto::limits::our_max_msg_fds);
  auto r = client_->call_decoded(rr(0x10, 4));
  ASSERT_TRUE(r.ok()) << r.err().message();
  auto& rep = std::get<proto::region_read_reply>(*r);
  EXPECT_EQ(rep.data, (std::vector<uint8_t>{0x10, 0x11, 0x12, 0x13}));
}

// A handler of the host's own gets a REGION_WRITE's data in region_write_request::data,
// as the device framework's actor does: shared with the request frame, not copied.
TEST_F(BrokerTest, HostHandlersGetRegionWriteDataInTheMessage) {
  std::vector<uint8_t> seen;
  bool shared = false;
  start_pair([&](inbound& in) -> outbound_ptr {
    if (auto* w = std::get_if<proto::region_write_request>(&in.msg)) {
      seen.assign(w->data.begin(), w->data.end());
      shared = w->data.shared();
      return outbound::of(proto::region_write_reply{{w->offset, w->region, w->count}});
    }
    return outbound::error(ENOTSUP);
  });
  proto::region_write_request w;
  w.region = 1;
  w.offset = 8;
  w.count = 70000;
  w.data.resize(w.count);
  for (uint32_t i = 0; i < w.count; ++i) w.data[i] = uint8_t(i * 5 + 3);
  auto r = client_->call_decoded(w);
  ASSERT_TRUE(r.ok()) << r.err().message();
  EXPECT_TRUE(shared);
  EXPECT_TRUE(seen == w.data) << "the handler saw " << seen.size() << " bytes";
}

TEST_F(BrokerTest, PeerWritingOneByteAtATimeIsServed) {
  test::raw_peer peer(start_server(pattern_device));
  std::vector<uint8_t> stream;
  proto::version_request v;
  v.caps_json = "{\"capabilities\":{\"max_msg_fds\":4}}";
  for (auto* f : {new proto::frame(proto::make_frame(7, v)), new proto::frame(proto::make_frame(8, rr(3, 2)))}) {
    stream.insert(stream.end(), f->bytes.begin(), f->bytes.end());
    delete f;
  }
  for (uint8_t b : stream) ASSERT_TRUE(peer.send_bytes(&b, 1));
  auto v1 = peer.recv();
  ASSERT_TRUE(v1);
  EXPECT_EQ(v1->hdr().msg_id, 7);
  EXPECT_EQ(v1->hdr().command, uint16_t(proto::command::version));
  auto r1 = peer.recv();
  ASSERT_TRUE(r1);
  EXPECT_EQ(r1->hdr().msg_id, 8);
  auto m = proto::decode(*r1);
  ASSERT_TRUE(m.ok());
  EXPECT_EQ(std::get<proto::region_read_reply>(*m).data, (std::vector<uint8_t>{3, 4}));
}

TEST_F(BrokerTest, ManyFramesInOneWriteAreAllAnswered) {
  test::raw_peer peer(start_server(pattern_device));
  ASSERT_TRUE(peer.version());
  std::vector<uint8_t> stream;
  for (uint16_t i = 0; i < 100; ++i) {
    auto f = proto::make_frame(i, rr(i, 1));
    stream.insert(stream.end(), f.bytes.begin(), f.bytes.end());
  }
  ASSERT_TRUE(peer.send_bytes(stream.data(), stream.size()));
  for (uint16_t i = 0; i < 100; ++i) {
    auto f = peer.recv();
    ASSERT_TRUE(f);
    EXPECT_EQ(f->hdr().msg_id, i);  // in arrival order
    auto m = proto::decode(*f);
    ASSERT_TRUE(m.ok());
    EXPECT_EQ(std::get<proto::region_read_reply>(*m).data[0], uint8_t(i));
  }
}

TEST_F(BrokerTest, TenThousandRequestsInterleavedInBothDirections) {
  // The client serves the server's DMA_READs while both sides pipeline requests.
  auto client_mem = [](inbound& in) -> outbound_ptr {
    if (auto* r = std::get_if<proto::dma_read_request>(&in.msg)) {
      proto::dma_read_reply rep{*r, std::vector<uint8_t>(r->count, uint8_t(r->addr))};
      return outbound::of(rep);
    }
    return outbound::error(EINVAL);
  };
  endpoint_config slow_ok;  // sanitizer builds run 10-20x slower: no request may time out
  slow_ok.correlation.short_timeout = 120s;
  start_pair(pattern_device, client_mem, slow_ok);
  ASSERT_TRUE(server_->wait_state(conn_state::ready, 5s));
  constexpr int n = 5000;
  std::atomic<int> ok_c2s{0}, ok_s2c{0};
  std::thread s2c([&] {
    for (int i = 0; i < n; ++i) {
      proto::dma_read_request d;
      d.addr = uint64_t(i);
      d.count = 8;
      auto r = server_->call_decoded(d);
      if (r.ok() && std::get<proto::dma_read_reply>(*r).data == std::vector<uint8_t>(8, uint8_t(i))) ++ok_s2c;
    }
  });
  for (int i = 0; i < n; ++i) client_->post(rr(uint64_t(i), 4));  // pipelined, no-wait
  auto last = client_->wait_posted(30s);
  EXPECT_TRUE(last.ok()) << last.failure().message();
  for (int i = 0; i < n; ++i)
    if (client_->call_decoded(rr(uint64_t(i), 4)).ok()) ++ok_c2s;
  s2c.join();
  EXPECT_EQ(ok_c2s.load(), n);
  EXPECT_EQ(ok_s2c.load(), n);
}

TEST_F(BrokerTest, PassedFdsAreUsable) {
  // DMA_MAP carries a memfd the device writes through; SET_IRQS an eventfd it signals.
  start_pair([](inbound& in) -> outbound_ptr {
    if (auto* m = std::get_if<proto::dma_map_request>(&in.msg)) {
      if (in.fds.size() != 1) return outbound::error(EINVAL);
      void* p = ::mmap(nullptr, m->size, PROT_READ | PROT_WRITE, MAP_SHARED, in.fds[0].get(), off_t(m->offset));
      if (p == MAP_FAILED) return outbound::error(errno);
      std::memcpy(p, "written by the device", 21);
      ::munmap(p, m->size);
      return outbound::of(proto::dma_map_reply{});
    }
    if (std::get_if<proto::set_irqs_request>(&in.msg)) {
      if (in.fds.size() != 1) return outbound::error(EINVAL);
      uint64_t one = 1;
      if (::write(in.fds[0].get(), &one, 8) != 8) return outbound::error(errno);
      return outbound::of(proto::set_irqs_reply{});
    }
    return outbound::error(ENOTSUP);
  });
  proto::unique_fd mem(::memfd_create("guest", MFD_CLOEXEC));
  ASSERT_EQ(::ftruncate(mem.get(), 4096), 0);
  proto::dma_map_request map;
  map.flags = proto::dma_flags::read | proto::dma_flags::write;
  map.size = 4096;
  proto::fd_list fds;
  fds.push_back(mem.dup());
  auto r = client_->call_decoded(map, std::move(fds));
  ASSERT_TRUE(r.ok()) << r.err().message();
  char buf[21];
  ASSERT_EQ(::pread(mem.get(), buf, 21, 0), 21);
  EXPECT_EQ(std::string(buf, 21), "written by the device");

  proto::unique_fd efd(::eventfd(0, EFD_CLOEXEC));
  proto::set_irqs_request irq;
  irq.flags = proto::irq_set_flags::data_eventfd | proto::irq_set_flags::action_trigger;
  irq.index = proto::irq_index::msix;
  irq.count = 1;
  proto::fd_list ifds;
  ifds.push_back(efd.dup());
  ASSERT_TRUE(client_->call_decoded(irq, std::move(ifds)).ok());
  uint64_t v = 0;
  ASSERT_EQ(::read(efd.get(), &v, 8), 8);
  EXPECT_EQ(v, 1u);
}

TEST_F(BrokerTest, UnexpectedAndDuplicateRepliesAreDroppedWithoutDesync) {
  auto [a, b] = test::socket_pair();
  test::raw_peer server(std::move(b));
  std::thread srv([&] {
    auto v = server.recv();
    proto::version_reply vr;
    vr.caps_json = "{\"capabilities\":{}}";
    server.send(vr, v->hdr().msg_id);
    auto req = server.recv();
    auto id = req->hdr().msg_id;
    proto::region_read_reply rep{rr(0, 1), {0xaa}};
    server.send(rep, uint16_t(id + 100));  // nobody asked for this id
    server.send(rep, id);                  // the real reply
    server.send(rep, id);                  // a duplicate
    auto req2 = server.recv();
    rep.data = {0xbb};
    server.send(rep, req2->hdr().msg_id);
  });
  auto ep = endpoint::connect_fd(*rt_, std::move(a));
  ASSERT_TRUE(ep.ok());
  client_ = std::move(ep.value());
  auto r1 = client_->call_decoded(rr(0, 1));
  ASSERT_TRUE(r1.ok());
  EXPECT_EQ(std::get<proto::region_read_reply>(*r1).data[0], 0xaa);
  auto r2 = client_->call_decoded(rr(0, 1));
  ASSERT_TRUE(r2.ok()) << r2.err().message();
  EXPECT_EQ(std::get<proto::region_read_reply>(*r2).data[0], 0xbb);
  srv.join();
  EXPECT_NE(client_->stats().find("unexpected=2"), std::string::npos) << client_->stats();
}

TEST_F(BrokerTest, ReplyForAnotherCommandFailsTheRequest) {
  auto [a, b] = test::socket_pair();
  test::raw_peer server(std::move(b));
  std::thread srv([&] {
    auto v = server.recv();
    proto::version_reply vr;
    server.send(vr, v->hdr().msg_id);
    auto req = server.recv();
    server.send(proto::reset_reply{}, req->hdr().msg_id);
  });
  client_ = std::move(endpoint::connect_fd(*rt_, std::move(a)).value());
  auto r = client_->call(rr(0, 1));
  srv.join();
  EXPECT_EQ(r.failure().code, errc::protocol_violation);
}

TEST_F(BrokerTest, TimeoutCompletesAndLateReplyIsDropped) {
  auto [a, b] = test::socket_pair();
  test::raw_peer server(std::move(b));
  std::thread srv([&] {
    auto v = server.recv();
    server.send(proto::version_reply{}, v->hdr().msg_id);
  });
  client_ = std::move(endpoint::connect_fd(*rt_, std::move(a)).value());
  srv.join();
  auto r = client_->call(rr(0, 1), {}, 50ms);
  EXPECT_EQ(r.failure().code, errc::timeout);
  EXPECT_EQ(r.failure().errnum, ETIMEDOUT);
  auto late = server.recv();
  ASSERT_TRUE(late);
  server.send(proto::region_read_reply{rr(0, 1), {1}}, late->hdr().msg_id);  // too late
  std::thread srv2([&] {
    auto req = server.recv();
    server.send(proto::region_read_reply{rr(0, 1), {2}}, req->hdr().msg_id);
  });
  auto r2 = client_->call_decoded(rr(0, 1));
  srv2.join();
  ASSERT_TRUE(r2.ok()) << r2.err().message();
  EXPECT_EQ(std::get<proto::region_read_reply>(*r2).data[0], 2);
}

// call_many puts a whole group on the wire before it waits: the peer sees all 16 requests of
// a group before it answers any, answers them in reverse order and fails one, and every
// caller-side result still lines up with its own request.
TEST_F(BrokerTest, CallManyPipelinesAGroupAndMatchesOutOfOrderReplies) {
  auto [a, b] = test::socket_pair();
  test::raw_peer server(std::move(b));
  constexpr int group = 16, total = 40;
  std::atomic<int> largest_batch{0};
  std::thread srv([&] {
    auto v = server.recv();
    server.send(proto::version_reply{}, v->hdr().msg_id);
    for (int done = 0; done < total;) {
      std::vector<proto::frame> got;
      int want = std::min(group, total - done);
      for (int i = 0; i < want; ++i) got.push_back(*server.recv());
      largest_batch = std::max(largest_batch.load(), int(got.size()));
      for (auto it = got.rbegin(); it != got.rend(); ++it) {
        auto m = proto::decode(*it);
        auto& r = std::get<proto::region_read_request>(*m);
        if (r.offset == 7) {
          server.send_bytes(proto::make_error_reply(it->hdr(), EIO).bytes.data(), proto::header_size);
          continue;
        }
        server.send(proto::region_read_reply{r, {uint8_t(r.offset), uint8_t(r.offset >> 8)}}, it->hdr().msg_id);
      }
      done += want;
    }
  });
  endpoint_config cfg;
  cfg.correlation.max_outstanding = group;
  client_ = std::move(endpoint::connect_fd(*rt_, std::move(a), cfg).value());
  std::vector<proto::message> reqs;
  for (int i = 0; i < total; ++i) reqs.push_back(rr(uint64_t(i) * 3 + 1, 2));
  reqs[2] = rr(7, 2);  // fails
  auto res = client_->call_many(reqs);
  srv.join();
  ASSERT_EQ(res.size(), size_t(total));
  EXPECT_EQ(largest_batch.load(), group) << "the group was not in flight at once";
  for (int i = 0; i < total; ++i) {
    SCOPED_TRACE("request " + std::to_string(i));
    auto& want = std::get<proto::region_read_request>(reqs[size_t(i)]);
    if (want.offset == 7) {
      EXPECT_EQ(res[size_t(i)].failure().errnum, EIO);
      continue;
    }
    ASSERT_TRUE(res[size_t(i)].ok()) << res[size_t(i)].failure().message();
    auto m = proto::decode(*res[size_t(i)].reply);
    auto& rep = std::get<proto::region_read_reply>(*m);
    EXPECT_EQ(rep.offset, want.offset);
    EXPECT_EQ(rep.data, (std::vector<uint8_t>{uint8_t(want.offset), uint8_t(want.offset >> 8)}));
  }
}

// Hosts whose handlers block run a separate io thread and several CAF workers
// (runtime_options::single_loop = false): the same traffic works there, single calls,
// batches and posted writes, with every reply matched to its request.
TEST_F(BrokerTest, SeparateIoThreadModeServesTheSameTraffic) {
  runtime_options opts;
  opts.single_loop = false;
  opts.workers = 2;
  restart_runtime(opts);
  start_pair(pattern_device);
  for (uint64_t i = 0; i < 200; ++i) {
    auto r = client_->call_decoded(rr(i, 4));
    ASSERT_TRUE(r.ok()) << r.err().message();
    EXPECT_EQ(std::get<proto::region_read_reply>(*r).data,
              (std::vector<uint8_t>{uint8_t(i), uint8_t(i + 1), uint8_t(i + 2), uint8_t(i + 3)}));
  }
  std::vector<proto::message> batch;
  for (uint64_t i = 0; i < 32; ++i) batch.push_back(rr(i * 2, 1));
  auto res = client_->call_many(batch);
  for (size_t i = 0; i < res.size(); ++i) {
    ASSERT_TRUE(res[i].ok()) << res[i].failure().message();
    auto m = proto::decode(*res[i].reply);
    ASSERT_TRUE(m.ok());
    EXPECT_EQ(std::get<proto::region_read_reply>(*m).data[0], uint8_t(i * 2));
  }
  for (int i = 0; i < 50; ++i) client_->post_noreply(proto::region_write_request{{0, 0, 1}, {1}});
  EXPECT_TRUE(client_->call_decoded(rr(9, 1)).ok());
  EXPECT_NE(client_->stats().find("frames_in=234"), std::string::npos) << client_->stats();
}

// A loop that polls (runtime_options::poll_max_ns, as vfu-serve runs) reads the socket that
// was just active directly, without a readiness event: requests that arrive while it polls
// are caught there. Served the same: every reply in order, fds passed, and a peer's last
// requests followed at once by its half-close still get their replies and then the close
// (the readiness wait stays armed while the loop reads without it).
TEST_F(BrokerTest, PollingLoopReadsDirectlyAndStillSeesEveryByteAndTheClose) {
  restart_runtime(polling(1000000));  // 1 ms: the peer's next request comes well within it
  ASSERT_EQ(rt_->poll_max_ns(), 1000000);
  auto fd = start_server(pattern_device);
  test::raw_peer peer(std::move(fd));
  ASSERT_TRUE(peer.version());
  ASSERT_NO_FATAL_FAILURE(raw_reads(peer, 0, 2000));
  auto st = event_loop::stats(rt_->system());
  ASSERT_TRUE(st);
  EXPECT_GT(st->caught, 0u) << "no request was caught while polling";
  EXPECT_GT(st->direct_reads, 0u) << "the active socket was never read directly";
  // Last requests and EOF together.
  std::vector<uint8_t> burst;
  for (uint16_t id = 1; id <= 8; ++id) {
    auto f = proto::make_frame(id, rr(id, 1));
    burst.insert(burst.end(), f.bytes.begin(), f.bytes.end());
  }
  ASSERT_TRUE(peer.send_bytes(burst.data(), burst.size()));
  ASSERT_EQ(::shutdown(peer.fd(), SHUT_WR), 0);
  for (uint16_t id = 1; id <= 8; ++id) {
    auto r = peer.recv();
    ASSERT_TRUE(r) << "reply " << id;
    EXPECT_EQ(r->hdr().msg_id, id);
  }
  EXPECT_TRUE(peer.wait_eof()) << "the server did not close after the peer's EOF";
}

// A polling loop watches every socket in a level-triggered epoll set of its own
// (event_loop::watch): one look finds all the ready ones, and no socket ever arms a wait of
// its own (Asio re-arms one with an epoll_ctl each time: once a request at 1 in flight
// without polling, and about once a request with many busy sockets). It still reads the
// socket that was just active directly while it polls.
TEST_F(BrokerTest, PollingLoopWatchesSocketsInItsOwnSetAndArmsNoWaits) {
  restart_runtime(polling(1000000));
  auto fd = start_server(pattern_device);
  test::raw_peer peer(std::move(fd));
  ASSERT_TRUE(peer.version());
  auto counter = [&](const char* key) { return test::stat_value(server_->stats(), key); };
  auto st0 = event_loop::stats(rt_->system());
  ASSERT_TRUE(st0);
  int64_t armed0 = counter("waits_armed");
  ASSERT_GE(armed0, 0);
  for (uint16_t i = 0; i < 1000; ++i) {
    ASSERT_TRUE(peer.send(rr(i, 2), i));
    auto r = peer.recv();
    ASSERT_TRUE(r);
    ASSERT_EQ(r->hdr().msg_id, i);
    if (i % 100 == 99) std::this_thread::sleep_for(3ms);  // (past the window: the loop sleeps)
  }
  auto st1 = event_loop::stats(rt_->system());
  EXPECT_EQ(counter("waits_armed"), 0) << "armed " << counter("waits_armed") << " waits of its own";
  EXPECT_GT(st1->blocked, st0->blocked);  // and it slept, and woke for the next request
  EXPECT_GT(st1->direct_reads, st0->direct_reads);
}

// The polling loop's table of the sockets it watches forgets the ones that closed: a
// server that a client reconnects to 300 times holds a bounded table, not one entry (and
// the memory of one transport) per connection it ever had.
TEST_F(BrokerTest, ThePollingLoopForgetsTheSocketsOfEndedConnections) {
  restart_runtime(polling(200000));
  for (int i = 0; i < 300; ++i) {
    auto fd = start_server(pattern_device);
    test::raw_peer peer(std::move(fd));
    ASSERT_TRUE(peer.version()) << "connection " << i;
    server_.reset();
  }
  auto st = event_loop::stats(rt_->system());
  ASSERT_TRUE(st);
  EXPECT_GT(st->watched, 0u);
  EXPECT_LE(st->watched, 130u);
}

// A client whose runtime polls: the loop's own set watches its socket, and a calling thread
// still reads its own replies (it takes EPOLLIN out of that set while it leads, and puts it
// back), with posted writes and replies the loop reads in between. (Each call comes once
// the loop has read the posted write's reply and stopped polling: a call leads only if
// the loop is not reading at that moment, and a loop preempted in the middle of a read
// would otherwise decide the count.)
TEST_F(BrokerTest, CallersLeadOnASocketThePollingLoopWatches) {
  runtime crt({}, polling(1000000));
  auto ep = client_on(crt, {});
  ASSERT_TRUE(ep);
  constexpr uint64_t calls = 200;
  calls_with_posts_between(*ep, calls, 2ms);
  auto stats = ep->stats();
  EXPECT_EQ(test::stat_value(stats, "waits_armed"), 0) << stats;
  EXPECT_GE(uint64_t(test::stat_value(stats, "leader_caught") + test::stat_value(stats, "leader_slept")), calls / 2)
      << stats;
  ep->close();
}

// A device that answers `delay` after it is asked (from a timer, as a device waiting for
// its backend would). (An argument, so that CAF 0.17 does not spawn it argument-less: its
// init_fun_factory then dereferences a null pointer, which UBSan reports.)
struct slow_state {
  std::vector<std::pair<caf::response_promise, inbound_ptr>> held;
};
caf::behavior slow_device(caf::stateful_actor<slow_state>* self, std::chrono::milliseconds delay) {
  return {
      [=](inbound_atom, inbound_ptr& in) -> caf::result<outbound_ptr> {
        auto rp = self->make_response_promise<outbound_ptr>();
        self->state.held.emplace_back(rp, in);
        self->delayed_send(self, delay, deliver_atom::value);
        return rp;
      },
      [=](deliver_atom) {
        for (auto& [rp, in] : self->state.held) rp.deliver(answer(*in, outbound::error(EAGAIN)));
        self->state.held.clear();
      },
      [](connup_atom, const proto::negotiated&) {},
      [](connlost_atom) {},
  };
}

// A connection that stopped reading at the peer's EOF, while its last request is still
// being answered, leaves the polling loop's level-triggered set: its socket stays readable
// (the EOF) until it closes, and every look would find it ready, so the idle loop would
// wake from each sleep at once for as long as the device takes.
TEST_F(BrokerTest, AConnectionWaitingToAnswerAfterTheEofLetsThePollingLoopSleep) {
  restart_runtime(polling(200000));
  auto [a, b] = test::socket_pair();
  auto ep = endpoint::serve_fd(*rt_, std::move(a), {}, rt_->system().spawn(slow_device, 400ms));
  ASSERT_TRUE(ep.ok());
  server_ = std::move(ep.value());
  test::raw_peer peer(std::move(b));
  ASSERT_TRUE(peer.version());
  ASSERT_TRUE(peer.send(rr(0, 2), 1));
  ::shutdown(peer.fd(), SHUT_WR);
  std::this_thread::sleep_for(50ms);  // (the EOF is read; the answer is 350 ms away)
  auto st0 = event_loop::stats(rt_->system());
  ASSERT_TRUE(st0);
  std::this_thread::sleep_for(250ms);
  auto st1 = event_loop::stats(rt_->system());
  EXPECT_LT(st1->blocked - st0->blocked, 30u) << "the idle loop woke " << st1->blocked - st0->blocked << " times in 250 ms";
  auto r = peer.recv();  // and the answer still comes, then the close
  ASSERT_TRUE(r);
  EXPECT_EQ(r->hdr().msg_id, 1);
  EXPECT_TRUE(peer.wait_eof());
}

// A loop that does not poll waits on a server's socket in Asio's reactor itself (one
// readiness layer), and hands the socket to the private set the first time a caller wants
// to read its own reply there: that call waits for the loop, every later one leads. (In the
// reactor, the loop would be woken for the caller's reply as well.)
TEST_F(BrokerTest, ALoopThatDoesNotPollWaitsOnTheSocketItselfUntilACallerLeads) {
  restart_runtime(polling(0));
  auto client_mem = [](inbound& in) -> outbound_ptr {
    if (auto* r = std::get_if<proto::dma_read_request>(&in.msg))
      return outbound::of(proto::dma_read_reply{*r, std::vector<uint8_t>(r->count, uint8_t(r->addr))});
    return outbound::error(EINVAL);
  };
  endpoint_config one_socket;  // (the server's requests on the socket its stats describe)
  one_socket.client_caps.twin_socket = false;
  start_pair(pattern_device, client_mem, one_socket);
  ASSERT_TRUE(server_->wait_state(conn_state::ready, 5s));
  for (uint64_t i = 0; i < 50; ++i) ASSERT_TRUE(client_->call_decoded(rr(i, 4)).ok());
  auto counter = [&](const char* key) { return test::stat_value(server_->stats(), key); };
  EXPECT_EQ(counter("direct"), 1) << server_->stats();
  constexpr int calls = 50;
  for (int i = 0; i < calls; ++i) {
    proto::dma_read_request d;
    d.addr = uint64_t(i);
    d.count = 8;
    auto r = server_->call_decoded(d);
    ASSERT_TRUE(r.ok()) << "call " << i << ": " << r.err().message();
    EXPECT_EQ(std::get<proto::dma_read_reply>(*r).data, std::vector<uint8_t>(8, uint8_t(i)));
    if (i % 10 == 9) {
      ASSERT_TRUE(client_->call_decoded(rr(uint64_t(i), 4)).ok());  // the loop still reads
    }
  }
  EXPECT_EQ(counter("direct"), 0) << server_->stats();
  EXPECT_GE(counter("leader_caught") + counter("leader_slept"), calls / 2) << server_->stats();
}

// A loop that does not poll waits on a lone socket in Asio's reactor, and takes it into its
// own level-triggered set when a second socket comes (one wait for both from then on, no
// wait armed per request); both are served throughout, and a third joins the set at once.
TEST_F(BrokerTest, ALoopThatDoesNotPollWatchesItsSocketsInItsOwnSetOnceItReadsMoreThanOne) {
  restart_runtime(polling(0));
  auto counter = [](endpoint& e, const char* key) { return test::stat_value(e.stats(), key); };
  test::raw_peer p1(start_server(pattern_device));
  auto first = std::move(server_);
  ASSERT_TRUE(p1.version());
  ASSERT_NO_FATAL_FAILURE(raw_reads(p1, 1, 50));
  EXPECT_EQ(counter(*first, "direct"), 1) << first->stats();
  auto st = event_loop::stats(rt_->system());
  ASSERT_TRUE(st);
  EXPECT_EQ(st->watched, 0u);

  test::raw_peer p2(start_server(pattern_device));
  auto second = std::move(server_);
  ASSERT_TRUE(p2.version());
  EXPECT_EQ(counter(*first, "direct"), 0) << first->stats();
  EXPECT_EQ(counter(*second, "direct"), 0) << second->stats();
  st = event_loop::stats(rt_->system());
  ASSERT_TRUE(st);
  EXPECT_EQ(st->watched, 2u);
  int64_t armed1 = counter(*first, "waits_armed"), armed2 = counter(*second, "waits_armed");
  for (uint16_t k = 0; k < 4; ++k) {
    ASSERT_NO_FATAL_FAILURE(raw_reads(p1, uint16_t(100 + 50 * k), 50));
    ASSERT_NO_FATAL_FAILURE(raw_reads(p2, uint16_t(100 + 50 * k), 50));
  }
  EXPECT_EQ(counter(*first, "waits_armed"), armed1) << first->stats();
  EXPECT_EQ(counter(*second, "waits_armed"), armed2) << second->stats();

  first.reset();  // (its socket leaves the set before it closes)
  ASSERT_NO_FATAL_FAILURE(raw_reads(p2, 400, 50));
  test::raw_peer p3(start_server(pattern_device));
  ASSERT_TRUE(p3.version());
  EXPECT_EQ(counter(*server_, "direct"), 0) << server_->stats();
  ASSERT_NO_FATAL_FAILURE(raw_reads(p3, 1, 50));
  ASSERT_NO_FATAL_FAILURE(raw_reads(p2, 500, 50));
}

// runtime_options::poll_max_ns = -1 (the default) takes VFU_POLL_MAX_NS; a value that is
// not a number of nanoseconds in range is ignored (with a warning), not half-parsed.
TEST_F(BrokerTest, PollingDefaultComesFromTheEnvironmentAndBadValuesAreIgnored) {
  const char* old = std::getenv("VFU_POLL_MAX_NS");
  std::string saved = old ? old : "";
  rt_.reset();
  for (auto [value, want] : std::vector<std::pair<const char*, int64_t>>{
           {"20000", 20000}, {"0", 0}, {"12abc", 0}, {"-1", 0}, {"", 0}, {"2000000000", 0}}) {
    SCOPED_TRACE(value);
    ::setenv("VFU_POLL_MAX_NS", value, 1);
    runtime r;
    EXPECT_EQ(r.poll_max_ns(), want);
  }
  runtime_options explicit_opts;
  explicit_opts.poll_max_ns = 777;  // an explicit value wins over the environment
  {
    runtime r({}, explicit_opts);
    EXPECT_EQ(r.poll_max_ns(), 777);
  }
  if (old) ::setenv("VFU_POLL_MAX_NS", saved.c_str(), 1);
  else ::unsetenv("VFU_POLL_MAX_NS");
  rt_ = std::make_unique<runtime>();
}

// Without polling the loop always blocks in epoll when idle, and never reads directly.
TEST_F(BrokerTest, LoopWithoutPollingNeverPolls) {
  restart_runtime(polling(0));
  start_pair(pattern_device);
  for (uint64_t i = 0; i < 200; ++i) ASSERT_TRUE(client_->call_decoded(rr(i, 4)).ok());
  auto st = event_loop::stats(rt_->system());
  ASSERT_TRUE(st);
  EXPECT_EQ(st->caught, 0u);
  EXPECT_EQ(st->direct_reads, 0u);
}

// A thread blocked in call() reads its own reply (caller_reads, the default): the event
// loop is not woken for it (fewer than 30 idle waits in 300 calls; about 300 otherwise). With caller_reads off, the loop reads every reply and wakes
// the caller. The client has a runtime of its own here, so its loop's counters are its own.
TEST_F(BrokerTest, CallerReadsItsOwnReplyWithoutWakingTheLoop) {
  for (bool caller_reads : {true, false}) {
    SCOPED_TRACE(caller_reads ? "caller_reads" : "loop reads");
    runtime crt({}, polling(0));
    endpoint_config cfg;
    cfg.caller_reads = caller_reads;
    auto ep = client_on(crt, cfg);
    ASSERT_TRUE(ep);
    auto before = event_loop::stats(crt.system());
    ASSERT_TRUE(before);
    constexpr uint64_t calls = 300;
    for (uint64_t i = 0; i < calls; ++i) {
      auto r = ep->call_decoded(rr(i, 4));
      ASSERT_TRUE(r.ok()) << r.err().message();
      EXPECT_EQ(std::get<proto::region_read_reply>(*r).data,
                (std::vector<uint8_t>{uint8_t(i), uint8_t(i + 1), uint8_t(i + 2), uint8_t(i + 3)}));
    }
    auto after = event_loop::stats(crt.system());
    uint64_t wakes = after->idle - before->idle;
    if (caller_reads) {
      EXPECT_LT(wakes, calls / 10) << "the loop woke for the callers' replies";
    } else {
      // Nearly one per reply (a reply that arrives while the loop is still busy is read
      // without the loop going idle first).
      EXPECT_GE(wakes, calls / 2) << "the loop should have read the replies";
    }
    ep->close();
    ep.reset();
    server_.reset();
  }
}

// A caller reading its own reply polls the socket before it sleeps (caller_poll_max_ns):
// once its adaptive window has grown past the round trip, replies are caught without a
// sleep. With 0, or VFU_CALLER_POLL_MAX_NS=0 and the default, every wait sleeps; an
// explicit value wins over the environment.
TEST_F(BrokerTest, CallerPollsForItsReplyBeforeItSleeps) {
  const char* old = std::getenv("VFU_CALLER_POLL_MAX_NS");
  std::string saved = old ? old : "";
  struct setting {
    const char* env;  // nullptr: unset
    int64_t max_ns;
    bool polls;
  };
  for (auto [env, max_ns, polls] : std::vector<setting>{{nullptr, 1000000000, true},
                                                        {nullptr, 0, false},
                                                        {"0", -1, false},
                                                        {"1000000000", -1, true},
                                                        {"0", 1000000000, true}}) {
    SCOPED_TRACE(std::string("env ") + (env ? env : "unset") + ", caller_poll_max_ns " + std::to_string(max_ns));
    if (env) ::setenv("VFU_CALLER_POLL_MAX_NS", env, 1);
    else ::unsetenv("VFU_CALLER_POLL_MAX_NS");
    runtime crt({}, polling(0));
    endpoint_config cfg;
    cfg.caller_poll_max_ns = max_ns;
    auto ep = client_on(crt, cfg);
    ASSERT_TRUE(ep);
    constexpr uint64_t calls = 200;
    // (A posted request with a reply still outstanding does not stop the caller polling:
    // only threads waiting for replies count.)
    calls_with_posts_between(*ep, calls);
    auto stats = ep->stats();
    int64_t caught = test::stat_value(stats, "leader_caught"), slept = test::stat_value(stats, "leader_slept");
    ASSERT_GE(caught, 0) << stats;
    ASSERT_GE(slept, 0) << stats;
    // A call leads unless the loop is reading at that moment (a posted request's reply
    // that came between two calls): then it waits on its slot and is not counted.
    EXPECT_LE(uint64_t(caught + slept), calls) << stats;
    if (polls) {
      // The window starts at 0 and doubles from 4 us per wait that needed more; some
      // waits may sleep (a preempted server), not most of them.
      EXPECT_GE(uint64_t(caught), calls / 4) << stats;
      EXPECT_GT(caught, 2 * slept) << stats;
    } else {
      EXPECT_EQ(caught, 0) << stats;
      EXPECT_GE(uint64_t(slept), calls / 4) << stats;
    }
    ep->close();
    ep.reset();
    server_.reset();
  }
  if (old) ::setenv("VFU_CALLER_POLL_MAX_NS", saved.c_str(), 1);
  else ::unsetenv("VFU_CALLER_POLL_MAX_NS");
}

// A caller blocked reading its own reply (the server never answers) fails at once when the
// endpoint is closed from another thread: it does not wait out its 60 s timeout.
TEST_F(BrokerTest, CloseWhileACallerReadsFailsItsCallAtOnce) {
  auto [a, b] = test::socket_pair();
  test::raw_peer server(std::move(b));
  std::atomic<bool> got_request{false};
  std::thread srv([&] {
    auto v = server.recv();
    ASSERT_TRUE(v);
    server.send(proto::version_reply{}, v->hdr().msg_id);
    if (server.recv()) got_request = true;  // and no reply, ever
    server.wait_eof(30s);
  });
  endpoint_config cfg;
  cfg.correlation.short_timeout = 60s;
  auto ep = endpoint::connect_fd(*rt_, std::move(a), cfg);
  ASSERT_TRUE(ep.ok());
  call_result r;
  std::thread caller([&] { r = (*ep)->call(rr(0, 4)); });
  for (auto until = std::chrono::steady_clock::now() + 30s; !got_request && std::chrono::steady_clock::now() < until;)
    std::this_thread::yield();
  EXPECT_TRUE(got_request);
  (*ep)->close();
  caller.join();
  srv.join();
  ASSERT_TRUE(r.failure());
  EXPECT_NE(r.failure().code, errc::timeout) << r.failure().message();
}

// A caller that reads its own reply receives a large REGION_READ reply's data straight into
// its buffer (reply_landing), however the peer splits the frame; what did not land (none,
// or the part read before the header was known) is in the frame. Replies that do not match
// the landing (another size, an error) are delivered whole, and the stream stays in sync.
TEST_F(BrokerTest, BulkReplyDataLandsInTheCallersBuffer) {
  constexpr uint32_t len = 256 * 1024;
  auto [a, b] = test::socket_pair();
  test::raw_peer server(std::move(b));
  // Round 0 and 2: the reply in uneven pieces. Round 1: a reply of another size (not landed,
  // rejected by the caller). Round 3: an error reply.
  std::thread srv([&] {
    auto v = server.recv();
    ASSERT_TRUE(v);
    server.send(proto::version_reply{}, v->hdr().msg_id);
    for (int round = 0; round < 4; ++round) {
      auto req = server.recv();
      ASSERT_TRUE(req);
      auto m = proto::decode(*req);
      ASSERT_TRUE(m.ok());
      auto acc = std::get<proto::region_read_request>(*m);
      if (round == 3) {
        server.send(proto::make_error_reply(req->hdr(), EIO));
        continue;
      }
      proto::region_read_reply rep{acc, {}};
      rep.data.resize(round == 1 ? acc.count / 2 : acc.count);
      for (size_t i = 0; i < rep.data.size(); ++i) rep.data[i] = uint8_t(i * 7 + round);
      auto f = proto::make_frame(req->hdr().msg_id, rep);
      size_t cuts[] = {10, 40, 1000, 70000, f.bytes.size()};
      size_t at = 0;
      for (size_t c : cuts) {
        ASSERT_TRUE(server.send_bytes(f.bytes.data() + at, std::min(c, f.bytes.size()) - at));
        at = std::min(c, f.bytes.size());
      }
    }
    server.wait_eof(30s);
  });
  // A client runtime that does not poll: its loop then never holds the read lock when the
  // caller starts to lead (a polling loop may, and the caller then waits for the loop).
  runtime crt({}, polling(0));
  auto ep = endpoint::connect_fd(crt, std::move(a));
  ASSERT_TRUE(ep.ok());
  for (int round = 0; round < 4; ++round) {
    SCOPED_TRACE("round " + std::to_string(round));
    proto::region_access acc{uint64_t(round) * len, 1, len};
    std::vector<uint8_t> buf(len, 0xee);
    reply_landing land;
    land.frame_offset = proto::header_size + proto::region_access_size;
    land.dest = buf.data();
    land.len = len;
    auto r = (*ep)->call_frame(proto::make_region_frame(0, proto::command::region_read, false, acc),
                               std::chrono::milliseconds(0), &land);
    if (round == 3) {
      ASSERT_TRUE(r.failure());
      EXPECT_EQ(land.from, land.to) << "an error reply landed";
      continue;
    }
    ASSERT_TRUE(r.ok()) << r.failure().message();
    const uint8_t* data = proto::region_read_reply_data(*r.reply, acc);
    if (round == 1) {
      EXPECT_EQ(data, nullptr) << "a reply of the wrong size was accepted";
      EXPECT_EQ(land.from, land.to) << "a reply of the wrong size landed";
      continue;
    }
    ASSERT_NE(data, nullptr);
    EXPECT_EQ(land.to - land.from, len) << "the data did not all land in the caller's buffer";
    EXPECT_LE(land.to, len);
    std::memcpy(buf.data(), data, land.from);
    std::memcpy(buf.data() + land.to, data + land.to, len - land.to);
    size_t bad = 0;
    for (size_t i = 0; i < len; ++i) bad += buf[i] != uint8_t(i * 7 + round);
    EXPECT_EQ(bad, 0u) << "landed from " << land.from << " to " << land.to;
  }
  (*ep)->close();
  ep->reset();
  srv.join();
}

// The negotiated frame limit is in force on the socket before the client reports "ready":
// a large reply to the very first call after connecting is accepted. (It used to reach the
// transport only through the socket actor's mailbox, and a first reply that came before it
// was drained as oversized, so the call timed out.) A polling loop widens that window.
TEST_F(BrokerTest, FirstLargeReplyAfterConnectIsAccepted) {
  restart_runtime(polling(1000000));
  constexpr uint32_t len = 64 * 1024;  // well over the limit before VERSION
  for (int round = 0; round < 30; ++round) {
    SCOPED_TRACE("round " + std::to_string(round));
    auto [a, b] = test::socket_pair();
    test::raw_peer server(std::move(b));
    std::thread srv([&] {
      auto v = server.recv();
      if (!v) return;
      server.send(proto::version_reply{}, v->hdr().msg_id);
      auto req = server.recv();
      if (!req) return;
      auto m = proto::decode(*req);
      if (!m) return;
      proto::region_read_reply rep{std::get<proto::region_read_request>(*m), std::vector<uint8_t>(len, 0x3c)};
      server.send(rep, req->hdr().msg_id);
      server.wait_eof(30s);
    });
    endpoint_config cfg;
    cfg.correlation.short_timeout = 5s;  // the race lost: a timeout
    cfg.caller_reads = round % 2 == 0;
    auto ep = endpoint::connect_fd(*rt_, std::move(a), cfg);
    ASSERT_TRUE(ep.ok());
    auto r = (*ep)->call_decoded(rr(0, len));
    EXPECT_TRUE(r.ok()) << r.err().message();
    if (r.ok()) {
      EXPECT_EQ(std::get<proto::region_read_reply>(*r).data.size(), len);
    }
    (*ep)->close();
    ep->reset();
    srv.join();
  }
}

TEST_F(BrokerTest, ErrorReplyCarriesThePeersErrno) {
  start_pair(pattern_device);
  auto r = client_->call_decoded(proto::reset_request{});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.err().code, errc::remote_error);
  EXPECT_EQ(r.err().errnum, ENOTSUP);
}

TEST_F(BrokerTest, PeerDeathAtEveryByteOfAReplyFailsPendingAtOnce) {
  auto reply = proto::make_frame(0, proto::region_read_reply{rr(0, 8), std::vector<uint8_t>(8, 7)});
  for (size_t cut = 0; cut < reply.bytes.size(); ++cut) {
    SCOPED_TRACE("cut at byte " + std::to_string(cut));
    auto [a, b] = test::socket_pair();
    test::raw_peer server(std::move(b));
    std::thread srv([&] {
      auto v = server.recv();
      server.send(proto::version_reply{}, v->hdr().msg_id);
      auto req = server.recv();
      auto f = proto::make_frame(req->hdr().msg_id, proto::region_read_reply{rr(0, 8), std::vector<uint8_t>(8, 7)});
      server.send_bytes(f.bytes.data(), cut);
      server.close();
    });
    endpoint_config cfg;
    cfg.correlation.short_timeout = 60s;  // a timeout would mean the death went unnoticed
    auto ep = endpoint::connect_fd(*rt_, std::move(a), cfg);
    ASSERT_TRUE(ep.ok());
    auto r = (*ep)->call(rr(0, 8));
    srv.join();
    EXPECT_EQ(r.failure().code, errc::peer_gone) << r.failure().message();
    EXPECT_TRUE((*ep)->wait_state(conn_state::closed, 5s));
  }
}

TEST_F(BrokerTest, OversizedRequestGetsE2bigAndTheStreamStaysInSync) {
  endpoint_config cfg;
  cfg.offer.max_data_xfer_size = 4096;
  test::raw_peer peer(start_server(pattern_device, cfg));
  ASSERT_TRUE(peer.version());
  proto::region_write_request w;
  w.count = 64 * 1024;
  w.data.assign(w.count, 0x5a);
  ASSERT_TRUE(peer.send(w, 1));
  auto e = peer.recv();
  ASSERT_TRUE(e);
  EXPECT_TRUE(e->hdr().is_error());
  EXPECT_EQ(e->hdr().error_no, uint32_t(E2BIG));
  ASSERT_TRUE(peer.send(rr(5, 1), 2));
  auto ok = peer.recv();
  ASSERT_TRUE(ok);
  EXPECT_FALSE(ok->hdr().is_error());
  EXPECT_EQ(ok->hdr().msg_id, 2);
}

// A device that holds its first request until told (release_atom), then answers with
// `answer`. (An argument also spares CAF 0.17's spawn without one, which dereferences a
// null tuple: UBSan reports it.)
using release_atom = caf::atom_constant<caf::atom("release")>;
struct stall_state {
  bool released = false;
  caf::response_promise held;
  inbound_ptr held_in;
  static inline const char* name = "test.stalling-device";
};
caf::behavior stalling_device(caf::stateful_actor<stall_state>* self, handler_fn answer) {
  return {
      [=](inbound_atom, inbound_ptr& in) -> caf::result<outbound_ptr> {
        auto& st = self->state;
        if (st.released) return answer(*in);
        st.held = self->make_response_promise();
        st.held_in = in;
        return caf::delegated<outbound_ptr>{};
      },
      [=](release_atom) {
        auto& st = self->state;
        st.released = true;
        if (st.held_in) st.held.deliver(answer(*st.held_in));
      },
      [](connup_atom, const proto::negotiated&) {},
      [](connlost_atom) {},
  };
}

// Flow control: while the device holds a request, a peer that keeps sending gets at most
// about 4096 requests read and queued; then the server stops reading and the peer's writes
// block, instead of the server's memory growing. Once the device answers, everything is
// answered, in order, and nothing is left counted.
TEST_F(BrokerTest, APeerThatOutrunsItsDeviceIsStoppedNotBuffered) {
  auto [a, b] = test::socket_pair();
  auto dev = rt_->system().spawn(stalling_device, handler_fn(pattern_device));
  auto ep = endpoint::serve_fd(*rt_, std::move(a), {}, dev);
  ASSERT_TRUE(ep.ok());
  server_ = std::move(ep.value());
  test::raw_peer peer(std::move(b));
  ASSERT_TRUE(peer.version());
  auto counter = [&](const char* key) { return test::stat_value(server_->stats(), key); };
  constexpr uint16_t n = 20000;
  std::vector<uint8_t> bytes;
  for (uint16_t i = 0; i < n; ++i) {
    auto f = proto::make_frame(uint16_t(i + 2), rr(i, 4));
    bytes.insert(bytes.end(), f.bytes.begin(), f.bytes.end());
  }
  std::atomic<bool> all_sent{false};
  std::thread sender([&] {
    EXPECT_TRUE(peer.send_bytes(bytes.data(), bytes.size()));
    all_sent = true;
  });
  for (auto until = std::chrono::steady_clock::now() + 20s; counter("pauses") == 0 && std::chrono::steady_clock::now() < until;)
    std::this_thread::sleep_for(5ms);
  ASSERT_GE(counter("pauses"), 1);
  std::this_thread::sleep_for(50ms);
  EXPECT_GE(counter("unanswered"), 1);
  EXPECT_LE(counter("unanswered"), 4096 + 65536 / 32) << "requests read past the bound";
  EXPECT_FALSE(all_sent) << "the peer's writes should block while the server does not read";
  // And the loop sleeps meanwhile: the paused socket, still readable, does not wake it.
  if (auto st0 = event_loop::stats(rt_->system())) {
    std::this_thread::sleep_for(100ms);
    auto st1 = event_loop::stats(rt_->system());
    EXPECT_LT(st1->blocked - st0->blocked, 30u) << "the idle loop woke " << st1->blocked - st0->blocked << " times in 100 ms";
  }
  caf::anon_send(dev, release_atom::value);
  for (uint16_t i = 0; i < n; ++i) {
    auto r = peer.recv();
    ASSERT_TRUE(r) << "reply " << i;
    ASSERT_EQ(r->hdr().msg_id, uint16_t(i + 2));
    ASSERT_FALSE(r->hdr().is_error());
  }
  sender.join();
  EXPECT_TRUE(all_sent);
  EXPECT_EQ(counter("unanswered"), 0);
}

// A connection paused by flow control whose peer then closes lets the loop sleep: in a
// level-triggered set (a polling loop's, or the set of a loop that does not poll and reads
// two sockets) a hang-up is reported whatever the events, so the paused socket leaves the
// set until it reads again. Once the device answers, the connection ends.
TEST_F(BrokerTest, APausedConnectionWhosePeerHangsUpLetsTheLoopSleep) {
  for (bool polls : {true, false}) {
    SCOPED_TRACE(polls ? "polling loop" : "loop without polling, two sockets");
    server_.reset();
    restart_runtime(polling(polls ? 200000 : 0));
    auto [a, b] = test::socket_pair();
    auto dev = rt_->system().spawn(stalling_device, handler_fn(pattern_device));
    auto ep = endpoint::serve_fd(*rt_, std::move(a), {}, dev);
    ASSERT_TRUE(ep.ok());
    auto paused = std::move(ep.value());
    test::raw_peer peer(std::move(b));
    ASSERT_TRUE(peer.version());
    test::raw_peer other(start_server(pattern_device));  // (a second socket on the loop)
    ASSERT_TRUE(other.version());
    auto counter = [&](const char* key) { return test::stat_value(paused->stats(), key); };
    if (!polls) {
      ASSERT_EQ(counter("direct"), 0) << paused->stats();
    }
    std::vector<uint8_t> bytes;  // past the bound of 4096 unanswered, and small enough to fit
    for (uint16_t i = 0; i < 4200; ++i) {
      auto f = proto::make_frame(uint16_t(i + 2), rr(i, 4));
      bytes.insert(bytes.end(), f.bytes.begin(), f.bytes.end());
    }
    ASSERT_TRUE(peer.send_bytes(bytes.data(), bytes.size()));
    for (auto until = std::chrono::steady_clock::now() + 10s; counter("pauses") == 0 && std::chrono::steady_clock::now() < until;)
      std::this_thread::sleep_for(5ms);
    ASSERT_GE(counter("pauses"), 1);
    peer.close();
    std::this_thread::sleep_for(20ms);
    auto st0 = event_loop::stats(rt_->system());
    ASSERT_TRUE(st0);
    std::this_thread::sleep_for(200ms);
    auto st1 = event_loop::stats(rt_->system());
    EXPECT_LT(st1->blocked - st0->blocked, 30u) << "the idle loop woke " << st1->blocked - st0->blocked << " times in 200 ms";
    ASSERT_NO_FATAL_FAILURE(raw_reads(other, 1, 10));  // (the other connection is served)
    caf::anon_send(dev, release_atom::value);
    EXPECT_TRUE(paused->wait_state(conn_state::closed, 5s)) << paused->stats();
  }
}

// Commands are answered strictly in arrival order, also those that never reach the device:
// in one pipelined write, a read, a malformed request, an oversized one, a command nobody
// handles and another read get their answers in that order (the errors used to overtake
// the first read, still at its device).
TEST_F(BrokerTest, ErrorAnswersKeepTheirTurnBehindRequestsAtTheDevice) {
  endpoint_config cfg;
  cfg.offer.max_data_xfer_size = 4096;
  test::raw_peer peer(start_server(pattern_device, cfg));
  ASSERT_TRUE(peer.version());
  std::vector<uint8_t> bytes;
  auto add = [&](const proto::frame& f) { bytes.insert(bytes.end(), f.bytes.begin(), f.bytes.end()); };
  add(proto::make_frame(1, rr(10, 4)));
  // REGION_READ with a 4-byte payload: EINVAL from the codec
  bytes.insert(bytes.end(), {2, 0, 9, 0, 20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4});
  proto::region_write_request big;
  big.count = 8192;
  big.data.assign(big.count, 0x5a);
  add(proto::make_frame(3, big));  // E2BIG from the transport: more than max_data_xfer_size
  bytes.insert(bytes.end(), {4, 0, 99, 0, 16, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0});  // unknown: ENOSYS
  add(proto::make_frame(5, rr(20, 4)));
  ASSERT_TRUE(peer.send_bytes(bytes.data(), bytes.size()));
  struct { uint16_t id; uint32_t err; } want[] = {{1, 0}, {2, EINVAL}, {3, E2BIG}, {4, ENOSYS}, {5, 0}};
  for (auto& w : want) {
    auto f = peer.recv();
    ASSERT_TRUE(f) << "no reply " << w.id;
    EXPECT_EQ(f->hdr().msg_id, w.id);
    EXPECT_EQ(f->hdr().is_error(), w.err != 0) << "reply " << f->hdr().msg_id;
    EXPECT_EQ(f->hdr().error_no, w.err) << "reply " << f->hdr().msg_id;
  }
}

TEST_F(BrokerTest, MalformedRequestsGetTheRightErrno) {
  test::raw_peer peer(start_server(pattern_device));
  ASSERT_TRUE(peer.version());
  struct { std::vector<uint8_t> bytes; uint32_t err; } cases[] = {
      // unknown command 99
      {{1, 0, 99, 0, 16, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}, ENOSYS},
      // REGION_READ with a 4-byte payload
      {{2, 0, 9, 0, 20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4}, EINVAL},
      // DEVICE_RESET with a reserved flag bit
      {{3, 0, 13, 0, 16, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0}, EINVAL},
  };
  uint16_t id = 1;
  for (auto& c : cases) {
    ASSERT_TRUE(peer.send_bytes(c.bytes.data(), c.bytes.size()));
    auto f = peer.recv();
    ASSERT_TRUE(f);
    EXPECT_EQ(f->hdr().msg_id, id++);
    EXPECT_TRUE(f->hdr().is_error());
    EXPECT_EQ(f->hdr().error_no, c.err);
  }
}

TEST_F(BrokerTest, BadHeaderClosesTheConnection) {
  test::raw_peer peer(start_server(pattern_device));
  ASSERT_TRUE(peer.version());
  uint8_t bad[16] = {1, 0, 9, 0, 8, 0, 0, 0};  // msg_size 8 < 16
  ASSERT_TRUE(peer.send_bytes(bad, sizeof bad));
  EXPECT_TRUE(peer.wait_eof());
}

TEST_F(BrokerTest, FirstCommandMustBeVersion) {
  test::raw_peer peer(start_server(pattern_device));
  ASSERT_TRUE(peer.send(rr(0, 1), 1));
  auto f = peer.recv();
  ASSERT_TRUE(f);
  EXPECT_TRUE(f->hdr().is_error());
  EXPECT_TRUE(peer.wait_eof());
}

TEST_F(BrokerTest, CrossedRequestsDoNotDeadlock) {
  // The server answers REGION_READ only after its own DMA_READ to the client completed,
  // while the client's thread is blocked on the REGION_READ.
  auto [a, b] = test::socket_pair();
  struct crossing_state {};
  // (An argument, because CAF 0.17 mishandles argument-less function spawns under UBSan.)
  auto dev = rt_->system().spawn([](caf::event_based_actor* self, int) -> caf::behavior {
    return {
        [=](inbound_atom, inbound_ptr& in) -> caf::result<outbound_ptr> {
          auto* r = std::get_if<proto::region_read_request>(&in->msg);
          if (!r) return outbound::error(ENOTSUP);
          auto rp = self->make_response_promise<outbound_ptr>();
          proto::dma_read_request d;
          d.addr = 0x1000;
          d.count = r->count;
          auto req = *r;
          self->request(in->correlation, caf::infinite, request_atom::value,
                        make_frame_ptr(proto::make_frame(0, d)), uint32_t(0))
              .then([=](call_result& cr) mutable {
                if (cr.failure()) {
                  rp.deliver(outbound::error(EIO));
                  return;
                }
                auto m = proto::decode(*cr.reply);
                auto& dr = std::get<proto::dma_read_reply>(*m);
                rp.deliver(outbound::of(proto::region_read_reply{req, dr.data}));
              });
          return rp;
        },
        [](connup_atom, const proto::negotiated&) {},
        [](connlost_atom) {},
    };
  }, 0);
  auto ep = endpoint::serve_fd(*rt_, std::move(a), {}, dev);
  ASSERT_TRUE(ep.ok());
  server_ = std::move(ep.value());
  auto mem = spawn_handler(rt_->system(), [](inbound& in) -> outbound_ptr {
    auto& d = std::get<proto::dma_read_request>(in.msg);
    return outbound::of(proto::dma_read_reply{d, std::vector<uint8_t>(d.count, 0x42)});
  });
  client_ = std::move(endpoint::connect_fd(*rt_, std::move(b), {}, mem).value());
  auto r = client_->call_decoded(rr(0, 16));
  ASSERT_TRUE(r.ok()) << r.err().message();
  EXPECT_EQ(std::get<proto::region_read_reply>(*r).data, std::vector<uint8_t>(16, 0x42));
}

TEST_F(BrokerTest, BackPressureBoundsOutstandingRequests) {
  auto [a, b] = test::socket_pair();
  test::raw_peer server(std::move(b));
  std::thread srv([&] {
    auto v = server.recv();
    server.send(proto::version_reply{}, v->hdr().msg_id);
  });
  endpoint_config cfg;
  cfg.correlation.max_outstanding = 4;
  client_ = std::move(endpoint::connect_fd(*rt_, std::move(a), cfg).value());
  srv.join();
  // The poster blocks once 4 are outstanding (back-pressure) and goes on as answers come.
  std::atomic<int> posted{0};
  std::thread poster([&] {
    for (int i = 0; i < 10; ++i) {
      client_->post(rr(uint64_t(i), 1));
      ++posted;
    }
  });
  std::vector<proto::frame> got;
  for (int i = 0; i < 4; ++i) got.push_back(*server.recv());
  for (int done = 0; done < 10; ++done) {
    auto& f = got[size_t(done)];
    EXPECT_LE(posted.load(), done + 5) << "more than 4 requests outstanding";
    server.send(proto::region_read_reply{rr(0, 1), {0}}, f.hdr().msg_id);
    if (done + 4 < 10) got.push_back(*server.recv());
  }
  poster.join();
  EXPECT_TRUE(client_->wait_posted(5s).ok());
  // The correlation actor never had more than 4 on the wire.
  EXPECT_NE(client_->stats().find("pending_high_water=4"), std::string::npos) << client_->stats();
}

TEST_F(BrokerTest, ClientReconnectsAndRenegotiatesAfterServerRestart) {
  char dir[] = "/tmp/vfu-test-XXXXXX";
  ASSERT_TRUE(::mkdtemp(dir));
  std::string path = std::string(dir) + "/s.sock";
  auto dev = spawn_handler(rt_->system(), pattern_device);
  auto s1 = endpoint::listen(*rt_, path, {}, dev);
  ASSERT_TRUE(s1.ok());
  endpoint_config cfg;
  cfg.backoff_min = 5ms;
  cfg.backoff_max = 50ms;
  auto c = endpoint::connect(*rt_, path, cfg);
  ASSERT_TRUE(c.ok()) << c.err().message();
  client_ = std::move(c.value());
  ASSERT_TRUE(client_->call_decoded(rr(1, 1)).ok());
  (*s1)->close();
  s1.value().reset();
  ASSERT_TRUE(client_->wait_state(conn_state::recovering, 5s));
  auto r = client_->call(rr(1, 1));  // during the outage: fails fast
  EXPECT_EQ(r.failure().code, errc::not_connected);
  auto s2 = endpoint::listen(*rt_, path, {}, dev);
  ASSERT_TRUE(s2.ok());
  server_ = std::move(s2.value());
  ASSERT_TRUE(client_->wait_state(conn_state::ready, 10s));
  EXPECT_EQ(client_->generation(), 2u);
  auto r2 = client_->call_decoded(rr(2, 1));
  ASSERT_TRUE(r2.ok()) << r2.err().message();
  server_->close();
  client_->close();
  ::unlink(path.c_str());
  ::rmdir(dir);
}

TEST_F(BrokerTest, ServerAcceptsTheNextClientAfterADisconnect) {
  char dir[] = "/tmp/vfu-test-XXXXXX";
  ASSERT_TRUE(::mkdtemp(dir));
  std::string path = std::string(dir) + "/s.sock";
  auto s = endpoint::listen(*rt_, path, {}, spawn_handler(rt_->system(), pattern_device));
  ASSERT_TRUE(s.ok());
  server_ = std::move(s.value());
  for (int i = 0; i < 3; ++i) {
    endpoint_config cfg;
    cfg.reconnect = false;
    auto c = endpoint::connect(*rt_, path, cfg);
    ASSERT_TRUE(c.ok()) << c.err().message();
    EXPECT_TRUE((*c)->call_decoded(rr(uint64_t(i), 1)).ok());
    (*c)->close();
    ASSERT_TRUE(server_->wait_state(conn_state::connecting, 5s));
  }
  EXPECT_EQ(server_->generation(), 3u);
  server_->close();
  ::unlink(path.c_str());
  ::rmdir(dir);
}

TEST_F(BrokerTest, ConnectToNothingFailsWithAClearError) {
  auto c = endpoint::connect(*rt_, "/tmp/vfu-no-such-socket-here.sock");
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.err().code, errc::not_connected);
  EXPECT_EQ(c.err().errnum, ENOENT);
}

}  // namespace
