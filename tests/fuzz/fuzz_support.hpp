// Shared by the live-endpoint fuzz targets: the per-input fd-leak check.
#pragma once

#include <dirent.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>

namespace vfu::fuzz {

inline int open_fds() {
  int n = 0;
  if (DIR* d = ::opendir("/proc/self/fd")) {
    while (auto* e = ::readdir(d))
      if (e->d_name[0] != '.') ++n;
    ::closedir(d);
  }
  return n;
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
}

}  // namespace vfu::fuzz
