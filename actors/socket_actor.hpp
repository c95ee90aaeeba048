// socket_actor.hpp: one per connection, for its lifetime: it starts the connection's
// transport, which reads (replies complete their requests in the pending table, requests go
// to the dispatcher) and writes, and ends the connection on what the transport reports:
// a fatal stream condition (EOF mid-frame, bad header, socket error, MSG_CTRUNC, a peer that
// stops reading) at once, with an error naming the cause; an EOF at a frame boundary (or a
// frame declared far over the limit) after answering what the peer sent. Its transport is
// closed on every exit path (attach_functor), and every queued fd with it; the supervisor,
// which monitors it, then restarts. (twin_atom, transport) starts the connection's twin socket
// under a socket actor of its own, linked to this one: either one's end ends both.
#pragma once

#include <caf/all.hpp>

#include <memory>

#include "actors/stream_transport.hpp"
#include "actors/types.hpp"

namespace vfu {

struct socket_state {
  std::shared_ptr<stream_transport> transport;
  caf::actor dispatcher;
  caf::actor twin;  ///< the twin socket's actor, linked (twin_socket.hpp)
  static inline const char* name = "vfu.socket";
};

caf::behavior socket_actor(caf::stateful_actor<socket_state>* self, std::shared_ptr<stream_transport> tr,
                           caf::actor dispatcher);

}  // namespace vfu
