// socket_actor.hpp: one per connection. Routes the replies the io thread assembled to the
// correlation actor (its transport hands requests to the dispatcher itself), answers frames
// rejected by size with an
// error reply so the stream stays in sync, and writes frames in order with their fds
// through its transport (whose write path it shares with direct-call threads).
//
// It ends with an error naming the cause on every fatal stream condition (EOF mid-frame, bad
// header, socket error, MSG_CTRUNC, a peer that stops reading). Its transport is closed on
// every exit path (attach_functor), and every queued fd with it.
#pragma once

#include <caf/all.hpp>

#include <deque>
#include <memory>

#include "actors/socket_io.hpp"
#include "actors/types.hpp"

namespace vfu {

struct socket_state {
  std::shared_ptr<stream_transport> transport;
  caf::actor correlation;
  caf::actor dispatcher;
  uint64_t rejected = 0;
  static inline const char* name = "vfu.socket";
};

caf::behavior socket_actor(caf::stateful_actor<socket_state>* self, std::shared_ptr<stream_transport> tr,
                           caf::actor correlation, caf::actor dispatcher);

}  // namespace vfu
