#include "device/migrate.hpp"

#include <chrono>

namespace vfu::dev {

using namespace proto;
using clk = std::chrono::steady_clock;

namespace {

// The reason with what was being done: "stop-copy: remote_error (EIO): ...".
error because(const error& e, const std::string& doing) { return error(e.code, e.errnum, doing + ": " + e.context); }

double ms_since(clk::time_point t) { return std::chrono::duration<double, std::milli>(clk::now() - t).count(); }

std::string state_of(remote_device& d) {
  auto s = d.migration_state();
  return s ? to_string(*s) : "unknown (" + s.err().message() + ")";
}

struct run {
  remote_device& src;
  remote_device& dst;
  migrate_options opts;
  migrate_report& out;
  bool dest_running = false;

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
    out.source_flags = *sf;
    out.destination_flags = *df;
    if (!(*sf & mig_flags::pre_copy)) opts.precopy_rounds = 0;
    // The same device on both sides: the same regions (the stream's own header says more).
    // A side whose migration state refuses enumeration (STOP: a device migrated away) is
    // checked by the stream alone.
    auto enumerable = [](remote_device& d) {
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

  status go() {
    if (auto s = check_pair(); !s) return s;
    auto t_start = clk::now();
    if (auto s = dst.set_migration_state(mig_state::resuming); !s) return because(s.err(), "destination to RESUMING");
    if (opts.precopy_rounds > 0) {
      if (auto s = src.set_migration_state(mig_state::pre_copy); !s) return because(s.err(), "source to PRE_COPY");
      for (int i = 0; i < opts.precopy_rounds; ++i) {
        auto t = clk::now();
        auto n = forward();
        if (!n) return because(n.err(), "pre-copy round " + std::to_string(i + 1));
        out.precopy.push_back({*n, ms_since(t)});
        if (*n == 0) break;  // nothing changed since the last round
      }
    }
    if (opts.before_stop) opts.before_stop();
    auto t_stop = clk::now();
    if (auto s = src.set_migration_state(mig_state::stop_copy); !s) return because(s.err(), "source to STOP_COPY");
    auto t_copy = clk::now();
    auto n = forward();
    if (!n) return because(n.err(), "stop-copy");
    out.stopcopy_ms = ms_since(t_copy);
    out.stopcopy_bytes = *n;
    if (auto s = dst.set_migration_state(mig_state::running); !s) return because(s.err(), "destination to RUNNING");
    out.downtime_ms = ms_since(t_stop);
    dest_running = true;
    if (auto s = src.set_migration_state(mig_state::stop); !s)
      return because(s.err(), "the destination runs, but the source did not go to STOP");
    out.total_ms = ms_since(t_start);
    return {};
  }

  void recover() {
    if (dest_running) out.source_state = state_of(src);  // never two running copies
    else if (auto s = src.set_migration_state(mig_state::running); s) out.source_state = "RUNNING";
    else out.source_state = state_of(src) + " (back to RUNNING failed: " + s.err().message() + ")";
    out.destination_state = state_of(dst);
  }
};

}  // namespace

uint64_t migrate_report::bytes() const {
  uint64_t n = stopcopy_bytes;
  for (auto& r : precopy) n += r.bytes;
  return n;
}

status migrate(remote_device& src, remote_device& dst, const migrate_options& opts, migrate_report& out) {
  run r{src, dst, opts, out};
  auto s = r.go();
  if (!s) r.recover();
  return s;
}

}  // namespace vfu::dev
