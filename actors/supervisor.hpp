// supervisor.hpp (internal): one per endpoint, for its whole life. It makes connections (a
// client dials, and redials with backoff after a loss; a server accepts one client at a
// time), starts each one's socket actor and transport, negotiates VERSION in the client role,
// monitors the socket actor, and on its death tells the dispatcher, the correlation actor
// and the device that the connection is lost, then restarts. Its state is what the
// endpoint API reads (endpoint_status).
#pragma once

#include <caf/all.hpp>

#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <string>

#include "actors/endpoint.hpp"
#include "actors/stream_transport.hpp"

namespace vfu {

/// State shared by the API object (any thread) and the supervisor actor.
struct endpoint_status {
  mutable std::mutex m;
  mutable std::condition_variable cv;
  conn_state state = conn_state::connecting;
  proto::negotiated neg;
  proto::error last_error;
  uint64_t generation = 0;
  caf::actor socket;
  std::shared_ptr<stream_transport> transport;  ///< where calls go: the current connection or its twin
  uint64_t epoch = 0;                           ///< the pending table's epoch for it
  // The callback is called with cb_m held, so that once on_state() replaced it, the old one
  // is neither running nor will run (its owner may be gone).
  std::mutex cb_m;
  std::function<void(conn_state, const proto::error&)> cb;

  void set(conn_state s, const proto::error& e = {});
};

class listener;

/// The actors a supervisor works with, and where its connections come from.
struct supervisor_config {
  boost::asio::io_context* io = nullptr;  ///< where connections wait for readiness
  role r = role::client;
  endpoint_config cfg;
  std::shared_ptr<endpoint_status> status;
  std::shared_ptr<pending_table> table;
  caf::actor corr, disp, handler;
  /// Client role: how a path becomes a connected socket (empty: connect(2) to the UNIX
  /// socket at the path). The actors' unit tests count and fail dials with it.
  std::function<proto::result<proto::unique_fd>(const std::string& path)> dial;
};

/// Messages: (attach_atom, shared_ptr<unique_fd>) serve or use a connected fd; (attach_atom,
/// path) dial; (attach_atom, shared_ptr<listener>) accept from it; (close_atom) ends all.
caf::actor spawn_supervisor(caf::actor_system& sys, supervisor_config c);
/// A listening socket for the supervisor to accept from (server role).
std::shared_ptr<listener> make_listener(boost::asio::io_context& io, proto::unique_fd fd);

}  // namespace vfu

CAF_ALLOW_UNSAFE_MESSAGE_TYPE(std::shared_ptr<vfu::listener>)
