#define CAF_LOG_COMPONENT "vfu"
#include "actors/twin_socket.hpp"

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#include <cerrno>
#include <cstring>

namespace vfu {

proto::result<twin_offer> offer_twin(const caf::actor& sock, const connection_ptr& main, const caf::actor& corr) {
  auto tr = std::dynamic_pointer_cast<stream_transport>(main);
  if (!tr) return proto::error(proto::errc::unsupported, "the connection is not a socket");
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
    return proto::error(proto::errc::io_error, errno, std::string("socketpair: ") + std::strerror(errno));
  proto::unique_fd ours(sv[0]), theirs(sv[1]);
  auto twin = tr->make_twin(std::move(ours), stream_transport::peer_replies);
  // Before the reply leaves: requests a device makes after it are written to the twin.
  caf::anon_send(corr, twin_atom::value, connection_ptr(twin), main);
  caf::anon_send(sock, twin_atom::value, twin);
  tr->set_lanes(stream_transport::peer_requests);
  return twin_offer{std::move(twin), std::move(theirs)};
}

proto::status accept_twin(const caf::actor& sock, stream_transport& main, proto::unique_fd fd) {
  struct stat st {};
  int type = 0, domain = 0;
  socklen_t len = sizeof type;
  if (::fstat(fd.get(), &st) != 0 || !S_ISSOCK(st.st_mode) ||
      ::getsockopt(fd.get(), SOL_SOCKET, SO_TYPE, &type, &len) != 0 || type != SOCK_STREAM ||
      (len = sizeof domain, ::getsockopt(fd.get(), SOL_SOCKET, SO_DOMAIN, &domain, &len) != 0) || domain != AF_UNIX)
    return proto::error(proto::errc::bad_fds, "the twin socket is not an AF_UNIX stream socket");
  int listening = 0;
  sockaddr_un peer{};
  socklen_t plen = sizeof peer;
  len = sizeof listening;
  if (::getsockopt(fd.get(), SOL_SOCKET, SO_ACCEPTCONN, &listening, &len) != 0 || listening ||
      ::getpeername(fd.get(), reinterpret_cast<sockaddr*>(&peer), &plen) != 0)
    return proto::error(proto::errc::bad_fds, "the twin socket is not connected");
  auto twin = main.make_twin(std::move(fd), stream_transport::peer_requests);
  main.set_lanes(stream_transport::peer_replies);
  caf::anon_send(sock, twin_atom::value, twin);
  return {};
}

}  // namespace vfu
