// Fault injection against the server role: clients dying at every byte, fd exhaustion while
// a peer sends fds, a peer that stops reading, many clients at once, a stalled half header.
// In every case: no crash, no hang, no fd leak, and the next client is served.
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <atomic>
#include <gtest/gtest.h>
#include <thread>

#include "device/remote_device.hpp"
#include "device/samples.hpp"
#include "tests/test_support.hpp"

namespace {

using namespace vfu;
using namespace vfu::proto;
using namespace std::chrono_literals;

class FaultTest : public test::socket_dir_test {
 protected:
  void SetUp() override {
    socket_dir_test::SetUp();
    rt_ = std::make_unique<runtime>();
    auto ep = endpoint::listen(*rt_, path_, {}, dev::spawn_device(rt_->system(), dev::make_sample("gpio")));
    ASSERT_TRUE(ep.ok());
    server_ = std::move(ep.value());
  }
  void TearDown() override {
    server_.reset();
    rt_.reset();
    socket_dir_test::TearDown();
  }
  unique_fd dial() { return test::dial_unix(path_); }
  // A complete, well-behaved session: VERSION and one BAR2 read.
  bool good_session() {
    test::raw_peer p(dial());
    if (!p.version()) return false;
    if (!p.send(region_read_request{{1, 2, 1}}, 9)) return false;
    auto r = p.recv();
    return r && r->hdr().msg_id == 9 && !r->hdr().is_error();
  }

  std::unique_ptr<runtime> rt_;  ///< made in SetUp, after the fd baseline
  std::unique_ptr<endpoint> server_;
};

TEST_F(FaultTest, ClientDeathAtEveryByteOfARequest) {
  region_write_request w{{0, 2, 4}, {1, 2, 3, 4}};
  auto f = make_frame(5, w);
  for (size_t cut = 0; cut <= f.bytes.size(); ++cut) {
    SCOPED_TRACE("client died after " + std::to_string(cut) + " bytes");
    {
      test::raw_peer p(dial());
      ASSERT_TRUE(p.version());
      ASSERT_TRUE(p.send_bytes(f.bytes.data(), cut));
    }  // closed here
    ASSERT_TRUE(good_session());
  }
  EXPECT_EQ(server_->generation(), 2 * (f.bytes.size() + 1));
}

// A client that writes its last requests and half-closes at once (shutdown(SHUT_WR)): its
// bytes and its EOF reach the server together, often in one readiness event, so a server
// that trusted a short read to mean "nothing more to come" would never see the EOF. It
// gets every reply, in order, and then the server's close.
TEST_F(FaultTest, HalfClosedClientGetsEveryReplyAndThenTheServersClose) {
  for (int round = 0; round < 20; ++round) {
    SCOPED_TRACE("round " + std::to_string(round));
    test::raw_peer p(dial());
    ASSERT_TRUE(p.version());
    std::vector<uint8_t> burst;
    for (uint16_t id = 1; id <= 8; ++id) {
      auto f = make_frame(id, region_read_request{{1, 2, 1}});
      burst.insert(burst.end(), f.bytes.begin(), f.bytes.end());
    }
    ASSERT_TRUE(p.send_bytes(burst.data(), burst.size()));
    ASSERT_EQ(::shutdown(p.fd(), SHUT_WR), 0);
    for (uint16_t id = 1; id <= 8; ++id) {
      auto r = p.recv();
      ASSERT_TRUE(r);
      EXPECT_EQ(r->hdr().msg_id, id);
      EXPECT_FALSE(r->hdr().is_error());
    }
    EXPECT_TRUE(p.wait_eof(5s)) << "the server kept a half-closed connection open";
    ASSERT_TRUE(server_->wait_state(conn_state::connecting, 5s));
  }
}

TEST_F(FaultTest, FdExhaustionWhilePeerSendsFdsClosesTheConnectionCleanly) {
  // One whole session first: it walks the connection-loss path once, so that UBSan's
  // dynamic-type cache is warm (a cold lookup opens /proc files, which fails below).
  ASSERT_TRUE(good_session());
  ASSERT_TRUE(server_->wait_state(conn_state::connecting, 5s));
  test::raw_peer p(dial());
  ASSERT_TRUE(p.version());
  rlimit old{};
  ASSERT_EQ(::getrlimit(RLIMIT_NOFILE, &old), 0);
  unique_fd mem(::eventfd(0, EFD_CLOEXEC));
  proto::fd_list fds;
  fds.push_back(mem.dup());
  dma_map_request m;
  m.flags = dma_flags::read;
  m.size = 4096;
  auto frame = make_frame(3, m, 0, std::move(fds));
  // Now the process can open no new descriptor: the server's recvmsg cannot install the fd.
  rlimit low = old;
  int lowest_free = ::dup(0);  // new fds get the lowest free number: forbid that and above
  ::close(lowest_free);
  low.rlim_cur = rlim_t(lowest_free);
  ASSERT_EQ(::setrlimit(RLIMIT_NOFILE, &low), 0);
  bool sent = p.send(frame);
  bool eof = p.wait_eof(10s);
  ASSERT_EQ(::setrlimit(RLIMIT_NOFILE, &old), 0);
  EXPECT_TRUE(sent);
  EXPECT_TRUE(eof) << "MSG_CTRUNC must end the connection";
  p.close();
  ASSERT_TRUE(server_->wait_state(conn_state::connecting, 5s));
  EXPECT_NE(server_->last_error().context.find("MSG_CTRUNC"), std::string::npos) << server_->last_error().message();
  EXPECT_TRUE(good_session());
}

TEST_F(FaultTest, PeerThatStopsReadingDoesNotBlockOtherDevices) {
  // A second device in the same process, on its own socket.
  std::string path2 = dir_ + "/dev2.sock";
  auto other = endpoint::listen(*rt_, path2, {}, dev::spawn_device(rt_->system(), dev::make_sample("dma-test")));
  ASSERT_TRUE(other.ok());
  test::raw_peer flood(dial());
  ASSERT_TRUE(flood.version());
  // 2000 config-space reads of 256 bytes whose replies the client does not read: more than
  // the socket buffers hold, so the server's writes hit EAGAIN and queue.
  int sndbuf = 4096;
  ::setsockopt(flood.fd(), SOL_SOCKET, SO_RCVBUF, &sndbuf, sizeof sndbuf);
  constexpr int n = 2000;
  for (int i = 0; i < n; ++i) ASSERT_TRUE(flood.send(region_read_request{{0, 7, 256}}, uint16_t(i)));
  {
    endpoint_config cfg;
    cfg.reconnect = false;
    auto d = dev::remote_device::open(*rt_, path2, nullptr, cfg);
    ASSERT_TRUE(d.ok()) << d.err().message();
    ASSERT_TRUE((*d)->probe().ok()) << "another device is served while the flooder is not reading";
  }
  for (int i = 0; i < n; ++i) {
    auto r = flood.recv();
    ASSERT_TRUE(r) << "reply " << i;
    EXPECT_EQ(r->hdr().msg_id, uint16_t(i));
  }
  flood.close();
  (*other)->close();
  ::unlink(path2.c_str());
}

TEST_F(FaultTest, ManyClientsConnectingAtOnceAreAllServedInTurn) {
  constexpr int n = 256;
  std::atomic<int> ok{0};
  std::vector<std::thread> ts;
  for (int i = 0; i < n; ++i)
    ts.emplace_back([&] {
      if (good_session()) ++ok;
    });
  for (auto& t : ts) t.join();
  EXPECT_EQ(ok.load(), n);
}

TEST_F(FaultTest, HalfAHeaderThenStallDoesNotStopTheNextClientOnceItIsGone) {
  test::raw_peer stall(dial());
  ASSERT_TRUE(stall.version());
  uint8_t half[8] = {1, 0, 9, 0, 32, 0, 0, 0};
  ASSERT_TRUE(stall.send_bytes(half, sizeof half));
  std::atomic<bool> served{false};
  std::thread next([&] { served = good_session(); });
  EXPECT_EQ(server_->generation(), 1u);  // the next one waits in the backlog
  stall.close();
  next.join();
  EXPECT_TRUE(served.load());
}

}  // namespace
