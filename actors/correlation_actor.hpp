// correlation_actor.hpp: owns the pending-request table of one endpoint (it outlives
// reconnections) and completes every request exactly once: reply, error reply, timeout, or
// the connection's death.
//
// Requesters:
//  - a plain thread blocked in a call: (call_atom, frame, call_guard_ptr, timeout_ms); the
//    guard wakes it, and completes it with an error if the message is ever dropped;
//  - an actor: (request_atom, frame, timeout_ms) -> call_result, via a response promise;
//  - nobody ("no-wait"): (post_atom, frame); failures are logged, and (waitpost_atom) waits
//    for the youngest such request, as QEMU's client does;
//  - NO_REPLY commands: (noreply_atom, frame), sent in order and never tracked;
//  - a no-wait request on the direct-call lane (direct_calls.hpp): (track_atom, id, command,
//    timeout_ms) before the thread writes its frame itself; the loop sends (retire_atom,
//    headers) when its reply comes; its timeout and connection loss are handled here as for
//    every other request. (Blocking direct calls never reach this actor.)
// Message ids are 16-bit, wrap, and are never reused while pending. At most
// `max_outstanding` requests are on the wire; more wait in a FIFO (back-pressure), and past
// `max_queued` a request fails at once with EAGAIN.
#pragma once

#include <caf/all.hpp>

#include <chrono>
#include <deque>
#include <unordered_map>

#include "actors/direct_calls.hpp"
#include "actors/types.hpp"

namespace vfu {

struct correlation_config {
  std::chrono::milliseconds short_timeout{5000};   ///< register access (QEMU's default)
  std::chrono::milliseconds long_timeout{60000};   ///< reset, migration, DMA map/unmap
  uint32_t max_outstanding = proto::limits::default_max_outstanding;
  uint32_t max_queued = 65536;
};

struct correlation_stats {
  uint64_t sent = 0, completed = 0, timeouts = 0, error_replies = 0, unexpected = 0, failed_on_loss = 0;
  uint32_t pending_high_water = 0;
};

struct correlation_state {
  enum class kind : uint8_t { blocking, promise, nowait };
  struct entry {
    uint16_t cmd = 0;
    kind k = kind::nowait;
    std::chrono::steady_clock::time_point deadline;
    call_guard_ptr guard;
    caf::response_promise rp;
    bool tracked = false;  ///< a direct call: its id and in-flight slot are direct_calls'
  };
  struct queued {
    frame_ptr f;
    kind k;
    call_guard_ptr guard;
    caf::response_promise rp;
    std::chrono::milliseconds timeout;
  };
  correlation_config cfg;
  caf::actor socket;
  std::shared_ptr<direct_calls> direct;
  std::unordered_map<uint16_t, entry> pending;
  std::deque<queued> waiting;
  uint16_t next_id = 1;
  std::chrono::steady_clock::time_point next_sweep = std::chrono::steady_clock::time_point::max();
  int youngest_nowait = -1;
  std::vector<caf::response_promise> nowait_waiters;
  call_result youngest_nowait_result;
  correlation_stats stats;
  correlation_state() = default;
  ~correlation_state();
  static inline const char* name = "vfu.correlation";
};

caf::behavior correlation_actor(caf::stateful_actor<correlation_state>* self, correlation_config cfg);

}  // namespace vfu

CAF_ALLOW_UNSAFE_MESSAGE_TYPE(vfu::correlation_stats)
