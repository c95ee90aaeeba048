#include "tools/harness/io.hpp"
#include "protocol/fd_passing.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstring>
#include <fstream>
#include <sstream>
#include <thread>

#include "protocol/limits.hpp"

namespace vfu::harness::io {

namespace {

int ms_until(deadline dl) {
  auto now = clock::now();
  if (dl <= now) return 0;
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(dl - now).count() + 1;
  return ms > INT_MAX ? INT_MAX : int(ms);
}

void sleep_until_or(deadline dl, std::chrono::microseconds d) {
  auto t = clock::now() + d;
  std::this_thread::sleep_until(t < dl ? t : dl);
}

bool make_address(const std::string& path, sockaddr_un& a, std::string& err) {
  a = sockaddr_un{};
  a.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof a.sun_path) {
    err = "socket path '" + path + "' is empty or longer than " + std::to_string(sizeof a.sun_path - 1) + " bytes";
    return false;
  }
  std::memcpy(a.sun_path, path.c_str(), path.size() + 1);
  return true;
}

void set_nonblocking(int fd) {
  int fl = ::fcntl(fd, F_GETFL);
  if (fl >= 0) ::fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

// Frames from a peer may be as large as the protocol allows (64 MiB of data + head).
constexpr uint32_t max_frame = uint32_t(proto::limits::max_data_xfer_ceiling + proto::limits::frame_overhead);
constexpr size_t recv_buffer = 256 << 10;
constexpr size_t max_recv_fds = proto::limits::scm_max_fd;

}  // namespace

// ---- connection ------------------------------------------------------------------------------
connection::connection(proto::unique_fd fd) : fd_(std::move(fd)), asm_(max_frame) {
  if (fd_) set_nonblocking(fd_.get());
}

std::string connection::why_closed() const {
  if (closed_by_us_) return "the scenario closed the connection";
  if (eof_) return eof_reason_;
  if (!fd_) return "not connected";
  return "open";
}

std::string connection::send(const proto::frame_bytes& bytes, const proto::fd_list& fds, const send_options& o,
                             deadline dl) {
  if (!fd_ || eof_) return "cannot send: " + why_closed();
  size_t total = o.cut ? std::min(*o.cut, bytes.size()) : bytes.size();
  std::vector<size_t> sizes;
  size_t left = total;
  for (size_t p : o.pieces) {
    if (!left) break;
    size_t n = std::min(p, left);
    sizes.push_back(n);
    left -= n;
  }
  if (left || sizes.empty()) sizes.push_back(left);
  if (fds.size() > max_recv_fds) return "cannot send " + std::to_string(fds.size()) + " fds in one message (SCM_MAX_FD is 253)";
  size_t off = 0;
  for (size_t i = 0; i < sizes.size(); ++i) {
    if (i && o.gap.count()) sleep_until_or(dl, o.gap);
    bool with_fds = i + 1 == sizes.size() && !fds.empty();
    size_t done = 0, n = sizes[i];
    while (done < n) {  // (a stream socket cannot carry fds without a byte)
      iovec iov{const_cast<uint8_t*>(bytes.data() + off + done), n - done};
      msghdr mh{};
      mh.msg_iov = &iov;
      mh.msg_iovlen = 1;
      std::vector<char> cbuf;
      if (with_fds && done == 0) {
        cbuf.assign(CMSG_SPACE(sizeof(int) * fds.size()), 0);
        mh.msg_control = cbuf.data();
        mh.msg_controllen = cbuf.size();
        cmsghdr* c = CMSG_FIRSTHDR(&mh);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
        for (size_t k = 0; k < fds.size(); ++k) {
          int v = fds[k].get();
          std::memcpy(CMSG_DATA(c) + k * sizeof(int), &v, sizeof v);
        }
      }
      ssize_t w = ::sendmsg(fd_.get(), &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
      if (w < 0) {
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
          pollfd p{fd_.get(), POLLOUT, 0};
          if (::poll(&p, 1, ms_until(dl)) == 0) return "send timed out (the peer is not reading)";
          continue;
        }
        if (o.may_close && (errno == EPIPE || errno == ECONNRESET)) return "";
        return std::string("send failed: ") + std::strerror(errno);
      }
      done += size_t(w);
    }
    off += n;
  }
  if (o.cut) close();
  return "";
}

bool connection::pump(deadline dl) {
  if (!fd_ || eof_) return false;
  pollfd p{fd_.get(), POLLIN, 0};
  int r = ::poll(&p, 1, ms_until(dl));
  if (r < 0 && errno == EINTR) return true;
  if (r <= 0) return false;
  static std::vector<uint8_t> buf(recv_buffer);
  proto::fd_list fds;
  bool truncated = false;
  ssize_t n = proto::recv_with_fds(fd_.get(), buf.data(), buf.size(), MSG_DONTWAIT, fds, truncated, max_recv_fds);
  if (n < 0) {
    if (errno == EAGAIN || errno == EINTR) return true;
    eof_ = true;
    eof_reason_ = std::string("connection failed: ") + std::strerror(errno);
    return true;
  }
  if (truncated) stream_errors_.push_back("the peer sent more fds than fit (MSG_CTRUNC)");
  if (n == 0) {
    eof_ = true;
    eof_reason_ = asm_.mid_frame() ? "the peer closed the connection in the middle of a frame"
                                   : "the peer closed the connection";
    return true;
  }
  std::vector<proto::frame_assembler::event> evs;
  asm_.feed(buf.data(), size_t(n), std::move(fds), evs);
  auto now = clock::now();
  for (auto& e : evs) {
    switch (e.kind) {
      case proto::frame_assembler::event::frame_ready: queue_.push_back({std::move(e.f), now}); break;
      case proto::frame_assembler::event::rejected:
        stream_errors_.push_back("the peer sent a frame too large to accept: " + proto::describe(e.hdr, 0));
        break;
      case proto::frame_assembler::event::fatal:
        stream_errors_.push_back("the peer sent an invalid stream: " + e.err.message());
        eof_ = true;
        eof_reason_ = "the peer sent an invalid stream: " + e.err.message();
        break;
    }
  }
  return true;
}

connection::got connection::next(const std::function<bool(const proto::header&)>& want, deadline dl, received& out) {
  while (true) {
    for (auto it = queue_.begin(); it != queue_.end(); ++it)
      if (want(it->f.hdr())) {
        out = std::move(*it);
        queue_.erase(it);
        return got::frame;
      }
    if (!fd_ || eof_) return got::closed;
    auto now = clock::now();
    if (now >= dl) {
      if (!pump(now)) return got::timeout;  // a last look without waiting
      continue;
    }
    pump(dl);
  }
}

connection::got connection::any(deadline dl, received& out) {
  return next([](const proto::header&) { return true; }, dl, out);
}

connection::got connection::wait_close(deadline dl, std::vector<received>& unread) {
  while (true) {
    while (!queue_.empty()) {
      unread.push_back(std::move(queue_.front()));
      queue_.pop_front();
    }
    if (!fd_ || eof_) return got::closed;
    auto now = clock::now();
    if (now >= dl) {
      if (!pump(now)) return got::timeout;
      continue;
    }
    pump(dl);
  }
}

void connection::close() {
  if (fd_) closed_by_us_ = true;
  fd_.reset();
}

// ---- sockets -------------------------------------------------------------------------------
proto::unique_fd connect_unix(const std::string& path, deadline dl, std::string& err) {
  sockaddr_un a;
  if (!make_address(path, a, err)) return {};
  while (true) {
    proto::unique_fd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!fd) {
      err = std::string("socket: ") + std::strerror(errno);
      return {};
    }
    if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) == 0) return fd;
    int e = errno;
    if ((e != ENOENT && e != ECONNREFUSED && e != EAGAIN) || clock::now() >= dl) {
      err = "cannot connect to " + path + ": " + std::strerror(e);
      return {};
    }
    sleep_until_or(dl, std::chrono::milliseconds(10));
  }
}

proto::unique_fd listen_unix(const std::string& path, std::string& err) {
  sockaddr_un a;
  if (!make_address(path, a, err)) return {};
  proto::unique_fd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!fd) {
    err = std::string("socket: ") + std::strerror(errno);
    return {};
  }
  ::unlink(path.c_str());
  if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || ::listen(fd.get(), 8) != 0) {
    err = "cannot listen on " + path + ": " + std::strerror(errno);
    return {};
  }
  return fd;
}

proto::unique_fd accept_one(int listener, deadline dl, std::string& err) {
  while (true) {
    pollfd p{listener, POLLIN, 0};
    int r = ::poll(&p, 1, ms_until(dl));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) {
      err = "no client connected in time";
      return {};
    }
    int fd = ::accept4(listener, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd >= 0) return proto::unique_fd(fd);
    if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED) {
      err = std::string("accept: ") + std::strerror(errno);
      return {};
    }
  }
}

// ---- child processes ------------------------------------------------------------------------
child::~child() {
  if (pid_ > 0 && !reaped_) kill_now();
}

bool child::start(const std::vector<std::string>& argv, const std::string& out, const std::string& errf,
                  bool inherit, std::string& err) {
  out_path = inherit ? "" : out;
  err_path = inherit ? "" : errf;
  int pipefd[2];
  if (::pipe2(pipefd, O_CLOEXEC) != 0) {
    err = std::string("pipe: ") + std::strerror(errno);
    return false;
  }
  proto::unique_fd rd(pipefd[0]), wr(pipefd[1]);
  std::vector<char*> args;
  for (auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  pid_t parent = ::getpid();
  pid_t pid = ::fork();
  if (pid < 0) {
    err = std::string("fork: ") + std::strerror(errno);
    return false;
  }
  if (pid == 0) {
    // Child: only async-signal-safe calls from here on.
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) ::_exit(127);
    ::signal(SIGPIPE, SIG_DFL);
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    int devnull = ::open("/dev/null", O_RDONLY);
    if (devnull >= 0) ::dup2(devnull, 0);
    if (!inherit) {
      int o = ::open(out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
      int e = ::open(errf.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
      if (o < 0 || e < 0 || ::dup2(o, 1) < 0 || ::dup2(e, 2) < 0) {
        int x = errno;
        (void)!::write(wr.get(), &x, sizeof x);
        ::_exit(127);
      }
    }
    ::execv(args[0], args.data());
    int x = errno;
    (void)!::write(wr.get(), &x, sizeof x);
    ::_exit(127);
  }
  wr.reset();
  int x = 0;
  ssize_t r;
  do r = ::read(rd.get(), &x, sizeof x);
  while (r < 0 && errno == EINTR);
  pid_ = pid;
  if (r == sizeof x) {
    ::waitpid(pid, &status_, 0);
    reaped_ = true;
    err = "cannot run " + argv[0] + ": " + std::strerror(x);
    return false;
  }
  return true;
}

bool child::running() {
  if (pid_ <= 0 || reaped_) return false;
  int st = 0;
  pid_t r = ::waitpid(pid_, &st, WNOHANG);
  if (r == pid_) {
    reaped_ = true;
    status_ = st;
  }
  return !reaped_;
}

bool child::wait(deadline dl) {
  while (running()) {
    if (clock::now() >= dl) return false;
    sleep_until_or(dl, std::chrono::milliseconds(5));
  }
  return pid_ > 0;
}

std::string child::describe_exit() const {
  if (!reaped_) return "still running";
  if (WIFEXITED(status_)) return "exit " + std::to_string(WEXITSTATUS(status_));
  if (WIFSIGNALED(status_)) {
    int s = WTERMSIG(status_);
    const char* n = ::strsignal(s);
    return "killed by signal " + std::to_string(s) + (n ? std::string(" (") + n + ")" : "");
  }
  return "status " + std::to_string(status_);
}

bool child::terminate(std::chrono::milliseconds grace) {
  if (!running()) return false;
  ::kill(pid_, SIGTERM);
  if (wait(after(grace))) return true;
  kill_now();
  return false;
}

void child::kill_now() {
  if (pid_ <= 0 || reaped_) return;
  ::kill(pid_, SIGKILL);
  int st = 0;
  while (::waitpid(pid_, &st, 0) < 0 && errno == EINTR) {
  }
  reaped_ = true;
  status_ = st;
}

std::string read_text(const std::string& path, size_t max) {
  if (path.empty()) return "";
  std::ifstream in(path, std::ios::binary);
  if (!in) return "";
  std::string s(max, '\0');
  in.read(&s[0], std::streamsize(max));
  s.resize(size_t(in.gcount()));
  return s;
}

// ---- scenario fds ----------------------------------------------------------------------------
owned_fd::owned_fd(owned_fd&& o) noexcept
    : kind(o.kind), fd(std::move(o.fd)), map(std::exchange(o.map, nullptr)), size(o.size) {}
owned_fd& owned_fd::operator=(owned_fd&& o) noexcept {
  if (this != &o) {
    if (map) ::munmap(map, size);
    kind = o.kind;
    fd = std::move(o.fd);
    map = std::exchange(o.map, nullptr);
    size = o.size;
  }
  return *this;
}
owned_fd::~owned_fd() {
  if (map) ::munmap(map, size);
}

bool make_memfd(size_t size, owned_fd& out, std::string& err, bool map) {
  out = owned_fd{};
  out.kind = owned_fd::kind_t::memfd;
  out.fd.reset(::memfd_create("vfu-harness", MFD_CLOEXEC));
  if (!out.fd || ::ftruncate(out.fd.get(), off_t(size)) != 0) {
    err = std::string("memfd: ") + std::strerror(errno);
    return false;
  }
  out.size = size;
  if (size && map) {
    void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, out.fd.get(), 0);
    if (p == MAP_FAILED) {
      err = std::string("mmap of the memfd: ") + std::strerror(errno);
      return false;
    }
    out.map = static_cast<uint8_t*>(p);
  }
  return true;
}

bool make_eventfd(owned_fd& out, std::string& err) {
  out = owned_fd{};
  out.kind = owned_fd::kind_t::eventfd;
  out.fd.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!out.fd) {
    err = std::string("eventfd: ") + std::strerror(errno);
    return false;
  }
  return true;
}

bool open_file(const std::string& path, bool write, owned_fd& out, std::string& err) {
  out = owned_fd{};
  out.kind = owned_fd::kind_t::file;
  out.fd.reset(::open(path.c_str(), (write ? O_RDWR : O_RDONLY) | O_CLOEXEC));
  if (!out.fd) {
    err = "cannot open " + path + ": " + std::strerror(errno);
    return false;
  }
  return true;
}

std::optional<uint64_t> wait_eventfd(int fd, deadline dl) {
  while (true) {
    pollfd p{fd, POLLIN, 0};
    int r = ::poll(&p, 1, ms_until(dl));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return std::nullopt;
    uint64_t v = 0;
    if (::read(fd, &v, sizeof v) == ssize_t(sizeof v)) return v;
    if (errno != EAGAIN) return std::nullopt;
  }
}

temp_dir::temp_dir() {
  char t[] = "/tmp/vfu-harness-XXXXXX";
  if (::mkdtemp(t)) path_ = t;
}

temp_dir::~temp_dir() {
  if (path_.empty()) return;
  if (DIR* d = ::opendir(path_.c_str())) {
    while (auto* e = ::readdir(d)) {
      std::string n = e->d_name;
      if (n != "." && n != "..") ::unlink((path_ + "/" + n).c_str());
    }
    ::closedir(d);
  }
  ::rmdir(path_.c_str());
}

int count_open_fds() {
  int n = 0;
  if (DIR* d = ::opendir("/proc/self/fd")) {
    while (auto* e = ::readdir(d))
      if (e->d_name[0] != '.') ++n;
    ::closedir(d);
  }
  return n - 1;
}

}  // namespace vfu::harness::io
