// runner_state.hpp: the runner's state and step functions (internal to tools/harness).
// runner.cpp drives the steps; steps_process.cpp, steps_fds.cpp and steps_protocol.cpp
// implement them by area.
#pragma once

#include <chrono>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "tools/harness/io.hpp"
#include "tools/harness/runner.hpp"

namespace vfu::harness {

struct outcome {
  enum status_t { ok, fail, skip } status = ok;
  std::string msg;                   ///< ok: what happened; fail: what differed
  std::vector<std::string> details;  ///< extra lines (replay differences, process output)

  static outcome pass(std::string m = {}) { return {ok, std::move(m), {}}; }
  static outcome failure(std::string m) { return {fail, std::move(m), {}}; }
};

class runner {
 public:
  runner(const scenario& sc, const runner_options& o, std::ostream& out);
  ~runner();
  run_totals run();

 private:
  // runner.cpp
  outcome exec(const step& s);
  outcome exec_repeat(const step& s);
  outcome exec_latency(const step& s);
  outcome exec_set(const step& s);
  void report(const step& s, const outcome& o);
  void finish();
  /// The value of an option or field, with `$var` replaced.
  bool resolve(const std::string& v, std::string& out, std::string& err) const;
  bool resolved_args(const arg_list& in, arg_list& out, std::string& err) const;
  std::chrono::microseconds step_timeout(const step& s) const;
  std::string where(const std::string& path) const;  ///< path relative to the scenario

  // steps_process.cpp
  outcome start_server(const step& s);
  outcome stop_server(const step& s);
  outcome connect(const step& s);
  outcome disconnect(const step& s);
  outcome listen(const step& s);
  outcome spawn_client(const step& s);
  outcome accept(const step& s);
  outcome expect_exit(const step& s);
  std::string server_log_tail() const;

  // steps_fds.cpp
  outcome make_fd(const step& s);
  outcome mem_access(const step& s);
  outcome wait_eventfd(const step& s, bool quiet);
  bool collect_fds(const std::string& spec, proto::fd_list& out, std::string& err);

  // steps_protocol.cpp
  outcome negotiate(const step& s);
  outcome send_request(const step& s);
  outcome send_raw(const step& s);
  outcome expect_reply(const step& s);
  outcome expect_request(const step& s);
  std::optional<outcome> receive_one(const step& s, bool reply, io::received& r);
  outcome send_reply(const step& s);
  outcome expect_close(const step& s);
  outcome expect_silence(const step& s);
  outcome replay(const step& s);
  /// Payload edits (payload=, truncate=, trailing=) and hdr.* overrides on an encoded frame.
  bool shape_frame(const step& s, proto::frame& f, std::string& err) const;
  bool send_options_of(const step& s, io::send_options& so, std::string& err) const;
  std::string transmit(const step& s, proto::frame& f);
  void check_hdr(const step& s, const proto::header& h, size_t nfds, std::vector<std::string>& problems) const;
  void check_fields(msg_kind k, const proto::message& m, const arg_list& want, std::vector<std::string>& problems) const;
  void save_vars(const step& s, const proto::header& h, size_t nfds, const proto::message* m, std::vector<std::string>& problems);
  void log_frame(const char* dir, const proto::frame& f) const;
  bool need_conn(outcome& o) const;

  const scenario& sc_;
  const runner_options& o_;
  std::ostream& out_;
  std::string file_;  ///< scenario basename, for step lines
  int fds_at_start_ = 0;
  run_totals totals_;
  int repeat_depth_ = 0;

  io::temp_dir tmp_;
  std::unique_ptr<io::child> server_;
  std::string server_socket_;
  bool server_stopped_ = false;
  int servers_started_ = 0;
  std::unique_ptr<io::child> client_;
  int clients_started_ = 0;
  proto::unique_fd listener_;
  std::string listen_path_;
  std::unique_ptr<io::connection> conn_;

  std::map<std::string, io::owned_fd> fds_;
  std::map<std::string, std::string> vars_;
  struct pending {
    uint16_t id;
    uint16_t command;
    io::clock::time_point sent;
  };
  std::deque<pending> outstanding_;
  std::optional<proto::header> last_request_;
  uint16_t next_id_ = 0;
  std::chrono::microseconds timeout_{std::chrono::seconds(5)};
  proto::quirks quirks_;
  std::map<std::string, std::vector<std::chrono::nanoseconds>> latency_;
};

/// Splits on spaces ("--a --b=c" -> two arguments).
std::vector<std::string> split_words(const std::string& s);
/// "text" cut to `max` characters with "...".
std::string shorten(const std::string& s, size_t max);

}  // namespace vfu::harness
