// runtime.hpp: the process-wide pieces every vfu-broker endpoint runs on: one CAF actor
// system and one Asio io_context thread that owns socket readiness for all connections.
//
// Threading (caf-0.17.md sections 8 and 10): the scheduler uses the `sharing` policy with
// one worker by default, so all of a connection's actors run on one thread and an actor hop
// costs about a microsecond; the io thread is the only other thread on the receive path.
// The default work-stealing scheduler is about 6x slower for socket-driven work.
#pragma once

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <caf/all.hpp>

#include <memory>
#include <string>
#include <thread>
#include <vector>

namespace vfu {

struct runtime_options {
  /// CAF scheduler threads. 1 is fastest on 2 cores; use 2 if device handlers may block.
  size_t workers = 1;
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
  static std::vector<std::string> filter_caf_args(int argc, char** argv, std::vector<std::string>& rest);
  /// True for an option CAF consumes (`--logger.`, `--scheduler.`, `--caf#`, `--config-file`).
  static bool is_caf_arg(const std::string& a);

 private:
  struct config;
  std::unique_ptr<config> cfg_;
  std::unique_ptr<caf::actor_system> sys_;
  boost::asio::io_context io_;
  std::unique_ptr<boost::asio::executor_work_guard<boost::asio::io_context::executor_type>> guard_;
  std::thread io_thread_;
};

}  // namespace vfu
