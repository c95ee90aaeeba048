// dispatcher_actor.hpp: delivers inbound requests, in arrival order, to the device actor
// registered for their command (or to the whole-device handler), and sends back the
// device's reply or error reply with the request's id. NO_REPLY requests get no reply.
//
// Errnos it answers with itself:
//  - a request that fails decoding: the codec's errno (EINVAL, E2BIG, ...);
//  - a command number we do not know: ENOSYS ("no such operation", as QEMU answers unknown
//    server->client commands), so a peer can tell "not implemented" from "malformed";
//  - a known command with no handler registered: ENOTSUP;
//  - a handler that failed or vanished: EIO;
//  - a handler that did not answer by its deadline (handler_timeout): ETIMEDOUT. Its late
//    answer is dropped, and the requests behind it go on in order.
// In the server role it also answers VERSION itself (negotiation), and closes a connection
// whose first command is not VERSION (the spec requires VERSION first).
//
// Order: it hands a device one request at a time and queues the rest until the answer
// comes, so a posted write is applied before a later read, whichever device actor serves
// them. (Not with CAF's await and a timeout per request, which wakes CAF's clock thread
// for every request: a deadline timer serves a run of requests, re-armed for the request
// then current when it fires. A device actor that dies is noticed by monitoring, and its
// request is answered EIO.) Requests in the other
// direction go through the correlation actor, so a server's DMA_READ is answered while the
// client's thread is blocked on its REGION_READ: no deadlock.
#pragma once

#include <caf/all.hpp>

#include <deque>
#include <map>
#include <set>

#include "actors/types.hpp"

namespace vfu {

enum class role : uint8_t { client, server };

struct dispatcher_config {
  vfu::role role = role::server;
  proto::quirks quirks;
  proto::server_offer offer;            ///< server role: what VERSION answers
  /// How long a handler may take to answer (endpoint_config::handler_timeout); the long
  /// one for commands that may legitimately take long (classify(): reset, migration, DMA
  /// map and unmap).
  std::chrono::milliseconds handler_timeout{60000};
  std::chrono::milliseconds handler_timeout_long{600000};
  caf::actor supervisor;                ///< told (connup_atom, negotiated) after VERSION
  clock_fn now = &steady_now;           ///< handlers' deadlines
};

/// One of the peer's requests as its transport's flow control counts it
/// (stream_transport::request_done): unanswered from when the transport hands it over
/// until the ticket goes, with the request's answer written or the request dropped,
/// whichever way it leaves the dispatcher.
/// A value, moved along with its request (no allocation per request); an empty ticket
/// (default, or moved from) counts nothing.
class request_ticket {
 public:
  request_ticket() = default;
  request_ticket(connection_ptr tr, uint64_t bytes) : tr_(std::move(tr)), bytes_(bytes) {}
  request_ticket(request_ticket&& o) noexcept : tr_(std::move(o.tr_)), bytes_(o.bytes_) {}
  request_ticket& operator=(request_ticket&& o) noexcept {
    if (this != &o) {
      done();
      tr_ = std::move(o.tr_);
      bytes_ = o.bytes_;
    }
    return *this;
  }
  ~request_ticket() { done(); }
  /// The request is answered (or dropped) now.
  void done() {
    if (tr_) std::exchange(tr_, nullptr)->request_done(bytes_);
  }

 private:
  connection_ptr tr_;
  uint64_t bytes_ = 0;
};

struct dispatcher_state {
  /// A registered handler, and its direct entry when it can be called in place.
  struct handler_ref {
    caf::actor actor;
    direct_handler* direct = nullptr;  ///< (kept alive by `actor`)
  };
  struct item {
    caf::actor sock;
    connection_ptr tr;  ///< the connection: replies go straight into it
    proto::header hdr;
    inbound_ptr in;
    handler_ref target;
    frame_ptr ready;  ///< or an answer decided here (an error), sent in its turn
    request_ticket ticket;
  };
  dispatcher_config cfg;
  std::deque<item> queue;       ///< requests waiting for the device to finish the current one
  bool busy = false;
  uint64_t seq = 0;             ///< identifies the request in flight
  proto::header current{};
  caf::actor current_sock, current_target;
  connection_ptr current_tr;
  request_ticket current_ticket;
  inbound_ptr current_in;                        ///< its claim() decides who answers
  std::chrono::steady_clock::time_point deadline;  ///< when the current request times out
  /// When the earliest (deadline_atom) timer pending fires (max: none).
  std::chrono::steady_clock::time_point timer_at = std::chrono::steady_clock::time_point::max();
  std::map<uint16_t, handler_ref> by_command;
  handler_ref device;                   ///< whole-device handler (command 0)
  caf::actor correlation;
  proto::decode_limits limits;
  bool negotiated = false;
  uint64_t served = 0, decode_errors = 0, timed_out = 0;
  uint64_t in_place = 0;  ///< of `served`: answered by a handler called in place (direct_handler)
  inbound_ptr spare_in;   ///< an answered request's inbound, emptied, for the next (inbound::recycle)
  std::vector<caf::response_promise> drains;  ///< (drain_atom) requests: answered when idle
  static inline const char* name = "vfu.dispatcher";
};

/// Messages: (handler_atom, uint16_t cmd, actor) registers a handler (cmd 0 = whole
/// device); (inbound_atom, event_batch, socket actor, connection) from a transport, answered
/// through that transport; (limits_atom, conn_limits) after a client-side negotiation; (connlost_atom) resets negotiation state; (drain_atom) is
/// answered once every request received so far has been answered; (stats_atom) answers
/// "served=N in_place=N decode_errors=N timed_out=N".
caf::behavior dispatcher_actor(caf::stateful_actor<dispatcher_state>* self, dispatcher_config cfg,
                               caf::actor correlation);

/// Spawns a dispatcher that a transport on the same event loop may hand batches in place
/// (direct_requests); otherwise as sys.spawn(dispatcher_actor, cfg, correlation).
caf::actor spawn_dispatcher(caf::actor_system& sys, dispatcher_config cfg, caf::actor correlation);

}  // namespace vfu
