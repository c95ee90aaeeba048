// vfu-bench: what vfu-broker costs, against the raw floor measured in the same run.
//
//   vfu-bench [--seconds=S] [--json] [--only=GROUP,...] [--devices=N]
//   vfu-bench --idle-devices=N        server RSS per connected idle device
//   vfu-bench --soak=SECONDS          mixed workload; RSS and fd drift (issue: no growth)
//
// The floor is a two-process UNIX-socket ping-pong exchanging the same byte sizes as the
// vfio-user messages it stands for, with one read and one write per message on each side
// (the server reads one request, writes its reply; the client writes each request and
// reads each reply). A second floor of the sync group has its server wait in epoll_wait
// before each read: what waiting for readiness costs any event-driven server, the
// reference for a vfu-serve that does not poll. Every other row runs against vfu-serve
// (gpio, dma-test and ram devices in one process) and is reported as a ratio to the floor
// row it names. Server CPU per op is the serving process's on-CPU time (all threads,
// /proc/PID/task/*/schedstat) divided by the operations of the row.
//
// Groups (--only): sync, pipelined, posted, bandwidth, client, dma, migration, nvme, trace, devices.
// A benchmark, not a test: nothing here asserts a time. docs/performance.md has the method.
#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "device/nvme/host.hpp"
#include "device/remote_device.hpp"
#include "device/samples.hpp"

using namespace vfu;
using clk = std::chrono::steady_clock;

namespace {

double g_secs = 2;

struct row {
  std::string name;
  double rate = 0;          ///< ops/s, or MB/s for bandwidth rows
  const char* unit = "ops/s";
  double p50 = 0, p99 = 0;  ///< us per batch (a batch is one op when 1 in flight)
  double srv_us = -1;       ///< server CPU per op, us (-1: not measured)
  std::string floor;        ///< name of the floor row this one is compared with
  double ratio = 0;
};

// ---- measuring ---------------------------------------------------------------------------

uint64_t cpu_ns(pid_t pid) {
  uint64_t total = 0;
  std::string dir = "/proc/" + std::to_string(pid) + "/task";
  DIR* d = ::opendir(dir.c_str());
  if (!d) return 0;
  while (dirent* e = ::readdir(d)) {
    if (e->d_name[0] == '.') continue;
    FILE* f = std::fopen((dir + "/" + e->d_name + "/schedstat").c_str(), "r");
    if (!f) continue;
    unsigned long long ns = 0;
    if (std::fscanf(f, "%llu", &ns) == 1) total += ns;
    std::fclose(f);
  }
  ::closedir(d);
  return total;
}

long proc_status_kib(pid_t pid, const char* key) {
  FILE* f = std::fopen(("/proc/" + std::to_string(pid) + "/status").c_str(), "r");
  if (!f) return -1;
  char line[256];
  long v = -1;
  size_t kl = std::strlen(key);
  while (std::fgets(line, sizeof line, f))
    if (std::strncmp(line, key, kl) == 0 && line[kl] == ':') {
      v = std::atol(line + kl + 1);
      break;
    }
  std::fclose(f);
  return v;
}

int open_fds(pid_t pid) {
  DIR* d = ::opendir(("/proc/" + std::to_string(pid) + "/fd").c_str());
  if (!d) return -1;
  int n = 0;
  while (dirent* e = ::readdir(d))
    if (e->d_name[0] != '.') ++n;
  ::closedir(d);
  return n - 1;  // the directory stream itself
}

/// A row measured in slices, interleaved with the rows it is compared with (interleave()):
/// this machine's speed drifts by tens of percent within seconds, so a floor measured
/// before a row says little about the row. Each slice's rate is kept; a ratio is the median
/// of the per-round ratios.
struct meter {
  std::string name;
  pid_t server = 0;
  uint64_t per_batch = 1;
  std::function<bool()> batch;
  /// Instead of batch: runs for the given seconds and returns the operations done (-1: one
  /// failed); no latencies.
  std::function<int64_t(double)> run;
  std::shared_ptr<void> keep;  ///< what the batch needs alive (a connection, a floor process)
  std::vector<double> lat, round_rate;
  uint64_t ops = 0, cpu = 0;
  double secs = 0;
  bool failed = false;

  void slice(double s) {
    if (failed) return;
    uint64_t c0 = server ? cpu_ns(server) : 0;
    auto t0 = clk::now();
    auto end = t0 + std::chrono::duration_cast<clk::duration>(std::chrono::duration<double>(s));
    uint64_t o = 0;
    if (run) {
      int64_t k = run(s);
      if (k < 0) {
        std::fprintf(stderr, "vfu-bench: %s: a request failed\n", name.c_str());
        failed = true;
      }
      o = uint64_t(std::max<int64_t>(k, 0));
    }
    while (!run && clk::now() < end) {
      auto st = clk::now();
      if (!batch()) {
        std::fprintf(stderr, "vfu-bench: %s: a request failed\n", name.c_str());
        failed = true;
        break;
      }
      lat.push_back(std::chrono::duration<double, std::micro>(clk::now() - st).count());
      o += per_batch;
    }
    double el = std::chrono::duration<double>(clk::now() - t0).count();
    if (server) cpu += cpu_ns(server) - c0;
    ops += o;
    secs += el;
    round_rate.push_back(el > 0 ? double(o) / el : 0);
  }
  row result() {
    row r;
    r.name = name;
    r.rate = secs > 0 ? double(ops) / secs : 0;
    std::sort(lat.begin(), lat.end());
    if (!lat.empty()) {
      r.p50 = lat[lat.size() / 2];
      r.p99 = lat[std::min(lat.size() - 1, lat.size() * 99 / 100)];
    }
    if (server && ops) r.srv_us = double(cpu) / 1000.0 / double(ops);
    return r;
  }
};

/// Median over the rounds of a's rate / b's rate.
double median_ratio(const meter& a, const meter& b) {
  std::vector<double> q;
  for (size_t i = 0; i < std::min(a.round_rate.size(), b.round_rate.size()); ++i)
    if (b.round_rate[i] > 0) q.push_back(a.round_rate[i] / b.round_rate[i]);
  if (q.empty()) return 0;
  std::sort(q.begin(), q.end());
  return q.size() % 2 ? q[q.size() / 2] : (q[q.size() / 2 - 1] + q[q.size() / 2]) / 2;
}

constexpr int g_rounds = 10;

/// Runs every meter for g_secs in total, round-robin in g_rounds slices.
void interleave(const std::vector<meter*>& ms) {
  for (int k = 0; k < g_rounds; ++k)
    for (auto* m : ms) m->slice(g_secs / g_rounds);
}

/// `m` as a row compared with `base` (median of the per-round ratios).
row against(meter& m, meter& base) {
  row r = m.result();
  r.floor = base.name;
  r.ratio = median_ratio(m, base);
  return r;
}

bool write_all(int fd, const void* p, size_t n) {
  auto* b = static_cast<const uint8_t*>(p);
  while (n) {
    ssize_t w = ::write(fd, b, n);
    if (w <= 0) return false;
    b += w;
    n -= size_t(w);
  }
  return true;
}

bool read_all(int fd, void* p, size_t n) {
  auto* b = static_cast<uint8_t*>(p);
  while (n) {
    ssize_t r = ::read(fd, b, n);
    if (r <= 0) return false;
    b += r;
    n -= size_t(r);
  }
  return true;
}

// ---- the floor ----------------------------------------------------------------------------

/// In a forked child: closes every inherited fd but stdio and `keep`, so that the child
/// holds no copy of another floor's socket or of a connection to vfu-serve (which serves one
/// client per socket: a stray copy would keep a finished client connected).
void close_inherited(std::vector<int> keep) {
  std::sort(keep.begin(), keep.end());
  int from = 3;
  for (int k : keep) {
    if (k > from) ::close_range(unsigned(from), unsigned(k) - 1, 0);
    from = std::max(from, k + 1);
  }
  ::close_range(unsigned(from), ~0u, 0);
}

/// A floor's server process and its client sockets, alive as long as the meter that drives
/// them: the sockets close first, then the server, which exits at their EOF, is reaped.
struct floor_proc {
  pid_t pid = 0;
  std::vector<int> fds;
  ~floor_proc() {
    for (int fd : fds) ::close(fd);
    if (pid > 0) ::waitpid(pid, nullptr, 0);
  }
};

/// The floor: two processes, one socketpair: `inflight` requests of `req` bytes (one write
/// each), a reply of `rep` bytes to every `reply_every`-th (one read each). The server reads
/// one request and writes its reply: no batching anywhere. `in_epoll`: the server waits in
/// epoll_wait before each read (the socket registered once, level-triggered), as the
/// cheapest event-driven server would, instead of blocking in the read.
meter floor_meter(const std::string& name, size_t req, size_t rep, int inflight, int reply_every = 1,
                  bool in_epoll = false) {
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) std::exit(1);
  pid_t pid = ::fork();
  if (pid == 0) {
    ::close(sv[0]);
    close_inherited({sv[1]});
    int ep = -1;
    if (in_epoll) {
      epoll_event ev{};
      ev.events = EPOLLIN;
      ep = ::epoll_create1(EPOLL_CLOEXEC);
      if (ep < 0 || ::epoll_ctl(ep, EPOLL_CTL_ADD, sv[1], &ev) != 0) _exit(1);
    }
    std::vector<uint8_t> in(req), out(rep, 0x5a);
    for (uint64_t n = 1;; ++n) {
      epoll_event ev;
      if (ep >= 0 && ::epoll_wait(ep, &ev, 1, -1) < 0) _exit(1);
      if (!read_all(sv[1], in.data(), req)) _exit(0);
      if (n % uint64_t(reply_every) == 0 && !write_all(sv[1], out.data(), rep)) _exit(0);
    }
  }
  ::close(sv[1]);
  auto p = std::make_shared<floor_proc>();
  p->pid = pid;
  p->fds = {sv[0]};
  meter m;
  m.name = name;
  m.server = pid;
  m.per_batch = uint64_t(inflight);
  m.keep = p;
  int replies = inflight / reply_every;
  auto out = std::make_shared<std::vector<uint8_t>>(req, 0xa5);
  auto in = std::make_shared<std::vector<uint8_t>>(rep);
  int fd = sv[0];
  m.batch = [=] {
    for (int i = 0; i < inflight; ++i)
      if (!write_all(fd, out->data(), req)) return false;
    for (int i = 0; i < replies; ++i)
      if (!read_all(fd, in->data(), rep)) return false;
    return true;
  };
  return m;
}

/// A meter whose slice drives each of `fds` from its own thread: write `req`, read a
/// `rep_size` reply, 1 in flight per fd (no latencies: many threads share two cores).
meter multi_meter(const std::string& name, pid_t server, std::vector<int> fds, std::vector<uint8_t> req,
                  size_t rep_size, std::shared_ptr<void> keep) {
  meter m;
  m.name = name;
  m.server = server;
  m.keep = std::move(keep);
  timeval limit{10, 0};  // a reply that never comes fails the row instead of hanging the run
  for (int fd : fds) ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &limit, sizeof limit);
  m.run = [fds = std::move(fds), req = std::move(req), rep_size](double secs) -> int64_t {
    std::atomic<bool> stop{false}, failed{false};
    std::atomic<uint64_t> ops{0};
    std::vector<std::thread> ts;
    for (int fd : fds)
      ts.emplace_back([&, fd] {
        std::vector<uint8_t> in(rep_size);
        while (!stop) {
          if (!write_all(fd, req.data(), req.size()) || !read_all(fd, in.data(), in.size())) {
            failed = true;
            return;
          }
          ++ops;
        }
      });
    std::this_thread::sleep_for(std::chrono::duration<double>(secs));
    stop = true;
    for (auto& t : ts) t.join();
    return failed ? -1 : int64_t(ops.load());
  };
  return m;
}

/// N socketpairs served by one process with poll(), one read and one write per message;
/// N client threads with 1 request in flight each.
meter floor_multi(const std::string& name, int n) {
  std::vector<int> cl(static_cast<size_t>(n)), sv(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) {
    int p[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, p) != 0) std::exit(1);
    cl[size_t(i)] = p[0];
    sv[size_t(i)] = p[1];
  }
  pid_t pid = ::fork();
  if (pid == 0) {
    close_inherited(sv);
    std::vector<pollfd> pf;
    for (int s : sv) pf.push_back(pollfd{s, POLLIN, 0});
    uint8_t in[32], out[36] = {};
    for (;;) {
      if (::poll(pf.data(), pf.size(), -1) < 0) _exit(1);
      for (auto& p : pf) {
        if (!(p.revents & (POLLIN | POLLHUP))) continue;
        if (!read_all(p.fd, in, sizeof in) || !write_all(p.fd, out, sizeof out)) _exit(0);
      }
    }
  }
  for (int s : sv) ::close(s);
  auto keep = std::make_shared<floor_proc>();
  keep->fds = cl;
  keep->pid = pid;
  return multi_meter(name, pid, cl, std::vector<uint8_t>(32), 36, keep);
}

// ---- a raw vfio-user client ----------------------------------------------------------------

proto::unique_fd raw_connect(const std::string& path) {
  proto::unique_fd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_un sa{};
  sa.sun_family = AF_UNIX;
  std::snprintf(sa.sun_path, sizeof sa.sun_path, "%s", path.c_str());
  if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0) return {};
  auto v = proto::make_frame(1, proto::version_request{{0, 2, std::string("{}")}});
  uint8_t hdr[proto::header_size];
  if (!write_all(fd.get(), v.bytes.data(), v.bytes.size()) || !read_all(fd.get(), hdr, sizeof hdr)) return {};
  uint32_t size;
  std::memcpy(&size, hdr + 4, 4);
  std::vector<uint8_t> rest(size - proto::header_size);
  if (!read_all(fd.get(), rest.data(), rest.size())) return {};
  return fd;
}

/// A raw client: one write of `frames`, then `reply_bytes` read back per batch.
meter raw_meter(const std::string& name, pid_t server, const std::string& sock, const std::vector<proto::frame>& frames,
                size_t reply_bytes, uint64_t ops_per_batch) {
  auto fd = std::make_shared<proto::unique_fd>(raw_connect(sock));
  if (!*fd) {
    std::fprintf(stderr, "vfu-bench: cannot reach %s\n", sock.c_str());
    std::exit(1);
  }
  auto reqs = std::make_shared<std::vector<uint8_t>>();
  for (auto& f : frames) reqs->insert(reqs->end(), f.bytes.begin(), f.bytes.end());
  auto in = std::make_shared<std::vector<uint8_t>>(reply_bytes);
  meter m;
  m.name = name;
  m.server = server;
  m.per_batch = ops_per_batch;
  m.keep = fd;
  int f = fd->get();
  m.batch = [=] { return write_all(f, reqs->data(), reqs->size()) && read_all(f, in->data(), in->size()); };
  return m;
}

/// A meter over any batch function.
meter fn_meter(const std::string& name, pid_t server, uint64_t per_batch, std::function<bool()> fn) {
  meter m;
  m.name = name;
  m.server = server;
  m.per_batch = per_batch;
  m.batch = std::move(fn);
  return m;
}

std::vector<proto::frame> reads(uint32_t region, uint64_t off, int n) {
  std::vector<proto::frame> v;
  for (int i = 0; i < n; ++i) v.push_back(proto::make_frame(uint16_t(i + 2), proto::region_read_request{{off, region, 4}}));
  return v;
}

// ---- modes -----------------------------------------------------------------------------------

std::string g_serve_poll;     ///< --poll-max-ns for vfu-serve (empty: its default)
std::string g_lvu;            ///< --lvu: libvfio-user's samples/gpio-pci-idio-16, for a sync row
int64_t g_client_poll = 0;    ///< runtime_options::poll_max_ns of our client's runtime
bool g_caller_reads = true;   ///< endpoint_config::caller_reads of our client
int64_t g_caller_poll = -1;   ///< endpoint_config::caller_poll_max_ns of our client (-1: its default)

struct servers {
  pid_t pid = 0;
  std::string dir, gpio, gpio2, gpio3, dma, dma2, dma3, dma4, ram;  ///< gpio2, gpio3: our client's, while a raw client has gpio
  std::vector<std::string> gpios;  ///< --devices gpio sockets
};

// The vfu-serve and vfu-trace processes this run started and has not stopped: a run that
// ends early (std::exit on a failed set-up) stops them too, instead of leaving them behind.
std::vector<pid_t> g_children;
void track(pid_t pid) {
  if (pid > 0) g_children.push_back(pid);
}
void stop_child(pid_t pid) {
  ::kill(pid, SIGTERM);
  ::waitpid(pid, nullptr, 0);
  g_children.erase(std::remove(g_children.begin(), g_children.end(), pid), g_children.end());
}
void stop_children() {
  while (!g_children.empty()) stop_child(g_children.back());
}

/// Starts `args` (stdout and stderr to /dev/null) and waits for `sock` to appear; 0 if it
/// did not.
pid_t start_server(std::vector<std::string> args, const std::string& sock) {
  // (argv is made before fork(): the child of a threaded process must not allocate.)
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t pid = ::fork();
  if (pid == 0) {
    int null = ::open("/dev/null", O_WRONLY);
    ::dup2(null, 1);
    ::dup2(null, 2);
    ::execv(argv[0], argv.data());
    _exit(127);
  }
  track(pid);
  for (int i = 0; i < 250 && ::access(sock.c_str(), F_OK) != 0; ++i) ::usleep(20000);
  if (::access(sock.c_str(), F_OK) == 0) return pid;
  stop_child(pid);
  return 0;
}

servers start_servers(const std::string& bindir, int devices) {
  servers s;
  char tmp[] = "/tmp/vfu-bench-XXXXXX";
  if (!::mkdtemp(tmp)) std::exit(1);
  s.dir = tmp;
  s.gpio = s.dir + "/gpio.sock";
  s.gpio2 = s.dir + "/gpio2.sock";
  s.gpio3 = s.dir + "/gpio3.sock";
  s.dma = s.dir + "/dma.sock";
  s.dma2 = s.dir + "/dma2.sock";
  s.dma3 = s.dir + "/dma3.sock";
  s.dma4 = s.dir + "/dma4.sock";
  s.ram = s.dir + "/ram.sock";
  std::vector<std::string> args{bindir + "/vfu-serve", "--device=gpio", "--socket-path=" + s.gpio, "--device=gpio",
                                "--socket-path=" + s.gpio2, "--device=gpio", "--socket-path=" + s.gpio3, "--device=dma-test", "--socket-path=" + s.dma,
                                "--device=dma-test", "--socket-path=" + s.dma2, "--device=dma-test", "--socket-path=" + s.dma3,
                                "--device=dma-test", "--socket-path=" + s.dma4, "--device=ram", "--socket-path=" + s.ram};
  if (!g_serve_poll.empty()) args.push_back("--poll-max-ns=" + g_serve_poll);
  for (int i = 0; i < devices; ++i) {
    s.gpios.push_back(s.dir + "/g" + std::to_string(i) + ".sock");
    args.push_back("--device=gpio");
    args.push_back("--socket-path=" + s.gpios.back());
  }
  std::string last = s.gpios.empty() ? s.ram : s.gpios.back();
  s.pid = start_server(args, last);
  if (!s.pid) {
    std::fprintf(stderr, "vfu-bench: vfu-serve did not start\n");
    std::exit(1);
  }
  return s;
}

void stop_servers(servers& s) {
  stop_child(s.pid);
  ::rmdir(s.dir.c_str());
}

std::unique_ptr<dev::remote_device> open_device(runtime& rt, const std::string& sock,
                                                std::shared_ptr<dev::guest_memory> mem = nullptr,
                                                int64_t caller_poll = g_caller_poll, bool twin = true) {
  endpoint_config cfg;
  cfg.reconnect = false;
  cfg.client_caps.twin_socket = twin;
  cfg.caller_reads = g_caller_reads;
  cfg.caller_poll_max_ns = caller_poll;
  auto d = dev::remote_device::open(rt, sock, std::move(mem), cfg);
  if (!d) {
    std::fprintf(stderr, "vfu-bench: cannot open %s: %s\n", sock.c_str(), d.err().message().c_str());
    std::exit(1);
  }
  return std::move(*d);
}

/// Our client from plain threads, one call in flight per thread.
row client_threads(const std::string& name, pid_t server, dev::remote_device& d, int threads, uint32_t region) {
  std::atomic<uint64_t> ops{0};
  std::vector<std::vector<double>> lats(static_cast<size_t>(threads));
  uint64_t c0 = cpu_ns(server);
  auto t0 = clk::now();
  auto end = t0 + std::chrono::duration_cast<clk::duration>(std::chrono::duration<double>(g_secs));
  std::vector<std::thread> ts;
  for (int t = 0; t < threads; ++t)
    ts.emplace_back([&, t] {
      uint32_t v;
      while (clk::now() < end) {
        auto s = clk::now();
        if (!d.read(region, 0, &v, 4)) break;
        lats[size_t(t)].push_back(std::chrono::duration<double, std::micro>(clk::now() - s).count());
        ++ops;
      }
    });
  for (auto& t : ts) t.join();
  double el = std::chrono::duration<double>(clk::now() - t0).count();
  std::vector<double> all;
  for (auto& l : lats) all.insert(all.end(), l.begin(), l.end());
  std::sort(all.begin(), all.end());
  row r;
  r.name = name;
  r.rate = double(ops) / el;
  if (!all.empty()) {
    r.p50 = all[all.size() / 2];
    r.p99 = all[std::min(all.size() - 1, all.size() * 99 / 100)];
  }
  r.srv_us = double(cpu_ns(server) - c0) / 1000.0 / double(std::max<uint64_t>(1, ops));
  return r;
}

/// Bus mastering on, MSI-X enabled with vector 0 unmasked and wired to `efd` (the dma-test
/// layout, as vfu-demo does it).
bool enable_dma_and_msix(dev::remote_device& d, int efd) {
  uint16_t cmd = 0x6;        // memory space + bus master
  uint8_t msix_ctl = 0x80;   // MSI-X enable (capability at 0x60)
  uint32_t unmask = 0;       // table entry 0, vector control
  return d.probe() && d.write(7, 4, &cmd, 2) && d.write(7, 0x63, &msix_ctl, 1) &&
         d.set_irq_eventfds(2 /* MSI-X */, 0, {efd}) && d.write(1, 12, &unmask, 4);
}

/// Programs dma-test's copy registers.
bool program_copy(dev::remote_device& d, uint64_t src, uint64_t dst, uint32_t len) {
  return d.write(0, dev::dmatest::src, &src, 8) && d.write(0, dev::dmatest::dst, &dst, 8) &&
         d.write(0, dev::dmatest::len, &len, 4);
}

/// dma-test copying `len` bytes through a window without an fd: every copy is a DMA_READ
/// and a DMA_WRITE from the server to our client, then an MSI-X interrupt. With `twin`
/// (our client's default) they come on the twin socket, without it on the one socket.
/// `note` ends the row's name (which then leaves out "(2 per copy)", for its width).
meter dma_meter(runtime& rt, const std::string& sock, pid_t pid, uint32_t len, bool twin, const std::string& note = "") {
  struct state {
    std::shared_ptr<dev::guest_memory> mem = std::make_shared<dev::guest_memory>();
    std::vector<uint8_t> guest;
    std::unique_ptr<dev::remote_device> d;
    proto::unique_fd efd{::eventfd(0, EFD_CLOEXEC)};
  };
  auto st = std::make_shared<state>();
  st->guest.assign(2 * size_t(len), 0x11);
  st->mem->add(0x100000, st->guest.size(), st->guest.data(), proto::dma_flags::read | proto::dma_flags::write);
  st->d = open_device(rt, sock, st->mem, g_caller_poll, twin);
  auto& d = *st->d;
  if (d.ep().negotiated().theirs.twin_socket != twin) {
    std::fprintf(stderr, "vfu-bench: dma-test %s a twin socket\n", twin ? "did not hand over" : "handed over");
    std::exit(1);
  }
  if (!enable_dma_and_msix(d, st->efd.get()) ||
      !d.dma_map(0x100000, st->guest.size(), proto::dma_flags::read | proto::dma_flags::write) ||
      !program_copy(d, 0x100000, 0x100000 + len, len)) {
    std::fprintf(stderr, "vfu-bench: setting up dma-test failed\n");
    std::exit(1);
  }
  auto m = fn_meter("dma-test copy of " + std::to_string(len) + " B: DMA msgs" + (note.empty() ? " (2 per copy)" : "") + ", " +
                        (twin ? "twin socket" : "one socket") + note,
                    pid, 2, [st] {
    uint32_t one = 1;
    if (!st->d->write(0, dev::dmatest::doorbell, &one, 4)) return false;
    pollfd p{st->efd.get(), POLLIN, 0};
    if (::poll(&p, 1, 5000) != 1) return false;
    uint64_t cnt;
    return ::read(st->efd.get(), &cnt, 8) == 8;
  });
  m.keep = st;
  return m;
}

/// The gpio devices at `socks`, served by `pid`, each driven at once by a raw client with 1
/// in flight.
meter many_devices(const std::string& name, pid_t pid, const std::vector<std::string>& socks) {
  auto conns = std::make_shared<std::vector<proto::unique_fd>>();
  std::vector<int> fds;
  for (auto& p : socks) {
    conns->push_back(raw_connect(p));
    if (!conns->back()) {
      std::fprintf(stderr, "vfu-bench: cannot reach %s\n", p.c_str());
      std::exit(1);
    }
    fds.push_back(conns->back().get());
  }
  auto req = proto::make_frame(2, proto::region_read_request{{0, 2, 4}});
  return multi_meter(name, pid, fds, std::vector<uint8_t>(req.bytes.begin(), req.bytes.end()), 36, conns);
}

// ---- migration --------------------------------------------------------------------------------

row as_mb_s(row r, double mb_per_op) {
  r.rate *= mb_per_op;
  r.unit = "MB/s";
  return r;
}

// MIG_DATA_READ of a 1 GiB ram device's STOP_COPY data in 1 MiB reads (vfu-migrate's size)
// against the floor moving the same bytes; the whole stream read once; and the time to
// REPORT the dirty bitmap of a 64 GiB window at 4 KiB pages (2 MiB of bitmap, in the two
// reports a 1 MiB max_data_xfer_size needs).
void migration_rows(runtime& rt, const std::string& bindir, const servers& s, std::vector<row>& rows,
                    std::vector<std::string>& notes) {
  constexpr uint32_t mib = 1u << 20;
  constexpr uint64_t gib = 1ull << 30;
  std::string big = s.dir + "/big.sock";
  pid_t pid = start_server({bindir + "/vfu-serve", "--device=ram", "--ram-size=1G", "--socket-path=" + big}, big);
  auto fail = [&](const char* what) {
    std::fprintf(stderr, "vfu-bench: migration: %s\n", what);
    std::exit(1);  // (stop_children stops the servers)
  };
  {
    auto d = open_device(rt, big);
    // Every page written first, so no read below meets a page that was never touched.
    std::vector<uint8_t> buf(mib);
    if (!d->probe()) fail("probe");
    for (uint64_t off = 0; off < gib; off += mib) {
      std::memset(buf.data(), int(off / mib), mib);
      if (!d->write(0, off, buf.data(), mib)) fail("filling the ram device");
    }
    using S = proto::mig_state;
    if (!d->set_migration_state(S::stop_copy)) fail("STOP_COPY");
    // The whole stream, as vfu-migrate reads it, into a sink that only counts: first while
    // the server's own mapping has not touched the half the client wrote through its
    // mapping (every page faults in on the way out), then again.
    char line[256];
    for (const char* pass : {"first", "second"}) {
      auto t0 = clk::now();
      auto n = d->read_migration_data([](const uint8_t*, size_t) { return proto::status{}; });
      double ms = std::chrono::duration<double, std::milli>(clk::now() - t0).count();
      if (!n) fail("reading the stream");
      std::snprintf(line, sizeof line, "STOP_COPY stream of the 1 GiB ram device, %s read: %llu bytes in %.0f ms, %.0f MB/s",
                    pass, static_cast<unsigned long long>(*n), ms, double(*n) / 1e3 / ms);
      notes.push_back(line);
      if (!d->set_migration_state(S::stop) || !d->set_migration_state(S::stop_copy)) fail("STOP_COPY again");
    }
    auto fr = floor_meter("floor: 24 B / 1 MiB + 24 B (MIG_DATA_READ's sizes)", 24, mib + 24, 1);
    proto::mig_data_read_request q{8 + mib, mib};
    auto r = fn_meter("vfu-broker: MIG_DATA_READ 1 MiB of 1 GiB ram STOP_COPY data", pid, 1, [&] {
      auto c = d->ep().call(q);
      if (!c.ok()) return false;
      if (c.reply->hdr().msg_size < 24 + mib)  // the stream ended: begin another
        return d->set_migration_state(S::stop) && d->set_migration_state(S::stop_copy);
      return true;
    });
    interleave({&fr, &r});
    rows.push_back(as_mb_s(fr.result(), 1.048576));
    rows.push_back(as_mb_s(against(r, fr), 1.048576));
    std::snprintf(line, sizeof line, "MIG_DATA_READ 1 MiB: %.2fx the floor moving the same bytes (goal >= 0.8x)",
                  median_ratio(r, fr));
    notes.push_back(line);
  }
  stop_child(pid);
  ::unlink(big.c_str());

  auto d = open_device(rt, s.ram);
  constexpr uint64_t window = 64ull << 30, at = 1ull << 40;
  if (!d->probe() || !d->dma_map(at, window, proto::dma_flags::read | proto::dma_flags::write) ||
      !d->start_dirty_logging(4096))
    fail("logging a 64 GiB window");
  auto fr = floor_meter("floor: 48 B / 1 MiB + 48 B (a REPORT's sizes)", 48, mib + 48, 1);
  std::vector<uint8_t> bitmap;
  auto r = fn_meter("vfu-broker: DMA_LOGGING_REPORT 64 GiB at 4 KiB (2 reports)", s.pid, 2, [&] {
    return d->dirty_bitmap(at, window, 4096, bitmap).ok();
  });
  interleave({&fr, &r});
  rows.push_back(fr.result());
  auto rr = against(r, fr);
  rows.push_back(rr);
  char line[160];
  std::snprintf(line, sizeof line, "REPORT of a 64 GiB window's dirty bitmap: p50 %.2f ms, p99 %.2f ms (goal <= 10 ms)",
                rr.p50 / 1000, rr.p99 / 1000);
  notes.push_back(line);
  if (!d->stop_dirty_logging() || !d->dma_unmap_all()) fail("stopping the log");
}

// ---- nvme ---------------------------------------------------------------------------------------

// 4 KiB random reads from the NVMe controller (a 256 MiB file in the page cache) through our
// client and the library's NVMe host (device/nvme/host.hpp), at queue depth 1 and 32, with
// the queues and data in guest memory the server mmaps; doorbells are posted writes and
// completions are read from the CQ in memory, as a guest driver does. The floor exchanges
// one small request and one reply per read, the least any transport needs.
void nvme_rows(runtime& rt, const std::string& bindir, const servers& s, std::vector<row>& rows,
               std::vector<std::string>& notes) {
  std::string sock = s.dir + "/nvme.sock", img = s.dir + "/nvme.img";
  pid_t pid =
      start_server({bindir + "/vfu-serve", "--device=nvme", "--backing=" + img, "--size=256M", "--socket-path=" + sock}, sock);
  constexpr uint64_t iova = 0x40000000, size = 8 << 20, asq = 0, acq = 0x1000, sq = 0x2000, cq = 0x4000, data = 0x100000;
  proto::unique_fd guest(::memfd_create("guest", MFD_CLOEXEC));
  uint8_t* ram = nullptr;
  if (!guest || ::ftruncate(guest.get(), size) != 0 ||
      (ram = static_cast<uint8_t*>(::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, guest.get(), 0))) == MAP_FAILED) {
    std::fprintf(stderr, "vfu-bench: nvme: guest memory\n");
    std::exit(1);
  }
  {
    auto d = open_device(rt, sock);
    dev::nvme::host h(*d, ram, iova);
    h.posted_doorbells = true;
    const char* failed = !d->probe()                                                                   ? "probe"
                         : !d->dma_map(iova, size, proto::dma_flags::read | proto::dma_flags::write, &guest, 0) ? "DMA_MAP"
                         : !h.enable(asq, acq)                                                            ? "enable"
                         : !h.io_queue(1, sq, cq, 64)                                                     ? "I/O queue"
                                                                                                          : nullptr;
    if (failed) {
      std::fprintf(stderr, "vfu-bench: nvme: bringing the controller up failed at %s\n", failed);
      std::exit(1);
    }
    uint64_t blocks = (256ull << 20) / 512, seed = 1;
    auto read_cmd = [&](uint32_t slot) {
      seed = seed * 6364136223846793005ull + 1442695040888963407ull;
      uint64_t lba = (seed >> 33) % (blocks / 8) * 8;
      return dev::nvme::host::cmd(dev::nvme::io::read, 1, iova + data + slot * 4096ull, 0, uint32_t(lba),
                                  uint32_t(lba >> 32), 7);
    };
    auto f1 = floor_meter("floor: 36 B / 32 B ping-pong, 1 in flight (per read)", 36, 32, 1);
    auto q1 = fn_meter("vfu-broker nvme: 4 KiB random read, QD1", pid, 1, [&] {
      h.submit(1, read_cmd(0));
      auto c = h.reap(1);
      return c && c->status == 0;
    });
    interleave({&f1, &q1});
    rows.push_back(f1.result());
    rows.push_back(against(q1, f1));
    int inflight = 0;
    auto f32 = floor_meter("floor: 36 B / 32 B, 32 in flight (per read)", 36, 32, 32);
    auto q32 = fn_meter("vfu-broker nvme: 4 KiB random read, QD32", pid, 1, [&] {
      while (inflight < 32) h.submit(1, read_cmd(uint32_t(inflight++))), void();
      auto c = h.reap(1);
      if (!c || c->status) return false;
      --inflight;
      return true;
    });
    interleave({&f32, &q32});
    while (inflight > 0 && h.reap(1)) --inflight;
    rows.push_back(f32.result());
    auto r32 = against(q32, f32);
    rows.push_back(r32);
    auto r1 = rows[rows.size() - 3];
    char line[200];
    std::snprintf(line, sizeof line, "nvme 4 KiB random reads: QD1 %.0f IOPS (p50 %.1f us, p99 %.1f us), QD32 %.0f IOPS",
                  r1.rate, r1.p50, r1.p99, r32.rate);
    notes.push_back(line);
  }
  ::munmap(ram, size);
  stop_child(pid);
  ::unlink(sock.c_str());
  ::unlink(img.c_str());
}

// ---- vfu-trace ---------------------------------------------------------------------------------

// A raw client's 4-byte BAR2 reads, 1 in flight, straight to a gpio device and through
// vfu-trace (its output to /dev/null), interleaved: what the tracer adds per round trip.
void trace_rows(const std::string& bindir, const servers& s, std::vector<row>& rows, std::vector<std::string>& notes) {
  std::string sock = s.dir + "/trace.sock";
  pid_t pid = start_server({bindir + "/vfu-trace", "--listen=" + sock, "--connect=" + s.gpio3}, sock);
  {
    auto direct = raw_meter("raw client: BAR2 read 4 B, 1 in flight, direct", s.pid, s.gpio, reads(2, 1, 1), 36, 1);
    auto traced = raw_meter("raw client: BAR2 read 4 B, 1 in flight, through vfu-trace", s.pid, sock, reads(2, 1, 1), 36, 1);
    interleave({&direct, &traced});
    auto d = direct.result(), t = against(traced, direct);
    rows.push_back(d);
    rows.push_back(t);
    char line[200];
    std::snprintf(line, sizeof line, "vfu-trace adds %.1f us per 4-byte read round trip (mean; p50 %.1f -> %.1f us)",
                  (d.rate > 0 && t.rate > 0) ? (1e6 / t.rate - 1e6 / d.rate) : 0.0, d.p50, t.p50);
    notes.push_back(line);
  }
  stop_child(pid);
}

// ---- idle devices and soak -------------------------------------------------------------------

// N gpio devices in one vfu-serve, each with a connected client that negotiated and did one
// read: the server's RSS per connected idle device.
int idle_devices(const std::string& bindir, int n) {
  rlimit rl{rlim_t(4 * n + 256), rlim_t(4 * n + 256)};
  ::setrlimit(RLIMIT_NOFILE, &rl);
  g_secs = 0;
  servers s = start_servers(bindir, n);
  long before = proc_status_kib(s.pid, "VmRSS");
  std::vector<proto::unique_fd> clients;
  auto r = proto::make_frame(2, proto::region_read_request{{1, 2, 4}});
  uint8_t buf[36];
  for (auto& p : s.gpios) {
    auto fd = raw_connect(p);
    if (!fd || !write_all(fd.get(), r.bytes.data(), r.bytes.size()) || !read_all(fd.get(), buf, sizeof buf)) {
      std::fprintf(stderr, "vfu-bench: client for %s failed\n", p.c_str());
      break;
    }
    clients.push_back(std::move(fd));
  }
  long after = proc_status_kib(s.pid, "VmRSS");
  std::printf("%d idle devices: vfu-serve RSS %ld KiB listening, %ld KiB with %zu connected clients: %.1f KiB per connected device\n",
              n, before, after, clients.size(), double(after) / double(std::max<size_t>(1, clients.size())));
  clients.clear();
  stop_servers(s);
  return 0;
}

// A bounded mixed workload against one vfu-serve: register reads, posted writes, DMA copies
// through message windows with MSI-X interrupts, 1 MiB transfers, and a reconnect (close
// and reopen every device) every 2 seconds. RSS and open fds of the server and of this
// client are sampled after a warm-up and at the end.
int soak(const std::string& bindir, double seconds) {
  servers s = start_servers(bindir, 0);
  pid_t me = ::getpid();
  runtime rt;
  auto mem = std::make_shared<dev::guest_memory>();
  std::vector<uint8_t> guest(8192, 0x22);
  mem->add(0x100000, guest.size(), guest.data(), proto::dma_flags::read | proto::dma_flags::write);
  std::vector<uint8_t> big(1u << 20, 0x33);
  uint64_t reads = 0, posted = 0, copies = 0, bulk = 0, reconnects = 0, errors = 0;
  long srv_rss0 = 0, cli_rss0 = 0;
  int srv_fd0 = 0, cli_fd0 = 0;
  auto t0 = clk::now();
  auto end = t0 + std::chrono::duration_cast<clk::duration>(std::chrono::duration<double>(seconds));
  auto warm = t0 + std::chrono::duration_cast<clk::duration>(std::chrono::duration<double>(std::min(5.0, seconds / 10)));
  bool sampled = false;
  while (clk::now() < end) {
    auto gpio = open_device(rt, s.gpio);
    auto ram = open_device(rt, s.ram);
    auto dma = open_device(rt, s.dma, mem);
    proto::unique_fd efd(::eventfd(0, EFD_CLOEXEC));
    bool ok = enable_dma_and_msix(*dma, efd.get()) &&
              dma->dma_map(0x100000, guest.size(), proto::dma_flags::read | proto::dma_flags::write);
    if (!ok) ++errors;
    auto round_end = std::min(end, clk::now() + std::chrono::seconds(2));
    while (ok && clk::now() < round_end) {
      uint32_t v;
      for (int i = 0; i < 100; ++i) reads += gpio->read(2, 1, &v, 4) ? 1 : (++errors, 0);
      uint8_t one = 1;
      for (int i = 0; i < 100; ++i) posted += gpio->write_posted(2, 0, &one, 1) ? 1 : (++errors, 0);
      reads += gpio->read(2, 1, &v, 4) ? 1 : (++errors, 0);
      uint32_t bell = 1;
      if (!program_copy(*dma, 0x100000, 0x101000, 4096)) ++errors;
      pollfd p{efd.get(), POLLIN, 0};
      uint64_t cnt;
      if (dma->write(0, dev::dmatest::doorbell, &bell, 4) && ::poll(&p, 1, 5000) == 1 && ::read(efd.get(), &cnt, 8) == 8)
        ++copies;
      else
        ++errors;
      bulk += ram->write(0, 0, big.data(), big.size()) && ram->read(0, 0, big.data(), big.size()) ? 1 : (++errors, 0);
      if (!sampled && clk::now() >= warm) {
        sampled = true;
        srv_rss0 = proc_status_kib(s.pid, "VmRSS");
        cli_rss0 = proc_status_kib(me, "VmRSS");
        srv_fd0 = open_fds(s.pid);
        cli_fd0 = open_fds(me);
      }
    }
    ++reconnects;  // the devices close here; the next round opens them again
  }
  // Sample with the same set of connections open as at the first sample.
  long srv_rss1, cli_rss1;
  int srv_fd1, cli_fd1;
  {
    auto gpio = open_device(rt, s.gpio);
    auto ram = open_device(rt, s.ram);
    auto dma = open_device(rt, s.dma, mem);
    proto::unique_fd efd(::eventfd(0, EFD_CLOEXEC));
    if (!enable_dma_and_msix(*dma, efd.get()) ||
        !dma->dma_map(0x100000, guest.size(), proto::dma_flags::read | proto::dma_flags::write))
      ++errors;
    srv_rss1 = proc_status_kib(s.pid, "VmRSS");
    cli_rss1 = proc_status_kib(me, "VmRSS");
    srv_fd1 = open_fds(s.pid);
    cli_fd1 = open_fds(me);
  }
  stop_servers(s);
  double el = std::chrono::duration<double>(clk::now() - t0).count();
  std::printf("soak %.0f s: %llu reads, %llu posted writes, %llu DMA copies, %llu 1 MiB write+read pairs, %llu reconnects, %llu errors\n",
              el, (unsigned long long)reads, (unsigned long long)posted, (unsigned long long)copies,
              (unsigned long long)bulk, (unsigned long long)reconnects, (unsigned long long)errors);
  std::printf("vfu-serve: RSS %ld -> %ld KiB (%+ld), open fds %d -> %d (%+d)\n", srv_rss0, srv_rss1, srv_rss1 - srv_rss0,
              srv_fd0, srv_fd1, srv_fd1 - srv_fd0);
  std::printf("client:    RSS %ld -> %ld KiB (%+ld), open fds %d -> %d (%+d)\n", cli_rss0, cli_rss1, cli_rss1 - cli_rss0,
              cli_fd0, cli_fd1, cli_fd1 - cli_fd0);
  return errors == 0 && srv_fd1 == srv_fd0 && cli_fd1 == cli_fd0 ? 0 : 1;
}

void print(const std::vector<row>& rows, bool json) {
  if (json) std::printf("[\n");
  for (size_t i = 0; i < rows.size(); ++i) {
    auto& r = rows[i];
    if (json) {
      std::printf("  {\"name\": \"%s\", \"rate\": %.1f, \"unit\": \"%s\", \"p50_us\": %.1f, \"p99_us\": %.1f, "
                  "\"server_cpu_us_per_op\": %.2f, \"floor\": \"%s\", \"ratio_to_floor\": %.3f}%s\n",
                  r.name.c_str(), r.rate, r.unit, r.p50, r.p99, r.srv_us, r.floor.c_str(), r.ratio,
                  i + 1 < rows.size() ? "," : "");
      continue;
    }
    char ratio[32] = "", cpu[32] = "", lat[48] = "";
    if (!r.floor.empty()) std::snprintf(ratio, sizeof ratio, "%5.2fx", r.ratio);
    else std::snprintf(ratio, sizeof ratio, "floor");
    if (r.srv_us >= 0) std::snprintf(cpu, sizeof cpu, "%6.2f", r.srv_us);
    if (r.p50 > 0) std::snprintf(lat, sizeof lat, "%8.1f %8.1f", r.p50, r.p99);
    std::printf("%-62s %10.0f %-5s %17s %8s  %s\n", r.name.c_str(), r.rate, r.unit, lat, cpu, ratio);
  }
  if (json) std::printf("]\n");
}

}  // namespace

int main(int argc, char** argv) {
  bool json = false;
  int idle = 0, devices = 16;
  double soak_s = 0;
  std::set<std::string> only;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto num = [&](const char* k, double& out) {
      std::string p = std::string(k) + "=";
      if (a.rfind(p, 0) != 0) return false;
      char* end = nullptr;
      out = std::strtod(a.c_str() + p.size(), &end);
      if (!end || *end || out <= 0) {
        std::fprintf(stderr, "vfu-bench: %s needs a positive number\n", k);
        std::exit(2);
      }
      return true;
    };
    double v;
    if (num("--seconds", v)) g_secs = std::min(v, 600.0);
    else if (num("--idle-devices", v)) idle = int(std::min(v, 10000.0));
    else if (num("--devices", v)) devices = int(std::min(v, 256.0));
    else if (num("--soak", v)) soak_s = std::min(v, 3600.0);
    else if (a.rfind("--only=", 0) == 0) {
      std::string l = a.substr(7);
      for (size_t p = 0; p <= l.size();) {
        size_t c = l.find(',', p);
        if (c == std::string::npos) c = l.size();
        only.insert(l.substr(p, c - p));
        p = c + 1;
      }
    } else if (a.rfind("--poll-max-ns=", 0) == 0 || a.rfind("--client-poll-max-ns=", 0) == 0 ||
               a.rfind("--caller-poll-max-ns=", 0) == 0) {
      auto n = runtime_options::parse_poll_max_ns(a.substr(a.find('=') + 1));
      if (!n) {
        std::fprintf(stderr, "vfu-bench: %s needs nanoseconds from 0 to 1000000000\n", a.substr(0, a.find('=')).c_str());
        return 2;
      }
      if (a.rfind("--poll-max-ns=", 0) == 0) g_serve_poll = std::to_string(*n);
      else if (a.rfind("--caller-", 0) == 0) g_caller_poll = *n;
      else g_client_poll = *n;
    } else if (a.rfind("--lvu=", 0) == 0) {
      g_lvu = a.substr(6);
      if (::access(g_lvu.c_str(), X_OK) != 0) {
        std::fprintf(stderr, "vfu-bench: --lvu=%s is not an executable (libvfio-user's samples/gpio-pci-idio-16)\n", g_lvu.c_str());
        return 2;
      }
    } else if (a == "--loop-reads") g_caller_reads = false;
    else if (a == "--json") json = true;
    else {
      std::fprintf(stderr,
                   "usage: vfu-bench [--seconds=S] [--json] [--only=sync,pipelined,posted,bandwidth,client,dma,migration,nvme,trace,devices]\n"
                   "                 [--devices=N] [--poll-max-ns=N (vfu-serve's)] [--client-poll-max-ns=N]\n"
                   "                 [--caller-poll-max-ns=N (our client's callers; default: the library's)]\n"
                   "                 [--loop-reads (our client's loop reads every reply: caller_reads off)]\n"
                   "                 [--lvu=PATH (libvfio-user's samples/gpio-pci-idio-16: a row in sync)]\n"
                   "                 | --idle-devices=N | --soak=SECONDS\n");
      return 2;
    }
  }
  std::string self = argv[0];
  std::string bindir = self.find('/') == std::string::npos ? "." : self.substr(0, self.rfind('/'));
  if (idle > 0) return idle_devices(bindir, idle);
  if (soak_s > 0) return soak(bindir, soak_s);
  auto want = [&](const char* g) { return only.empty() || only.count(g); };
  ::signal(SIGPIPE, SIG_IGN);
  std::atexit(stop_children);

  servers s = start_servers(bindir, want("devices") ? devices : 0);
  // Each row is measured interleaved with the floor (and the raw client) it is compared
  // with: g_rounds slices each, round-robin; its ratio is the median of the per-round
  // ratios (see meter). Rows that share nothing run one after the other.
  std::vector<row> rows;
  std::vector<std::string> notes;
  constexpr size_t rd_req = 32, rd_rep = 36;  // 4-byte REGION_READ request and reply
  auto floor1 = [&] { return floor_meter("floor: 32 B / 36 B ping-pong, 1 in flight", rd_req, rd_rep, 1); };
  auto floor_k = [&](int k) {
    return floor_meter("floor: 32 B / 36 B, " + std::to_string(k) + " in flight", rd_req, rd_rep, k);
  };
  auto floor_posted = [&] {  // 64 posted 1-byte writes (33 B each) and a fence
    return floor_meter("floor: 33 B x 64 without reply + 32 B / 36 B fence", 33, rd_rep, 65, 65);
  };
  if (want("sync")) {
    auto f = floor1();
    auto c = raw_meter("raw client: config read 4 B, 1 in flight", s.pid, s.gpio, reads(7, 0, 1), rd_rep, 1);
    auto b = raw_meter("raw client: BAR2 read 4 B, 1 in flight", s.pid, s.gpio2, reads(2, 1, 1), rd_rep, 1);
    // The same against a vfu-serve that never polls (issue 23's goal is about this one),
    // and against libvfio-user's gpio sample when --lvu names it: one run, one floor.
    std::string quiet = s.dir + "/gpio-nopoll.sock", lvu = s.dir + "/lvu-gpio.sock";
    pid_t qpid = start_server({bindir + "/vfu-serve", "--device=gpio", "--socket-path=" + quiet, "--poll-max-ns=0"}, quiet);
    pid_t lpid = g_lvu.empty() ? 0 : start_server({g_lvu, lvu}, lvu);
    if (!qpid || (!g_lvu.empty() && !lpid)) {
      std::fprintf(stderr, "vfu-bench: %s did not start\n", !qpid ? "vfu-serve --poll-max-ns=0" : g_lvu.c_str());
      std::exit(1);
    }
    auto q = raw_meter("raw client: BAR2 read 4 B, 1 in flight, no polling", qpid, quiet, reads(2, 1, 1),
                       rd_rep, 1);
    // What waiting in epoll instead of in the read costs by itself: the best a server that
    // does not poll can do (docs/performance.md, issue 23).
    auto fe = floor_meter("floor: the same, the server waiting in epoll_wait", rd_req, rd_rep, 1, 1, true);
    std::vector<meter*> ms{&f, &fe, &c, &b, &q};
    meter l;
    if (lpid) {
      l = raw_meter("raw client: BAR2 read 4 B, 1 in flight, libvfio-user", lpid, lvu, reads(2, 1, 1), rd_rep, 1);
      ms.push_back(&l);
    }
    interleave(ms);
    rows.push_back(f.result());
    rows.push_back(against(fe, f));
    rows.push_back(against(c, f));
    rows.push_back(against(b, f));
    rows.push_back(against(q, f));
    if (lpid) rows.push_back(against(l, f));
    char line[200];
    std::snprintf(line, sizeof line, "without polling, 1 in flight: %.2fx the rate of the echo that waits in epoll_wait%s",
                  median_ratio(q, fe), lpid ? "" : " (--lvu=PATH adds libvfio-user's gpio sample)");
    notes.push_back(line);
    if (lpid) {
      std::snprintf(line, sizeof line, "... and libvfio-user's gpio sample: %.2fx", median_ratio(l, fe));
      notes.push_back(line);
    }
    q = meter{};
    l = meter{};
    stop_child(qpid);
    if (lpid) stop_child(lpid);
    ::unlink(quiet.c_str());
    ::unlink(lvu.c_str());
  }
  if (want("pipelined")) {
    for (int k : {16, 64}) {
      auto f = floor_k(k);
      auto r = raw_meter("raw client: BAR2 read 4 B, " + std::to_string(k) + " in flight", s.pid, s.gpio, reads(2, 1, k),
                         size_t(k) * rd_rep, uint64_t(k));
      interleave({&f, &r});
      rows.push_back(f.result());
      rows.push_back(against(r, f));
    }
  }
  if (want("posted")) {
    std::vector<proto::frame> fr;
    for (int i = 0; i < 64; ++i)
      fr.push_back(proto::make_frame(uint16_t(i + 2), proto::region_write_request{{0, 2, 1}, {1}}, proto::hflags::no_reply));
    fr.push_back(proto::make_frame(100, proto::region_read_request{{1, 2, 4}}));
    auto f = floor_posted();
    auto r = raw_meter("raw client: 64 posted writes + 1 read", s.pid, s.gpio, fr, rd_rep, 65);
    interleave({&f, &r});
    rows.push_back(f.result());
    rows.push_back(against(r, f));
  }
  runtime_options ropts;
  ropts.poll_max_ns = g_client_poll;
  runtime rt({}, ropts);
  if (want("client")) {
    // A raw client on one gpio device, our client API on another, the floor: interleaved.
    auto f = floor1();
    auto raw = raw_meter("raw client: BAR2 read 4 B, 1 in flight (same run)", s.pid, s.gpio, reads(2, 1, 1), rd_rep, 1);
    auto d = open_device(rt, s.gpio2);
    auto cl = fn_meter("vfu-broker client API: BAR2 read 4 B, 1 thread", s.pid, 1, [&] {
      uint32_t v;
      return bool(d->read(2, 1, &v, 4));
    });
    // The same with callers that sleep at once (caller_poll_max_ns = 0), as a raw client does
    // (measured only when the row above polls).
    bool polls = g_caller_poll != 0;
    auto ds = polls ? open_device(rt, s.gpio3, nullptr, 0) : nullptr;
    auto cs = fn_meter("vfu-broker client API: BAR2 read 4 B, 1 thread, no polling", s.pid, 1, [&] {
      uint32_t v;
      return bool(ds->read(2, 1, &v, 4));
    });
    if (polls) interleave({&f, &raw, &cl, &cs});
    else interleave({&f, &raw, &cl});
    rows.push_back(f.result());
    rows.push_back(against(raw, f));
    rows.push_back(against(cl, raw));
    auto fr = rows[rows.size() - 3], cr = rows.back();
    if (polls) rows.push_back(against(cs, raw));
    ds.reset();
    char line[256];
    std::snprintf(line, sizeof line,
                  "broker <-> broker, 1 in flight: mean latency %.2fx the floor's (median per round), p50 %.2fx",
                  median_ratio(f, cl), fr.p50 > 0 ? cr.p50 / fr.p50 : 0.0);
    notes.push_back(line);
    std::snprintf(line, sizeof line, "our client API from one thread: %.2fx a raw client's rate (same server, same run)",
                  median_ratio(cl, raw));
    notes.push_back(line);
    if (polls) {
      std::snprintf(line, sizeof line, "... with callers that never poll (caller_poll_max_ns=0): %.2fx",
                    median_ratio(cs, raw));
      notes.push_back(line);
    }
    auto r4 = client_threads("vfu-broker client API: BAR2 read 4 B, 4 threads", s.pid, *d, 4, 2);
    r4.floor = fr.name;
    r4.ratio = r4.rate / fr.rate;
    rows.push_back(r4);
    for (int k : {16, 64}) {
      std::vector<proto::message> batch(size_t(k), proto::region_read_request{{1, 2, 4}});
      auto fk = floor_k(k);
      auto cm = fn_meter("vfu-broker client API: call_many, " + std::to_string(k) + " in flight", s.pid, uint64_t(k), [&] {
        for (auto& c : d->ep().call_many(batch))
          if (!c.ok()) return false;
        return true;
      });
      interleave({&fk, &cm});
      rows.push_back(fk.result());
      rows.push_back(against(cm, fk));
    }
    uint8_t one = 1;
    auto fp = floor_posted();
    auto cp = fn_meter("vfu-broker client API: 64 posted writes + 1 read", s.pid, 65, [&] {
      for (int i = 0; i < 64; ++i)
        if (!d->write_posted(2, 0, &one, 1)) return false;
      uint32_t v;
      return bool(d->read(2, 1, &v, 4));
    });
    interleave({&fp, &cp});
    rows.push_back(fp.result());
    rows.push_back(against(cp, fp));
  }
  if (want("bandwidth")) {
    constexpr size_t mib = 1u << 20;
    auto d = open_device(rt, s.ram);
    std::vector<uint8_t> buf(mib, 0x5a);
    auto mbs = [](row r) {
      r.rate *= 1.048576;  // MB/s of payload
      r.unit = "MB/s";
      return r;
    };
    auto fr = floor_meter("floor: 32 B / 1 MiB + 32 B (1 MiB read)", 32, mib + 32, 1);
    auto r = fn_meter("vfu-broker client API: 1 MiB REGION_READ", s.pid, 1, [&] { return bool(d->read(0, 0, buf.data(), mib)); });
    interleave({&fr, &r});
    rows.push_back(mbs(fr.result()));
    rows.push_back(mbs(against(r, fr)));
    auto fw = floor_meter("floor: 1 MiB + 32 B / 32 B (1 MiB write)", mib + 32, 32, 1);
    auto w = fn_meter("vfu-broker client API: 1 MiB REGION_WRITE", s.pid, 1, [&] { return bool(d->write(0, 0, buf.data(), mib)); });
    interleave({&fw, &w});
    rows.push_back(mbs(fw.result()));
    rows.push_back(mbs(against(w, fw)));
  }
  if (want("dma")) {
    // Our client's loop answers the DMA requests. A client runtime does not poll by default
    // (the first two rows, unless --client-poll-max-ns says otherwise); in the last two its
    // loop polls as vfu-serve's does.
    runtime_options popts;
    popts.poll_max_ns = runtime_options::default_poll_max_ns;
    runtime prt({}, popts);
    auto f = floor1();
    auto one = dma_meter(rt, s.dma2, s.pid, 4096, false);
    auto twin = dma_meter(rt, s.dma, s.pid, 4096, true);
    auto pone = dma_meter(prt, s.dma4, s.pid, 4096, false, ", client loop polls");
    auto ptwin = dma_meter(prt, s.dma3, s.pid, 4096, true, ", client loop polls");
    interleave({&f, &one, &twin, &pone, &ptwin});
    rows.push_back(f.result());
    for (auto* m : {&one, &twin, &pone, &ptwin}) rows.push_back(against(*m, f));
  }
  if (want("migration")) migration_rows(rt, bindir, s, rows, notes);
  if (want("nvme")) nvme_rows(rt, bindir, s, rows, notes);
  if (want("trace")) trace_rows(bindir, s, rows, notes);
  if (want("devices") && devices > 0) {
    auto fm = floor_multi("floor: " + std::to_string(devices) + " socketpairs, one poll() server", devices);
    // The same devices in a vfu-serve that does not poll, as a host serving many devices
    // from one process would run them.
    std::vector<std::string> args{bindir + "/vfu-serve", "--poll-max-ns=0"}, quiet;
    for (int i = 0; i < devices; ++i) {
      quiet.push_back(s.dir + "/q" + std::to_string(i) + ".sock");
      args.push_back("--device=gpio");
      args.push_back("--socket-path=" + quiet.back());
    }
    pid_t qpid = start_server(args, quiet.back());
    if (!qpid) {
      std::fprintf(stderr, "vfu-bench: vfu-serve --poll-max-ns=0 did not start\n");
      std::exit(1);
    }
    std::string n = std::to_string(devices);
    auto md = many_devices(n + " gpio devices in one vfu-serve, 1 in flight each", s.pid, s.gpios);
    auto mq = many_devices(n + " gpio devices in one vfu-serve, 1 in flight each, no polling", qpid, quiet);
    interleave({&fm, &md, &mq});
    rows.push_back(fm.result());
    rows.push_back(against(md, fm));
    rows.push_back(against(mq, fm));
    mq = meter{};
    stop_child(qpid);
    for (auto& q : quiet) ::unlink(q.c_str());
  }
  stop_servers(s);
  if (!json)
    std::printf("%-62s %10s %-5s %17s %8s  %s\n", "row", "rate", "", "p50 / p99 us", "srv us/op", "vs floor");
  print(rows, json);
  if (!json)
    for (auto& n : notes) std::printf("%s\n", n.c_str());
  return 0;
}
