// handler.hpp: make a device actor from a function, for hosts and tests that do not need
// a stateful actor of their own. The function runs on a CAF worker, one request at a time.
#pragma once

#include <caf/all.hpp>

#include <functional>

#include "actors/answer.hpp"
#include "actors/types.hpp"

namespace vfu {

using handler_fn = std::function<outbound_ptr(inbound&)>;

inline caf::behavior function_handler(caf::event_based_actor*, handler_fn fn) {
  return {
      [fn](inbound_atom, inbound_ptr& in) -> outbound_ptr {
        return answer(*in, fn(*in));
      },
      [](connup_atom, const proto::negotiated&) {},
      [](connlost_atom) {},
  };
}

inline caf::actor spawn_handler(caf::actor_system& sys, handler_fn fn) { return sys.spawn(function_handler, std::move(fn)); }

}  // namespace vfu
