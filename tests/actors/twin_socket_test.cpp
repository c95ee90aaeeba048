// The twin socket (actors/twin_socket.hpp) over real sockets: our client and our server with
// and without it under traffic both ways, and each of ours against a raw peer that sends
// frames down the wrong socket, replies on the wrong one and closes one of the two.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <atomic>
#include <future>
#include <thread>

#include "actors/endpoint.hpp"
#include "actors/handler.hpp"
#include "tests/actors/pair_fixture.hpp"
#include "tests/test_support.hpp"

namespace {

using namespace vfu;
using namespace std::chrono_literals;

outbound_ptr pattern_device(inbound& in) {
  if (auto* r = std::get_if<proto::region_read_request>(&in.msg)) {
    proto::region_read_reply rep{*r, {}};
    for (uint32_t i = 0; i < r->count; ++i) rep.data.push_back(uint8_t(r->offset + i));
    return outbound::of(rep);
  }
  return outbound::error(ENOTSUP);
}

// The client's guest memory: byte at address a is (a * 7).
outbound_ptr guest_memory(inbound& in) {
  if (auto* r = std::get_if<proto::dma_read_request>(&in.msg)) {
    proto::dma_read_reply rep{*r, {}};
    for (uint64_t i = 0; i < r->count; ++i) rep.data.push_back(uint8_t((r->addr + i) * 7));
    return outbound::of(rep);
  }
  if (auto* w = std::get_if<proto::dma_write_request>(&in.msg)) return outbound::of(proto::dma_write_reply{*w});
  return outbound::error(EINVAL);
}

proto::region_read_request rr(uint64_t off, uint32_t count) {
  proto::region_read_request r;
  r.offset = off;
  r.count = count;
  return r;
}

proto::dma_read_request dr(uint64_t addr, uint64_t count) {
  proto::dma_read_request r;
  r.addr = addr;
  r.count = count;
  return r;
}

bool is_guest(const std::vector<uint8_t>& d, uint64_t addr) {
  for (size_t i = 0; i < d.size(); ++i)
    if (d[i] != uint8_t((addr + i) * 7)) return false;
  return true;
}

// An actor that keeps `depth` DMA_READs in flight through the correlation actor for
// `rounds` rounds, checking each reply, then sets `done`.
struct dma_driver {
  caf::actor corr;
  int rounds = 0, depth = 0, round = 0, pending = 0;
  std::atomic<int> ok{0};
  std::promise<void> done;
};

void issue_round(caf::event_based_actor* self, std::shared_ptr<dma_driver> d) {
  if (d->round == d->rounds) {
    d->done.set_value();
    self->quit();
    return;
  }
  d->pending = d->depth;
  auto settled = [self, d] {
    if (--d->pending == 0) {
      ++d->round;
      issue_round(self, d);
    }
  };
  for (int i = 0; i < d->depth; ++i) {
    uint64_t addr = 0x10000 + uint64_t(d->round * d->depth + i) * 16;
    self->request(d->corr, caf::infinite, request_atom::value, make_frame_ptr(proto::make_frame(0, dr(addr, 16))), uint32_t(0))
        .then(
            [d, addr, settled](call_result& res) {
              if (res.ok()) {
                auto m = proto::decode(*res.reply);
                if (m && is_guest(std::get<proto::dma_read_reply>(*m).data, addr)) ++d->ok;
              }
              settled();
            },
            [settled](caf::error&) { settled(); });
  }
}

caf::behavior dma_driver_actor(caf::event_based_actor* self, std::shared_ptr<dma_driver> d) {
  issue_round(self, d);
  return {[](int) {}};
}

class TwinPair : public test::pair_fixture<::testing::TestWithParam<bool>> {};

// 16 requests in flight each way at all times: the client's REGION_READs (call_many) and the
// server's DMA_READs, from a host thread (call_many) and from an actor through the
// correlation actor (as a device makes them). With the twin socket the first socket carries
// no DMA at all; without it (the client does not offer it) everything shares one socket.
TEST_P(TwinPair, SixteenDeepTrafficBothWaysAnswersEveryRequest) {
  bool twin = GetParam();
  auto [a, b] = test::socket_pair();
  endpoint_config scfg;
  scfg.correlation.short_timeout = 120s;  // sanitizer builds run far slower
  auto s = endpoint::serve_fd(*rt_, std::move(a), scfg, spawn_handler(rt_->system(), pattern_device));
  ASSERT_TRUE(s.ok());
  server_ = std::move(*s);
  endpoint_config ccfg;
  ccfg.client_caps.twin_socket = twin;
  ccfg.correlation.short_timeout = 120s;
  auto c = endpoint::connect_fd(*rt_, std::move(b), ccfg, spawn_handler(rt_->system(), guest_memory));
  ASSERT_TRUE(c.ok()) << c.err().message();
  client_ = std::move(*c);
  ASSERT_TRUE(server_->wait_state(conn_state::ready, 5s));
  EXPECT_EQ(client_->negotiated().theirs.twin_socket, twin);
  EXPECT_EQ(server_->negotiated().ours.twin_socket, twin);

  constexpr int rounds = 100, depth = 16;
  std::atomic<int> dma_ok{0}, reads_ok{0};
  std::thread host([&] {
    for (int r = 0; r < rounds; ++r) {
      std::vector<proto::message> batch;
      for (int i = 0; i < depth; ++i) batch.push_back(dr(uint64_t(r * depth + i) * 8, 8));
      auto res = server_->call_many(batch);
      for (int i = 0; i < depth; ++i) {
        if (!res[size_t(i)].ok()) continue;
        auto m = proto::decode(*res[size_t(i)].reply);
        if (m && is_guest(std::get<proto::dma_read_reply>(*m).data, uint64_t(r * depth + i) * 8)) ++dma_ok;
      }
    }
  });
  // A device's requests: made by an actor on the runtime, as a device actor makes them.
  auto drv = std::make_shared<dma_driver>();
  drv->corr = server_->correlation();
  drv->rounds = rounds;
  drv->depth = depth;
  auto driven = drv->done.get_future();
  rt_->system().spawn(dma_driver_actor, drv);
  for (int r = 0; r < rounds; ++r) {
    std::vector<proto::message> batch;
    for (int i = 0; i < depth; ++i) batch.push_back(rr(uint64_t(i), 4));
    auto res = client_->call_many(batch);
    for (int i = 0; i < depth; ++i) {
      if (!res[size_t(i)].ok()) continue;
      auto m = proto::decode(*res[size_t(i)].reply);
      auto want = std::vector<uint8_t>{uint8_t(i), uint8_t(i + 1), uint8_t(i + 2), uint8_t(i + 3)};
      if (m && std::get<proto::region_read_reply>(*m).data == want) ++reads_ok;
    }
  }
  host.join();
  ASSERT_EQ(driven.wait_for(120s), std::future_status::ready);
  EXPECT_EQ(reads_ok.load(), rounds * depth);
  EXPECT_EQ(dma_ok.load(), rounds * depth);
  EXPECT_EQ(drv->ok.load(), rounds * depth);
  // The client's first socket: the VERSION reply and the replies to its reads, plus, on one
  // socket, the server's DMA requests.
  auto stats = client_->stats();
  int64_t expect_in = 1 + rounds * depth + (twin ? 0 : 2 * rounds * depth);
  EXPECT_EQ(test::stat_value(stats, "frames_in"), expect_in) << stats;
  EXPECT_EQ(test::stat_value(stats, "misrouted"), 0) << stats;
  EXPECT_EQ(test::stat_value(server_->stats(), "twin"), twin ? 1 : -1);
}

INSTANTIATE_TEST_SUITE_P(WithAndWithout, TwinPair, ::testing::Bool(),
                         [](const auto& i) { return std::string(i.param ? "Twin" : "OneSocket"); });

// ---------------------------------------------------------------------------------------
// Against raw peers.

std::string twin_caps(bool with_index = true) {
  nlohmann::json t = {{"supported", true}};
  if (with_index) t["fd_index"] = 0;
  return nlohmann::json{{"capabilities", {{"max_msg_fds", 16}, {"twin_socket", t}}}}.dump();
}

int error_of(const std::optional<proto::frame>& f) {
  if (!f || !f->hdr().is_reply() || !f->hdr().is_error()) return -1;
  return int(f->hdr().error_no);
}

class TwinRaw : public test::socket_dir_test {
 protected:
  void SetUp() override {
    socket_dir_test::SetUp();
    rt_ = std::make_unique<runtime>();
  }
  void TearDown() override {
    ep_.reset();
    peer_.reset();
    rt_.reset();
    socket_dir_test::TearDown();
  }
  // Our server on one end of a pair, and the raw client's VERSION with `caps` on the other:
  // the reply (with its fds), or nothing.
  std::optional<proto::frame> serve_and_negotiate(test::raw_peer*& main, const std::string& caps) {
    auto [a, b] = test::socket_pair();
    auto s = endpoint::serve_fd(*rt_, std::move(a), {}, spawn_handler(rt_->system(), pattern_device));
    if (!s.ok()) return std::nullopt;
    ep_ = std::move(*s);
    peer_ = std::make_unique<test::raw_peer>(std::move(b));
    main = peer_.get();
    proto::version_request v;
    v.minor = 2;
    v.caps_json = caps;
    if (!main->send(v, 1)) return std::nullopt;
    return main->recv();
  }
  std::unique_ptr<runtime> rt_;
  std::unique_ptr<endpoint> ep_;
  std::unique_ptr<test::raw_peer> peer_;
};

// Our server, a raw client: a command on the twin is refused, a reply on the first socket
// completes nothing, the reply on the twin completes the DMA, and closing the twin ends the
// whole connection.
TEST_F(TwinRaw, OurServerKeepsTheDirectionsApartAndEndsBothSocketsTogether) {
  test::raw_peer* mp = nullptr;
  auto vr = serve_and_negotiate(mp, twin_caps());
  ASSERT_TRUE(vr);
  auto& main = *mp;
  ASSERT_EQ(vr->fds.size(), 1u) << "the twin socket comes with the reply";
  auto m = proto::decode(*vr);
  ASSERT_TRUE(m);
  auto caps = nlohmann::json::parse(*std::get<proto::version_reply>(*m).caps_json);
  EXPECT_EQ(caps["capabilities"]["twin_socket"], (nlohmann::json{{"supported", true}, {"fd_index", 0}}));
  test::raw_peer twin(std::move(vr->fds[0]));
  ASSERT_TRUE(ep_->wait_state(conn_state::ready, 5s));

  ASSERT_TRUE(twin.send(rr(0, 4), 7));
  EXPECT_EQ(error_of(twin.recv()), EINVAL) << "a command on the server's socket";
  ASSERT_TRUE(main.send(rr(0x20, 2), 8));
  auto ok = main.recv();
  ASSERT_TRUE(ok);
  EXPECT_EQ(ok->hdr().msg_id, 8);
  EXPECT_FALSE(ok->hdr().is_error());

  std::optional<proto::result<proto::message>> got;
  std::thread dma([&] { got = ep_->call_decoded(dr(0x40, 4)); });
  auto req = twin.recv();
  ASSERT_TRUE(req) << "DMA goes on the twin";
  EXPECT_EQ(req->hdr().command, uint16_t(proto::command::dma_read));
  proto::dma_read_reply wrong{dr(0x40, 4), {1, 1, 1, 1}}, right{dr(0x40, 4), {2, 2, 2, 2}};
  ASSERT_TRUE(main.send(wrong, req->hdr().msg_id, proto::hflags::type_reply));
  ASSERT_TRUE(twin.send(right, req->hdr().msg_id, proto::hflags::type_reply));
  dma.join();
  ASSERT_TRUE(got && got->ok()) << (got ? got->err().message() : "");
  EXPECT_EQ(std::get<proto::dma_read_reply>(**got).data, right.data) << "the reply on the first socket was dropped";
  // (The reply on the first socket may be read after the one on the twin completed the call.)
  auto until = std::chrono::steady_clock::now() + 5s;
  while (test::stat_value(ep_->stats(), "misrouted") < 1 && std::chrono::steady_clock::now() < until)
    std::this_thread::sleep_for(1ms);
  EXPECT_EQ(test::stat_value(ep_->stats(), "misrouted"), 1);

  twin.close();
  EXPECT_TRUE(main.wait_eof()) << "losing the twin ends the connection";
  EXPECT_TRUE(ep_->wait_state(conn_state::closed, 5s));
}

// A client that does not offer it gets no twin: DMA comes on the one socket.
TEST_F(TwinRaw, OurServerHandsNoTwinToAClientThatDidNotOfferIt) {
  test::raw_peer* mp = nullptr;
  auto vr = serve_and_negotiate(mp, R"({"capabilities":{"twin_socket":{"supported":false}}})");
  ASSERT_TRUE(vr);
  auto& main = *mp;
  EXPECT_TRUE(vr->fds.empty());
  auto m = proto::decode(*vr);
  ASSERT_TRUE(m);
  EXPECT_EQ(nlohmann::json::parse(*std::get<proto::version_reply>(*m).caps_json)["capabilities"].count("twin_socket"), 0u);
  ASSERT_TRUE(ep_->wait_state(conn_state::ready, 5s));
  std::optional<proto::result<proto::message>> got;
  std::thread dma([&] { got = ep_->call_decoded(dr(0x40, 1)); });
  auto req = main.recv();
  ASSERT_TRUE(req);
  EXPECT_EQ(req->hdr().command, uint16_t(proto::command::dma_read));
  ASSERT_TRUE(main.send(proto::dma_read_reply{dr(0x40, 1), {9}}, req->hdr().msg_id, proto::hflags::type_reply));
  dma.join();
  ASSERT_TRUE(got && got->ok());
}

// Our client, a raw server: DMA on the first socket is refused, DMA on the twin is served, a
// reply on the twin completes nothing, and closing the twin makes the client reconnect.
TEST_F(TwinRaw, OurClientKeepsTheDirectionsApartAndReconnectsWhenTheTwinCloses) {
  auto lst = test::listen_unix(path_);
  ASSERT_TRUE(lst);
  auto accept_and_negotiate = [&](std::optional<test::raw_peer>& main, std::optional<test::raw_peer>& twin) {
    main.emplace(proto::unique_fd(::accept4(lst.get(), nullptr, nullptr, SOCK_CLOEXEC)));
    auto v = main->recv();
    ASSERT_TRUE(v);
    auto m = proto::decode(*v);
    ASSERT_TRUE(m);
    auto caps = nlohmann::json::parse(*std::get<proto::version_request>(*m).caps_json);
    EXPECT_EQ(caps["capabilities"]["twin_socket"]["supported"], true) << "offered by default";
    auto [ours, theirs] = test::socket_pair();
    proto::version_reply r;
    r.minor = 2;
    r.caps_json = twin_caps();
    auto f = proto::make_frame(v->hdr().msg_id, r, proto::hflags::type_reply);
    f.fds.push_back(std::move(theirs));
    ASSERT_TRUE(main->send(f));
    twin.emplace(std::move(ours));
  };
  std::optional<test::raw_peer> main, twin;
  proto::result<std::unique_ptr<endpoint>> c = proto::error(proto::errc::not_connected, "");
  std::thread dial([&] { c = endpoint::connect(*rt_, path_, {}, spawn_handler(rt_->system(), guest_memory)); });
  accept_and_negotiate(main, twin);
  dial.join();
  ASSERT_TRUE(c.ok()) << c.err().message();
  ep_ = std::move(*c);

  ASSERT_TRUE(main->send(dr(0x100, 4), 3));
  EXPECT_EQ(error_of(main->recv()), EINVAL) << "DMA on the client's socket";
  ASSERT_TRUE(twin->send(dr(0x100, 4), 4));
  auto rep = twin->recv();
  ASSERT_TRUE(rep);
  EXPECT_EQ(rep->hdr().msg_id, 4);
  auto m = proto::decode(*rep);
  ASSERT_TRUE(m);
  EXPECT_TRUE(is_guest(std::get<proto::dma_read_reply>(*m).data, 0x100));

  std::optional<proto::result<proto::message>> got;
  std::thread read([&] { got = ep_->call_decoded(rr(0, 2)); });
  auto req = main->recv();
  ASSERT_TRUE(req);
  proto::region_read_reply wrong{rr(0, 2), {1, 1}}, right{rr(0, 2), {2, 2}};
  ASSERT_TRUE(twin->send(wrong, req->hdr().msg_id, proto::hflags::type_reply));
  ASSERT_TRUE(main->send(right, req->hdr().msg_id, proto::hflags::type_reply));
  read.join();
  ASSERT_TRUE(got && got->ok());
  EXPECT_EQ(std::get<proto::region_read_reply>(**got).data, right.data);

  twin->close();
  EXPECT_TRUE(main->wait_eof()) << "losing the twin ends the connection";
  std::optional<test::raw_peer> main2, twin2;
  accept_and_negotiate(main2, twin2);
  EXPECT_TRUE(ep_->wait_state(conn_state::ready, 5s));
  EXPECT_EQ(ep_->generation(), 2u);
  ep_->close();
}

// A twin that cannot carry anything (a socket never connected) fails the negotiation.
TEST_F(TwinRaw, OurClientRefusesATwinSocketThatIsNotConnected) {
  auto lst = test::listen_unix(path_);
  ASSERT_TRUE(lst);
  proto::result<std::unique_ptr<endpoint>> c = proto::error(proto::errc::not_connected, "");
  endpoint_config cfg;
  cfg.reconnect = false;
  std::thread dial([&] { c = endpoint::connect(*rt_, path_, cfg, spawn_handler(rt_->system(), guest_memory)); });
  test::raw_peer main(proto::unique_fd(::accept4(lst.get(), nullptr, nullptr, SOCK_CLOEXEC)));
  auto v = main.recv();
  ASSERT_TRUE(v);
  proto::version_reply r;
  r.minor = 2;
  r.caps_json = twin_caps();
  auto f = proto::make_frame(v->hdr().msg_id, r, proto::hflags::type_reply);
  f.fds.emplace_back(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  ASSERT_TRUE(main.send(f));
  dial.join();
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.err().message().find("the twin socket is not connected"), std::string::npos) << c.err().message();
  EXPECT_TRUE(main.wait_eof());
}

}  // namespace
