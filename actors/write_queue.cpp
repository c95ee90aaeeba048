// write_queue.cpp: stream_transport's writes. Whole frames, in the order they were given,
// from any thread, under one mutex; what the socket does not take at once is queued and
// written by the io thread when the socket is writable again, so no caller ever blocks on a
// full socket. On the event loop's thread a frame without fds waits for the loop's deferred
// flush, so that the replies to one read batch leave in one sendmsg. Queued frames without
// fds are gathered into one sendmsg; a frame with fds goes in a sendmsg of its own, with
// its fds on its first byte.
#define CAF_LOG_COMPONENT "vfu"
#include "actors/stream_transport.hpp"

#include <boost/asio/post.hpp>

#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include <cerrno>
#include <cstring>

#include "actors/syscalls.hpp"
#include "protocol/limits.hpp"

namespace vfu {

namespace asio = boost::asio;

proto::status stream_transport::send(const frame_ptr& f) { return send_many(&f, 1); }

namespace {
// One sendmsg carries at most SCM_MAX_FD fds, and a frame's fds go with one sendmsg.
proto::status check_fds(const proto::frame& f) {
  if (f.fds.size() <= proto::limits::scm_max_fd) return {};
  return proto::error(proto::errc::bad_fds, std::string(proto::command_name(f.hdr().command)) + " with " +
                                                std::to_string(f.fds.size()) + " fds: one message carries at most " +
                                                std::to_string(proto::limits::scm_max_fd));
}
}  // namespace

proto::status stream_transport::send_many(const frame_ptr* fs, size_t n) {
  for (size_t i = 0; i < n; ++i)
    if (auto st = check_fds(*fs[i]); !st) return st;
  std::lock_guard<std::mutex> g(wm_);
  if (closed_) return proto::error(proto::errc::not_connected, "connection closed");
  bool any_fds = false;
  for (size_t i = 0; i < n; ++i) {
    any_fds = any_fds || !fs[i]->fds.empty();
    if (auto st = enqueue_locked(fs[i]); !st) return st;
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

proto::status stream_transport::send_now(frame_ptr f) {
  if (auto st = check_fds(*f); !st) return st;
  std::lock_guard<std::mutex> g(wm_);
  if (closed_) return proto::error(proto::errc::not_connected, "connection closed");
  ++sent_now;
  return send_now_locked(std::move(f));
}

proto::status stream_transport::send_now_locked(frame_ptr f) {
  if (auto st = enqueue_locked(std::move(f)); !st) return st;
  if (write_armed_) return {};  // the io thread will write it, in order
  if (!flush_locked()) return proto::error(proto::errc::peer_gone, "sendmsg failed");
  return {};
}

ssize_t stream_transport::write_now_locked(const iovec* iov, size_t n, size_t total, const proto::fd_list* fds) {
  ssize_t r = send_iov(fd_, iov, n, fds);
  if (r < 0) {
    write_failed(int(-r));
    return -1;
  }
  if (r > 0) ++writes;
  if (size_t(r) == total) {
    ++frames_out;
    bytes_out += total;
  }
  return r;
}

proto::status stream_transport::send_now(proto::frame&& f) {
  if (auto st = check_fds(f); !st) return st;
  std::lock_guard<std::mutex> g(wm_);
  if (closed_) return proto::error(proto::errc::not_connected, "connection closed");
  ++sent_now;
  if (!outq_.empty() || write_armed_) return send_now_locked(make_frame_ptr(std::move(f)));  // after those, in order
  count_request_out(f.hdr());
  iovec iov{f.bytes.data(), f.bytes.size()};
  ssize_t r = write_now_locked(&iov, 1, f.bytes.size(), f.fds.empty() ? nullptr : &f.fds);
  if (r < 0) return proto::error(proto::errc::peer_gone, "sendmsg failed");
  if (size_t(r) == f.bytes.size()) return {};
  // The socket is full: the rest waits at the queue's head (its fds left with its first
  // byte, if that did; otherwise they go with it later).
  queued_ += f.bytes.size();
  outq_.push_back(make_frame_ptr(std::move(f)));
  out_off_ = size_t(r);
  arm_writable();
  return {};
}

proto::status stream_transport::send_gathered(const uint8_t* head, size_t head_len, const uint8_t* data, size_t len) {
  std::lock_guard<std::mutex> g(wm_);
  if (closed_) return proto::error(proto::errc::not_connected, "connection closed");
  size_t total = head_len + len;
  ++gathered;
  count_request_out(proto::read_header(head));
  // Frames queued before this one leave first, whole.
  if (!outq_.empty() && !write_armed_ && !flush_locked())
    return proto::error(proto::errc::peer_gone, "sendmsg failed");
  size_t done = 0;
  if (outq_.empty() && !write_armed_) {
    iovec iov[2] = {{const_cast<uint8_t*>(head), head_len}, {const_cast<uint8_t*>(data), len}};
    ssize_t r = write_now_locked(iov, 2, total, nullptr);
    if (r < 0) return proto::error(proto::errc::peer_gone, "sendmsg failed");
    done = size_t(r);
    if (done == total) return {};
  }
  // The socket is full (or others wait for room): the rest is copied into the queue, which
  // the io thread writes when there is room (out_off_ is 0 when the queue is empty).
  ++gathered_copied;
  auto rest = std::make_shared<proto::frame>();
  rest->bytes.reserve(total - done);
  if (done < head_len) rest->bytes.insert(rest->bytes.end(), head + done, head + head_len);
  size_t from = done > head_len ? done - head_len : 0;
  rest->bytes.insert(rest->bytes.end(), data + from, data + len);
  bytes_out += done;  // the queue counts the rest when it leaves
  if (auto st = enqueue_locked(std::move(rest)); !st) return st;
  arm_writable();  // (a no-op if a write already waits for room)
  return {};
}

proto::status stream_transport::enqueue_locked(frame_ptr f) {
  count_request_out(f->hdr());
  queued_ += f->bytes.size();
  outq_.push_back(std::move(f));
  if (queued_ <= max_send_queue) return {};
  write_failed(0);
  return proto::error(proto::errc::peer_gone, "peer stopped reading: send queue over 128 MiB");
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
    if (r > 0) ++writes;
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
    if (self->stopped()) return;
    self->leave_direct();  // (EPOLLOUT, once in Asio's reactor, would wake us at every read of the peer's)
    {
      // The private set reports the socket writable (level-triggered) until on_writable()
      // has written everything and takes EPOLLOUT out again. If that happened already (the
      // read wait's event ran on_writable first), EPOLLOUT must not be put in: nothing
      // would take it out, and the loop would never sleep again.
      std::lock_guard<std::mutex> g(self->wm_);
      if (!self->write_armed_ || !self->fd_open_) return;
      if (!self->set_events(EPOLLOUT, 0)) {
        self->stop();
        caf::anon_send(self->owner_, ioerr_atom::value,
                       proto::error(proto::errc::io_error, errno, std::string("epoll_ctl: ") + std::strerror(errno)));
        return;
      }
    }
    self->arm();
  });
}

void stream_transport::on_writable() {
  if (!write_armed_.load(std::memory_order_relaxed)) return;  // (the usual case: no lock)
  std::lock_guard<std::mutex> g(wm_);
  if (!write_armed_) return;
  write_armed_ = false;
  if (!closed_) flush_locked();  // arms again if the socket is still full
  if (!write_armed_ && fd_open_) set_events(0, EPOLLOUT);
}

ssize_t send_iov(int fd, const iovec* iov, size_t n, const proto::fd_list* fds) {
  msghdr mh{};
  mh.msg_iov = const_cast<iovec*>(iov);
  mh.msg_iovlen = n;
  alignas(cmsghdr) char cbuf[CMSG_SPACE(sizeof(int) * proto::limits::scm_max_fd)];
  if (fds && fds->size() > proto::limits::scm_max_fd) return -EINVAL;  // (send_many refuses such frames)
  if (fds && !fds->empty()) {
    size_t k = fds->size();
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
