#define CAF_LOG_COMPONENT "vfu"
#include "actors/socket_io.hpp"

#include <sys/socket.h>
#include <sys/uio.h>

#include <cerrno>
#include <cstring>

#include "actors/direct_calls.hpp"
#include "actors/syscalls.hpp"
#include "actors/types.hpp"
#include "protocol/limits.hpp"

namespace vfu {

namespace asio = boost::asio;

namespace {
// One read takes up to this much; a 1 MiB region read arrives in a few reads.
constexpr size_t read_chunk = 256 * 1024;
// Bodies with at least this much still to come are read straight into their frame.
constexpr size_t direct_read_min = 64 * 1024;
// Reads per readiness event before yielding to other sockets on the io thread.
constexpr int reads_per_wakeup = 16;
}  // namespace

stream_transport::stream_transport(asio::io_context& io, proto::unique_fd fd, uint32_t max_frame,
                                   std::shared_ptr<direct_calls> direct)
    : direct_(std::move(direct)), io_(io), sock_(io), fd_(fd.get()), max_frame_(max_frame), asm_(max_frame) {
  boost::system::error_code ec;
  sock_.assign(asio::local::stream_protocol(), fd.get(), ec);
  if (ec) {  // e.g. the reactor could not register it: reported to the owner by start()
    setup_error_ = proto::error(proto::errc::io_error, ec.value(), "registering the socket: " + ec.message());
    closed_ = true;  // no write may use the fd number once `fd` closes it
    return;
  }
  fd.release();
  sock_.non_blocking(true, ec);
}

stream_transport::~stream_transport() = default;

void stream_transport::start(caf::actor owner) {
  auto self = shared_from_this();
  asio::post(io_, [self, owner = std::move(owner)]() mutable {
    self->owner_ = std::move(owner);
    if (self->setup_error_) {
      self->stopped_ = true;
      caf::anon_send(self->owner_, ioerr_atom::value, self->setup_error_);
      return;
    }
    self->arm();
  });
}

void stream_transport::arm() {
  // One wait at a time. While the loop polls, reads happen without the wait firing, and it
  // stays armed: what arrives after the loop stops polling still wakes it.
  if (stopped_ || wait_armed_) return;
  wait_armed_ = true;
  auto self = shared_from_this();
  sock_.async_wait(asio::socket_base::wait_read, [self](const boost::system::error_code& ec) {
    self->wait_armed_ = false;
    if (ec == asio::error::operation_aborted || self->stopped_) return;  // cancelled by close()
    if (ec) {
      // Any other error ends the connection with its cause; returning silently would leave
      // the socket unwatched and the connection open forever.
      self->stopped_ = true;
      caf::anon_send(self->owner_, ioerr_atom::value,
                     proto::error(proto::errc::io_error, ec.value(), "waiting for the socket: " + ec.message()));
      return;
    }
    self->on_readable();
  });
}

void stream_transport::on_readable() {
  read_pass();
  arm();
}

bool stream_transport::poll_read() {
  if (stopped_ || !owner_) return false;
  bool got = read_pass();
  arm();  // a no-op while the wait is still armed, as it usually is here
  return got;
}

bool stream_transport::read_pass() {
  // Only the io thread reads, one socket at a time, so one buffer serves every connection
  // (a buffer per connection would cost 256 KiB of RSS per idle client).
  static thread_local std::vector<uint8_t> buf_(read_chunk);
  std::shared_ptr<std::vector<proto::frame_assembler::event>> batch;
  proto::error fail;
  bool got = false, clean_eof = false;
  for (int i = 0; i < reads_per_wakeup; ++i) {
    alignas(cmsghdr) char cbuf[CMSG_SPACE(sizeof(int) * proto::limits::scm_max_fd)];
    // The rest of a large frame's body is read straight into the frame (no bounce copy),
    // and only up to its end, so the next frame's bytes still go through the assembler.
    asm_.set_max_frame(max_frame_.load(std::memory_order_relaxed));
    auto win = asm_.body_window(direct_read_min);
    iovec iov = win.first ? iovec{win.first, win.second} : iovec{buf_.data(), buf_.size()};
    msghdr mh{};
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    mh.msg_control = cbuf;
    mh.msg_controllen = sizeof cbuf;
    ssize_t n = sys::recvmsg(fd_, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
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
      got = true;
      if (!batch) batch = std::make_shared<std::vector<proto::frame_assembler::event>>();
      bytes_in += uint64_t(n);
      bool had_fds = !fds.empty();
      if (win.first) asm_.body_filled(size_t(n), std::move(fds), *batch);
      else asm_.feed(buf_.data(), size_t(n), std::move(fds), *batch);
      if (asm_.failed()) break;
      // A stream recvmsg without fds returns short only when the queue is empty (it stops
      // early only after a message with fds): skip the read that would say EAGAIN.
      if (size_t(n) < iov.iov_len && !had_fds) break;
      continue;
    }
    if (n == 0) {
      clean_eof = !asm_.mid_frame();
      fail = clean_eof ? proto::error(proto::errc::peer_gone, ECONNRESET, "peer closed the connection")
                       : proto::error(proto::errc::peer_gone, "EOF in the middle of a frame");
      break;
    }
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) break;
    fail = proto::error(proto::errc::io_error, errno, std::string("recvmsg: ") + std::strerror(errno));
    break;
  }
  if (!got && !fail && !asm_.failed()) return false;  // the socket was empty (EAGAIN)
  event_loop::note_active(shared_from_this());
  if (!batch) batch = std::make_shared<std::vector<proto::frame_assembler::event>>();
  // A reply to a blocked thread's direct call wakes that thread from here, and the actors
  // never see it. A no-wait request's reply is retired by the correlation actor (its
  // header); a reply nobody asked for goes on to it as any other (logged, counted).
  // One pass over the batch, in place: count the frames and take out the ones that are done.
  std::vector<proto::header> retired;
  size_t keep = 0;
  for (auto& ev : *batch) {
    if (ev.kind == proto::frame_assembler::event::frame_ready) {
      ++frames_in;
      auto h = ev.f.hdr();
      if (direct_ && h.is_reply() && direct_calls::owns(h.msg_id)) {
        auto fp = make_frame_ptr(std::move(ev.f));
        auto o = direct_->complete(fp);
        if (o == direct_calls::outcome::nowait) retired.push_back(h);
        if (o == direct_calls::outcome::late) CAF_LOG_DEBUG("dropped late reply " << proto::describe(h, fp->fds.size()));
        if (o != direct_calls::outcome::unknown) continue;
        ev.f = std::move(*fp);
      }
    }
    if (&(*batch)[keep] != &ev) (*batch)[keep] = std::move(ev);
    ++keep;
  }
  batch->erase(batch->begin() + long(keep), batch->end());
  if (!retired.empty()) caf::anon_send(owner_, retire_atom::value, std::move(retired));
  bool fatal = asm_.failed() || fail;
  if (!batch->empty()) caf::anon_send(owner_, frames_atom::value, batch);
  if (fail && clean_eof && !asm_.failed()) caf::anon_send(owner_, eof_atom::value, fail);  // answer, then close
  else if (fail) caf::anon_send(owner_, ioerr_atom::value, fail);
  if (fatal) stopped_ = true;  // the assembler's fatal event (in the batch) or `fail` ends the actor
  return true;
}

proto::status stream_transport::send(const frame_ptr& f) { return send_many(&f, 1); }

proto::status stream_transport::send_many(const frame_ptr* fs, size_t n) {
  std::lock_guard<std::mutex> g(wm_);
  if (closed_) return proto::error(proto::errc::not_connected, "connection closed");
  bool any_fds = false;
  for (size_t i = 0; i < n; ++i) {
    outq_.push_back(fs[i]);
    queued_ += fs[i]->bytes.size();
    any_fds = any_fds || !fs[i]->fds.empty();
  }
  if (queued_ > max_send_queue) {
    write_failed(0);
    return proto::error(proto::errc::peer_gone, "peer stopped reading: send queue over 128 MiB");
  }
  if (write_armed_) return {};  // the io thread will write them, in order
  if (!any_fds && event_loop::on_loop_thread()) {
    if (!flush_pending_) {
      flush_pending_ = true;
      event_loop::defer_flush(shared_from_this());
    }
    return {};
  }
  if (!flush_locked()) return proto::error(proto::errc::peer_gone, "sendmsg failed");
  return {};
}

void stream_transport::flush_deferred() {
  std::lock_guard<std::mutex> g(wm_);
  flush_pending_ = false;
  if (!closed_ && !write_armed_) flush_locked();
}

bool stream_transport::flush_locked() {
  constexpr size_t max_iov = 64;
  constexpr size_t max_batch = 1u << 20;
  while (!outq_.empty()) {
    iovec iov[max_iov];
    size_t n = 0, want = 0;
    auto& front = *outq_.front();
    const proto::fd_list* fds = out_off_ == 0 && !front.fds.empty() ? &front.fds : nullptr;
    iov[n++] = iovec{front.bytes.data() + out_off_, front.bytes.size() - out_off_};
    want += iov[0].iov_len;
    if (!fds) {
      for (size_t i = 1; i < outq_.size() && n < max_iov && want < max_batch; ++i) {
        auto& fr = *outq_[i];
        if (!fr.fds.empty()) break;  // goes alone, in the next sendmsg
        iov[n++] = iovec{fr.bytes.data(), fr.bytes.size()};
        want += fr.bytes.size();
      }
    }
    ssize_t r = send_iov(fd_, iov, n, fds);
    if (r < 0) {
      write_failed(int(-r));
      return false;
    }
    for (size_t left = size_t(r); left > 0;) {
      auto& fr = *outq_.front();
      size_t rest = fr.bytes.size() - out_off_;
      if (left < rest) {
        out_off_ += left;
        break;
      }
      left -= rest;
      queued_ -= fr.bytes.size();
      bytes_out += fr.bytes.size();
      ++frames_out;
      out_off_ = 0;
      outq_.pop_front();  // closes our copies of the sent fds; the peer has its own
    }
    if (size_t(r) < want) {  // the socket is full: the io thread goes on when it drains
      arm_writable();
      return true;
    }
  }
  return true;
}

void stream_transport::write_failed(int err) {
  closed_ = true;
  outq_.clear();
  queued_ = 0;
  proto::error e = err ? proto::error(proto::errc::io_error, err, std::string("sendmsg: ") + std::strerror(err))
                       : proto::error(proto::errc::peer_gone, "peer stopped reading: send queue over 128 MiB");
  auto self = shared_from_this();
  asio::post(io_, [self, e] {
    if (self->owner_) caf::anon_send(self->owner_, ioerr_atom::value, e);
  });
}

void stream_transport::arm_writable() {
  if (write_armed_) return;
  write_armed_ = true;
  auto self = shared_from_this();
  asio::post(io_, [self] {
    if (self->stopped_) return;
    self->sock_.async_wait(asio::socket_base::wait_write, [self](const boost::system::error_code& ec) {
      if (!ec) {
        self->on_writable();
      } else if (ec != asio::error::operation_aborted && !self->stopped_) {
        self->stopped_ = true;  // as for reads: end the connection with the cause
        caf::anon_send(self->owner_, ioerr_atom::value,
                       proto::error(proto::errc::io_error, ec.value(), "waiting to write: " + ec.message()));
      }
    });
  });
}

void stream_transport::on_writable() {
  std::lock_guard<std::mutex> g(wm_);
  write_armed_ = false;
  if (!closed_) flush_locked();
}

void stream_transport::close(const proto::error& why) {
  if (direct_) direct_->fail_all(why);
  auto self = shared_from_this();
  asio::post(io_, [self] {
    {
      std::lock_guard<std::mutex> g(self->wm_);  // no writer is inside sendmsg now
      self->closed_ = true;
      self->outq_.clear();
      self->stopped_ = true;
      boost::system::error_code ec;
      self->sock_.cancel(ec);
      self->sock_.close(ec);
    }
    self->owner_ = nullptr;
  });
}

ssize_t send_iov(int fd, const iovec* iov, size_t n, const proto::fd_list* fds) {
  msghdr mh{};
  mh.msg_iov = const_cast<iovec*>(iov);
  mh.msg_iovlen = n;
  alignas(cmsghdr) char cbuf[CMSG_SPACE(sizeof(int) * proto::limits::scm_max_fd)];
  if (fds && !fds->empty()) {
    size_t k = std::min<size_t>(fds->size(), proto::limits::scm_max_fd);
    mh.msg_control = cbuf;
    mh.msg_controllen = CMSG_SPACE(sizeof(int) * k);
    cmsghdr* c = CMSG_FIRSTHDR(&mh);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * k);
    for (size_t i = 0; i < k; ++i) {
      int v = (*fds)[i].get();
      std::memcpy(CMSG_DATA(c) + i * sizeof(int), &v, sizeof v);
    }
  }
  for (;;) {
    ssize_t r = sys::sendmsg(fd, &mh, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (r >= 0) return r;
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
    return -errno;
  }
}

}  // namespace vfu
