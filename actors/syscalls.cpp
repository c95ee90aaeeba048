#include "actors/syscalls.hpp"

#include <cerrno>

namespace vfu::sys {

fault_injection& faults() noexcept {
  static fault_injection f;
  return f;
}

namespace {
// 0 to make the call, or the errno to fail it with.
int injected_errno() noexcept {
  auto& f = faults();
  if (!f.armed()) return 0;
  uint64_t n = ++f.calls;
  uint32_t i = f.eintr_every.load(std::memory_order_relaxed), a = f.eagain_every.load(std::memory_order_relaxed);
  int e = (i && n % i == 0) ? EINTR : (a && n % a == 0) ? EAGAIN : 0;
  if (e) ++f.injected;
  return e;
}
}  // namespace

ssize_t recvmsg(int fd, msghdr* m, int flags) noexcept {
  if (int e = injected_errno()) {
    errno = e;
    return -1;
  }
  return ::recvmsg(fd, m, flags);
}

ssize_t sendmsg(int fd, const msghdr* m, int flags) noexcept {
  if (int e = injected_errno()) {
    errno = e;
    return -1;
  }
  // One buffer and no fds (most replies): send() is the same write to the socket, without
  // the kernel copying in a msghdr and an iovec array (docs/performance.md).
  if (m->msg_iovlen == 1 && m->msg_controllen == 0 && !m->msg_name)
    return ::send(fd, m->msg_iov[0].iov_base, m->msg_iov[0].iov_len, flags);
  return ::sendmsg(fd, m, flags);
}

}  // namespace vfu::sys
