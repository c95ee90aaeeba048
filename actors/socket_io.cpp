#include "actors/socket_io.hpp"

#include <sys/socket.h>
#include <sys/uio.h>

#include <cerrno>
#include <cstring>

#include "actors/types.hpp"
#include "protocol/limits.hpp"

namespace vfu {

namespace asio = boost::asio;

namespace {
// One read takes up to this much; a 1 MiB region read arrives in a few reads.
constexpr size_t read_chunk = 256 * 1024;
// Reads per readiness event before yielding to other sockets on the io thread.
constexpr int reads_per_wakeup = 16;
}  // namespace

stream_transport::stream_transport(asio::io_context& io, proto::unique_fd fd, uint32_t max_frame)
    : io_(io), sock_(io), fd_(fd.get()), max_frame_(max_frame), asm_(max_frame) {
  boost::system::error_code ec;
  sock_.assign(asio::local::stream_protocol(), fd.release(), ec);
  sock_.non_blocking(true, ec);
  buf_.resize(read_chunk);
}

stream_transport::~stream_transport() = default;

void stream_transport::start(caf::actor owner) {
  auto self = shared_from_this();
  asio::post(io_, [self, owner = std::move(owner)]() mutable {
    self->owner_ = std::move(owner);
    self->arm();
  });
}

void stream_transport::arm() {
  if (stopped_) return;
  auto self = shared_from_this();
  sock_.async_wait(asio::socket_base::wait_read, [self](const boost::system::error_code& ec) {
    if (ec || self->stopped_) return;  // cancelled by close()
    self->on_readable();
  });
}

void stream_transport::on_readable() {
  auto batch = std::make_shared<std::vector<proto::frame_assembler::event>>();
  proto::error fail;
  for (int i = 0; i < reads_per_wakeup; ++i) {
    alignas(cmsghdr) char cbuf[CMSG_SPACE(sizeof(int) * proto::limits::scm_max_fd)];
    iovec iov{buf_.data(), buf_.size()};
    msghdr mh{};
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    mh.msg_control = cbuf;
    mh.msg_controllen = sizeof cbuf;
    ssize_t n = ::recvmsg(fd_, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
    proto::fd_list fds;
    if (n >= 0) {
      for (cmsghdr* c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
        size_t cnt = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        const unsigned char* p = CMSG_DATA(c);
        for (size_t k = 0; k < cnt; ++k) {
          int fd;
          std::memcpy(&fd, p + k * sizeof(int), sizeof fd);
          fds.emplace_back(fd);
        }
      }
      if (mh.msg_flags & MSG_CTRUNC) {
        fail = proto::error(proto::errc::bad_fds, "MSG_CTRUNC: file descriptors were discarded");
        break;
      }
    }
    if (n > 0) {
      bytes_in += uint64_t(n);
      asm_.set_max_frame(max_frame_.load(std::memory_order_relaxed));
      asm_.feed(buf_.data(), size_t(n), std::move(fds), *batch);
      if (asm_.failed()) break;
      continue;
    }
    if (n == 0) {
      fail = asm_.mid_frame() ? proto::error(proto::errc::peer_gone, "EOF in the middle of a frame")
                              : proto::error(proto::errc::peer_gone, ECONNRESET, "peer closed the connection");
      break;
    }
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) break;
    fail = proto::error(proto::errc::io_error, errno, std::string("recvmsg: ") + std::strerror(errno));
    break;
  }
  for (auto& ev : *batch)
    if (ev.kind == proto::frame_assembler::event::frame_ready) ++frames_in;
  bool fatal = asm_.failed() || fail;
  if (!batch->empty()) caf::anon_send(owner_, frames_atom::value, batch);
  if (fail) caf::anon_send(owner_, ioerr_atom::value, fail);
  if (fatal) {
    stopped_ = true;  // the assembler's fatal event (in the batch) or `fail` ends the actor
    return;
  }
  arm();
}

void stream_transport::notify_writable() {
  auto self = shared_from_this();
  asio::post(io_, [self] {
    if (self->stopped_) return;
    self->sock_.async_wait(asio::socket_base::wait_write, [self](const boost::system::error_code& ec) {
      if (!ec) caf::anon_send(self->owner_, writable_atom::value);
    });
  });
}

void stream_transport::close() {
  auto self = shared_from_this();
  asio::post(io_, [self] {
    self->stopped_ = true;
    boost::system::error_code ec;
    self->sock_.cancel(ec);
    self->sock_.close(ec);
    self->owner_ = nullptr;
  });
}

ssize_t send_some(int fd, const std::vector<uint8_t>& bytes, size_t off, const proto::fd_list& fds) {
  while (off < bytes.size()) {
    iovec iov{const_cast<uint8_t*>(bytes.data() + off), bytes.size() - off};
    msghdr mh{};
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    alignas(cmsghdr) char cbuf[CMSG_SPACE(sizeof(int) * proto::limits::scm_max_fd)];
    if (off == 0 && !fds.empty()) {
      size_t n = std::min<size_t>(fds.size(), proto::limits::scm_max_fd);
      mh.msg_control = cbuf;
      mh.msg_controllen = CMSG_SPACE(sizeof(int) * n);
      cmsghdr* c = CMSG_FIRSTHDR(&mh);
      c->cmsg_level = SOL_SOCKET;
      c->cmsg_type = SCM_RIGHTS;
      c->cmsg_len = CMSG_LEN(sizeof(int) * n);
      for (size_t k = 0; k < n; ++k) {
        int v = fds[k].get();
        std::memcpy(CMSG_DATA(c) + k * sizeof(int), &v, sizeof v);
      }
    }
    ssize_t n = ::sendmsg(fd, &mh, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n >= 0) {
      off += size_t(n);
      continue;
    }
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) return ssize_t(off);
    return -errno;
  }
  return ssize_t(off);
}

}  // namespace vfu
