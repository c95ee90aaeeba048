// io.hpp: everything the harness does with the operating system: a frame connection over
// a UNIX socket (sendmsg/recvmsg with SCM_RIGHTS, fault injection: pieces, gaps, cutting a
// frame and closing), listening and connecting, child processes (vfu-serve, vfu-probe) with
// captured output, and the fds a scenario creates (memfd, eventfd, files).
//
// Nothing here blocks without a deadline. Every fd is owned by a unique_fd and created with
// CLOEXEC, so children see only their stdio.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <deque>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "protocol/assembler.hpp"
#include "protocol/frame.hpp"

namespace vfu::harness::io {

using clock = std::chrono::steady_clock;
using deadline = clock::time_point;

inline deadline after(std::chrono::microseconds d) { return clock::now() + d; }

struct received {
  proto::frame f;
  clock::time_point at;
};

/// How a frame is written: in pieces (sizes of successive sendmsg calls, the rest in a last
/// one), with a pause between pieces, or cut after some bytes (then the socket is closed).
struct send_options {
  std::vector<size_t> pieces;
  std::chrono::microseconds gap{0};
  std::optional<size_t> cut;
  /// The peer may close its end before it has read everything (it refused the frame by its
  /// header): what is left is not sent, and that is not a failure.
  bool may_close = false;
};

class connection {
 public:
  explicit connection(proto::unique_fd fd);
  connection(const connection&) = delete;
  connection& operator=(const connection&) = delete;

  /// Open for both directions: not closed by us, no EOF or fatal stream error seen.
  bool usable() const { return fd_ && !eof_; }
  /// Why it is not usable ("peer closed the connection", "we closed it", ...).
  std::string why_closed() const;

  /// Writes one frame's bytes with its fds (sent with the piece holding the last byte sent).
  /// Returns an empty string or what went wrong.
  std::string send(const proto::frame_bytes& bytes, const proto::fd_list& fds, const send_options& o, deadline dl);

  enum class got { frame, timeout, closed };
  /// The next queued or arriving frame whose header satisfies `want`; others stay queued.
  got next(const std::function<bool(const proto::header&)>& want, deadline dl, received& out);
  /// Waits for the peer to close. Frames that arrive first are handed back in `unread`.
  got wait_close(deadline dl, std::vector<received>& unread);
  /// Any frame queued or arriving before the deadline is returned (got::frame).
  got any(deadline dl, received& out);
  /// Frames the peer sent that the stream assembler rejected or found fatal.
  const std::vector<std::string>& stream_errors() const { return stream_errors_; }

  void close();

 private:
  /// One poll + recvmsg. False on timeout; sets eof_ on EOF or error.
  bool pump(deadline dl);

  proto::unique_fd fd_;
  proto::frame_assembler asm_;
  std::deque<received> queue_;
  bool eof_ = false;
  bool closed_by_us_ = false;
  std::string eof_reason_;
  std::vector<std::string> stream_errors_;
};

/// Connects to a UNIX socket, retrying while the path is missing or refuses (a server that
/// is still starting) until the deadline.
proto::unique_fd connect_unix(const std::string& path, deadline dl, std::string& err);
/// A listening socket bound to `path` (a stale file is replaced).
proto::unique_fd listen_unix(const std::string& path, std::string& err);
/// Accepts one connection before the deadline.
proto::unique_fd accept_one(int listener, deadline dl, std::string& err);

/// A child process with stdout/stderr in files (or inherited).
class child {
 public:
  child() = default;
  child(const child&) = delete;
  child& operator=(const child&) = delete;
  ~child();

  /// Starts argv[0] with argv. Output goes to `out_path`/`err_path`, or stays on ours when
  /// `inherit` is set. The child gets SIGKILL if the harness dies.
  bool start(const std::vector<std::string>& argv, const std::string& out_path, const std::string& err_path,
             bool inherit, std::string& err);
  bool started() const { return pid_ > 0; }
  pid_t pid() const { return pid_; }
  /// Reaps it if it has exited; true while it runs.
  bool running();
  /// Waits for the exit until the deadline; true when it has exited.
  bool wait(deadline dl);
  bool exited() const { return reaped_; }
  int status() const { return status_; }
  /// "exit 0", "exit 1", "killed by signal 11 (SIGSEGV)".
  std::string describe_exit() const;
  /// SIGTERM, then SIGKILL after `grace`. Returns true if it exited from the SIGTERM.
  bool terminate(std::chrono::milliseconds grace);
  void kill_now();

  std::string out_path, err_path;

 private:
  pid_t pid_ = -1;
  bool reaped_ = false;
  int status_ = 0;
};

/// The first `max` bytes of a file ("" if missing).
std::string read_text(const std::string& path, size_t max = 1 << 20);

/// A scenario-created descriptor.
struct owned_fd {
  enum class kind_t { memfd, eventfd, file } kind = kind_t::file;
  proto::unique_fd fd;
  uint8_t* map = nullptr;  ///< memfd: its mapping
  size_t size = 0;
  owned_fd() = default;
  owned_fd(owned_fd&& o) noexcept;
  owned_fd& operator=(owned_fd&& o) noexcept;
  ~owned_fd();
};
/// A memfd of `size` bytes, mapped (for mem-write/mem-expect) unless `map` is false.
bool make_memfd(size_t size, owned_fd& out, std::string& err, bool map = true);
bool make_eventfd(owned_fd& out, std::string& err);
bool open_file(const std::string& path, bool write, owned_fd& out, std::string& err);
/// Reads (and so resets) an eventfd counter if it is signalled before the deadline.
std::optional<uint64_t> wait_eventfd(int fd, deadline dl);

/// A private directory under /tmp (short enough for socket paths), removed with its files.
class temp_dir {
 public:
  temp_dir();
  ~temp_dir();
  const std::string& path() const { return path_; }
  std::string file(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

/// Open descriptors of this process.
int count_open_fds();

}  // namespace vfu::harness::io
