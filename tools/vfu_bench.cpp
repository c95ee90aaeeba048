// vfu-bench: round-trip cost of a 4-byte REGION_READ through vfu-broker, against the raw
// floor measured in the same run: a two-process UNIX-socket ping-pong exchanging the same
// byte sizes (32-byte request, 36-byte reply), one read and one write per message.
//   vfu-bench [--seconds=S] [--json]
// A benchmark, not a test: nothing here asserts a time.
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include "device/remote_device.hpp"

using namespace vfu;
using clk = std::chrono::steady_clock;

namespace {

struct result_row {
  std::string name;
  double ops = 0, p50 = 0, p99 = 0;
};

result_row summarize(const std::string& name, std::vector<double>& lat_us, double secs, uint64_t ops) {
  std::sort(lat_us.begin(), lat_us.end());
  result_row r{name, double(ops) / secs, 0, 0};
  if (!lat_us.empty()) {
    r.p50 = lat_us[lat_us.size() / 2];
    r.p99 = lat_us[std::min(lat_us.size() - 1, lat_us.size() * 99 / 100)];
  }
  return r;
}

result_row raw_floor(double secs, int inflight) {
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0) std::exit(1);
  pid_t pid = ::fork();
  if (pid == 0) {
    ::close(sv[0]);
    char buf[32 * 64];
    char rep[36 * 64] = {};
    for (;;) {
      ssize_t n = ::read(sv[1], buf, sizeof buf);
      if (n <= 0) _exit(0);
      size_t k = size_t(n) / 32;
      if (::write(sv[1], rep, 36 * k) < 0) _exit(0);
    }
  }
  ::close(sv[1]);
  char req[32] = {};
  char rep[36 * 64];
  std::vector<double> lat;
  uint64_t ops = 0;
  auto end = clk::now() + std::chrono::duration<double>(secs);
  auto t0 = clk::now();
  while (clk::now() < end) {
    auto s = clk::now();
    for (int i = 0; i < inflight; ++i)
      if (::write(sv[0], req, 32) != 32) break;
    size_t want = 36 * size_t(inflight), got = 0;
    while (got < want) {
      ssize_t n = ::read(sv[0], rep, std::min(sizeof rep, want - got));
      if (n <= 0) break;
      got += size_t(n);
    }
    lat.push_back(std::chrono::duration<double, std::micro>(clk::now() - s).count());
    ops += uint64_t(inflight);
  }
  double el = std::chrono::duration<double>(clk::now() - t0).count();
  ::close(sv[0]);
  ::waitpid(pid, nullptr, 0);
  return summarize("raw socket floor, " + std::to_string(inflight) + " in flight", lat, el, ops);
}

// A raw client (plain blocking socket, no broker) against vfu-serve: the server's own cost.
result_row raw_client(const std::string& sock, double secs, int inflight) {
  proto::unique_fd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_un sa{};
  sa.sun_family = AF_UNIX;
  std::snprintf(sa.sun_path, sizeof sa.sun_path, "%s", sock.c_str());
  if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0) std::exit(1);
  auto v = proto::make_frame(1, proto::version_request{{0, 2, std::string("{}")}});
  if (::write(fd.get(), v.bytes.data(), v.bytes.size()) < 0) std::exit(1);
  uint8_t buf[65536];
  if (::read(fd.get(), buf, sizeof buf) <= 0) std::exit(1);
  std::vector<uint8_t> reqs;
  for (int i = 0; i < inflight; ++i) {
    auto f = proto::make_frame(uint16_t(i + 2), proto::region_read_request{{1, 2, 4}});
    reqs.insert(reqs.end(), f.bytes.begin(), f.bytes.end());
  }
  size_t want = size_t(inflight) * 36;
  std::vector<double> lat;
  uint64_t ops = 0;
  auto end = clk::now() + std::chrono::duration<double>(secs);
  auto t0 = clk::now();
  while (clk::now() < end) {
    auto s = clk::now();
    if (::write(fd.get(), reqs.data(), reqs.size()) < 0) break;
    size_t got = 0;
    while (got < want) {
      ssize_t n = ::read(fd.get(), buf, std::min(sizeof buf, want - got));
      if (n <= 0) return summarize("raw client -> vfu-serve (failed)", lat, 1, 0);
      got += size_t(n);
    }
    lat.push_back(std::chrono::duration<double, std::micro>(clk::now() - s).count());
    ops += uint64_t(inflight);
  }
  double el = std::chrono::duration<double>(clk::now() - t0).count();
  return summarize("raw client -> vfu-serve, " + std::to_string(inflight) + " in flight", lat, el, ops);
}

result_row broker(dev::remote_device& d, double secs, int threads) {
  std::atomic<uint64_t> ops{0};
  std::vector<std::vector<double>> lats(static_cast<size_t>(threads));
  auto end = clk::now() + std::chrono::duration<double>(secs);
  auto t0 = clk::now();
  std::vector<std::thread> ts;
  for (int t = 0; t < threads; ++t)
    ts.emplace_back([&, t] {
      uint8_t buf[4];
      while (clk::now() < end) {
        auto s = clk::now();
        if (!d.ep().call(proto::region_read_request{{1, 2, 4}}).ok()) break;
        (void)buf;
        lats[size_t(t)].push_back(std::chrono::duration<double, std::micro>(clk::now() - s).count());
        ++ops;
      }
    });
  for (auto& t : ts) t.join();
  double el = std::chrono::duration<double>(clk::now() - t0).count();
  std::vector<double> all;
  for (auto& l : lats) all.insert(all.end(), l.begin(), l.end());
  return summarize("vfu-broker client -> vfu-serve, " + std::to_string(threads) + " in flight", all, el, ops);
}

long rss_kib(pid_t pid) {
  FILE* f = std::fopen(("/proc/" + std::to_string(pid) + "/status").c_str(), "r");
  if (!f) return -1;
  char line[256];
  long kib = -1;
  while (std::fgets(line, sizeof line, f))
    if (std::sscanf(line, "VmRSS: %ld kB", &kib) == 1) break;
  std::fclose(f);
  return kib;
}

// N gpio devices in one vfu-serve, each with a connected client that negotiated and did one
// read: the server's RSS per connected idle device.
int idle_devices(const std::string& dir, int n) {
  char tmp[] = "/tmp/vfu-idle-XXXXXX";
  if (!::mkdtemp(tmp)) return 1;
  std::vector<std::string> args{dir + "/vfu-serve"};
  for (int i = 0; i < n; ++i) {
    args.push_back("--device=gpio");
    args.push_back("--socket-path=" + std::string(tmp) + "/" + std::to_string(i) + ".sock");
  }
  rlimit rl{rlim_t(4 * n + 256), rlim_t(4 * n + 256)};
  ::setrlimit(RLIMIT_NOFILE, &rl);
  pid_t srv = ::fork();
  if (srv == 0) {
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    ::execv(argv[0], argv.data());
    _exit(127);
  }
  std::string last = std::string(tmp) + "/" + std::to_string(n - 1) + ".sock";
  for (int i = 0; i < 500 && ::access(last.c_str(), F_OK) != 0; ++i) ::usleep(20000);
  long before = rss_kib(srv);
  std::vector<proto::unique_fd> clients;
  auto v = proto::make_frame(1, proto::version_request{{0, 2, std::string("{}")}});
  auto r = proto::make_frame(2, proto::region_read_request{{1, 2, 4}});
  uint8_t buf[4096];
  for (int i = 0; i < n; ++i) {
    proto::unique_fd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_un sa{};
    sa.sun_family = AF_UNIX;
    std::snprintf(sa.sun_path, sizeof sa.sun_path, "%s/%d.sock", tmp, i);
    if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0 ||
        ::write(fd.get(), v.bytes.data(), v.bytes.size()) < 0 || ::read(fd.get(), buf, sizeof buf) <= 0 ||
        ::write(fd.get(), r.bytes.data(), r.bytes.size()) < 0 || ::read(fd.get(), buf, sizeof buf) <= 0) {
      std::fprintf(stderr, "vfu-bench: client %d failed\n", i);
      break;
    }
    clients.push_back(std::move(fd));
  }
  long after = rss_kib(srv);
  std::printf("%d idle devices: vfu-serve RSS %ld KiB listening, %ld KiB with %zu connected clients: %.1f KiB per connected device\n",
              n, before, after, clients.size(), double(after) / double(std::max<size_t>(1, clients.size())));
  clients.clear();
  ::kill(srv, SIGTERM);
  ::waitpid(srv, nullptr, 0);
  for (int i = 0; i < n; ++i) ::unlink((std::string(tmp) + "/" + std::to_string(i) + ".sock").c_str());
  ::rmdir(tmp);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  double secs = 2;
  bool json = false;
  int idle = 0;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a.rfind("--seconds=", 0) == 0) secs = std::max(0.1, std::atof(a.c_str() + 10));
    else if (a.rfind("--idle-devices=", 0) == 0) idle = std::atoi(a.c_str() + 15);
    else if (a == "--json") json = true;
    else {
      std::fprintf(stderr, "usage: vfu-bench [--seconds=S] [--json] [--idle-devices=N]\n");
      return 2;
    }
  }
  std::string self = argv[0];
  std::string dir = self.find('/') == std::string::npos ? "." : self.substr(0, self.rfind('/'));
  if (idle > 0) return idle_devices(dir, std::min(idle, 10000));
  char tmp[] = "/tmp/vfu-bench-XXXXXX";
  if (!::mkdtemp(tmp)) return 1;
  std::string sock = std::string(tmp) + "/gpio.sock";
  pid_t srv = ::fork();
  if (srv == 0) {
    std::string serve = dir + "/vfu-serve", a2 = "--socket-path=" + sock;
    ::execl(serve.c_str(), serve.c_str(), "--device=gpio", a2.c_str(), (char*)nullptr);
    _exit(127);
  }
  std::vector<result_row> rows;
  rows.push_back(raw_floor(secs, 1));
  rows.push_back(raw_floor(secs, 16));
  for (int i = 0; i < 100 && ::access(sock.c_str(), F_OK) != 0; ++i) ::usleep(20000);
  ::usleep(20000);
  rows.push_back(raw_client(sock, secs, 1));
  rows.push_back(raw_client(sock, secs, 16));
  {
    runtime rt;
    proto::result<std::unique_ptr<dev::remote_device>> d = proto::error(proto::errc::not_connected, "");
    for (int i = 0; i < 100 && !d; ++i) {
      endpoint_config cfg;
      cfg.reconnect = false;
      d = dev::remote_device::open(rt, sock, nullptr, cfg);
      if (!d) ::usleep(20000);
    }
    if (!d) {
      std::fprintf(stderr, "vfu-bench: cannot reach vfu-serve: %s\n", d.err().message().c_str());
      ::kill(srv, SIGTERM);
      return 1;
    }
    rows.push_back(broker(**d, secs, 1));
    rows.push_back(broker(**d, secs, 16));
  }
  ::kill(srv, SIGTERM);
  ::waitpid(srv, nullptr, 0);
  ::rmdir(tmp);
  const auto& f1 = rows[0];
  const auto& f16 = rows[1];
  if (json) std::printf("[\n");
  for (size_t i = 0; i < rows.size(); ++i) {
    auto& r = rows[i];
    const auto& floor = (i % 2 == 0) ? f1 : f16;
    double ratio = r.ops / floor.ops;
    if (json)
      std::printf("  {\"name\": \"%s\", \"ops_per_s\": %.0f, \"p50_us\": %.1f, \"p99_us\": %.1f, \"ratio_to_floor\": %.3f}%s\n",
                  r.name.c_str(), r.ops, r.p50, r.p99, ratio, i + 1 < rows.size() ? "," : "");
    else
      std::printf("%-48s %10.0f ops/s  p50 %7.1f us  p99 %7.1f us  %.2fx floor\n", r.name.c_str(), r.ops, r.p50, r.p99, ratio);
  }
  if (json) std::printf("]\n");
  return 0;
}
