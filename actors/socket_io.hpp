// socket_io.hpp: the byte level of one vfio-user connection, on an AF_UNIX stream socket.
//
// Ownership and threads:
//  - stream_transport owns the socket. Only the io thread reads: it waits for readiness with
//    Asio, drains the socket with recvmsg(MSG_DONTWAIT | MSG_CMSG_CLOEXEC), wraps every
//    received fd in a unique_fd at once, assembles frames and sends each batch to the owning
//    socket actor. MSG_CTRUNC is fatal (fds were lost).
//  - Writes go through send(), from any thread (the socket actor, or a caller thread on the
//    direct-call lane): whole frames, in the order send() was called, under one mutex. What
//    the socket does not take at once is queued and written by the io thread when the
//    socket is writable again; no caller ever blocks on a full socket. close() takes the
//    same mutex, so no write can use the fd after it was closed (and its number reused).
#pragma once

#include <boost/asio/io_context.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <caf/all.hpp>

#include <atomic>
#include <deque>
#include <memory>
#include <mutex>

#include "actors/types.hpp"
#include "protocol/assembler.hpp"
#include "protocol/frame.hpp"

namespace vfu {

class direct_calls;

/// Bytes a peer may leave unread in our send queue before we give up on it.
inline constexpr size_t max_send_queue = 128u << 20;

class stream_transport : public std::enable_shared_from_this<stream_transport> {
 public:
  stream_transport(boost::asio::io_context& io, proto::unique_fd fd, uint32_t max_frame,
                   std::shared_ptr<direct_calls> direct = nullptr);
  ~stream_transport();

  /// Sends a whole frame (any thread). An error means the connection is broken; the owner
  /// is told with (ioerr_atom) as well.
  proto::status send(const frame_ptr& f);
  /// Starts reading; batches go to `owner` as (frames_atom, event_batch); EOF or an error
  /// as (ioerr_atom, proto::error). Reading stops after either.
  void start(caf::actor owner);
  /// Largest frame accepted from the next header on (any thread).
  void set_max_frame(uint32_t n) noexcept { max_frame_.store(n, std::memory_order_relaxed); }
  /// Stops reading and closes the socket (on the io thread).
  void close();

  /// Counters for inspection.
  std::atomic<uint64_t> frames_in{0}, bytes_in{0}, frames_out{0}, bytes_out{0};

 private:
  void arm();
  void on_readable();
  void arm_writable();
  void on_writable();
  /// Writes queued frames; wm_ held. False on a socket error.
  bool flush_locked();
  void write_failed(int err);

  std::shared_ptr<direct_calls> direct_;
  proto::error setup_error_;
  std::mutex wm_;
  std::deque<frame_ptr> outq_;
  size_t out_off_ = 0;
  size_t queued_ = 0;
  bool write_armed_ = false;
  bool closed_ = false;

  boost::asio::io_context& io_;
  boost::asio::local::stream_protocol::socket sock_;
  int fd_;
  std::atomic<uint32_t> max_frame_;
  proto::frame_assembler asm_;
  caf::actor owner_;
  bool stopped_ = false;
};

/// Writes as much of `bytes[off..]` as the socket takes now, with `fds` on the first
/// sendmsg of the frame (off == 0). Returns the new offset, or -errno (never -EAGAIN:
/// EAGAIN returns the unchanged offset).
ssize_t send_some(int fd, const std::vector<uint8_t>& bytes, size_t off, const proto::fd_list& fds);

}  // namespace vfu
