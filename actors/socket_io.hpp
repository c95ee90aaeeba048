// socket_io.hpp: the byte level of one vfio-user connection, on an AF_UNIX stream socket.
//
// Ownership and threads:
//  - stream_transport owns the socket. Only the io thread reads: it waits for readiness with
//    Asio, drains the socket with recvmsg(MSG_DONTWAIT | MSG_CMSG_CLOEXEC), wraps every
//    received fd in a unique_fd at once, assembles frames and sends each batch to the owning
//    socket actor. MSG_CTRUNC is fatal (fds were lost).
//  - Only the owning socket actor writes, with send_frame() on fd(). It never writes after
//    it called close(), and close() is the only thing that closes the socket, so the fd
//    number cannot be reused under a writer.
#pragma once

#include <boost/asio/io_context.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <caf/all.hpp>

#include <atomic>
#include <memory>

#include "protocol/assembler.hpp"
#include "protocol/frame.hpp"

namespace vfu {

class stream_transport : public std::enable_shared_from_this<stream_transport> {
 public:
  stream_transport(boost::asio::io_context& io, proto::unique_fd fd, uint32_t max_frame);
  ~stream_transport();

  int fd() const noexcept { return fd_; }
  /// Starts reading; batches go to `owner` as (frames_atom, event_batch); EOF or an error
  /// as (ioerr_atom, proto::error). Reading stops after either.
  void start(caf::actor owner);
  /// Largest frame accepted from the next header on (any thread).
  void set_max_frame(uint32_t n) noexcept { max_frame_.store(n, std::memory_order_relaxed); }
  /// Sends (writable_atom) to the owner once the socket is writable again.
  void notify_writable();
  /// Stops reading and closes the socket (on the io thread).
  void close();

  /// Counters for inspection.
  std::atomic<uint64_t> frames_in{0}, bytes_in{0};

 private:
  void arm();
  void on_readable();

  boost::asio::io_context& io_;
  boost::asio::local::stream_protocol::socket sock_;
  int fd_;
  std::atomic<uint32_t> max_frame_;
  proto::frame_assembler asm_;
  caf::actor owner_;
  std::vector<uint8_t> buf_;
  bool stopped_ = false;
};

/// Writes as much of `bytes[off..]` as the socket takes now, with `fds` on the first
/// sendmsg of the frame (off == 0). Returns the new offset, or -errno (never -EAGAIN:
/// EAGAIN returns the unchanged offset).
ssize_t send_some(int fd, const std::vector<uint8_t>& bytes, size_t off, const proto::fd_list& fds);

}  // namespace vfu
