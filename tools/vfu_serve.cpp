// vfu-serve: serves sample devices over vfio-user, following the spec's backend-program
// conventions: --socket-path=PATH or --fd=N, no daemonizing, SIGTERM/SIGINT shut down
// cleanly (the socket file is removed). CAF's --logger.* options pass through.
//
//   vfu-serve --device=dma-test --socket-path=/tmp/dma.sock
//   vfu-serve --device=gpio --socket-path=/tmp/a.sock --device=dma-test --socket-path=/tmp/b.sock
#include <signal.h>
#include <unistd.h>

#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>
#include <vector>

#include "actors/endpoint.hpp"
#include "device/nvme/nvme.hpp"
#include "device/samples.hpp"

using namespace vfu;

namespace {

// Bad arguments get one line on stderr and exit 2; --help prints the usage.
int usage(const char* msg) {
  if (msg) {
    std::fprintf(stderr, "vfu-serve: %s (see --help)\n", msg);
    return 2;
  }
  std::fprintf(stdout,
               "usage: vfu-serve --device=gpio|dma-test|ram|nvme (--socket-path=PATH | --fd=N) [...]\n"
               "                 [--quirks=spec|qemu|libvfio-user] [--poll-max-ns=N] [--ram-size=BYTES]\n"
               "                 [--backing=FILE] [--size=BYTES]\n"
               "                 [--logger.* CAF options]\n"
               "  Repeat --device/--socket-path pairs to serve several devices from one process.\n"
               "  --ram-size: the ram device's memory, a power of two from 4096 to 64G (suffixes K, M, G;\n"
               "  default 1M).\n"
               "  --backing, --size: the nvme device's namespace, a file (created if missing; it keeps its\n"
               "  own size unless --size says otherwise) or memory of --size (default 64M) (docs/nvme.md).\n"
               "  --poll-max-ns: how long the idle loop may poll before it sleeps, adapted as QEMU's\n"
               "  iothreads do (default 65536; 0 never polls).\n");
  return 0;
}

bool parse_value(const std::string& a, const char* key, std::string& out) {
  std::string k = std::string(key) + "=";
  if (a.rfind(k, 0) != 0) return false;
  out = a.substr(k.size());
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> rest;
  auto caf_args = runtime::filter_caf_args(argc, argv, rest);
  std::vector<std::string> devices, paths;
  std::vector<int> fds;
  proto::quirks quirks;
  uint64_t ram_size = dev::ram::size;
  dev::nvme::options nvme;
  auto make = [&](const std::string& name, std::string& err) -> std::shared_ptr<dev::device_model> {
    if (name == "nvme") return dev::nvme::make(nvme, err);
    return name == "ram" ? dev::make_ram(ram_size) : dev::make_sample(name);
  };
  // "16M", "1G", "4096": bytes, or nothing when it is not a number with a K, M or G.
  auto bytes = [](const std::string& v) -> std::optional<uint64_t> {
    char* end = nullptr;
    if (v.empty() || !std::isdigit(static_cast<unsigned char>(v[0]))) return std::nullopt;
    unsigned long long n = std::strtoull(v.c_str(), &end, 10);
    std::string unit = end ? end : "";
    int shift = unit.empty() ? 0 : unit == "K" ? 10 : unit == "M" ? 20 : unit == "G" ? 30 : unit == "T" ? 40 : -1;
    if (shift < 0 || n > (~0ull >> shift)) return std::nullopt;
    return uint64_t(n) << shift;
  };
  runtime_options ropts;
  ropts.poll_max_ns = runtime_options::default_poll_max_ns;
  for (auto& a : rest) {
    std::string v;
    if (a == "--help" || a == "-h") return usage(nullptr);
    if (parse_value(a, "--device", v)) {
      if (v != "nvme" && !dev::make_sample(v)) return usage(("unknown device '" + v + "' (gpio, dma-test, ram or nvme)").c_str());
      devices.push_back(v);
    } else if (parse_value(a, "--socket-path", v)) {
      if (v.empty()) return usage("--socket-path needs a path");
      paths.push_back(v);
    } else if (parse_value(a, "--fd", v)) {
      char* end = nullptr;
      long n = std::strtol(v.c_str(), &end, 10);
      if (v.empty() || *end || n < 0 || n > 65535) return usage(("--fd needs a file descriptor number, got '" + v + "'").c_str());
      fds.push_back(int(n));
    } else if (parse_value(a, "--poll-max-ns", v)) {
      auto n = runtime_options::parse_poll_max_ns(v);
      if (!n) return usage(("--poll-max-ns needs a number of nanoseconds from 0 to 1000000000, got '" + v + "'").c_str());
      ropts.poll_max_ns = *n;
    } else if (parse_value(a, "--ram-size", v)) {
      auto n = bytes(v);
      if (!n || *n > dev::ram::max_size || !dev::make_ram(*n))
        return usage(("--ram-size needs a power of two from 4096 to 64G, got '" + v + "'").c_str());
      ram_size = *n;
    } else if (parse_value(a, "--size", v)) {
      auto n = bytes(v);
      if (!n || *n < (1u << 20) || *n > (16ull << 40))
        return usage(("--size needs bytes from 1M to 16T, got '" + v + "'").c_str());
      nvme.size = *n;
      nvme.size_given = true;
    } else if (parse_value(a, "--backing", v)) {
      if (v.empty()) return usage("--backing needs a file");
      nvme.backing = v;
    } else if (parse_value(a, "--quirks", v)) {
      if (v == "qemu") quirks = proto::quirks::qemu();
      else if (v == "libvfio-user") quirks = proto::quirks::libvfio_user();
      else if (v != "spec") return usage(("unknown quirks '" + v + "'").c_str());
    } else {
      return usage(("unknown argument '" + a + "'").c_str());
    }
  }
  if (devices.empty()) return usage("--device is required");
  if (paths.size() + fds.size() != devices.size())
    return usage("give exactly one --socket-path or --fd per --device");

  // Signals are taken synchronously by this thread; every other thread inherits the mask.
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);

  runtime rt(caf_args, ropts);
  std::vector<std::unique_ptr<endpoint>> eps;
  std::vector<std::string> owned_paths;
  endpoint_config cfg;
  cfg.quirks = quirks;
  size_t pi = 0, fi = 0;
  for (size_t i = 0; i < devices.size(); ++i) {
    std::string err;
    auto model = make(devices[i], err);
    if (!model) {
      std::fprintf(stderr, "vfu-serve: %s device: %s\n", devices[i].c_str(), err.c_str());
      return 1;
    }
    auto dev_actor = dev::spawn_device(rt.system(), model, quirks);
    proto::result<std::unique_ptr<endpoint>> ep = proto::error(proto::errc::bad_value, "");
    std::string where;
    if (pi < paths.size()) {
      where = paths[pi];
      ep = endpoint::listen(rt, paths[pi++], cfg, dev_actor);
      if (ep) owned_paths.push_back(where);
    } else {
      where = "fd " + std::to_string(fds[fi]);
      ep = endpoint::serve_fd(rt, proto::unique_fd(fds[fi++]), cfg, dev_actor);
    }
    if (!ep) {
      std::fprintf(stderr, "vfu-serve: %s: %s\n", where.c_str(), ep.err().message().c_str());
      caf::anon_send_exit(dev_actor, caf::exit_reason::user_shutdown);
      for (auto& e : eps) e->close();
      for (auto& p : owned_paths) ::unlink(p.c_str());
      return 1;
    }
    std::fprintf(stderr, "vfu-serve: %s device on %s\n", devices[i].c_str(), where.c_str());
    eps.push_back(std::move(ep.value()));
  }
  int sig = 0;
  sigwait(&set, &sig);
  std::fprintf(stderr, "vfu-serve: %s, shutting down\n", sig == SIGTERM ? "SIGTERM" : "SIGINT");
  for (auto& e : eps) e->close();
  for (auto& p : owned_paths) ::unlink(p.c_str());
  eps.clear();
  return 0;
}
