// correlation_actor.hpp: the actors' way to the pending table (pending_table.hpp has the
// lifecycle of every kind of request). An actor sends (request_atom, frame, timeout_ms) and
// gets a call_result: the reply, the peer's error reply, a timeout, or the connection's
// loss, exactly once. The actor also runs the table's timer for the requests nobody blocks
// on (actors' and no-wait ones): one timer, armed for the earliest such deadline.
//
// Messages: (request_atom, frame_ptr, uint32_t timeout_ms) -> call_result; (deliver_atom,
// promise, call_result) from the reader that completed an actor's request; (pump_atom) when
// there is room again for queued requests; (sweep_atom) the timer; (attach_atom, connection,
// epoch) the connection to write to; (twin_atom, twin, main) from now on requests go on
// main's twin socket (twin_socket.hpp); (connlost_atom) it is gone.
#pragma once

#include <caf/all.hpp>

#include <chrono>
#include <deque>

#include "actors/pending_table.hpp"
#include "actors/types.hpp"

namespace vfu {

struct correlation_config {
  std::chrono::milliseconds short_timeout{5000};   ///< register access (QEMU's default)
  std::chrono::milliseconds long_timeout{60000};   ///< reset, migration, DMA map/unmap
  uint32_t max_outstanding = proto::limits::default_max_outstanding;
  uint32_t max_queued = 65536;  ///< actor requests waiting for room; past it: busy
  clock_fn now = &steady_now;   ///< requests' deadlines

  std::chrono::milliseconds timeout_for(uint16_t cmd, std::chrono::milliseconds t) const {
    if (t.count()) return t;
    return classify(cmd) == timeout_class::long_op ? long_timeout : short_timeout;
  }
};

struct correlation_state {
  struct queued {
    frame_ptr f;
    caf::response_promise rp;
    std::chrono::milliseconds timeout;
  };
  correlation_config cfg;
  std::shared_ptr<pending_table> table;
  connection_ptr transport;  ///< where requests go: the current connection or its twin
  connection_ptr main;       ///< the current connection
  uint64_t epoch = 0;
  std::deque<queued> waiting;  ///< actor requests waiting for room
  static inline const char* name = "vfu.correlation";
};

caf::behavior correlation_actor(caf::stateful_actor<correlation_state>* self, correlation_config cfg,
                                std::shared_ptr<pending_table> table);

/// Arms the correlation actor's timer if `deadline` is before the one it has (any thread).
void arm_sweep(const caf::actor& corr, pending_table& table, pending_table::clock::time_point deadline,
               pending_table::clock::time_point now = pending_table::clock::now());

}  // namespace vfu
