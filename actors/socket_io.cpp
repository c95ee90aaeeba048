#define CAF_LOG_COMPONENT "vfu"
#include "actors/socket_io.hpp"

#include <boost/asio/post.hpp>

#include <fcntl.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include <cerrno>
#include <cstring>

#include "actors/pending_table.hpp"
#include "actors/syscalls.hpp"
#include "actors/types.hpp"
#include "protocol/limits.hpp"

namespace vfu {

namespace asio = boost::asio;

namespace {
// One read takes up to this much. A large frame's body is read straight into the frame
// after the first read (direct_read_min), so a smaller chunk copies less of it: with 256
// KiB, a 1 MiB REGION_WRITE ran at 0.68-0.72x the floor, with 64 KiB at 0.82-0.86x.
constexpr size_t read_chunk = 64 * 1024;
// Bodies with at least this much still to come are read straight into their frame.
constexpr size_t direct_read_min = 64 * 1024;
// Reads per readiness event before yielding to other sockets on the io thread.
constexpr int reads_per_wakeup = 16;
// A leader's blocking recvmsg returns at least this often, to look at its deadline.
constexpr suseconds_t leader_slice_us = 10000;
// The peer's requests read but not yet answered (at the dispatcher or a device): above
// either bound the connection stops reading (the peer's writes then block) until half of
// them are answered. A recvmsg may overshoot by what it read (at most 64 KiB of small
// requests, or one frame). While a request of ours awaits its reply, the bounds are four
// times as high: that reply may sit behind the peer's requests (a device's DMA_READ
// while the peer pipelines), and a stopped reader would never see it.
constexpr uint32_t max_unanswered_requests = 4096;
constexpr uint64_t max_unanswered_bytes = 64ull << 20;
constexpr uint32_t awaiting_factor = 4;
}  // namespace

stream_transport::stream_transport(asio::io_context& io, proto::unique_fd fd, uint32_t max_frame,
                                   std::shared_ptr<pending_table> table)
    : table_(std::move(table)), io_(io), sock_(std::move(fd)), epd_(io), fd_(sock_.get()), max_frame_(max_frame),
      asm_(max_frame) {
  auto fail = [&](proto::error e) {  // reported to the owner by start()
    setup_error_ = std::move(e);
    closed_ = true;
  };
  auto fail_errno = [&](const char* what) {
    fail(proto::error(proto::errc::io_error, errno, std::string(what) + ": " + std::strerror(errno)));
  };
  // Blocking, for a leader's recvmsg; the io thread and writers pass MSG_DONTWAIT.
  int fl = ::fcntl(fd_, F_GETFL);
  if (fl < 0 || ((fl & O_NONBLOCK) && ::fcntl(fd_, F_SETFL, fl & ~O_NONBLOCK) != 0)) { fail_errno("fcntl"); return; }
  timeval slice{0, leader_slice_us};
  if (::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &slice, sizeof slice) != 0) { fail_errno("SO_RCVTIMEO"); return; }
  // Room for one whole default-size frame (1 MiB of data) in the socket, so that a bulk
  // reply or write usually leaves in one sendmsg rather than a partial write, a wait for
  // room, and more. A limit, not an allocation; the kernel caps it at net.core.wmem_max
  // (212992 on a stock kernel, where this changes nothing). Best effort.
  int sndbuf = int(proto::limits::default_max_data_xfer + 64 * 1024);
  ::setsockopt(fd_, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf);
  proto::unique_fd ep(::epoll_create1(EPOLL_CLOEXEC));
  if (!ep) { fail_errno("epoll_create1"); return; }
  epoll_event ev{};
  ev.events = EPOLLIN;
  if (::epoll_ctl(ep.get(), EPOLL_CTL_ADD, fd_, &ev) != 0) { fail_errno("epoll_ctl"); return; }
  events_ = EPOLLIN;
  boost::system::error_code ec;
  epd_.assign(ep.get(), ec);
  if (ec) {
    fail(proto::error(proto::errc::io_error, ec.value(), "registering the socket: " + ec.message()));
    return;
  }
  ep.release();
}

bool stream_transport::set_events(uint32_t add, uint32_t remove) {
  std::lock_guard<std::mutex> g(em_);
  return set_events_locked(add, remove);
}

bool stream_transport::set_events_locked(uint32_t add, uint32_t remove) {
  uint32_t want = (events_ | add) & ~remove;
  if (want == events_) return true;
  epoll_event ev{};
  ev.events = want;
  if (::epoll_ctl(epd_.native_handle(), EPOLL_CTL_MOD, fd_, &ev) != 0) return false;
  events_ = want;
  return true;
}

stream_transport::~stream_transport() = default;

void stream_transport::start(caf::actor owner, caf::actor requests) {
  auto self = shared_from_this();
  asio::post(io_, [self, owner = std::move(owner), requests = std::move(requests)]() mutable {
    self->owner_ = std::move(owner);
    self->requests_ = std::move(requests);
    if (self->setup_error_) {
      self->stopped_ = true;
      caf::anon_send(self->owner_, ioerr_atom::value, self->setup_error_);
      return;
    }
    self->started_.store(true, std::memory_order_release);  // callers may lead from now on
    self->arm();
  });
}

void stream_transport::arm() {
  // One wait at a time. While the loop polls, reads happen without the wait firing, and it
  // stays armed: what arrives after the loop stops polling still wakes it.
  if (stopped_ || wait_armed_) return;
  wait_armed_ = true;
  waits_armed.fetch_add(1, std::memory_order_relaxed);
  auto self = shared_from_this();
  epd_.async_wait(asio::posix::descriptor_base::wait_read, [self](const boost::system::error_code& ec) {
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
    self->on_event();
  });
}

void stream_transport::on_event() {
  on_writable();  // if a write waits for room (the private epoll set has EPOLLOUT then)
  read_pass();
  // A polling loop reads this socket directly from now on and arms its wait only before it
  // blocks: re-arming costs Asio an epoll_ctl, and at 1 request in flight a wait re-armed
  // after every request fired for about every second one, only to find what the loop's
  // direct read had taken already.
  if (!event_loop::arm_later(*this)) arm();
}

bool stream_transport::poll_read() {
  if (stopped_ || !owner_) return false;
  return read_pass();  // the wait, armed or not, is the loop's business (arm_later)
}

bool stream_transport::read_pass() {
  std::unique_lock<std::mutex> g(rm_, std::try_to_lock);
  if (!g) return false;  // a leader reads: it handles what arrives
  if (stopped_ || paused_) return false;
  return read_pass_locked(false);
}

bool stream_transport::lead_begin() {
  if (closing_ || stopped_ || !started_.load(std::memory_order_acquire)) return false;
  if (!rm_.try_lock()) return false;
  if (paused_) {  // (set only under rm_: reading waits for the dispatcher)
    rm_.unlock();
    return false;
  }
  leading_ = true;  // close() shuts the socket's read side if it sees this (seq_cst pair)
  if (closing_ || stopped_ || !sync_read_events()) {
    leading_ = false;
    sync_read_events();
    rm_.unlock();
    return false;
  }
  return true;
}

void stream_transport::lead_wait(call_slot& slot, std::chrono::steady_clock::time_point deadline,
                                 reply_landing* landing) {
  using clock = std::chrono::steady_clock;
  if (slot.done()) return;  // (read by an earlier wait: call_many's replies)
  landing_ = landing;
  auto start = clock::now();
  // (Paused: the loop reads again once the dispatcher has caught up; the caller then
  // waits for its reply on its slot.)
  auto going = [&](clock::time_point until) {
    return !slot.done() && !stopped_ && !closing_ && !paused_ && clock::now() < until;
  };
  // Poll first: a reply that arrives within the window costs no sleep and no wake-up (5-20
  // us on a VM, where the thread's CPU halts). Each look is one recvmsg, as the sleep's is.
  // Only a lone caller polls: with other callers on the connection, waiting or just woken,
  // its CPU is better left to them and to the peer (on 2 cores, 4 callers polling in turn
  // made the p99 4-8 times longer: a woken caller waited for the poller's time slice).
  bool polled = caller_poll_.ns > 0 && (!table_ || table_->callers() <= 1);
  if (polled) {
    auto until = std::min(deadline, start + std::chrono::nanoseconds(caller_poll_.ns));
    while (going(until)) read_pass_locked(false);
  }
  bool slept = going(deadline);
  while (going(deadline)) read_pass_locked(true);
  landing_ = nullptr;
  // Only a wait that ended with its reply says how fast the peer answers (a close or an
  // EOF also completes the slot, with an error, and stops or closes the transport).
  if (!slot.done() || stopped_ || closing_ || paused_) return;
  if (slept) leader_slept.fetch_add(1, std::memory_order_relaxed);
  else if (polled) leader_caught.fetch_add(1, std::memory_order_relaxed);
  if (caller_poll_.max_ns > 0)
    caller_poll_.adjust(std::chrono::duration_cast<std::chrono::nanoseconds>(clock::now() - start).count());
}

void stream_transport::lead_end() {
  // Back to the io thread; what arrived since the last read makes the set ready at once.
  leading_ = false;
  if (!stopped_ && !closing_) sync_read_events();
  rm_.unlock();
}

bool stream_transport::sync_read_events() {
  std::lock_guard<std::mutex> g(em_);
  return leading_ || paused_ ? set_events_locked(0, EPOLLIN) : set_events_locked(EPOLLIN, 0);
}

bool stream_transport::stop_reading(uint64_t more, uint64_t more_bytes) const noexcept {
  uint32_t f = awaiting_.load(std::memory_order_relaxed) ? awaiting_factor : 1;
  return unanswered_.load(std::memory_order_relaxed) + more >= uint64_t(max_unanswered_requests) * f ||
         unanswered_bytes_.load(std::memory_order_relaxed) + more_bytes >= max_unanswered_bytes * f;
}

void stream_transport::request_done(uint64_t bytes) {
  unanswered_bytes_.fetch_sub(bytes, std::memory_order_relaxed);
  uint32_t left = unanswered_.fetch_sub(1, std::memory_order_relaxed) - 1;
  if (!paused_.load(std::memory_order_relaxed) || left > max_unanswered_requests / 2 ||
      unanswered_bytes_.load(std::memory_order_relaxed) > max_unanswered_bytes / 2 || !paused_.exchange(false))
    return;  // (the exchange: one resumption, however many answers see the low mark)
  CAF_LOG_DEBUG("the dispatcher caught up: reading again");
  resume_reading();
}

void stream_transport::resume_reading() {
  auto self = shared_from_this();
  asio::post(io_, [self] {
    if (self->stopped_) return;
    self->sync_read_events();
    self->arm();  // (a no-op if armed; a socket the loop polls is read by it anyway)
  });
}

void stream_transport::count_request_out(const proto::header& h) {
  if (!h.is_command() || h.no_reply()) return;
  // Its reply may be behind the peer's requests: a paused reader reads again.
  if (awaiting_.fetch_add(1, std::memory_order_relaxed) == 0 && paused_.load(std::memory_order_relaxed) &&
      !stop_reading(0, 0) && paused_.exchange(false)) {
    CAF_LOG_DEBUG("a request of ours awaits its reply: reading again");
    resume_reading();
  }
}

void stream_transport::count_reply_in() {
  uint32_t a = awaiting_.load(std::memory_order_relaxed);
  while (a && !awaiting_.compare_exchange_weak(a, a - 1, std::memory_order_relaxed)) {
  }
}

void stream_transport::fail_pending(const proto::error& why) {
  if (!table_) return;
  pending_table::completions done;
  table_->fail_all(why, done);
  table_->settle(done);
}

bool stream_transport::read_pass_locked(bool block) {
  // One buffer per reading thread (the io thread, or a leader) serves every connection (a
  // buffer per connection would cost 256 KiB of RSS per idle client). Not zeroed: only
  // bytes a read wrote are used, and untouched pages cost no RSS.
  static thread_local std::unique_ptr<uint8_t[]> buf_(new uint8_t[read_chunk]);
  // What the reads assemble, in a vector per reading thread that keeps its capacity: most
  // reads by a leader end in its own reply, which needs no batch for an actor at all.
  static thread_local std::vector<proto::frame_assembler::event> evs;
  evs.clear();
  proto::error fail;
  bool got = false, clean_eof = false;
  uint64_t bytes_this_pass = 0;
  for (int i = 0; i < reads_per_wakeup; ++i) {
    // (evs.size() frames read so far may all be requests: at most 64 KiB of them.)
    if (stop_reading(evs.size(), bytes_this_pass)) break;
    alignas(cmsghdr) char cbuf[CMSG_SPACE(sizeof(int) * proto::limits::scm_max_fd)];
    // The rest of a large frame's body is read straight into the frame (no bounce copy),
    // and only up to its end, so the next frame's bytes still go through the assembler.
    asm_.set_max_frame(max_frame_.load(std::memory_order_relaxed));
    auto win = asm_.body_window(landing_ ? 1 : direct_read_min);
    // A leader's own reply with a landing: its data goes straight into the caller's
    // buffer, from where the window starts (the frame keeps a hole there; nobody reads it).
    // Until the data starts, reads stop where it starts, so that all of it can land (a
    // recvmsg or two more, instead of copying a read's worth of data).
    uint8_t* land = nullptr;
    size_t land_at = 0, upto = 0;  // upto: read at most this much (0: no limit)
    if (landing_) {
      auto& L = *landing_;
      size_t have = asm_.frame_have();
      if (win.first) {
        auto [h, off] = asm_.body_position();
        bool ours = h.msg_id == L.msg_id && h.is_reply() && !h.is_error() && h.msg_size == L.frame_offset + L.len;
        if (ours && off < L.frame_offset) {
          upto = L.frame_offset - off;
        } else if (ours && (L.from == L.to || off - L.frame_offset == L.to)) {
          land_at = off - L.frame_offset;
          land = L.dest + land_at;
        }
      } else if (have < L.frame_offset && L.len >= direct_read_min) {
        upto = L.frame_offset - have;  // the header is not complete yet: it may be ours
      }
    }
    if (win.first && !land && !upto && win.second < direct_read_min) win = {nullptr, 0};
    iovec iov = land ? iovec{land, win.second} : win.first ? iovec{win.first, win.second} : iovec{buf_.get(), read_chunk};
    if (upto) iov.iov_len = std::min(iov.iov_len, upto);
    msghdr mh{};
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    mh.msg_control = cbuf;
    mh.msg_controllen = sizeof cbuf;
    bool wait = block && i == 0;  // a leader waits for its first read (SO_RCVTIMEO slices)
    ssize_t n = sys::recvmsg(fd_, &mh, (wait ? 0 : MSG_DONTWAIT) | MSG_CMSG_CLOEXEC);
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
    if (n > 0 && land) {
      if (landing_->from == landing_->to) landing_->from = landing_->to = land_at;
      landing_->to += size_t(n);
    }
    if (n > 0) {
      got = true;
      bytes_in += uint64_t(n);
      bytes_this_pass += uint64_t(n);
      bool had_fds = !fds.empty();
      if (win.first) asm_.body_filled(size_t(n), std::move(fds), evs);
      else asm_.feed(buf_.get(), size_t(n), std::move(fds), evs);
      if (asm_.failed()) break;
      // A stream recvmsg without fds returns short only when the queue is empty (it stops
      // early only after a message with fds): skip the read that would say EAGAIN.
      if (size_t(n) < iov.iov_len && !had_fds) break;
      continue;
    }
    if (n == 0) {
      if (closing_) {  // our own close() shut the read side to wake a leader
        stopped_ = true;
        evs.clear();  // (the connection is over: what it read goes, with its fds)
        return true;
      }
      clean_eof = !asm_.mid_frame();
      fail = clean_eof ? proto::error(proto::errc::peer_gone, ECONNRESET, "peer closed the connection")
                       : proto::error(proto::errc::peer_gone, "EOF in the middle of a frame");
      break;
    }
    if (errno == EINTR && !wait) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) break;  // (a leader's slice ended)
    fail = proto::error(proto::errc::io_error, errno, std::string("recvmsg: ") + std::strerror(errno));
    break;
  }
  if (!got && !fail && !asm_.failed()) return false;  // the socket was empty (EAGAIN)
  event_loop::note_active(*this);
  // One pass over what was read: replies complete their requests here (a blocked thread
  // wakes from here; an actor's result goes to the correlation actor), requests are batched
  // for the dispatcher, and what ends the connection goes to the socket actor.
  event_batch reqs;  // for requests_ (the dispatcher)
  proto::error fatal_event;  // the assembler's: the stream cannot be trusted any more
  auto to = [](event_batch& b, proto::frame_assembler::event& ev) {
    if (!b) b = std::make_shared<std::vector<proto::frame_assembler::event>>();
    b->push_back(std::move(ev));
  };
  proto::error overflow;  // a frame declared far over the limit: answer, then close
  pending_table::completions done;
  for (auto& ev : evs) {
    if (ev.kind == proto::frame_assembler::event::fatal && ev.err.code == proto::errc::too_large) {
      overflow = ev.err;
      continue;
    }
    if (ev.kind == proto::frame_assembler::event::rejected) {
      if (!ev.hdr.is_reply()) {
        ++rejected_requests;  // answered by the dispatcher, in its turn
        to(reqs, ev);
        continue;
      }
      ++rejected_replies;
      count_reply_in();
      CAF_LOG_WARNING("rejected " << proto::describe(ev.hdr, 0) << ": " << ev.err.message());
      if (table_) table_->reject(ev.hdr, ev.err, done);
      continue;
    }
    if (ev.kind == proto::frame_assembler::event::frame_ready) {
      ++frames_in;
      auto h = ev.f.hdr();
      if (!h.is_reply()) {
        to(reqs, ev);
        continue;
      }
      count_reply_in();
      auto fp = make_frame_ptr(std::move(ev.f));
      CAF_LOG_DEBUG("recv " << proto::describe(h, fp->fds.size()));
      auto o = table_ ? table_->complete(fp, done) : pending_table::outcome::unexpected;
      if (o == pending_table::outcome::late) CAF_LOG_DEBUG("dropped late reply " << proto::describe(h, fp->fds.size()));
      if (o == pending_table::outcome::unexpected) CAF_LOG_WARNING("dropped unexpected reply " << proto::describe(h, fp->fds.size()));
      continue;  // (a dropped reply's fds close with it)
    }
    if (ev.kind == proto::frame_assembler::event::fatal) fatal_event = ev.err;
  }
  evs.clear();  // (what was moved out; closes nothing)
  if (table_) table_->settle(done);
  bool fatal = asm_.failed() || fail;
  // Requests first: an EOF's drain (socket_actor) must find them in the dispatcher's queue.
  if (reqs) {  // counted before the dispatcher can answer them
    uint64_t bytes = 0;
    for (auto& ev : *reqs) bytes += request_bytes(ev);
    unanswered_bytes_.fetch_add(bytes, std::memory_order_relaxed);
    unanswered_.fetch_add(uint32_t(reqs->size()), std::memory_order_relaxed);
  }
  // (Also after replies only: the last reply we awaited brings the bounds back down.)
  if (!fatal && !paused_ && stop_reading(0, 0)) {
    ++pauses;
    paused_ = true;  // until request_done() sees half of them answered, or we send a request
    CAF_LOG_DEBUG("stop reading: " << unanswered_.load() << " requests (" << unanswered_bytes_.load() << " bytes) unanswered");
    sync_read_events();
  }
  if (reqs) caf::anon_send(requests_, inbound_atom::value, reqs, owner_, shared_from_this());
  if (fail && clean_eof && !asm_.failed()) caf::anon_send(owner_, eof_atom::value, fail);  // answer, then close
  else if (fatal_event) caf::anon_send(owner_, ioerr_atom::value, fatal_event);
  else if (fail) caf::anon_send(owner_, ioerr_atom::value, fail);
  else if (overflow) caf::anon_send(owner_, eof_atom::value, overflow);
  if (fatal) stopped_ = true;  // the assembler's fatal event or `fail` ends the socket actor
  return true;
}

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
  if (auto st = enqueue_locked(std::move(f)); !st) return st;
  if (write_armed_) return {};  // the io thread will write it, in order
  if (!flush_locked()) return proto::error(proto::errc::peer_gone, "sendmsg failed");
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
    ssize_t r = send_iov(fd_, iov, 2, nullptr);
    if (r < 0) {
      write_failed(int(-r));
      return proto::error(proto::errc::peer_gone, "sendmsg failed");
    }
    done = size_t(r);
    if (done) ++writes;
    if (done == total) {
      ++frames_out;
      bytes_out += total;
      return {};
    }
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
    if (self->stopped_) return;
    {
      // The private set reports the socket writable (level-triggered) until on_writable()
      // has written everything and takes EPOLLOUT out again. If that happened already (the
      // read wait's event ran on_writable first), EPOLLOUT must not be put in: nothing
      // would take it out, and the loop would never sleep again.
      std::lock_guard<std::mutex> g(self->wm_);
      if (!self->write_armed_ || !self->fd_open_) return;
      if (!self->set_events(EPOLLOUT, 0)) {
        self->stopped_ = true;
        caf::anon_send(self->owner_, ioerr_atom::value,
                       proto::error(proto::errc::io_error, errno, std::string("epoll_ctl: ") + std::strerror(errno)));
        return;
      }
    }
    self->arm();
  });
}

void stream_transport::on_writable() {
  std::lock_guard<std::mutex> g(wm_);
  if (!write_armed_) return;
  write_armed_ = false;
  if (!closed_) flush_locked();  // arms again if the socket is still full
  if (!write_armed_ && fd_open_) set_events(0, EPOLLOUT);
}

void stream_transport::close(const proto::error& why) {
  closing_ = true;
  fail_pending(why);
  if (leading_) {  // wake a leader blocked in recvmsg (it sees closing_ and stops)
    std::lock_guard<std::mutex> g(wm_);
    if (fd_open_) ::shutdown(fd_, SHUT_RD);
  }
  auto self = shared_from_this();
  asio::post(io_, [self] {
    {
      std::lock_guard<std::mutex> r(self->rm_);  // no leader is reading now
      std::lock_guard<std::mutex> g(self->wm_);  // no writer is inside sendmsg now
      self->closed_ = true;
      self->outq_.clear();
      self->stopped_ = true;
      boost::system::error_code ec;
      self->epd_.cancel(ec);
      self->epd_.close(ec);
      self->fd_open_ = false;
      self->sock_.reset();
      self->owner_ = nullptr;
      self->requests_ = nullptr;
    }
  });
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
