#define CAF_LOG_COMPONENT "vfu"
#include "actors/types.hpp"

#include "actors/event_loop.hpp"

namespace vfu {

void end_after_throw(caf::local_actor& a, const std::exception& e) {
  CAF_LOG_ERROR(a.name() << " threw in place: " << e.what());
  caf::anon_send_exit(caf::actor_cast<caf::actor>(&a), caf::exit_reason::unhandled_exception);
}

bool on_event_loop(caf::actor_system& sys, const caf::actor& a) {
  return a && &a->home_system() == &sys && event_loop::stats(sys);
}

proto::error call_result::failure() const {
  if (err) return err;
  if (!reply) return proto::error(proto::errc::peer_gone, "no reply");
  auto h = reply->hdr();
  if (h.is_error())
    return proto::error(proto::errc::remote_error, int(h.error_no ? h.error_no : EINVAL),
                        std::string(proto::command_name(h.command)) + " failed on the peer");
  return {};
}

void call_slot::complete(call_result r) {
  {
    std::lock_guard<std::mutex> g(m_);
    if (done_) return;
    done_ = true;
    result_ = std::move(r);
  }
  cv_.notify_one();
}

call_result call_slot::wait(std::chrono::milliseconds limit) {
  std::unique_lock<std::mutex> g(m_);
  if (!cv_.wait_for(g, limit, [&] { return done_; }))
    return call_result{nullptr, proto::error(proto::errc::timeout, "no completion from the broker")};
  return std::move(result_);
}

bool call_slot::wait_for(std::chrono::milliseconds limit) {
  std::unique_lock<std::mutex> g(m_);
  return cv_.wait_for(g, limit, [&] { return done_; });
}

call_result call_slot::take() {
  std::lock_guard<std::mutex> g(m_);
  return std::move(result_);
}

bool call_slot::done() {
  std::lock_guard<std::mutex> g(m_);
  return done_;
}

timeout_class classify(uint16_t command) noexcept {
  switch (proto::command(command)) {
    case proto::command::device_reset:
    case proto::command::device_feature:
    case proto::command::mig_data_read:
    case proto::command::mig_data_write:
    case proto::command::dma_map:    // a server may need to mmap and pin a large window
    case proto::command::dma_unmap:  // must wait for in-flight DMA
      return timeout_class::long_op;
    default:
      return timeout_class::short_op;
  }
}

std::string render(const caf::error& e) {
  if (!e) return "none";
  if (e.category() == caf::atom("vfu")) {
    std::string s = "vfu::";
    s += proto::to_string(static_cast<proto::errc>(e.code()));
    auto ctx = e.context();
    if (ctx.match_elements<std::string>()) s += "(" + ctx.get_as<std::string>(0) + ")";
    else if (!ctx.empty()) s += caf::to_string(ctx);
    return s;
  }
  return caf::to_string(e);
}

caf::error to_caf(const proto::error& e) { return caf::make_error(e.code, e.message()); }

}  // namespace vfu
