// runtime.hpp: the process-wide pieces every vfu-broker endpoint runs on: one CAF actor
// system and one Asio io_context that owns socket readiness for all connections.
//
// Threading, by default (single_loop): one thread runs the io_context *and* every
// scheduled actor (event_loop.hpp), so a frame goes from recvmsg through the socket,
// dispatcher and device actors to sendmsg without waking another thread. With
// single_loop = false: a separate io thread plus `workers` CAF threads with the `sharing`
// policy (caf-0.17.md sections 8 and 10), for hosts whose device handlers block; each
// request then costs one more cross-thread wake-up.
#pragma once

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <caf/all.hpp>

#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

namespace vfu {

struct runtime_options {
  /// One thread for io and actors (fastest; every handler must be non-blocking).
  bool single_loop = true;
  /// CAF scheduler threads when !single_loop (use 2 or more if device handlers may block).
  size_t workers = 1;
  /// single_loop only: how long (at most) the idle loop polls its sockets before it blocks,
  /// adapted as QEMU adapts an iothread's poll-max-ns (event_loop.cpp). A request that
  /// arrives while the loop polls costs no wake-up, at the
  /// price of up to this much CPU after every burst of work. 0 never polls. -1 (the
  /// default) takes the environment's VFU_POLL_MAX_NS, or 0 without it; vfu-serve uses
  /// default_poll_max_ns unless told otherwise.
  int64_t poll_max_ns = -1;
  /// `text` as a poll_max_ns: a whole number of nanoseconds from 0 to 1 s (nullopt if not).
  /// The one parser for VFU_POLL_MAX_NS and the tools' --poll-max-ns options.
  static std::optional<int64_t> parse_poll_max_ns(const std::string& text);
  /// The environment variable `var` as a poll_max_ns, or `fallback` when it is unset or
  /// empty, or not a valid value (then with a warning on stderr).
  static int64_t poll_ns_from_env(const char* var, int64_t fallback);
  /// vfu-serve's default: twice QEMU's iothread default (32768), because a broker-to-broker
  /// round trip often leaves the server idle for longer than 32 us, and the window would
  /// then reset at every request (docs/performance.md, fourth session, point 9).
  static constexpr int64_t default_poll_max_ns = 65536;
};

class runtime {
 public:
  /// `args` are passed to CAF: only `--logger.*`, `--scheduler.*`, `--caf#...` and
  /// `--config-file=` options are taken (see filter_caf_args).
  explicit runtime(const std::vector<std::string>& caf_args = {}, runtime_options opts = {});
  ~runtime();
  runtime(const runtime&) = delete;
  runtime& operator=(const runtime&) = delete;

  caf::actor_system& system() { return *sys_; }
  boost::asio::io_context& io() { return io_; }

  /// Splits argv into the CAF options (returned) and the rest (left in `rest`).
  /// The loop's polling limit in effect (runtime_options::poll_max_ns after the default).
  int64_t poll_max_ns() const noexcept { return opts_.poll_max_ns; }

  static std::vector<std::string> filter_caf_args(int argc, char** argv, std::vector<std::string>& rest);
  /// True for an option CAF consumes (`--logger.`, `--scheduler.`, `--caf#`, `--config-file`).
  static bool is_caf_arg(const std::string& a);

 private:
  struct config;
  std::unique_ptr<config> cfg_;
  runtime_options opts_;
  boost::asio::io_context io_;  // before sys_: the loop scheduler runs it
  std::unique_ptr<boost::asio::executor_work_guard<boost::asio::io_context::executor_type>> guard_;
  std::unique_ptr<caf::actor_system> sys_;
  std::thread io_thread_;  // only without single_loop
};

}  // namespace vfu
