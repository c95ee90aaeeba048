// Helpers shared by the socket-level tests: fd counting, socketpairs, and a raw peer that
// speaks frames over a socket with plain blocking calls (the "other implementation").
#pragma once

#include <dirent.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <chrono>
#include <optional>
#include <string>

#include "protocol/fd_passing.hpp"
#include "protocol/assembler.hpp"
#include "protocol/messages.hpp"

namespace vfu::test {

/// The number after `key=` in an endpoint's stats() string ("frames_in=3 ..."), or -1 when
/// the key is not there (so that a test of a counter that was renamed fails).
inline int64_t stat_value(const std::string& stats, const std::string& key) {
  for (size_t at = stats.find(key + "="); at != std::string::npos; at = stats.find(key + "=", at + 1))
    if (at == 0 || stats[at - 1] == ' ') return std::stoll(stats.substr(at + key.size() + 1));
  return -1;
}

inline int count_open_fds() {
  int n = 0;
  if (DIR* d = ::opendir("/proc/self/fd")) {
    while (auto* e = ::readdir(d))
      if (e->d_name[0] != '.') ++n;
    ::closedir(d);
  }
  return n - 1;  // the DIR's own fd
}

inline std::pair<proto::unique_fd, proto::unique_fd> socket_pair() {
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) std::abort();
  return {proto::unique_fd(sv[0]), proto::unique_fd(sv[1])};
}

/// A connected AF_UNIX stream socket to `path` (blocking), or an empty fd.
inline proto::unique_fd dial_unix(const std::string& path) {
  proto::unique_fd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_un sa{};
  sa.sun_family = AF_UNIX;
  std::snprintf(sa.sun_path, sizeof sa.sun_path, "%s", path.c_str());
  if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0) return {};
  return fd;
}

/// A listening AF_UNIX stream socket on `path`, or an empty fd.
inline proto::unique_fd listen_unix(const std::string& path) {
  proto::unique_fd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_un sa{};
  sa.sun_family = AF_UNIX;
  std::snprintf(sa.sun_path, sizeof sa.sun_path, "%s", path.c_str());
  if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0 || ::listen(fd.get(), 16) != 0) return {};
  return fd;
}

/// Fixture base for tests with a socket path: a private temporary folder (short enough for
/// sun_path), and a check that the test leaked no file descriptor. Derived fixtures create
/// their runtime after socket_dir_test::SetUp() (so the baseline is counted before any of
/// the test's threads start), release their endpoints and runtime, then call
/// socket_dir_test::TearDown().
class socket_dir_test : public ::testing::Test {
 protected:
  void SetUp() override {
    fds_before_ = count_open_fds();
    char d[] = "/tmp/vfu-test-XXXXXX";
    ASSERT_TRUE(::mkdtemp(d));
    dir_ = d;
    path_ = dir_ + "/dev.sock";
  }
  void TearDown() override {
    ::unlink(path_.c_str());
    ::rmdir(dir_.c_str());
    EXPECT_EQ(count_open_fds(), fds_before_) << "file descriptors leaked";
  }
  int fds_before_ = 0;
  std::string dir_, path_;
};

/// A peer that reads and writes frames on a socket with blocking calls.
class raw_peer {
 public:
  explicit raw_peer(proto::unique_fd fd) : fd_(std::move(fd)), asm_(64u << 20) {}
  int fd() const { return fd_.get(); }

  bool send_bytes(const uint8_t* p, size_t n) {
    while (n) {
      ssize_t w = ::send(fd_.get(), p, n, MSG_NOSIGNAL);
      if (w < 0) {
        if (errno == EINTR) continue;
        return false;
      }
      p += w;
      n -= size_t(w);
    }
    return true;
  }
  bool send(const proto::frame& f) {
    if (f.fds.empty()) return send_bytes(f.bytes.data(), f.bytes.size());
    iovec iov{const_cast<uint8_t*>(f.bytes.data()), f.bytes.size()};
    alignas(cmsghdr) char cbuf[CMSG_SPACE(sizeof(int) * 16)];
    msghdr mh{};
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    mh.msg_control = cbuf;
    mh.msg_controllen = CMSG_SPACE(sizeof(int) * f.fds.size());
    cmsghdr* c = CMSG_FIRSTHDR(&mh);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * f.fds.size());
    for (size_t i = 0; i < f.fds.size(); ++i) {
      int v = f.fds[i].get();
      std::memcpy(CMSG_DATA(c) + i * sizeof(int), &v, sizeof v);
    }
    return ::sendmsg(fd_.get(), &mh, MSG_NOSIGNAL) == ssize_t(f.bytes.size());
  }
  bool send(const proto::message& m, uint16_t id, uint32_t flags = 0) { return send(proto::make_frame(id, m, flags)); }

  /// Next frame, or nullopt on EOF, error or timeout.
  std::optional<proto::frame> recv(std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    while (true) {
      if (!ready_.empty()) {
        auto f = std::move(ready_.front());
        ready_.erase(ready_.begin());
        return f;
      }
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0) return std::nullopt;
      pollfd p{fd_.get(), POLLIN, 0};
      if (::poll(&p, 1, int(left.count())) <= 0) return std::nullopt;
      uint8_t buf[65536];
      proto::fd_list fds;
      bool truncated = false;
      ssize_t n = proto::recv_with_fds(fd_.get(), buf, sizeof buf, 0, fds, truncated, 64);
      if (n <= 0) return std::nullopt;
      std::vector<proto::frame_assembler::event> evs;
      asm_.feed(buf, size_t(n), std::move(fds), evs);
      for (auto& e : evs)
        if (e.kind == proto::frame_assembler::event::frame_ready) ready_.push_back(std::move(e.f));
    }
  }
  /// True if the peer closed the connection (EOF) within the timeout.
  bool wait_eof(std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
    pollfd p{fd_.get(), POLLIN, 0};
    if (::poll(&p, 1, int(timeout.count())) <= 0) return false;
    char c;
    return ::recv(fd_.get(), &c, 1, MSG_PEEK) == 0;
  }
  /// Client side of VERSION: sends it and reads the reply.
  std::optional<proto::version_reply> version(const std::string& json = "{\"capabilities\":{}}") {
    proto::version_request v;
    v.major = 0;
    v.minor = 2;
    v.caps_json = json;
    if (!send(v, 0)) return std::nullopt;
    auto r = recv();
    if (!r) return std::nullopt;
    auto m = proto::decode(*r);
    if (!m) return std::nullopt;
    if (auto* vr = std::get_if<proto::version_reply>(&*m)) return *vr;
    return std::nullopt;
  }
  void close() { fd_.reset(); }

 private:
  proto::unique_fd fd_;
  proto::frame_assembler asm_;
  std::vector<proto::frame> ready_;
};

}  // namespace vfu::test
