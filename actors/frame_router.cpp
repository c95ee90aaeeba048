#include "actors/frame_router.hpp"

#include <algorithm>

namespace vfu {

bool flow_control::stop_reading(uint64_t more, uint64_t more_bytes) const noexcept {
  uint32_t f = awaiting() ? awaiting_factor : 1;
  return unanswered() + more >= uint64_t(max_requests) * f || unanswered_bytes() + more_bytes >= max_bytes * f;
}

void flow_control::requests_in(uint32_t n, uint64_t bytes) noexcept {
  unanswered_bytes_.fetch_add(bytes, std::memory_order_relaxed);
  unanswered_.fetch_add(n, std::memory_order_relaxed);
}

bool flow_control::request_done(uint64_t bytes) noexcept {
  uint64_t b = unanswered_bytes_.fetch_sub(bytes, std::memory_order_relaxed) - bytes;
  uint32_t left = unanswered_.fetch_sub(1, std::memory_order_relaxed) - 1;
  return left <= max_requests / 2 && b <= max_bytes / 2;
}

void flow_control::reply_in() noexcept {
  uint32_t a = awaiting_.load(std::memory_order_relaxed);
  while (a && !awaiting_.compare_exchange_weak(a, a - 1, std::memory_order_relaxed)) {
  }
}

routed route(std::vector<proto::frame_assembler::event>& evs, flow_control& flow, event_batch* spare) {
  using ev_t = proto::frame_assembler::event;
  routed r;
  auto new_batch = [&] { return spare && *spare ? std::move(*spare) : std::make_shared<std::vector<ev_t>>(); };
  // The usual pass reads requests only: the batch takes the whole vector (and `evs` the
  // spare's empty one), no event moved.
  if (!evs.empty() && std::all_of(evs.begin(), evs.end(), [](const ev_t& ev) {
        return ev.kind == ev_t::frame_ready && !ev.f.hdr().is_reply();
      })) {
    for (auto& ev : evs) r.request_bytes += request_bytes(ev);
    r.frames = uint32_t(evs.size());
    r.requests = new_batch();
    r.requests->swap(evs);
    evs.clear();  // (empty already, unless a spare came back with its events)
    flow.requests_in(uint32_t(r.requests->size()), r.request_bytes);
    return r;
  }
  auto request = [&](ev_t& ev) {
    if (!r.requests) r.requests = new_batch();
    r.request_bytes += request_bytes(ev);
    r.requests->push_back(std::move(ev));
  };
  for (auto& ev : evs) {
    switch (ev.kind) {
      case ev_t::fatal:
        // Far over the limit is answered first, then closed; anything else ends it now.
        (ev.err.code == proto::errc::too_large ? r.overflow : r.fatal) = ev.err;
        break;
      case ev_t::rejected:
        if (!ev.hdr.is_reply()) {
          ++r.rejected_requests;
          request(ev);
        } else {
          flow.reply_in();
          r.rejected_replies.emplace_back(ev.hdr, ev.err);
        }
        break;
      case ev_t::frame_ready:
        ++r.frames;
        if (!ev.f.hdr().is_reply()) {
          request(ev);
        } else {
          flow.reply_in();
          r.replies.push_back(make_frame_ptr(std::move(ev.f)));
        }
        break;
    }
  }
  evs.clear();  // (what was moved out; closes nothing)
  if (r.requests) flow.requests_in(uint32_t(r.requests->size()), r.request_bytes);
  return r;
}

}  // namespace vfu
