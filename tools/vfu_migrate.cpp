// vfu-migrate: moves a device from one vfio-user server to another with migration v2
// (docs/migration.md): probe both, optional pre-copy rounds, then stop the source, stream
// its STOP_COPY data into the destination in RESUMING, and bring the destination to RUNNING.
//   vfu-migrate [--precopy=ROUNDS] [--json] [--quirks=spec|qemu|libvfio-user] SRC_SOCKET DST_SOCKET
// Exit 0 when the destination runs the device. Otherwise 1 with a one-line reason that names
// the state each side was left in (the source is taken back to RUNNING whenever it can be),
// or 2 for bad arguments.
#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <optional>

#include "device/migrate.hpp"

using namespace vfu;
using namespace vfu::proto;
using json = nlohmann::json;

namespace {

const char* usage =
    "usage: vfu-migrate [--precopy=ROUNDS] [--json] [--quirks=spec|qemu|libvfio-user] SRC_SOCKET DST_SOCKET\n"
    "  --precopy: pre-copy rounds while the source still runs (0-100, default 0; used only when\n"
    "  the source offers PRE_COPY). Each round sends what changed since the one before.";

int fail_usage(const std::string& why) {
  std::fprintf(stderr, "vfu-migrate: %s\n%s\n", why.c_str(), usage);
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  bool as_json = false;
  int rounds = 0;
  std::vector<std::string> paths, rest;
  endpoint_config cfg;
  cfg.reconnect = false;
  auto caf_args = runtime::filter_caf_args(argc, argv, rest);
  for (auto& a : rest) {
    if (a == "--json") as_json = true;
    else if (a.rfind("--precopy=", 0) == 0) {
      char* end = nullptr;
      std::string v = a.substr(10);
      long n = std::strtol(v.c_str(), &end, 10);
      if (v.empty() || *end || n < 0 || n > 100) return fail_usage("--precopy needs a number of rounds from 0 to 100, got '" + v + "'");
      rounds = int(n);
    } else if (a == "--quirks=qemu") cfg.quirks = quirks::qemu();
    else if (a == "--quirks=libvfio-user") cfg.quirks = quirks::libvfio_user();
    else if (a == "--quirks=spec") cfg.quirks = quirks::spec();
    else if (a == "-h" || a == "--help") {
      std::printf("%s\n", usage);
      return 0;
    } else if (a.rfind("-", 0) == 0) return fail_usage("unknown option " + a);
    else paths.push_back(a);
  }
  if (paths.size() != 2) return fail_usage("give the source's and the destination's socket");
  runtime rt(caf_args);
  auto src = dev::remote_device::open(rt, paths[0], nullptr, cfg);
  if (!src) {
    std::fprintf(stderr, "vfu-migrate: cannot connect to the source %s: %s\n", paths[0].c_str(), src.err().message().c_str());
    return 1;
  }
  auto dst = dev::remote_device::open(rt, paths[1], nullptr, cfg);
  if (!dst) {
    std::fprintf(stderr, "vfu-migrate: cannot connect to the destination %s: %s\n", paths[1].c_str(), dst.err().message().c_str());
    return 1;
  }
  dev::migrate_options opts;
  opts.precopy_rounds = rounds;
  dev::migrate_report rep;
  auto s = dev::migrate(**src, **dst, opts, rep);
  json out = {{"source", paths[0]}, {"destination", paths[1]}, {"source_flags", rep.source_flags},
              {"destination_flags", rep.destination_flags}};
  if (!s) {
    out["result"] = "failed";
    out["reason"] = s.err().message();
    out["source_state"] = rep.source_state;
    out["destination_state"] = rep.destination_state;
    if (as_json) std::printf("%s\n", out.dump(2).c_str());
    std::fprintf(stderr, "vfu-migrate: %s; source %s, destination %s\n", s.err().message().c_str(),
                 rep.source_state.c_str(), rep.destination_state.c_str());
    return 1;
  }
  json rounds_j = json::array();
  for (auto& r : rep.precopy) rounds_j.push_back({{"bytes", r.bytes}, {"ms", r.ms}});
  double mb_s = rep.stopcopy_ms > 0 ? double(rep.stopcopy_bytes) / 1e6 / (rep.stopcopy_ms / 1e3) : 0.0;
  out.update({{"result", "ok"}, {"precopy_rounds", rounds_j}, {"stopcopy_bytes", rep.stopcopy_bytes},
              {"stopcopy_ms", rep.stopcopy_ms}, {"throughput_mb_s", mb_s}, {"bytes", rep.bytes()},
              {"downtime_ms", rep.downtime_ms}, {"total_ms", rep.total_ms}});
  if (as_json) {
    std::printf("%s\n", out.dump(2).c_str());
    return 0;
  }
  std::printf("migrated %s -> %s\n", paths[0].c_str(), paths[1].c_str());
  for (size_t i = 0; i < rep.precopy.size(); ++i)
    std::printf("  pre-copy round %zu: %" PRIu64 " bytes in %.1f ms\n", i + 1, rep.precopy[i].bytes, rep.precopy[i].ms);
  std::printf("  stop-copy: %" PRIu64 " bytes in %.1f ms (%.0f MB/s)\n", rep.stopcopy_bytes, rep.stopcopy_ms, mb_s);
  std::printf("  moved %" PRIu64 " bytes; downtime %.1f ms (source stopped until the destination ran); total %.1f ms\n",
              rep.bytes(), rep.downtime_ms, rep.total_ms);
  return 0;
}
