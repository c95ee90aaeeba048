// socket_actor.hpp: one per connection. Routes what the io thread assembled (replies to the
// correlation actor, requests to the dispatcher), answers frames rejected by size with an
// error reply so the stream stays in sync, and writes frames in order with their fds.
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
  std::deque<frame_ptr> outq;
  size_t out_off = 0;        ///< bytes of outq.front() already written
  size_t queued_bytes = 0;
  bool waiting_writable = false;
  uint64_t frames_out = 0, bytes_out = 0, rejected = 0;
  static inline const char* name = "vfu.socket";
};

/// Bytes a peer may leave unread in our send queue before we give up on it.
inline constexpr size_t max_send_queue = 128u << 20;

caf::behavior socket_actor(caf::stateful_actor<socket_state>* self, std::shared_ptr<stream_transport> tr,
                           caf::actor correlation, caf::actor dispatcher);

}  // namespace vfu
