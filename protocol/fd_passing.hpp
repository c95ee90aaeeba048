// fd_passing.hpp: the SCM_RIGHTS side of recvmsg, shared by every reader of a UNIX socket
// (the transport, the harness, the tracer, the tests).
#pragma once

#include <sys/socket.h>

#include <cstring>

#include "protocol/frame.hpp"

namespace vfu::proto {

/// Appends the fds that a recvmsg returned in `mh`'s control data to `fds`, owned (closed
/// on every path from here on).
inline void take_fds(msghdr& mh, fd_list& fds) {
  for (cmsghdr* c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    size_t cnt = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t k = 0; k < cnt; ++k) {
      int fd;
      std::memcpy(&fd, CMSG_DATA(c) + k * sizeof(int), sizeof fd);
      fds.emplace_back(fd);
    }
  }
}

}  // namespace vfu::proto
