// unique_fd.hpp: a move-only owner of one file descriptor.
//
// Every fd vfu-broker receives is wrapped in a unique_fd the instant recvmsg returns, so
// every early return, rejected frame and dropped message closes it. No raw int fd crosses a
// function boundary without an owner.
#pragma once

#include <unistd.h>

#include <utility>
#include <vector>

namespace vfu::proto {

class unique_fd {
 public:
  unique_fd() noexcept = default;
  explicit unique_fd(int fd) noexcept : fd_(fd) {}
  unique_fd(const unique_fd&) = delete;
  unique_fd& operator=(const unique_fd&) = delete;
  unique_fd(unique_fd&& other) noexcept : fd_(other.release()) {}
  unique_fd& operator=(unique_fd&& other) noexcept {
    if (this != &other) reset(other.release());
    return *this;
  }
  ~unique_fd() { reset(); }

  int get() const noexcept { return fd_; }
  explicit operator bool() const noexcept { return fd_ >= 0; }
  /// Gives up ownership without closing.
  int release() noexcept { return std::exchange(fd_, -1); }
  /// Closes the current fd (if any) and takes `fd`. On Linux close() must not be retried
  /// after EINTR: the fd is gone either way (POSIX 2024 / Linux close(2) notes).
  void reset(int fd = -1) noexcept {
    int old = std::exchange(fd_, fd);
    if (old >= 0) ::close(old);
  }
  /// A new owner of a duplicate (F_DUPFD_CLOEXEC); empty on failure.
  unique_fd dup() const noexcept;

 private:
  int fd_ = -1;
};

using fd_list = std::vector<unique_fd>;

}  // namespace vfu::proto
