// Steps that start and stop processes and make connections: start-server, stop-server,
// connect, disconnect, listen, spawn-client, accept, expect-exit.
#include <sys/stat.h>
#include <sys/wait.h>

#include <regex>
#include <sstream>
#include <thread>

#include "tools/harness/runner_state.hpp"

namespace vfu::harness {

namespace {

bool is_socket(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISSOCK(st.st_mode);
}

std::string last_lines(const std::string& text, size_t n) {
  size_t at = text.size();
  while (at > 0 && (text[at - 1] == '\n')) --at;
  size_t count = 0, start = at;
  while (start > 0) {
    if (text[start - 1] == '\n' && ++count == n) break;
    --start;
  }
  return text.substr(start, at - start);
}

std::string first_line(const std::string& text) {
  auto nl = text.find('\n');
  return nl == std::string::npos ? text : text.substr(0, nl);
}

}  // namespace

std::string runner::server_log_tail() const {
  if (!server_) return "";
  return last_lines(io::read_text(server_->err_path) + io::read_text(server_->out_path), 20);
}

outcome runner::start_server(const step& s) {
  if (o_.serve_path.empty()) return outcome::failure("no vfu-serve to start: run vfu-harness with --serve=PATH");
  if (server_ && server_->running()) return outcome::failure("a vfu-serve started by this scenario is still running");
  std::string device, args, err;
  if (!resolve(*s.opt("device"), device, err)) return outcome::failure(err);
  if (auto* a = s.opt("args"); a && !resolve(*a, args, err)) return outcome::failure(err);
  int n = ++servers_started_;
  server_socket_ = tmp_.file("serve" + std::to_string(n) + ".sock");
  std::vector<std::string> argv{o_.serve_path, "--device=" + device, "--socket-path=" + server_socket_};
  for (auto& w : split_words(args)) argv.push_back(w);
  for (auto& c : o_.caf_args) argv.push_back(c);
  server_ = std::make_unique<io::child>();
  server_stopped_ = false;
  // With logger options the server's output is the point: let it reach our terminal.
  bool inherit = !o_.caf_args.empty();
  if (!server_->start(argv, tmp_.file("serve" + std::to_string(n) + ".out"),
                      tmp_.file("serve" + std::to_string(n) + ".err"), inherit, err)) {
    server_.reset();
    return outcome::failure(err);
  }
  auto dl = io::after(step_timeout(s));
  while (!is_socket(server_socket_)) {
    if (!server_->running()) {
      outcome o = outcome::failure("vfu-serve exited before listening: " + server_->describe_exit());
      o.details.push_back(server_log_tail());
      server_stopped_ = true;
      return o;
    }
    if (io::clock::now() >= dl) return outcome::failure("vfu-serve did not create its socket in time");
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return outcome::pass("vfu-serve pid " + std::to_string(server_->pid()));
}

outcome runner::stop_server(const step& s) {
  if (!server_) return outcome::failure("no vfu-serve was started");
  server_stopped_ = true;
  if (!server_->running()) {
    outcome o = outcome::failure("vfu-serve had already exited: " + server_->describe_exit());
    o.details.push_back(server_log_tail());
    return o;
  }
  auto grace = std::chrono::duration_cast<std::chrono::milliseconds>(step_timeout(s));
  if (!server_->terminate(grace)) return outcome::failure("vfu-serve did not stop on SIGTERM (killed)");
  if (server_->describe_exit() != "exit 0") {
    outcome o = outcome::failure("vfu-serve stopped with " + server_->describe_exit());
    o.details.push_back(server_log_tail());
    return o;
  }
  return outcome::pass("exit 0");
}

outcome runner::connect(const step& s) {
  std::string path, err;
  if (auto* p = s.opt("path")) {
    if (!resolve(*p, path, err)) return outcome::failure(err);
    path = where(path);
  } else {
    path = server_socket_;
  }
  if (path.empty()) return outcome::failure("nothing to connect to: start-server first, or give path=");
  if (conn_ && conn_->usable()) conn_->close();
  auto fd = io::connect_unix(path, io::after(step_timeout(s)), err);
  if (!fd) return outcome::failure(err);
  conn_ = std::make_unique<io::connection>(std::move(fd));
  outstanding_.clear();
  last_request_.reset();
  next_id_ = 0;
  return outcome::pass();
}

outcome runner::disconnect(const step&) {
  if (!conn_) return outcome::failure("not connected");
  conn_->close();
  conn_.reset();
  outstanding_.clear();
  last_request_.reset();
  return outcome::pass();
}

outcome runner::listen(const step&) {
  std::string err;
  listen_path_ = tmp_.file("harness.sock");
  listener_ = io::listen_unix(listen_path_, err);
  if (!listener_) return outcome::failure(err);
  return outcome::pass(listen_path_);
}

outcome runner::spawn_client(const step& s) {
  if (!listener_) return outcome::failure("listen first: the client needs a socket to connect to");
  if (client_ && client_->running()) return outcome::failure("the previous client is still running (expect-exit first)");
  std::string program = "probe", args, err;
  if (auto* p = s.opt("program"); p && !resolve(*p, program, err)) return outcome::failure(err);
  if (auto* a = s.opt("args"); a && !resolve(*a, args, err)) return outcome::failure(err);
  if (program == "probe") {
    if (o_.probe_path.empty()) return outcome::failure("no vfu-probe to run: run vfu-harness with --probe=PATH");
    program = o_.probe_path;
  } else {
    program = where(program);
  }
  std::vector<std::string> argv{program};
  for (auto& w : split_words(args)) argv.push_back(w);
  argv.push_back(listen_path_);
  int n = ++clients_started_;
  client_ = std::make_unique<io::child>();
  if (!client_->start(argv, tmp_.file("client" + std::to_string(n) + ".out"),
                      tmp_.file("client" + std::to_string(n) + ".err"), false, err)) {
    client_.reset();
    return outcome::failure(err);
  }
  return outcome::pass(argv[0].substr(argv[0].rfind('/') + 1) + " pid " + std::to_string(client_->pid()));
}

outcome runner::accept(const step& s) {
  if (!listener_) return outcome::failure("listen first");
  auto dl = io::after(step_timeout(s));
  std::string err;
  while (true) {
    // Accept in short slices so that a client that dies before connecting is noticed.
    auto slice = std::min(dl, io::after(std::chrono::milliseconds(50)));
    auto fd = io::accept_one(listener_.get(), slice, err);
    if (fd) {
      if (conn_ && conn_->usable()) conn_->close();
      conn_ = std::make_unique<io::connection>(std::move(fd));
      outstanding_.clear();
      last_request_.reset();
      next_id_ = 0;
      return outcome::pass();
    }
    if (client_ && !client_->running()) {
      outcome o = outcome::failure("the client exited before connecting: " + client_->describe_exit());
      o.details.push_back(first_line(io::read_text(client_->err_path)));
      return o;
    }
    if (io::clock::now() >= dl) return outcome::failure(err);
  }
}

outcome runner::expect_exit(const step& s) {
  if (!client_) return outcome::failure("no client was spawned");
  if (!client_->wait(io::after(step_timeout(s)))) {
    client_->kill_now();
    return outcome::failure("the client was still running after the timeout (killed)");
  }
  int st = client_->status();
  std::string errtext = io::read_text(client_->err_path), outtext = io::read_text(client_->out_path);
  std::vector<std::string> problems;
  std::string code = "nonzero", v, err;
  if (auto* c = s.opt("code")) {
    if (!resolve(*c, code, err)) return outcome::failure(err);
  }
  if (code == "signal") {
    if (!WIFSIGNALED(st)) problems.push_back("expected death by a signal, got " + client_->describe_exit());
  } else if (!WIFEXITED(st)) {
    problems.push_back("crashed: " + client_->describe_exit());
  } else if (code == "nonzero") {
    if (WEXITSTATUS(st) == 0) problems.push_back("expected a non-zero exit code, got exit 0");
  } else {
    uint64_t want = 0;
    if (!parse_number(code, want, err)) return outcome::failure(err);
    if (uint64_t(WEXITSTATUS(st)) != want) problems.push_back("expected exit " + code + ", got " + client_->describe_exit());
  }
  auto check_re = [&](const char* key, const std::string& text) {
    auto* r = s.opt(key);
    if (!r) return;
    std::string pat;
    if (!resolve(*r, pat, err)) {
      problems.push_back(err);
      return;
    }
    try {
      if (!std::regex_search(text, std::regex(pat)))
        problems.push_back(std::string(key) + " does not match /" + pat + "/: '" + shorten(text, 200) + "'");
    } catch (const std::regex_error& e) {
      problems.push_back(std::string("bad regular expression: ") + e.what());
    }
  };
  check_re("stderr", errtext);
  check_re("stdout", outtext);
  if (auto* l = s.opt("stderr_lines")) {
    uint64_t want = 0;
    if (!resolve(*l, v, err) || !parse_number(v, want, err)) return outcome::failure(err);
    uint64_t lines = 0;
    std::istringstream in(errtext);
    std::string line;
    while (std::getline(in, line))
      if (!line.empty()) ++lines;
    if (lines != want) problems.push_back("stderr has " + std::to_string(lines) + " lines, expected " + std::to_string(want));
  }
  std::string summary = client_->describe_exit() + (errtext.empty() ? "" : ": " + shorten(first_line(errtext), 160));
  if (!problems.empty()) {
    std::string m;
    for (auto& p : problems) m += (m.empty() ? "" : "; ") + p;
    outcome o = outcome::failure(m);
    o.details.push_back("client " + summary);
    return o;
  }
  return outcome::pass(summary);
}

}  // namespace vfu::harness
