// fd_passing.hpp: the SCM_RIGHTS side of recvmsg, shared by every reader of a UNIX socket
// (the transport, the harness, the tracer, the tests).
#pragma once

#include <sys/socket.h>
#include <sys/uio.h>

#include <algorithm>
#include <cstring>

#include "protocol/frame.hpp"
#include "protocol/limits.hpp"

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

/// One recvmsg of up to `len` bytes into `buf` taking up to `max_fds` fds (MSG_CMSG_CLOEXEC
/// is added to `flags`), appended to `fds`, owned. Returns recvmsg's result; `truncated`
/// says fds were discarded (MSG_CTRUNC). For readers with one plain buffer (the tracer, the
/// harness, the tests); the transport plans its reads itself (frame_reader.cpp).
inline ssize_t recv_with_fds(int fd, void* buf, size_t len, int flags, fd_list& fds, bool& truncated,
                             size_t max_fds = limits::scm_max_fd) {
  alignas(cmsghdr) char cbuf[CMSG_SPACE(sizeof(int) * limits::scm_max_fd)];
  iovec iov{buf, len};
  msghdr mh{};
  mh.msg_iov = &iov;
  mh.msg_iovlen = 1;
  mh.msg_control = cbuf;
  mh.msg_controllen = CMSG_SPACE(sizeof(int) * std::min<size_t>(max_fds, limits::scm_max_fd));
  ssize_t n = ::recvmsg(fd, &mh, flags | MSG_CMSG_CLOEXEC);
  truncated = false;
  if (n < 0) return n;
  take_fds(mh, fds);
  truncated = mh.msg_flags & MSG_CTRUNC;
  return n;
}

}  // namespace vfu::proto
