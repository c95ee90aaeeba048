// vfu-bench: what vfu-broker costs, against the raw floor measured in the same run.
//
//   vfu-bench [--seconds=S] [--json] [--only=GROUP,...] [--devices=N]
//   vfu-bench --idle-devices=N        server RSS per connected idle device
//   vfu-bench --soak=SECONDS          mixed workload; RSS and fd drift (issue: no growth)
//
// The floor is a two-process UNIX-socket ping-pong exchanging the same byte sizes as the
// vfio-user messages it stands for, with one read and one write per message on each side
// (the server reads one request, writes its reply; the client writes each request and
// reads each reply). Every other row runs against vfu-serve (gpio, dma-test and ram
// devices in one process) and is reported as a ratio to the floor row it names. Server CPU
// per op is the serving process's on-CPU time (all threads, /proc/PID/task/*/schedstat)
// divided by the operations of the row.
//
// Groups (--only): sync, pipelined, posted, bandwidth, client, dma, devices.
// A benchmark, not a test: nothing here asserts a time. docs/performance.md has the method.
#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
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
#include <cstring>
#include <functional>
#include <set>
#include <string>
#include <thread>
#include <vector>

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

/// Runs `batch` until the time is up; each call is `per_batch` operations.
row measure(const std::string& name, pid_t server, uint64_t per_batch, const std::function<bool()>& batch) {
  std::vector<double> lat;
  lat.reserve(1 << 16);
  uint64_t ops = 0;
  uint64_t c0 = server ? cpu_ns(server) : 0;
  auto t0 = clk::now();
  auto end = t0 + std::chrono::duration_cast<clk::duration>(std::chrono::duration<double>(g_secs));
  while (clk::now() < end) {
    auto s = clk::now();
    if (!batch()) {
      std::fprintf(stderr, "vfu-bench: %s: a request failed\n", name.c_str());
      break;
    }
    lat.push_back(std::chrono::duration<double, std::micro>(clk::now() - s).count());
    ops += per_batch;
  }
  double el = std::chrono::duration<double>(clk::now() - t0).count();
  row r;
  r.name = name;
  r.rate = double(ops) / el;
  std::sort(lat.begin(), lat.end());
  if (!lat.empty()) {
    r.p50 = lat[lat.size() / 2];
    r.p99 = lat[std::min(lat.size() - 1, lat.size() * 99 / 100)];
  }
  if (server && ops) r.srv_us = double(cpu_ns(server) - c0) / 1000.0 / double(ops);
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

/// Two processes, one socketpair: `inflight` requests of `req` bytes (one write each), a
/// reply of `rep` bytes to every `reply_every`-th (one read each). The server reads one
/// request and writes its reply: no batching anywhere.
row floor(const std::string& name, size_t req, size_t rep, int inflight, int reply_every = 1) {
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) std::exit(1);
  pid_t pid = ::fork();
  if (pid == 0) {
    ::close(sv[0]);
    std::vector<uint8_t> in(req), out(rep, 0x5a);
    for (uint64_t n = 1;; ++n) {
      if (!read_all(sv[1], in.data(), req)) _exit(0);
      if (n % uint64_t(reply_every) == 0 && !write_all(sv[1], out.data(), rep)) _exit(0);
    }
  }
  ::close(sv[1]);
  std::vector<uint8_t> out(req, 0xa5), in(rep);
  int replies = inflight / reply_every;
  auto r = measure(name, pid, uint64_t(inflight), [&] {
    for (int i = 0; i < inflight; ++i)
      if (!write_all(sv[0], out.data(), req)) return false;
    for (int i = 0; i < replies; ++i)
      if (!read_all(sv[0], in.data(), rep)) return false;
    return true;
  });
  ::close(sv[0]);
  ::waitpid(pid, nullptr, 0);
  return r;
}

/// Drives each fd from its own thread for g_secs: write `req`, read a `rep_size` reply, 1 in
/// flight per fd. Total ops/s and the server's CPU per op.
row drive_each(const std::string& name, pid_t server, const std::vector<int>& fds, proto::byte_view req,
               size_t rep_size) {
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> ops{0};
  uint64_t c0 = cpu_ns(server);
  auto t0 = clk::now();
  std::vector<std::thread> ts;
  for (int fd : fds)
    ts.emplace_back([&, fd] {
      std::vector<uint8_t> in(rep_size);
      while (!stop) {
        if (!write_all(fd, req.data, req.size) || !read_all(fd, in.data(), in.size())) return;
        ++ops;
      }
    });
  std::this_thread::sleep_for(std::chrono::duration<double>(g_secs));
  stop = true;
  for (auto& t : ts) t.join();
  double el = std::chrono::duration<double>(clk::now() - t0).count();
  row r;
  r.name = name;
  r.rate = double(ops) / el;
  r.srv_us = double(cpu_ns(server) - c0) / 1000.0 / double(std::max<uint64_t>(1, ops));
  return r;
}

/// N socketpairs served by one process with poll(), one read and one write per message;
/// N client threads with 1 request in flight each.
row floor_multi(const std::string& name, int n) {
  std::vector<int> cl(static_cast<size_t>(n)), sv(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) {
    int p[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, p) != 0) std::exit(1);
    cl[size_t(i)] = p[0];
    sv[size_t(i)] = p[1];
  }
  pid_t pid = ::fork();
  if (pid == 0) {
    for (int c : cl) ::close(c);
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
  const std::vector<uint8_t> req(32);
  auto r = drive_each(name, pid, cl, {req.data(), req.size()}, 36);
  for (int c : cl) ::close(c);
  ::waitpid(pid, nullptr, 0);
  return r;
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

/// One write of `reqs`, then `reply_bytes` read back: a raw client's batch.
row raw_rows(const std::string& name, pid_t server, const std::string& sock, const std::vector<proto::frame>& frames,
             size_t reply_bytes, uint64_t ops_per_batch) {
  auto fd = raw_connect(sock);
  if (!fd) {
    std::fprintf(stderr, "vfu-bench: cannot reach %s\n", sock.c_str());
    std::exit(1);
  }
  std::vector<uint8_t> reqs;
  for (auto& f : frames) reqs.insert(reqs.end(), f.bytes.begin(), f.bytes.end());
  std::vector<uint8_t> in(reply_bytes);
  return measure(name, server, ops_per_batch, [&] {
    return write_all(fd.get(), reqs.data(), reqs.size()) && read_all(fd.get(), in.data(), in.size());
  });
}

std::vector<proto::frame> reads(uint32_t region, uint64_t off, int n) {
  std::vector<proto::frame> v;
  for (int i = 0; i < n; ++i) v.push_back(proto::make_frame(uint16_t(i + 2), proto::region_read_request{{off, region, 4}}));
  return v;
}

// ---- modes -----------------------------------------------------------------------------------

std::string g_serve_poll;     ///< --poll-max-ns for vfu-serve (empty: its default)
int64_t g_client_poll = 0;    ///< runtime_options::poll_max_ns of our client's runtime

struct servers {
  pid_t pid = 0;
  std::string dir, gpio, dma, ram;
  std::vector<std::string> gpios;  ///< --devices gpio sockets
};

servers start_servers(const std::string& bindir, int devices) {
  servers s;
  char tmp[] = "/tmp/vfu-bench-XXXXXX";
  if (!::mkdtemp(tmp)) std::exit(1);
  s.dir = tmp;
  s.gpio = s.dir + "/gpio.sock";
  s.dma = s.dir + "/dma.sock";
  s.ram = s.dir + "/ram.sock";
  std::vector<std::string> args{bindir + "/vfu-serve", "--device=gpio", "--socket-path=" + s.gpio, "--device=dma-test",
                                "--socket-path=" + s.dma, "--device=ram", "--socket-path=" + s.ram};
  if (!g_serve_poll.empty()) args.push_back("--poll-max-ns=" + g_serve_poll);
  for (int i = 0; i < devices; ++i) {
    s.gpios.push_back(s.dir + "/g" + std::to_string(i) + ".sock");
    args.push_back("--device=gpio");
    args.push_back("--socket-path=" + s.gpios.back());
  }
  s.pid = ::fork();
  if (s.pid == 0) {
    int null = ::open("/dev/null", O_WRONLY);
    ::dup2(null, 2);
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    ::execv(argv[0], argv.data());
    _exit(127);
  }
  std::string last = s.gpios.empty() ? s.ram : s.gpios.back();
  for (int i = 0; i < 250 && ::access(last.c_str(), F_OK) != 0; ++i) ::usleep(20000);
  return s;
}

void stop_servers(servers& s) {
  ::kill(s.pid, SIGTERM);
  ::waitpid(s.pid, nullptr, 0);
  ::rmdir(s.dir.c_str());
}

std::unique_ptr<dev::remote_device> open_device(runtime& rt, const std::string& sock,
                                                std::shared_ptr<dev::guest_memory> mem = nullptr) {
  endpoint_config cfg;
  cfg.reconnect = false;
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
/// and a DMA_WRITE from the server to our client, then an MSI-X interrupt.
row dma_round_trips(runtime& rt, const servers& s, uint32_t len) {
  auto mem = std::make_shared<dev::guest_memory>();
  std::vector<uint8_t> guest(2 * size_t(len), 0x11);
  mem->add(0x100000, guest.size(), guest.data(), proto::dma_flags::read | proto::dma_flags::write);
  auto d = open_device(rt, s.dma, mem);
  row bad;
  bad.name = "dma (failed)";
  proto::unique_fd efd(::eventfd(0, EFD_CLOEXEC));
  if (!enable_dma_and_msix(*d, efd.get())) return bad;
  if (!d->dma_map(0x100000, guest.size(), proto::dma_flags::read | proto::dma_flags::write)) return bad;
  if (!program_copy(*d, 0x100000, 0x100000 + len, len)) return bad;
  auto r = measure("dma-test copy of " + std::to_string(len) + " B (DMA_READ + DMA_WRITE + MSI-X)", s.pid, 2, [&] {
    uint32_t one = 1;
    if (!d->write(0, dev::dmatest::doorbell, &one, 4)) return false;
    pollfd p{efd.get(), POLLIN, 0};
    if (::poll(&p, 1, 5000) != 1) return false;
    uint64_t cnt;
    return ::read(efd.get(), &cnt, 8) == 8;
  });
  r.name = "dma-test copy of " + std::to_string(len) + " B: DMA msgs (2 per copy)";
  return r;
}

/// N gpio devices in one vfu-serve, each driven at once by a raw client with 1 in flight.
row many_devices(const servers& s) {
  int n = int(s.gpios.size());
  std::vector<proto::unique_fd> conns;
  std::vector<int> fds;
  for (auto& p : s.gpios) {
    conns.push_back(raw_connect(p));
    fds.push_back(conns.back().get());
  }
  auto req = proto::make_frame(2, proto::region_read_request{{0, 2, 4}});
  return drive_each(std::to_string(n) + " gpio devices in one vfu-serve, 1 in flight each", s.pid, fds, {req.bytes.data(), req.bytes.size()}, 36);
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
    } else if (a.rfind("--poll-max-ns=", 0) == 0 || a.rfind("--client-poll-max-ns=", 0) == 0) {
      std::string val = a.substr(a.find('=') + 1);
      char* end = nullptr;
      long long n = std::strtoll(val.c_str(), &end, 10);
      if (val.empty() || *end || n < 0 || n > 1000000000) {
        std::fprintf(stderr, "vfu-bench: %s needs nanoseconds from 0 to 1000000000\n", a.substr(0, a.find('=')).c_str());
        return 2;
      }
      if (a[2] == 'p') g_serve_poll = std::to_string(n);
      else g_client_poll = n;
    } else if (a == "--json") json = true;
    else {
      std::fprintf(stderr,
                   "usage: vfu-bench [--seconds=S] [--json] [--only=sync,pipelined,posted,bandwidth,client,dma,devices]\n"
                   "                 [--devices=N] [--poll-max-ns=N (vfu-serve's)] [--client-poll-max-ns=N]\n"
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

  servers s = start_servers(bindir, want("devices") ? devices : 0);
  std::vector<row> rows;
  auto add = [&](row r, const row* f) {
    if (f) {
      r.floor = f->name;
      r.ratio = r.rate / f->rate;
    }
    rows.push_back(r);
  };
  constexpr size_t rd_req = 32, rd_rep = 36;  // 4-byte REGION_READ request and reply
  std::vector<row> floors;
  auto fl = [&](row r) {
    rows.push_back(r);
    return rows.size() - 1;
  };
  size_t f1 = 0, f16 = 0, f64 = 0;
  auto floor_k = [&](size_t& slot, int k) -> const row& {  // made once, on first use
    if (!slot) slot = fl(floor("floor: 32 B / 36 B, " + std::to_string(k) + " in flight", rd_req, rd_rep, k));
    return rows[slot];
  };
  if (want("sync") || want("client") || want("dma")) f1 = fl(floor("floor: 32 B / 36 B ping-pong, 1 in flight", rd_req, rd_rep, 1));
  if (want("sync")) {
    add(raw_rows("raw client: config read 4 B, 1 in flight", s.pid, s.gpio, reads(7, 0, 1), rd_rep, 1), &rows[f1]);
    add(raw_rows("raw client: BAR2 read 4 B, 1 in flight", s.pid, s.gpio, reads(2, 1, 1), rd_rep, 1), &rows[f1]);
  }
  if (want("pipelined")) {
    add(raw_rows("raw client: BAR2 read 4 B, 16 in flight", s.pid, s.gpio, reads(2, 1, 16), 16 * rd_rep, 16), &floor_k(f16, 16));
    add(raw_rows("raw client: BAR2 read 4 B, 64 in flight", s.pid, s.gpio, reads(2, 1, 64), 64 * rd_rep, 64), &floor_k(f64, 64));
  }
  size_t fp = 0;
  auto floor_posted = [&]() -> const row& {  // 64 posted 1-byte writes (33 B each) and a fence
    if (!fp) fp = fl(floor("floor: 33 B x 64 without reply + 32 B / 36 B fence", 33, rd_rep, 65, 65));
    return rows[fp];
  };
  if (want("posted")) {
    std::vector<proto::frame> fr;
    for (int i = 0; i < 64; ++i)
      fr.push_back(proto::make_frame(uint16_t(i + 2), proto::region_write_request{{0, 2, 1}, {1}}, proto::hflags::no_reply));
    fr.push_back(proto::make_frame(100, proto::region_read_request{{1, 2, 4}}));
    add(raw_rows("raw client: 64 posted writes + 1 read", s.pid, s.gpio, fr, rd_rep, 65), &floor_posted());
  }
  runtime_options ropts;
  ropts.poll_max_ns = g_client_poll;
  runtime rt({}, ropts);
  if (want("client")) {
    // vfu-serve serves one client per socket at a time: the raw client goes first.
    size_t raw1 = rows.size();
    add(raw_rows("raw client: BAR2 read 4 B, 1 in flight (same run)", s.pid, s.gpio, reads(2, 1, 1), rd_rep, 1), &rows[f1]);
    auto d = open_device(rt, s.gpio);
    add(client_threads("vfu-broker client API: BAR2 read 4 B, 1 thread", s.pid, *d, 1, 2), &rows[f1]);
    rows.back().floor = rows[raw1].name;
    rows.back().ratio = rows.back().rate / rows[raw1].rate;
    add(client_threads("vfu-broker client API: BAR2 read 4 B, 4 threads", s.pid, *d, 4, 2), &rows[f1]);
    for (int k : {16, 64}) {
      std::vector<proto::message> batch(size_t(k), proto::region_read_request{{1, 2, 4}});
      auto r = measure("vfu-broker client API: call_many, " + std::to_string(k) + " in flight", s.pid, uint64_t(k), [&] {
        for (auto& c : d->ep().call_many(batch))
          if (!c.ok()) return false;
        return true;
      });
      add(r, &floor_k(k == 16 ? f16 : f64, k));
    }
    uint8_t one = 1;
    uint32_t v;
    add(measure("vfu-broker client API: 64 posted writes + 1 read", s.pid, 65,
                [&] {
                  for (int i = 0; i < 64; ++i)
                    if (!d->write_posted(2, 0, &one, 1)) return false;
                  return bool(d->read(2, 1, &v, 4));
                }),
        &floor_posted());
  }
  if (want("bandwidth")) {
    constexpr size_t mib = 1u << 20;
    auto d = open_device(rt, s.ram);
    std::vector<uint8_t> buf(mib, 0x5a);
    auto fr = fl(floor("floor: 32 B / 1 MiB + 32 B (1 MiB read)", 32, mib + 32, 1));
    rows[fr].rate *= 1.048576;  // MB/s of payload
    rows[fr].unit = "MB/s";
    auto r = measure("vfu-broker client API: 1 MiB REGION_READ", s.pid, 1, [&] { return bool(d->read(0, 0, buf.data(), mib)); });
    r.rate *= 1.048576;
    r.unit = "MB/s";
    add(r, &rows[fr]);
    auto fw = fl(floor("floor: 1 MiB + 32 B / 32 B (1 MiB write)", mib + 32, 32, 1));
    rows[fw].rate *= 1.048576;
    rows[fw].unit = "MB/s";
    auto w = measure("vfu-broker client API: 1 MiB REGION_WRITE", s.pid, 1, [&] { return bool(d->write(0, 0, buf.data(), mib)); });
    w.rate *= 1.048576;
    w.unit = "MB/s";
    add(w, &rows[fw]);
  }
  if (want("dma")) add(dma_round_trips(rt, s, 4096), &rows[f1]);
  if (want("devices") && devices > 0) {
    auto fm = fl(floor_multi("floor: " + std::to_string(devices) + " socketpairs, one poll() server", devices));
    add(many_devices(s), &rows[fm]);
  }
  stop_servers(s);
  if (!json)
    std::printf("%-62s %10s %-5s %17s %8s  %s\n", "row", "rate", "", "p50 / p99 us", "srv us/op", "vs floor");
  print(rows, json);
  return 0;
}
