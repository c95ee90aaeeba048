// twin_socket.hpp: a connection's second socket (the spec's twin_socket capability). The
// server makes a socketpair while it answers VERSION and hands the client one end; from then
// on the server's requests (DMA_READ, DMA_WRITE) and their replies use it, and the first
// socket carries only the client's requests and their replies, so neither side ever finds a
// request where it waits for a reply (libvfio-user#279).
//
// Both sockets are one connection: the twin's socket actor is spawned linked to the first
// one's, so losing either ends both, and the supervisor sees one loss (reconnect, replay).
// The first socket's close fails the pending table; the twin's does not (it is never alone).
#pragma once

#include <caf/all.hpp>

#include "actors/stream_transport.hpp"
#include "actors/types.hpp"

namespace vfu {

/// Server: makes the pair, makes our end `main`'s twin (it carries the client's replies),
/// has `sock` (main's socket actor) start it and `corr` send our requests on it. Returns the
/// twin and the client's end, for the VERSION reply.
struct twin_offer {
  transport_ptr twin;
  proto::unique_fd theirs;
};
proto::result<twin_offer> offer_twin(const caf::actor& sock, const connection_ptr& main, const caf::actor& corr);

/// Client: checks that the server's fd is a connected AF_UNIX stream socket, makes it
/// `main`'s twin (it carries the server's requests, and `main` no longer does) and has
/// `sock` start it.
proto::status accept_twin(const caf::actor& sock, stream_transport& main, proto::unique_fd fd);

}  // namespace vfu
