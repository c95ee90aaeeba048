#include "tools/harness/runner.hpp"

#include <algorithm>
#include <sstream>
#include <thread>

#include "tools/harness/runner_state.hpp"

namespace vfu::harness {

std::vector<std::string> split_words(const std::string& s) {
  std::vector<std::string> out;
  std::istringstream in(s);
  std::string w;
  while (in >> w) out.push_back(w);
  return out;
}

std::string shorten(const std::string& s, size_t max) {
  if (s.size() <= max) return s;
  return s.substr(0, max - 3) + "...";
}

runner::runner(const scenario& sc, const runner_options& o, std::ostream& out) : sc_(sc), o_(o), out_(out) {
  auto slash = sc.path.rfind('/');
  file_ = slash == std::string::npos ? sc.path : sc.path.substr(slash + 1);
  fds_at_start_ = io::count_open_fds();
}

runner::~runner() = default;

bool runner::resolve(const std::string& v, std::string& out, std::string& err) const {
  if (v.size() > 1 && v[0] == '$') {
    auto it = vars_.find(v.substr(1));
    if (it == vars_.end()) {
      err = "variable " + v + " has no value (the step that saves it did not succeed)";
      return false;
    }
    out = it->second;
    return true;
  }
  out = v;
  return true;
}

bool runner::resolved_args(const arg_list& in, arg_list& out, std::string& err) const {
  out.clear();
  for (auto& [k, v] : in) {
    std::string r;
    if (!resolve(v, r, err)) return false;
    out.emplace_back(k, r);
  }
  return true;
}

std::chrono::microseconds runner::step_timeout(const step& s) const {
  if (auto* t = s.opt("timeout")) {
    std::string v, err;
    std::chrono::microseconds d;
    if (resolve(*t, v, err) && parse_duration(v, d, err)) return d;
  }
  return timeout_;
}

std::string runner::where(const std::string& path) const {
  if (path.empty() || path[0] == '/') return path;
  return sc_.dir + "/" + path;
}

void runner::report(const step& s, const outcome& o) {
  const char* tag = o.status == outcome::ok ? "ok  " : o.status == outcome::fail ? "FAIL" : "SKIP";
  out_ << file_ << ":" << s.line << ": " << tag << " " << shorten(s.text, 110);
  if (!o.msg.empty()) out_ << (o.status == outcome::ok ? "  [" + o.msg + "]" : ": " + o.msg);
  out_ << "\n";
  for (auto& d : o.details) {
    std::istringstream lines(d);
    std::string l;
    while (std::getline(lines, l)) out_ << "        " << l << "\n";
  }
  out_.flush();
}

outcome runner::exec(const step& s) {
  switch (s.type) {
    case step_type::start_server: return start_server(s);
    case step_type::stop_server: return stop_server(s);
    case step_type::connect: return connect(s);
    case step_type::disconnect: return disconnect(s);
    case step_type::listen: return listen(s);
    case step_type::spawn_client: return spawn_client(s);
    case step_type::accept: return accept(s);
    case step_type::expect_exit: return expect_exit(s);
    case step_type::memfd:
    case step_type::eventfd:
    case step_type::file: return make_fd(s);
    case step_type::mem_write:
    case step_type::mem_expect: return mem_access(s);
    case step_type::wait_eventfd: return wait_eventfd(s, false);
    case step_type::eventfd_quiet: return wait_eventfd(s, true);
    case step_type::negotiate: return negotiate(s);
    case step_type::send: return send_request(s);
    case step_type::raw: return send_raw(s);
    case step_type::expect_reply: return expect_reply(s);
    case step_type::expect_request: return expect_request(s);
    case step_type::reply: return send_reply(s);
    case step_type::expect_close: return expect_close(s);
    case step_type::expect_silence: return expect_silence(s);
    case step_type::pause: {
      std::string v, err;
      std::chrono::microseconds d{0};
      const std::string& src = s.words.empty() ? *s.opt("for") : s.words[0];
      if (!resolve(src, v, err) || !parse_duration(v, d, err)) return outcome::failure(err);
      std::this_thread::sleep_for(d);
      return outcome::pass();
    }
    case step_type::repeat: return exec_repeat(s);
    case step_type::latency: return exec_latency(s);
    case step_type::replay: return replay(s);
    case step_type::set: return exec_set(s);
  }
  return outcome::failure("step not implemented");
}

outcome runner::exec_repeat(const step& s) {
  uint64_t n = 0;
  std::string err;
  if (!parse_number(s.words[0], n, err)) return outcome::failure(err);
  auto t0 = io::clock::now();
  size_t steps = 0;
  ++repeat_depth_;
  for (uint64_t i = 0; i < n; ++i) {
    for (auto& b : s.body) {
      outcome o = exec(b);
      ++steps;
      if (o.status == outcome::ok) {
        if (o_.verbose && i == 0) report(b, o);
        continue;
      }
      --repeat_depth_;
      outcome f = outcome::failure("iteration " + std::to_string(i + 1) + " of " + std::to_string(n) + ", line " +
                                   std::to_string(b.line) + ": " + b.text + ": " + o.msg);
      f.status = o.status == outcome::skip ? outcome::skip : outcome::fail;
      f.details = o.details;
      return f;
    }
  }
  --repeat_depth_;
  return outcome::pass(std::to_string(n) + " iterations, " + std::to_string(steps) + " steps in " +
                       format_duration(io::clock::now() - t0));
}

outcome runner::exec_latency(const step& s) {
  auto it = latency_.find(s.words[0]);
  if (it == latency_.end() || it->second.empty())
    return outcome::failure("no samples recorded as '" + s.words[0] + "' (use expect-reply ... latency=" + s.words[0] + ")");
  auto v = it->second;
  std::sort(v.begin(), v.end());
  auto pct = [&](double p) { return v[std::min(v.size() - 1, size_t(p * double(v.size() - 1) + 0.5))]; };
  std::string msg = "n=" + std::to_string(v.size()) + " min=" + format_duration(v.front()) +
                    " p50=" + format_duration(pct(0.5)) + " p99=" + format_duration(pct(0.99)) +
                    " max=" + format_duration(v.back());
  std::vector<std::string> problems;
  auto bound = [&](const char* key, std::chrono::nanoseconds got) {
    auto* b = s.opt(key);
    if (!b) return;
    std::string r, err;
    std::chrono::microseconds lim;
    if (!resolve(*b, r, err) || !parse_duration(r, lim, err)) {
      problems.push_back(err);
      return;
    }
    if (got > lim) problems.push_back(std::string(key) + " " + format_duration(got) + " > " + format_duration(lim));
  };
  bound("max_p50", pct(0.5));
  bound("max_p99", pct(0.99));
  bound("max", v.back());
  if (!problems.empty()) {
    std::string m;
    for (auto& p : problems) m += (m.empty() ? "" : "; ") + p;
    return outcome::failure(m + " (" + msg + ")");
  }
  return outcome::pass(msg);
}

outcome runner::exec_set(const step& s) {
  std::string v, err;
  if (auto* t = s.opt("timeout")) {
    std::chrono::microseconds d;
    if (!resolve(*t, v, err) || !parse_duration(v, d, err)) return outcome::failure(err);
    timeout_ = d;
  }
  if (auto* q = s.opt("quirks")) {
    if (*q == "spec") quirks_ = proto::quirks::spec();
    else if (*q == "qemu") quirks_ = proto::quirks::qemu();
    else if (*q == "libvfio-user") quirks_ = proto::quirks::libvfio_user();
    else quirks_ = proto::quirks::qemu() | proto::quirks::libvfio_user();
  }
  return outcome::pass();
}

void runner::finish() {
  // The server must have survived everything the scenario threw at it and stop cleanly.
  if (server_ && !server_stopped_) {
    step end;
    end.file = sc_.path;
    end.line = sc_.steps.empty() ? 0 : sc_.steps.back().line;
    end.text = "(end) vfu-serve is alive and stops cleanly on SIGTERM";
    outcome o;
    if (!server_->running()) {
      o = outcome::failure("vfu-serve exited during the scenario: " + server_->describe_exit());
    } else if (!server_->terminate(std::chrono::seconds(5))) {
      o = outcome::failure("vfu-serve did not stop within 5 s of SIGTERM (killed)");
    } else if (server_->describe_exit() != "exit 0") {
      o = outcome::failure("vfu-serve stopped with " + server_->describe_exit());
    } else {
      o = outcome::pass("exit 0");
    }
    if (o.status == outcome::fail) {
      auto tail = server_log_tail();
      if (!tail.empty()) o.details.push_back("vfu-serve output:\n" + tail);
      ++totals_.failed;
    } else {
      ++totals_.passed;
    }
    report(end, o);
  }
  if (o_.verbose && server_) {
    auto tail = server_log_tail();
    if (!tail.empty()) out_ << "    vfu-serve output:\n" << tail << "\n";
  }
  conn_.reset();
  listener_.reset();
  client_.reset();
  server_.reset();
  fds_.clear();
  last_request_.reset();
  int now = io::count_open_fds();
  if (now > fds_at_start_) {
    out_ << file_ << ": FAIL (end) the harness leaked " << (now - fds_at_start_) << " file descriptor(s)\n";
    ++totals_.failed;
  }
}

run_totals runner::run() {
  if (tmp_.path().empty()) {
    out_ << file_ << ": FAIL cannot create a temporary directory under /tmp\n";
    ++totals_.failed;
    return totals_;
  }
  for (auto& s : sc_.steps) {
    outcome o = exec(s);
    if (o.status == outcome::skip && o_.ci) {
      o.status = outcome::fail;
      o.msg += " (CI=true: skipping is a failure)";
    }
    report(s, o);
    if (o.status == outcome::ok) ++totals_.passed;
    else if (o.status == outcome::fail) ++totals_.failed;
    else ++totals_.skipped;
  }
  finish();
  return totals_;
}

run_totals run_scenario(const scenario& s, const runner_options& o, std::ostream& out) {
  runner r(s, o, out);
  return r.run();
}

}  // namespace vfu::harness
