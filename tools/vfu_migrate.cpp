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

#include "device/remote_device.hpp"

using namespace vfu;
using namespace vfu::proto;
using json = nlohmann::json;
using clk = std::chrono::steady_clock;

namespace {

const char* usage =
    "usage: vfu-migrate [--precopy=ROUNDS] [--json] [--quirks=spec|qemu|libvfio-user] SRC_SOCKET DST_SOCKET\n"
    "  --precopy: pre-copy rounds while the source still runs (0-100, default 0; used only when\n"
    "  the source offers PRE_COPY). Each round sends what changed since the one before.";

// The reason with what was being done: "stop-copy: remote_error (EIO): ...".
error because(const error& e, const std::string& doing) { return error(e.code, e.errnum, doing + ": " + e.context); }

double ms_since(clk::time_point t) { return std::chrono::duration<double, std::milli>(clk::now() - t).count(); }

std::string state_of(dev::remote_device& d) {
  auto s = d.migration_state();
  return s ? to_string(*s) : "unknown (" + s.err().message() + ")";
}

struct migration {
  dev::remote_device& src;
  dev::remote_device& dst;
  int precopy_rounds = 0;
  bool dest_running = false;  ///< the device runs at the destination: the source stays stopped
  json out;

  // The source's data, written to the destination as it comes.
  result<uint64_t> forward() {
    return src.read_migration_data([&](const uint8_t* p, size_t n) { return dst.write_migration_data(p, n); });
  }

  status check_pair() {
    auto sf = src.migration_flags();
    if (!sf) return because(sf.err(), "the source does not offer migration");
    auto df = dst.migration_flags();
    if (!df) return because(df.err(), "the destination does not offer migration");
    if (!(*sf & mig_flags::stop_copy)) return error(errc::unsupported, "the source does not offer STOP_COPY");
    out["source_flags"] = *sf;
    out["destination_flags"] = *df;
    if (!(*sf & mig_flags::pre_copy)) precopy_rounds = 0;
    // The same device on both sides: the same regions (the stream's own header says more).
    // A side the migration state machine keeps from enumerating (STOP, say: a device that
    // was migrated away) is checked by the stream alone.
    auto enumerable = [](dev::remote_device& d) {
      auto st = d.migration_state();
      return st && (*st == mig_state::running || *st == mig_state::resuming || *st == mig_state::pre_copy);
    };
    if (!enumerable(src) || !enumerable(dst)) return {};
    if (auto s = src.probe(); !s) return because(s.err(), "probing the source");
    if (auto s = dst.probe(); !s) return because(s.err(), "probing the destination");
    if (src.regions().size() != dst.regions().size())
      return error(errc::bad_value, "the destination has " + std::to_string(dst.regions().size()) + " regions, the source " +
                                        std::to_string(src.regions().size()));
    for (size_t i = 0; i < src.regions().size(); ++i)
      if (src.regions()[i].info.size != dst.regions()[i].info.size)
        return error(errc::bad_value, "region " + std::to_string(i) + " is " + std::to_string(dst.regions()[i].info.size) +
                                          " bytes on the destination, " + std::to_string(src.regions()[i].info.size) +
                                          " on the source");
    return {};
  }

  status run() {
    if (auto s = check_pair(); !s) return s;
    auto t_start = clk::now();
    if (auto s = dst.set_migration_state(mig_state::resuming); !s)
      return because(s.err(), "destination to RESUMING");
    json rounds = json::array();
    if (precopy_rounds > 0) {
      if (auto s = src.set_migration_state(mig_state::pre_copy); !s)
        return because(s.err(), "source to PRE_COPY");
      for (int i = 0; i < precopy_rounds; ++i) {
        auto t = clk::now();
        auto n = forward();
        if (!n) return because(n.err(), "pre-copy round " + std::to_string(i + 1));
        rounds.push_back({{"bytes", *n}, {"ms", ms_since(t)}});
        if (*n == 0) break;  // nothing changed since the last round
      }
    }
    out["precopy_rounds"] = rounds;
    auto t_stop = clk::now();
    if (auto s = src.set_migration_state(mig_state::stop_copy); !s)
      return because(s.err(), "source to STOP_COPY");
    auto t_copy = clk::now();
    auto n = forward();
    if (!n) return because(n.err(), "stop-copy");
    double copy_ms = ms_since(t_copy);
    if (auto s = dst.set_migration_state(mig_state::running); !s)
      return because(s.err(), "destination to RUNNING");
    double downtime = ms_since(t_stop);
    dest_running = true;
    if (auto s = src.set_migration_state(mig_state::stop); !s)
      return because(s.err(), "the destination runs, but the source did not go to STOP");
    uint64_t pre = 0;
    for (auto& r : rounds) pre += r["bytes"].get<uint64_t>();
    out["stopcopy_bytes"] = *n;
    out["bytes"] = pre + *n;
    out["stopcopy_ms"] = copy_ms;
    out["throughput_mb_s"] = copy_ms > 0 ? double(*n) / 1e6 / (copy_ms / 1e3) : 0.0;
    out["downtime_ms"] = downtime;
    out["total_ms"] = ms_since(t_start);
    return {};
  }

  // After a failure: the source runs again if it can; both sides' states are named.
  std::string recover() {
    std::string src_state;
    if (dest_running) src_state = state_of(src);  // never two running copies
    else if (auto s = src.set_migration_state(mig_state::running); s) src_state = "RUNNING";
    else src_state = state_of(src) + " (back to RUNNING failed: " + s.err().message() + ")";
    out["source_state"] = src_state;
    out["destination_state"] = state_of(dst);
    return "source " + src_state + ", destination " + out["destination_state"].get<std::string>();
  }
};

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
  migration m{**src, **dst, rounds, false, json::object()};
  m.out["source"] = paths[0];
  m.out["destination"] = paths[1];
  auto s = m.run();
  if (!s) {
    std::string where = m.recover();
    m.out["result"] = "failed";
    m.out["reason"] = s.err().message();
    if (as_json) std::printf("%s\n", m.out.dump(2).c_str());
    std::fprintf(stderr, "vfu-migrate: %s; %s\n", s.err().message().c_str(), where.c_str());
    return 1;
  }
  m.out["result"] = "ok";
  if (as_json) {
    std::printf("%s\n", m.out.dump(2).c_str());
    return 0;
  }
  std::printf("migrated %s -> %s\n", paths[0].c_str(), paths[1].c_str());
  for (size_t i = 0; i < m.out["precopy_rounds"].size(); ++i) {
    auto& r = m.out["precopy_rounds"][i];
    std::printf("  pre-copy round %zu: %" PRIu64 " bytes in %.1f ms\n", i + 1, r["bytes"].get<uint64_t>(), r["ms"].get<double>());
  }
  std::printf("  stop-copy: %" PRIu64 " bytes in %.1f ms (%.0f MB/s)\n", m.out["stopcopy_bytes"].get<uint64_t>(),
              m.out["stopcopy_ms"].get<double>(), m.out["throughput_mb_s"].get<double>());
  std::printf("  moved %" PRIu64 " bytes; downtime %.1f ms (source stopped until the destination ran); total %.1f ms\n",
              m.out["bytes"].get<uint64_t>(), m.out["downtime_ms"].get<double>(), m.out["total_ms"].get<double>());
  return 0;
}
