#include "actors/runtime.hpp"

#include <boost/asio/post.hpp>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <future>

#include "actors/event_loop.hpp"
#include "actors/types.hpp"

namespace vfu {

struct runtime::config : caf::actor_system_config {
  explicit config(const runtime_options& o) {
    set("scheduler.policy", caf::atom("sharing"));
    set("scheduler.max-threads", o.workers);
    set("logger.console", caf::atom("none"));
    set("logger.component-blacklist", std::vector<caf::atom_value>{caf::atom("caf_flow")});
    add_error_category(caf::atom("vfu"), [](uint8_t code, caf::atom_value, const caf::message& ctx) -> std::string {
      std::string s = "vfu::";
      s += proto::to_string(static_cast<proto::errc>(code));
      if (!ctx.empty()) s += caf::to_string(ctx);
      return s;
    });
  }
};

bool runtime::is_caf_arg(const std::string& a) {
  return a.rfind("--logger.", 0) == 0 || a.rfind("--scheduler.", 0) == 0 || a.rfind("--caf#", 0) == 0 ||
         a.rfind("--config-file", 0) == 0;
}

std::vector<std::string> runtime::filter_caf_args(int argc, char** argv, std::vector<std::string>& rest) {
  std::vector<std::string> caf;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    (is_caf_arg(a) ? caf : rest).push_back(a);
  }
  return caf;
}

std::optional<int64_t> runtime_options::parse_poll_max_ns(const std::string& text) {
  char* end = nullptr;
  errno = 0;
  long long n = std::strtoll(text.c_str(), &end, 10);
  if (text.empty() || *end || errno || n < 0 || n > 1000000000) return std::nullopt;
  return n;
}

int64_t runtime_options::poll_ns_from_env(const char* var, int64_t fallback) {
  const char* v = std::getenv(var);
  if (!v || !*v) return fallback;
  auto n = parse_poll_max_ns(v);
  if (!n)
    std::fprintf(stderr, "vfu: ignoring %s='%s': not a number of nanoseconds from 0 to 1000000000\n", var, v);
  return n.value_or(fallback);
}

runtime::runtime(const std::vector<std::string>& caf_args, runtime_options opts)
    : cfg_(std::make_unique<config>(opts)), opts_(opts) {
  if (opts_.poll_max_ns < 0) opts_.poll_max_ns = runtime_options::poll_ns_from_env("VFU_POLL_MAX_NS", 0);
  if (!caf_args.empty()) {
    std::vector<std::string> argv_store{"vfu"};
    argv_store.insert(argv_store.end(), caf_args.begin(), caf_args.end());
    std::vector<char*> argv;
    for (auto& s : argv_store) argv.push_back(s.data());
    cfg_->parse(int(argv.size()), argv.data());
  }
  // The guard keeps the loop blocking in the io_context while no socket is open.
  guard_ = std::make_unique<boost::asio::executor_work_guard<boost::asio::io_context::executor_type>>(
      io_.get_executor());
  if (opts_.single_loop) event_loop::install(*cfg_, io_, opts_.poll_max_ns);
  sys_ = std::make_unique<caf::actor_system>(*cfg_);
  if (!opts_.single_loop) io_thread_ = std::thread([this] { io_.run(); });
}

runtime::~runtime() {
  if (opts_.single_loop) {
    // The last actors' exits post socket closes to the io_context; let the loop run them
    // (handlers run in order) before the scheduler, and with it the loop, stops.
    sys_->await_all_actors_done();
    std::promise<void> drained;
    boost::asio::post(io_, [&drained] { drained.set_value(); });
    drained.get_future().wait();
    sys_.reset();
    guard_.reset();
    return;
  }
  guard_.reset();
  io_.stop();
  if (io_thread_.joinable()) io_thread_.join();
  sys_.reset();  // waits for every actor to terminate
}

}  // namespace vfu
