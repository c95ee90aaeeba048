// Shared by the live-endpoint fuzz targets: the per-input fd-leak check.
#pragma once

#include <dirent.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstdio>
#include <execinfo.h>

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <ctime>

// This definition of close() takes the place of libc's for the whole process, shared
// libraries included (CAF's too): a close() that fails with EBADF closed a number nobody
// owned, i.e. a double close, and the last closers are kept with their stacks (the live
// targets include this header exactly once).
extern "C" void __sanitizer_print_stack_trace();
namespace vfu::fuzz {
// The last closes, with who made them: for a finding where a socket stops being watched.
struct close_record {
  int fd;
  int tid;
  unsigned long ino;  ///< the file it closed
  long usec;          ///< CLOCK_MONOTONIC
  int depth;
  void* frames[24];
};
constexpr unsigned close_ring = 4096;
inline close_record close_log[close_ring];
inline std::atomic<unsigned> close_next{0};
inline long now_usec() {
  timespec ts;
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1000000L + ts.tv_nsec / 1000;
}
/// The closes of `fd` or of the file `ino` among the last 4096, and every close among the
/// last `recent`.
inline void print_closes_of(int fd, unsigned long ino = 0, unsigned recent = 16) {
  unsigned end = close_next.load();
  long now = now_usec();
  for (unsigned i = end > close_ring ? end - close_ring : 0; i < end; ++i) {
    auto& r = close_log[i % close_ring];
    if (r.fd != fd && (ino == 0 || r.ino != ino) && end - i > recent) continue;
    std::fprintf(stderr, "close(%d) of inode %lu by thread %d, %.3f s ago, %u closes ago:\n", r.fd, r.ino, r.tid,
                 double(now - r.usec) / 1e6, end - i);
    backtrace_symbols_fd(r.frames, r.depth, 2);
  }
}
}  // namespace vfu::fuzz

extern "C" int close(int fd) {
  auto& r = vfu::fuzz::close_log[vfu::fuzz::close_next.fetch_add(1) % vfu::fuzz::close_ring];
  r.fd = fd;
  r.tid = int(::syscall(SYS_gettid));
  r.usec = vfu::fuzz::now_usec();
  struct stat sb {};
  r.ino = ::fstat(fd, &sb) == 0 ? (unsigned long)sb.st_ino : 0;
  r.depth = backtrace(r.frames, 24);
  int res = int(::syscall(SYS_close, fd));
  if (res != 0 && errno == EBADF) {
    std::fprintf(stderr, "close(%d) failed with EBADF: an fd closed twice\n", fd);
    __sanitizer_print_stack_trace();
    std::abort();
  }
  return res;
}

namespace vfu::fuzz {

/// Waits up to `timeout_ms` for `fd` to be readable: 1 if it is, 0 on timeout. A signal does
/// not end the wait: libFuzzer's -timeout watchdog is a SIGALRM every few seconds, and an
/// early return from poll() (EINTR) once passed for a server that never closed: the "hang"
/// reports of the first two sessions were all this, 3 ms into an input.
inline int wait_readable(int fd, int timeout_ms) {
  const long deadline = now_usec() + long(timeout_ms) * 1000;
  for (;;) {
    long left = (deadline - now_usec()) / 1000;
    if (left < 0) return 0;
    pollfd p{fd, POLLIN, 0};
    int r = ::poll(&p, 1, int(left));
    if (r >= 0) return r;
    if (errno != EINTR) std::abort();
  }
}

/// recv() that retries when a signal interrupts it.
inline ssize_t recv_some(int fd, void* buf, size_t n) {
  for (;;) {
    ssize_t r = ::recv(fd, buf, n, 0);
    if (r >= 0 || errno != EINTR) return r;
  }
}

inline int open_fds() {
  int n = 0;
  if (DIR* d = ::opendir("/proc/self/fd")) {
    while (auto* e = ::readdir(d))
      if (e->d_name[0] != '.') ++n;
    ::closedir(d);
  }
  return n;
}

/// Every open fd with what it refers to, and the registrations of every epoll fd: for a
/// finding where a socket stops being watched.
inline void dump_fds() {
  DIR* d = ::opendir("/proc/self/fd");
  if (!d) return;
  while (auto* e = ::readdir(d)) {
    if (e->d_name[0] == '.') continue;
    char path[64], target[256] = {};
    std::snprintf(path, sizeof path, "/proc/self/fd/%s", e->d_name);
    ssize_t n = ::readlink(path, target, sizeof target - 1);
    std::fprintf(stderr, "  fd %s -> %s\n", e->d_name, n > 0 ? target : "?");
    if (n > 0 && std::strstr(target, "eventpoll")) {
      std::snprintf(path, sizeof path, "/proc/self/fdinfo/%s", e->d_name);
      if (FILE* f = std::fopen(path, "r")) {
        char line[256];
        while (std::fgets(line, sizeof line, f))
          if (std::strncmp(line, "tfd:", 4) == 0) std::fprintf(stderr, "      %s", line);
        std::fclose(f);
      }
    }
  }
  ::closedir(d);
}

/// Aborts if more fds are open than before the input, once the io thread had up to 2 s to
/// close the input's sockets. The first input is exempt: it creates Asio's epoll, eventfd
/// and timerfd, which live as long as the process.
inline void check_no_fd_leak(int baseline) {
  static bool first = true;
  if (first) {
    first = false;
    return;
  }
  int now = open_fds();
  for (int i = 0; i < 2000 && now > baseline; ++i) {
    ::usleep(1000);
    now = open_fds();
  }
  if (now > baseline) {
    std::fprintf(stderr, "fd leak: %d open, baseline %d\n", now, baseline);
    std::abort();
  }
  // Fewer than before: something closed an fd this input did not own (a double close). The
  // number may already belong to a later socket, whose epoll registration would vanish.
  if (now < baseline) {
    std::fprintf(stderr, "fd closed twice: %d open, baseline %d\n", now, baseline);
    std::abort();
  }
}

}  // namespace vfu::fuzz
