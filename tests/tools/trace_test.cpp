// vfu-trace between our client and our server: every frame passes unchanged with its fds,
// each is printed once with its reply's latency, the capture is a .vec the decoder reads,
// and a frame that cannot be a frame ends only its session.
#include <sys/eventfd.h>
#include <sys/wait.h>

#include <fstream>
#include <gtest/gtest.h>
#include <sstream>
#include <atomic>
#include <thread>

#include "device/remote_device.hpp"
#include "device/samples.hpp"
#include "protocol/vec_file.hpp"
#include "tests/test_support.hpp"

namespace {

using namespace vfu;
using namespace vfu::proto;
using namespace std::chrono_literals;

class TraceTest : public test::socket_dir_test {
 protected:
  void SetUp() override {
    socket_dir_test::SetUp();
    rt_ = std::make_unique<runtime>();
    dev_ = dev::spawn_device(rt_->system(), dev::make_sample("dma-test"));
    auto ep = endpoint::listen(*rt_, path_, {}, dev_);
    ASSERT_TRUE(ep.ok());
    server_ = std::move(ep.value());
    trace_ = dir_ + "/trace.sock";
    out_ = dir_ + "/trace.out";
    vec_ = dir_ + "/trace.vec";
    // (Made before fork(): the child of a threaded process must not allocate before exec.)
    std::string a1 = "--listen=" + trace_, a2 = "--connect=" + path_, a3 = "--vec=" + vec_;
    pid_ = ::fork();
    if (pid_ == 0) {
      int fd = ::open(out_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
      ::dup2(fd, 1);
      ::execl(VFU_TRACE_PATH, VFU_TRACE_PATH, a1.c_str(), a2.c_str(), a3.c_str(), (char*)nullptr);
      _exit(127);
    }
    for (int i = 0; i < 250 && ::access(trace_.c_str(), F_OK) != 0; ++i) std::this_thread::sleep_for(10ms);
  }
  void TearDown() override {
    stop();
    server_.reset();
    caf::anon_send_exit(dev_, caf::exit_reason::user_shutdown);
    rt_.reset();
    ::unlink(out_.c_str());
    ::unlink(vec_.c_str());
    socket_dir_test::TearDown();
  }
  void stop() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGTERM);
    int st = 0;
    ::waitpid(pid_, &st, 0);
    exit_ = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
    pid_ = -1;
  }
  std::string output() {
    std::ifstream f(out_);
    std::stringstream s;
    s << f.rdbuf();
    return s.str();
  }

  std::unique_ptr<runtime> rt_;
  caf::actor dev_;
  std::unique_ptr<endpoint> server_;
  std::string trace_, out_, vec_;
  pid_t pid_ = -1;
  int exit_ = -2;
};

TEST_F(TraceTest, OurClientThroughTheTracerWorksAndEveryFrameIsShownOnceWithItsLatency) {
  {
    endpoint_config cfg;
    cfg.reconnect = false;
    auto d = dev::remote_device::open(*rt_, trace_, nullptr, cfg);
    ASSERT_TRUE(d.ok()) << d.err().message();
    auto& dv = **d;
    ASSERT_TRUE(dv.probe().ok());  // region infos carry the BAR2 memfd: an fd through the tracer
    ASSERT_TRUE(dv.regions()[2].fd) << "the mmap fd came through";
    // 16-deep pipelined reads, and an eventfd the other way (SET_IRQS carries it).
    std::vector<message> batch(16, region_read_request{{0x20, 0, 4}});
    for (auto& r : dv.ep().call_many(batch)) EXPECT_TRUE(r.ok());
    unique_fd efd(::eventfd(0, EFD_CLOEXEC));
    ASSERT_TRUE(dv.set_irq_eventfds(irq_index::msix, 0, {efd.get()}).ok());
    std::vector<uint8_t> pattern(0x10000, 0x5a), back(0x10000);
    ASSERT_TRUE(dv.ep().call_decoded(region_write_request{{0, 9, 16}, std::vector<uint8_t>(16, 0x77)}).ok());
    uint8_t got[16];
    ASSERT_TRUE(dv.read(9, 0, got, 16).ok());
    EXPECT_EQ(got[15], 0x77);
  }
  std::this_thread::sleep_for(200ms);
  stop();
  EXPECT_EQ(exit_, 0);
  auto out = output();
  EXPECT_NE(out.find("s1 C>S #0001 VERSION command"), std::string::npos) << out;
  EXPECT_NE(out.find("S>C #0001 VERSION reply"), std::string::npos) << out;
  EXPECT_NE(out.find("SET_IRQS command size=36 flags=0x0 fds=1"), std::string::npos) << out;
  EXPECT_NE(out.find("session 1 ends: the client closed"), std::string::npos) << out;
  size_t reads = 0, latencies = 0;
  for (size_t at = out.find("REGION_READ reply"); at != std::string::npos; at = out.find("REGION_READ reply", at + 1)) {
    ++reads;
    if (out.substr(at, 80).find("us") != std::string::npos) ++latencies;
  }
  EXPECT_GE(reads, 17u);
  EXPECT_EQ(latencies, reads) << "every reply is paired with its request";
  // The capture: every frame, both ways, as the decoder reads it.
  auto v = read_vec_file(vec_);
  ASSERT_TRUE(v.ok()) << v.err().message();
  size_t c2s = 0, s2c = 0, fds = 0;
  for (auto& r : v->records) {
    (r.client_to_server ? c2s : s2c)++;
    fds += r.nfds;
  }
  EXPECT_EQ(c2s, s2c) << "a reply for every request";
  EXPECT_GE(fds, 2u) << "the region fd and the eventfd";
}

// Our client offers the twin socket and our server hands it over: the tracer follows it,
// and the server's DMA (16 in flight while the client pipelines its reads) passes there.
TEST_F(TraceTest, TheTwinSocketIsFollowedAndItsFramesAreShownAsTwin) {
  {
    auto mem = std::make_shared<dev::guest_memory>();
    std::vector<uint8_t> guest(0x10000);
    for (size_t i = 0; i < guest.size(); ++i) guest[i] = uint8_t(i * 13);
    mem->add(0x100000, guest.size(), guest.data(), dma_flags::read | dma_flags::write);
    endpoint_config cfg;
    cfg.reconnect = false;
    auto d = dev::remote_device::open(*rt_, trace_, mem, cfg);
    ASSERT_TRUE(d.ok()) << d.err().message();
    auto& dv = **d;
    ASSERT_TRUE(dv.ep().negotiated().theirs.twin_socket);
    ASSERT_TRUE(server_->wait_state(conn_state::ready, 5s));
    std::atomic<int> dma_ok{0};
    std::thread dma([&] {
      for (int round = 0; round < 4; ++round) {
        std::vector<message> batch;
        for (uint64_t i = 0; i < 16; ++i) batch.push_back(dma_read_request{{0x100000 + i * 64, 64}});
        for (auto& r : server_->call_many(batch)) {
          if (!r.ok()) continue;
          auto m = decode(*r.reply);
          auto& data = std::get<dma_read_reply>(*m).data;
          uint64_t addr = std::get<dma_read_reply>(*m).addr - 0x100000;
          if (data.size() == 64 && std::equal(data.begin(), data.end(), guest.begin() + long(addr))) ++dma_ok;
        }
      }
    });
    std::vector<message> reads(16, region_read_request{{0x20, 0, 4}});
    for (int round = 0; round < 4; ++round)
      for (auto& r : dv.ep().call_many(reads)) EXPECT_TRUE(r.ok());
    dma.join();
    EXPECT_EQ(dma_ok.load(), 64);
  }
  std::this_thread::sleep_for(200ms);
  stop();
  auto out = output();
  EXPECT_NE(out.find("twin socket handed over (fd_index 0): following it"), std::string::npos) << out;
  size_t requests = 0, replies = 0;
  for (size_t at = out.find("s1 twin S>C #"); at != std::string::npos; at = out.find("s1 twin S>C #", at + 1))
    if (out.substr(at, 60).find("DMA_READ command") != std::string::npos) ++requests;
  for (size_t at = out.find("s1 twin C>S #"); at != std::string::npos; at = out.find("s1 twin C>S #", at + 1))
    if (out.substr(at, 120).find("DMA_READ reply") != std::string::npos && out.substr(at, 120).find("us") != std::string::npos)
      ++replies;
  EXPECT_EQ(requests, 64u) << out;
  EXPECT_EQ(replies, 64u) << "each reply on the twin paired with its request";
  size_t on_first = 0;
  for (size_t at = out.find("s1 S>C #"); at != std::string::npos; at = out.find("s1 S>C #", at + 1))
    on_first += out.substr(at, 60).find("DMA_READ command") != std::string::npos;
  EXPECT_EQ(on_first, 0u) << "no DMA on the first socket";
  auto v = read_vec_file(vec_);
  ASSERT_TRUE(v.ok()) << v.err().message();
  size_t twin = 0;
  for (auto& r : v->records) twin += r.session == "s1/twin";
  EXPECT_GE(twin, 128u);
}

TEST_F(TraceTest, AFrameThatCannotBeAFrameEndsItsSessionAndTheNextIsServed) {
  {
    test::raw_peer p(test::dial_unix(trace_));
    ASSERT_TRUE(p.version());
    uint8_t bad[16] = {};
    bad[4] = 8;  // msg_size 8: under a header's size
    ASSERT_TRUE(p.send_bytes(bad, sizeof bad));
    EXPECT_TRUE(p.wait_eof()) << "the tracer closed the session";
  }
  {
    test::raw_peer p(test::dial_unix(trace_));
    ASSERT_TRUE(p.version());
    ASSERT_TRUE(p.send(region_read_request{{0x20, 0, 4}}, 7));
    auto r = p.recv();
    ASSERT_TRUE(r);
    EXPECT_EQ(r->hdr().msg_id, 7);
    EXPECT_FALSE(r->hdr().is_error());
  }
  std::this_thread::sleep_for(200ms);
  stop();
  auto out = output();
  EXPECT_NE(out.find("s1 C>S MALFORMED"), std::string::npos) << out;
  EXPECT_NE(out.find("session 1 ends: C>S sent what cannot be a frame"), std::string::npos) << out;
  EXPECT_NE(out.find("s2 S>C #0007 REGION_READ reply"), std::string::npos) << out;
}

}  // namespace
