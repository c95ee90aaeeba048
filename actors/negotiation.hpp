// negotiation.hpp: the VERSION exchange, both roles side by side, and where its outcome
// takes effect. The rules themselves (what to offer, what to accept) are protocol/
// capabilities.hpp's; this is what the broker does with them.
#pragma once

#include "actors/types.hpp"
#include "protocol/capabilities.hpp"

namespace vfu {

/// Client: the VERSION request we send.
proto::version_request client_version(const proto::capabilities& caps);
/// Client: the server's answer (a reply frame) checked against what we proposed.
proto::result<proto::negotiated> client_check(const frame_ptr& reply, const proto::capabilities& proposed,
                                              const proto::quirks& q);

/// Server: what to answer to a client's VERSION request, or why it is refused.
struct server_answer {
  proto::negotiated n;
  proto::version_reply reply;
};
proto::result<server_answer> server_version(const proto::version_request& req, const proto::server_offer& offer);

/// Connection parameters that follow from a negotiation.
conn_limits limits_from(const proto::negotiated& n);
/// Puts a negotiation's frame limit in force on the connection's transport (the one place
/// it is set: before the peer can send anything that needs it) and returns the limits.
conn_limits put_in_force(const proto::negotiated& n, connection& c);

}  // namespace vfu
