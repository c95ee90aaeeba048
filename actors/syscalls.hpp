// syscalls.hpp: the socket calls vfu-broker makes on a connection, behind one seam so that
// tests can inject faults into every one of them.
//
// Fault injection (tests only; costs one relaxed atomic load per call when off): with
// faults().eintr_every = N, every N-th call fails with EINTR before it is made; with
// eagain_every = M, every M-th call fails with EAGAIN although the socket is ready. The
// broker must treat both as the kernel may: retry EINTR, and after EAGAIN wait for readiness
// again without losing a wake-up (Asio's epoll reactor re-checks readiness when a wait is
// armed, so a spurious EAGAIN costs one more round through the loop, not a stall).
#pragma once

#include <sys/socket.h>

#include <atomic>
#include <cstdint>

namespace vfu::sys {

struct fault_injection {
  std::atomic<uint32_t> eintr_every{0};
  std::atomic<uint32_t> eagain_every{0};
  std::atomic<uint64_t> calls{0};
  std::atomic<uint64_t> injected{0};
  bool armed() const noexcept {
    return eintr_every.load(std::memory_order_relaxed) | eagain_every.load(std::memory_order_relaxed);
  }
};
fault_injection& faults() noexcept;

ssize_t recvmsg(int fd, msghdr* m, int flags) noexcept;
ssize_t sendmsg(int fd, const msghdr* m, int flags) noexcept;

}  // namespace vfu::sys
