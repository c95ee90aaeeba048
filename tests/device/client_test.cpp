// Client role over real sockets: remote_device against vfu-serve processes (restart with
// replay), against in-process servers (posted-write ordering, coalescing), and against
// scripted hostile servers.
#include <poll.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>

#include <atomic>
#include <cstring>
#include <functional>
#include <gtest/gtest.h>
#include <thread>

#include "device/remote_device.hpp"
#include "device/samples.hpp"
#include "tests/test_support.hpp"

namespace {

using namespace vfu;
using namespace vfu::proto;
using namespace std::chrono_literals;
namespace dt = vfu::dev::dmatest;

class ClientTest : public test::socket_dir_test {
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
    stop_child();
    rt_.reset();
    socket_dir_test::TearDown();
  }
  // vfu-serve in its own process, so it can be killed like a crashing device server.
  void start_child(const char* device) {
    // The arguments are made before fork(): the child of a threaded process may only make
    // async-signal-safe calls before exec (an allocation could wait forever for a lock that
    // another thread held at the fork; seen under ASan).
    std::string a1 = std::string("--device=") + device, a2 = "--socket-path=" + path_;
    child_ = ::fork();
    if (child_ == 0) {
      ::execl(VFU_SERVE_PATH, VFU_SERVE_PATH, a1.c_str(), a2.c_str(), (char*)nullptr);
      _exit(127);
    }
  }
  void stop_child(int sig = SIGTERM) {
    if (child_ <= 0) return;
    ::kill(child_, sig);
    ::waitpid(child_, nullptr, 0);
    child_ = -1;
  }
  std::unique_ptr<dev::remote_device> open_retry(std::shared_ptr<dev::guest_memory> mem, dev::remote_options opts = {}) {
    endpoint_config cfg;
    cfg.backoff_min = 5ms;
    cfg.backoff_max = 50ms;
    for (int i = 0; i < 250; ++i) {  // the child needs a moment to create its socket
      auto d = dev::remote_device::open(*rt_, path_, mem, cfg, opts);
      if (d) return std::move(d.value());
      std::this_thread::sleep_for(20ms);
    }
    return nullptr;
  }

  pid_t child_ = -1;
  std::unique_ptr<runtime> rt_;  ///< made in SetUp, after the fd baseline
  std::unique_ptr<endpoint> server_;
  std::unique_ptr<dev::remote_device> client_;
};

struct guest {
  unique_fd fd{::memfd_create("guest", MFD_CLOEXEC)};
  uint8_t* ram = nullptr;
  unique_fd efd{::eventfd(0, EFD_CLOEXEC)};
  std::shared_ptr<dev::guest_memory> mem = std::make_shared<dev::guest_memory>();
  guest() {
    if (::ftruncate(fd.get(), 1 << 20) != 0) std::abort();
    ram = static_cast<uint8_t*>(::mmap(nullptr, 1 << 20, PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(), 0));
    mem->add(0x100000, 1 << 20, ram, dma_flags::read | dma_flags::write);
  }
  ~guest() { ::munmap(ram, 1 << 20); }
};

// What a host does after a device reset: enable bus mastering and MSI-X, unmask vector 0.
void host_setup(dev::remote_device& d) {
  uint16_t cmd = dev::pci_reg::cmd_mem | dev::pci_reg::cmd_master;
  ASSERT_TRUE(d.write(region_index::config, 4, &cmd, 2).ok());
  uint8_t ctl = 0x80;
  ASSERT_TRUE(d.write(region_index::config, 0x63, &ctl, 1).ok());
  uint32_t zero = 0;
  ASSERT_TRUE(d.write(1, 12, &zero, 4).ok());
}

bool copy_and_wait(dev::remote_device& d, guest& g, uint32_t seed) {
  for (uint32_t i = 0; i < 4096; ++i) g.ram[i] = uint8_t(i + seed);
  std::memset(g.ram + 0x80000, 0, 4096);
  uint64_t src = 0x100000, dst = 0x180000;
  uint32_t len = 4096, one = 1;
  if (!d.write(0, dt::src, &src, 8) || !d.write(0, dt::dst, &dst, 8) || !d.write(0, dt::len, &len, 4) ||
      !d.write(0, dt::doorbell, &one, 4))
    return false;
  pollfd p{g.efd.get(), POLLIN, 0};
  if (::poll(&p, 1, 10000) != 1) return false;
  uint64_t c;
  if (::read(g.efd.get(), &c, 8) != 8) return false;
  return std::memcmp(g.ram, g.ram + 0x80000, 4096) == 0;
}

// A host that keeps guest memory itself (the C API's callback) is asked only for ranges
// inside a window it routed, with that window's permission: a server's DMA anywhere else,
// or a write to a read-only window, is EFAULT without reaching the host.
TEST(GuestMemory, RoutedWindowsReachTheHostOnlyInsideAndWithTheirPermission) {
  dev::guest_memory mem;
  int calls = 0;
  mem.set_access([&](uint64_t, uint8_t* buf, uint64_t len, bool write) {
    ++calls;
    if (!write) std::memset(buf, 7, len);
    return 0;
  });
  uint8_t b[8] = {};
  EXPECT_EQ(mem.read(0x1000, b, 8), EFAULT) << "no window yet";
  mem.add_routed(0x1000, 0x1000, dma_flags::read);
  EXPECT_EQ(mem.read(0x1ff8, b, 8), 0);
  EXPECT_EQ(b[0], 7);
  EXPECT_EQ(mem.write(0x1000, b, 8), EFAULT) << "a read-only window";
  EXPECT_EQ(mem.read(0x1ffc, b, 8), EFAULT) << "across the window's end";
  EXPECT_EQ(mem.read(UINT64_MAX - 3, b, 8), EFAULT) << "wrapping";
  EXPECT_EQ(calls, 1);
  mem.remove(0x1000);
  EXPECT_EQ(mem.read(0x1000, b, 8), EFAULT) << "unmapped";
  EXPECT_EQ(calls, 1);
}

TEST_F(ClientTest, ServerKilledMidTrafficRecoversWithReplay) {
  guest g;
  std::atomic<int> resets{0};
  dev::remote_options opts;
  opts.on_reset = [&](uint64_t) { ++resets; };
  start_child("dma-test");
  client_ = open_retry(g.mem, opts);
  ASSERT_TRUE(client_);
  auto& d = *client_;
  ASSERT_TRUE(d.probe().ok());
  host_setup(d);
  ASSERT_TRUE(d.set_irq_eventfds(irq_index::msix, 0, {g.efd.get()}).ok());
  ASSERT_TRUE(d.dma_map(0x100000, 1 << 20, dma_flags::read | dma_flags::write, &g.fd, 0).ok());
  ASSERT_TRUE(copy_and_wait(d, g, 1));

  std::atomic<bool> stop{false};
  std::atomic<int> ok_reads{0}, failed_reads{0};
  std::thread traffic([&] {
    while (!stop) {
      uint32_t v;
      (d.read(0, dt::copies, &v, 4).ok() ? ok_reads : failed_reads)++;
    }
  });
  auto wait_for_reads = [&](int n) {  // progress made by the traffic thread, not a sleep
    for (int i = 0; i < 1000000 && ok_reads.load() < n; ++i) std::this_thread::yield();
    return ok_reads.load() >= n;
  };
  ASSERT_TRUE(wait_for_reads(10));
  stop_child(SIGKILL);  // the device server crashes mid-traffic
  ASSERT_TRUE(d.ep().wait_state(conn_state::recovering, 10s));
  int before = ok_reads.load();
  start_child("dma-test");  // and is restarted on the same (now stale) socket path
  ASSERT_TRUE(d.wait_ready(20s)) << d.last_replay_error().message();
  EXPECT_TRUE(wait_for_reads(before + 10)) << "traffic resumed after the replay";
  stop = true;
  traffic.join();
  EXPECT_EQ(d.replays(), 1u);
  EXPECT_EQ(resets.load(), 1);
  EXPECT_GT(failed_reads.load(), 0) << "requests during the outage failed fast";
  // The restarted device is in its reset state; the host sets it up again, and the
  // replayed window and eventfd carry the next copy and its interrupt.
  host_setup(d);
  EXPECT_TRUE(copy_and_wait(d, g, 2));
  uint32_t copies = 0;
  ASSERT_TRUE(d.read(0, dt::copies, &copies, 4).ok());
  EXPECT_EQ(copies, 1u) << "the new server process has done exactly one copy";
}

TEST_F(ClientTest, OutagePolicyWaitHoldsRequestsUntilTheDeviceIsBack) {
  start_child("gpio");
  dev::remote_options opts;
  opts.outage = dev::outage_policy::wait;
  opts.outage_wait = 20s;
  client_ = open_retry(nullptr, opts);
  ASSERT_TRUE(client_);
  ASSERT_TRUE(client_->probe().ok());
  stop_child(SIGKILL);
  ASSERT_TRUE(client_->ep().wait_state(conn_state::recovering, 10s));
  std::atomic<bool> done{false};
  status result;
  std::thread t([&] {
    uint8_t v = 0;
    result = client_->read(2, 1, &v, 1);
    done = true;
  });
  start_child("gpio");
  t.join();
  EXPECT_TRUE(done.load());
  EXPECT_TRUE(result.ok()) << result.err().message();
}

TEST_F(ClientTest, FailFastDuringAnOutage) {
  start_child("gpio");
  client_ = open_retry(nullptr);
  ASSERT_TRUE(client_);
  ASSERT_TRUE(client_->probe().ok());
  stop_child(SIGKILL);
  ASSERT_TRUE(client_->ep().wait_state(conn_state::recovering, 10s));
  uint8_t v;
  auto s = client_->read(2, 1, &v, 1);
  EXPECT_EQ(s.err().code, errc::not_connected);
}

class InProcessClientTest : public ClientTest {
 protected:
  void serve(const char* name) {
    auto ep = endpoint::listen(*rt_, path_, {}, dev::spawn_device(rt_->system(), dev::make_sample(name)));
    ASSERT_TRUE(ep.ok());
    server_ = std::move(ep.value());
    endpoint_config cfg;
    cfg.reconnect = false;
    auto d = dev::remote_device::open(*rt_, path_, nullptr, cfg);
    ASSERT_TRUE(d.ok()) << d.err().message();
    client_ = std::move(d.value());
    ASSERT_TRUE(client_->probe().ok());
  }
};

TEST_F(InProcessClientTest, PostedWritesAreAppliedBeforeALaterRead) {
  serve("gpio");
  uint8_t one = 1, v = 0;
  for (int i = 0; i < 99; ++i) ASSERT_TRUE(client_->write_posted(2, 0, &one, 1).ok());
  ASSERT_TRUE(client_->read(2, 1, &v, 1).ok());
  EXPECT_EQ(v & 1, 1) << "99 writes: pin 0 count is a multiple of 3";
  ASSERT_TRUE(client_->write_posted(2, 0, &one, 1).ok());
  ASSERT_TRUE(client_->read(2, 1, &v, 1).ok());
  EXPECT_EQ(v & 1, 0) << "the 100th posted write was applied before the read";
}

TEST_F(InProcessClientTest, PostedWriteBatchesBecomeWriteMulti) {
  serve("gpio");
  ASSERT_TRUE(client_->ep().negotiated().theirs.write_multiple);
  std::vector<dev::posted_write> ws(300);
  for (auto& w : ws) w = dev::posted_write{2, 0, 1, {0x02}};  // pin 1, 300 times
  ASSERT_TRUE(client_->write_posted_many(ws).ok());
  uint8_t v = 0;
  ASSERT_TRUE(client_->read(2, 1, &v, 1).ok());
  EXPECT_EQ(v & 2, 2) << "300 counts on pin 1 (a multiple of 3)";
  // 2 WRITE_MULTI messages instead of 300 REGION_WRITEs, and their per-entry effects all landed.
  auto stats = server_->stats();
  auto pos = stats.find("frames_in=");
  ASSERT_NE(pos, std::string::npos);
  EXPECT_LT(std::stoul(stats.substr(pos + 10)), 40u) << stats;
}

// ---- hostile servers -------------------------------------------------------------------
class HostileServerTest : public ClientTest {
 protected:
  // Accepts one client on path_ and runs `script` with a raw peer.
  void script(std::function<void(test::raw_peer&)> fn) {
    listener_ = test::listen_unix(path_);
    ASSERT_TRUE(listener_);
    thread_ = std::thread([this, fn] {
      test::raw_peer p(unique_fd(::accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC)));
      fn(p);
      p.wait_eof(10s);
    });
  }
  void TearDown() override {
    client_.reset();
    if (thread_.joinable()) thread_.join();
    listener_.reset();
    ClientTest::TearDown();
  }
  std::unique_ptr<dev::remote_device> open_once() {
    endpoint_config cfg;
    cfg.reconnect = false;
    auto d = dev::remote_device::open(*rt_, path_, nullptr, cfg);
    if (!d) {
      open_error_ = d.err();
      return nullptr;
    }
    return std::move(d.value());
  }
  static void answer_version(test::raw_peer& p, const std::string& json = "{\"capabilities\":{}}", uint16_t major = 0) {
    auto v = p.recv();
    if (!v) return;
    version_reply r;
    r.major = major;
    r.minor = 0;
    r.caps_json = json;
    p.send(r, v->hdr().msg_id);
  }
  static void answer_info(test::raw_peer& p, uint32_t regions, uint32_t irqs = 0) {
    auto q = p.recv();
    if (!q) return;
    device_info_reply r;
    r.flags = device_info_flags::pci;
    r.num_regions = regions;
    r.num_irqs = irqs;
    p.send(r, q->hdr().msg_id);
  }
  // VERSION, a device with one region, then `reply(id)` as the answer to GET_REGION_INFO;
  // the client's probe must fail with `expected`.
  void expect_region_refused(std::function<frame(uint16_t)> reply, errc expected) {
    script([reply](test::raw_peer& p) {
      answer_version(p);
      answer_info(p, 1);
      if (auto q = p.recv()) p.send(reply(q->hdr().msg_id));
    });
    client_ = open_once();
    ASSERT_TRUE(client_);
    EXPECT_EQ(client_->probe().err().code, expected);
  }
  unique_fd listener_;
  std::thread thread_;
  error open_error_;
};

TEST_F(HostileServerTest, WrongMajorVersionIsRefused) {
  script([](test::raw_peer& p) { answer_version(p, "{}", 1); });
  EXPECT_FALSE(open_once());
  EXPECT_EQ(open_error_.code, errc::protocol_violation);
}

TEST_F(HostileServerTest, CapabilitiesOfTheWrongTypeAreRefused) {
  script([](test::raw_peer& p) { answer_version(p, "{\"capabilities\":{\"max_msg_fds\":\"many\"}}"); });
  EXPECT_FALSE(open_once());
  EXPECT_EQ(open_error_.code, errc::bad_json);
}

TEST_F(HostileServerTest, TooManyRegionsIsRefused) {
  script([](test::raw_peer& p) {
    answer_version(p);
    answer_info(p, 100000);
  });
  client_ = open_once();
  ASSERT_TRUE(client_);
  auto s = client_->probe();
  EXPECT_EQ(s.err().code, errc::too_large);
}

TEST_F(HostileServerTest, LoopingCapabilityChainIsRefused) {
  expect_region_refused(
      [](uint16_t id) {
        // A region-info reply whose type cap points back at itself.
        region_info_reply r;
        r.argsz = 48;
        r.flags = region_flags::read | region_flags::caps;
        r.size = 0x1000;
        region_cap cap;
        cap.id = region_cap_id::type;
        r.caps.push_back(cap);
        auto f = make_frame(id, r);
        uint32_t self_ptr = 32;
        std::memcpy(f.bytes.data() + 16 + 32 + 4, &self_ptr, 4);  // next = its own offset
        return f;
      },
      errc::bad_cap_chain);
}

TEST_F(HostileServerTest, SparseAreaBeyondTheRegionIsRefused) {
  expect_region_refused(
      [](uint16_t id) {
        region_info_reply r;
        r.argsz = 64;
        r.flags = region_flags::read | region_flags::mmap | region_flags::caps;
        r.size = 0x1000;
        region_cap cap;
        cap.id = region_cap_id::sparse_mmap;
        cap.areas = {{0x800, 0x1000}};  // ends past the 4 KiB region
        r.caps.push_back(cap);
        return make_frame(id, r);
      },
      errc::bad_value);
}

TEST_F(HostileServerTest, TooManyFdsWithARegionAreRefusedAndClosed) {
  expect_region_refused(
      [](uint16_t id) {
        region_info_reply r;
        r.flags = region_flags::read | region_flags::mmap;
        r.size = 0x1000;
        fd_list fds;
        fds.emplace_back(::eventfd(0, EFD_CLOEXEC));
        fds.emplace_back(::eventfd(0, EFD_CLOEXEC));
        return make_frame(id, r, 0, std::move(fds));
      },
      errc::bad_fds);
  // TearDown checks that the two fds were closed.
}

TEST_F(HostileServerTest, DmaOutsideTheMappedWindowsGetsEfault) {
  std::atomic<uint32_t> seen_errno{0};
  script([&](test::raw_peer& p) {
    answer_version(p);
    dma_write_request w;
    w.addr = 0xdead0000;
    w.count = 4;
    w.data = {1, 2, 3, 4};
    p.send(w, 77);
    auto r = p.recv();
    if (r && r->hdr().msg_id == 77 && r->hdr().is_error()) seen_errno = r->hdr().error_no;
  });
  client_ = open_once();
  ASSERT_TRUE(client_);
  for (int i = 0; i < 1000000 && seen_errno.load() == 0; ++i) std::this_thread::yield();
  client_.reset();
  thread_.join();
  EXPECT_EQ(seen_errno.load(), uint32_t(EFAULT));
}

}  // namespace
