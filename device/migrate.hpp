// migrate.hpp: one device moved from one server to another with migration v2, as
// vfu-migrate does it (docs/migration.md): both probed, optional pre-copy rounds, the
// source stopped and its STOP_COPY data streamed into the destination in RESUMING, the
// destination brought to RUNNING, the source left in STOP.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "device/remote_device.hpp"

namespace vfu::dev {

struct migrate_options {
  /// Pre-copy rounds while the source runs (only if it offers PRE_COPY); each sends what
  /// changed since the one before, and a round that sends nothing ends them.
  int precopy_rounds = 0;
  /// Runs just before the source stops: where a host pauses its guest.
  std::function<void()> before_stop;
};

struct migrate_report {
  uint64_t source_flags = 0, destination_flags = 0;
  struct round {
    uint64_t bytes = 0;
    double ms = 0;
  };
  std::vector<round> precopy;
  uint64_t stopcopy_bytes = 0;
  double stopcopy_ms = 0;
  /// From the source's stop until the destination runs.
  double downtime_ms = 0;
  double total_ms = 0;
  uint64_t bytes() const;
  /// After a failure: where each side was left ("RUNNING", "STOP", "unknown (why)"...).
  std::string source_state, destination_state;
};

/// Moves the device. On failure the source is taken back to RUNNING whenever the
/// destination does not run the device (never two running copies), and the report names
/// the state each side was left in; the error says what was being done.
proto::status migrate(remote_device& src, remote_device& dst, const migrate_options& opts, migrate_report& out);

}  // namespace vfu::dev
