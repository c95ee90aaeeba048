#define CAF_LOG_COMPONENT "vfu"
#include "actors/stream_transport.hpp"

#include <boost/asio/post.hpp>

#include <fcntl.h>
#include <sys/epoll.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstring>

#include "actors/pending_table.hpp"
#include "protocol/limits.hpp"

namespace vfu {

namespace asio = boost::asio;

namespace {
// A leader's blocking recvmsg returns at least this often, to look at its deadline.
constexpr suseconds_t leader_slice_us = 10000;
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
  in_set_ = true;
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
  // Paused by flow control with nothing else to wait for, the socket leaves its set: epoll
  // reports a hang-up whatever the events, and a paused socket whose peer has gone would be
  // ready at every look until its device answers. (A leader's read keeps it in: a DEL and an
  // ADD per call cost more than two MODs.)
  bool in = want != 0 || !gate_.has(read_gate::flow);
  if (want == events_ && in == in_set_) return true;
  // Stopped after the loop's set watched it (no set holds it now), or in Asio's reactor
  // (the private set takes these events when it takes the socket back: leave_direct).
  if ((watched_ && watch_ep_ < 0) || direct_) {
    events_ = want;
    return true;
  }
  if (in || in_set_) {  // (out and staying out: nothing to tell epoll)
    epoll_event ev{};
    ev.events = want;
    ev.data.u64 = watch_id_;
    int op = !in ? EPOLL_CTL_DEL : in_set_ ? EPOLL_CTL_MOD : EPOLL_CTL_ADD;
    // The set that watches the socket: the loop's own, or the private one.
    if (::epoll_ctl(watch_ep_ >= 0 ? watch_ep_ : epd_.native_handle(), op, fd_, &ev) != 0) return false;
  }
  events_ = want;
  in_set_ = in;
  return true;
}

stream_transport::~stream_transport() {
  // Not closed through close() (which stops first): out of the loop's set explicitly, since
  // closing the socket removes it from there only if no other process holds the socket too.
  if (watch_ep_ >= 0) ::epoll_ctl(watch_ep_, EPOLL_CTL_DEL, fd_, nullptr);
}

void stream_transport::start(caf::actor owner, caf::actor requests) {
  auto self = shared_from_this();
  asio::post(io_, [self, owner = std::move(owner), requests = std::move(requests)]() mutable {
    self->owner_ = std::move(owner);
    self->requests_ = std::move(requests);
    if (self->requests_)
      self->requests_direct_ = direct_entry<direct_requests>(self->requests_->home_system(), self->requests_);
    if (self->setup_error_) {
      self->stop();
      caf::anon_send(self->owner_, ioerr_atom::value, self->setup_error_);
      return;
    }
    self->begin_watching();  // (before any leader: one in the socket's private set would race it)
    self->started_.store(true, std::memory_order_release);  // callers may lead from now on
    self->arm();
  });
}

void stream_transport::stop() {
  gate_.set(read_gate::stopped);
  // Out of the loop's level-triggered set at once: a stopped socket that stayed readable
  // (its EOF) would be reported ready at every look, and the loop would never sleep. (Before
  // the socket closes: the close handler stops first.)
  std::lock_guard<std::mutex> g(em_);
  if (watch_ep_ < 0) return;
  ::epoll_ctl(watch_ep_, EPOLL_CTL_DEL, fd_, nullptr);
  watch_ep_ = -1;
  in_set_ = false;
}

bool stream_transport::on_ready() {
  on_writable();  // if a write waits for room (the socket is watched for EPOLLOUT then)
  return poll_read();
}

void stream_transport::begin_watching() {
  // The loop may watch the socket itself, in its own level-triggered set, once and for all
  // (event_loop::watch: a polling loop, or one that reads other sockets too): no wait to
  // arm, now or later, and no private set in between (the socket leaves it; its events,
  // which leaders and writes change, go to the loop's).
  std::lock_guard<std::mutex> g(em_);
  if (stopped()) return;
  int ep = event_loop::watch(*this, fd_, events_, watch_id_, !expect_leaders_);
  if (ep >= 0) {
    ::epoll_ctl(epd_.native_handle(), EPOLL_CTL_DEL, fd_, nullptr);
    watch_ep_ = ep;
    watched_ = true;
    return;
  }
  if (expect_leaders_) return;
  // Otherwise the socket waits in Asio's reactor itself until something needs the private
  // set, or the loop's (join_watch): one readiness layer, not two (the peer's write wakes us
  // through one callback, and our epoll_wait polls the socket, not a set that polls it). A
  // duplicate, since Asio closes what it holds; Asio also makes the file non-blocking,
  // which only a leader minds.
  proto::unique_fd dup(::fcntl(fd_, F_DUPFD_CLOEXEC, 0));
  if (!dup) return;  // (the private set, then)
  auto d = std::make_unique<asio::posix::stream_descriptor>(io_);
  boost::system::error_code ec;
  d->assign(dup.get(), ec);
  if (ec) return;
  dup.release();
  ::epoll_ctl(epd_.native_handle(), EPOLL_CTL_DEL, fd_, nullptr);
  in_set_ = false;
  direct_ = std::move(d);
  direct_on_.store(true, std::memory_order_release);
}

int stream_transport::leave_reactor_locked(int to_ep) {
  boost::system::error_code ec;
  direct_->close(ec);  // a pending wait ends with operation_aborted, and arms again (arm(): not once watched)
  direct_.reset();
  int fl = ::fcntl(fd_, F_GETFL);
  if (fl < 0 || ::fcntl(fd_, F_SETFL, fl & ~O_NONBLOCK) != 0) return errno;
  if (to_ep < 0) {
    epoll_event ev{};
    ev.events = events_;
    if (::epoll_ctl(epd_.native_handle(), EPOLL_CTL_ADD, fd_, &ev) != 0) return errno;
  }
  in_set_ = true;
  return set_events_locked(0, 0) ? 0 : errno;  // (out again if reading is paused)
}

void stream_transport::join_watch() {
  int err = 0;
  {
    std::lock_guard<std::mutex> g(em_);
    if (!direct_ || stopped()) return;
    int ep = event_loop::add_to_watch(*this, fd_, events_, watch_id_);
    if (ep < 0) return;  // (it stays in Asio's reactor)
    watch_ep_ = ep;  // (the private set let it go when it entered the reactor)
    watched_ = true;
    err = leave_reactor_locked(ep);
  }
  if (err) return watch_failed(err);
  direct_on_.store(false, std::memory_order_release);
}

void stream_transport::leave_direct() {
  if (!direct_ || stopped()) return;
  int err = 0;
  {
    std::lock_guard<std::mutex> g(em_);
    err = leave_reactor_locked(-1);
  }
  if (err) return watch_failed(err);
  direct_on_.store(false, std::memory_order_release);
}

void stream_transport::watch_failed(int err) {
  // Leaders keep out (direct_on_ stays), and the connection ends with the cause.
  stop();
  caf::anon_send(owner_, ioerr_atom::value,
                 proto::error(proto::errc::io_error, err, std::string("watching the socket: ") + std::strerror(err)));
}

void stream_transport::arm() {
  if (stopped() || wait_armed_ || watched_) return;
  // In Asio's reactor nothing masks EPOLLIN: while reading is paused a wait would fire at
  // once, again and again (resume_reading() arms it).
  if (direct_ && !gate_.open()) return;
  // One wait at a time. While the loop polls, reads happen without the wait firing, and it
  // stays armed: what arrives after the loop stops polling still wakes it.
  wait_armed_ = true;
  waits_armed.fetch_add(1, std::memory_order_relaxed);
  auto self = shared_from_this();
  (direct_ ? *direct_ : epd_).async_wait(asio::posix::descriptor_base::wait_read, [self](const boost::system::error_code& ec) {
    self->wait_armed_ = false;
    if (self->stopped()) return;
    // close() (stopped), leave_direct() (wait on the private set now) or join_watch() (the
    // loop's set watches it: arm() does nothing).
    if (ec == asio::error::operation_aborted) {
      self->arm();
      return;
    }
    if (ec) {
      // Any other error ends the connection with its cause; returning silently would leave
      // the socket unwatched and the connection open forever.
      self->stop();
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
  if (stopped() || !owner_) return false;
  return read_pass();  // the wait, armed or not, is the loop's business (arm_later)
}

bool stream_transport::lead_begin() {
  if (closing_ || stopped() || !started_.load(std::memory_order_acquire)) return false;
  if (direct_on_.load(std::memory_order_acquire)) {
    // The io thread's wait in Asio's reactor would wake it for this caller's reply: this
    // call waits for the io thread, and the private set takes the socket for the next ones.
    if (!leave_asked_.exchange(true)) {
      auto self = shared_from_this();
      asio::post(io_, [self] { self->leave_direct(); });
    }
    return false;
  }
  if (!rm_.try_lock()) return false;
  if (!gate_.readable()) {  // (flow control: reading waits for the dispatcher)
    rm_.unlock();
    return false;
  }
  gate_.set(read_gate::leader);  // close() shuts the socket's read side if it sees this
  if (closing_ || stopped() || !sync_read_events()) {
    gate_.clear(read_gate::leader);
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
    return !slot.done() && !closing_ && gate_.readable() && clock::now() < until;
  };
  // Poll first: a reply that arrives within the window costs no sleep and no wake-up. Each
  // look is one recvmsg, as the sleep's is. Only a lone caller polls: with other callers on
  // the connection, waiting or just woken, its CPU is better left to them and to the peer
  // (docs/performance.md).
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
  if (!slot.done() || closing_ || !gate_.readable()) return;
  if (slept) leader_slept.fetch_add(1, std::memory_order_relaxed);
  else if (polled) leader_caught.fetch_add(1, std::memory_order_relaxed);
  if (caller_poll_.max_ns > 0)
    caller_poll_.adjust(std::chrono::duration_cast<std::chrono::nanoseconds>(clock::now() - start).count());
}

void stream_transport::lead_end() {
  // Back to the io thread; what arrived since the last read makes the set ready at once.
  gate_.clear(read_gate::leader);
  if (!stopped() && !closing_) sync_read_events();
  rm_.unlock();
}

bool stream_transport::sync_read_events() {
  std::lock_guard<std::mutex> g(em_);
  return gate_.open() ? set_events_locked(EPOLLIN, 0) : set_events_locked(0, EPOLLIN);
}

void stream_transport::request_done(uint64_t bytes) {
  // At the low mark, one of the answers clears the gate's reason (clear() is true once).
  if (!flow_.request_done(bytes) || !gate_.has(read_gate::flow) || !gate_.clear(read_gate::flow)) return;
  CAF_LOG_DEBUG("the dispatcher caught up: reading again");
  resume_reading();
}

void stream_transport::resume_reading() {
  auto self = shared_from_this();
  asio::post(io_, [self] {
    if (self->stopped()) return;
    self->sync_read_events();
    self->arm();  // (a no-op if armed; a socket the loop polls is read by it anyway)
  });
}

void stream_transport::count_request_out(const proto::header& h) {
  if (!h.is_command() || h.no_reply()) return;
  // Its reply may be behind the peer's requests: a paused reader reads again.
  if (flow_.request_out() && gate_.has(read_gate::flow) && !flow_.stop_reading() && gate_.clear(read_gate::flow)) {
    CAF_LOG_DEBUG("a request of ours awaits its reply: reading again");
    resume_reading();
  }
}

std::shared_ptr<stream_transport> stream_transport::make_twin(proto::unique_fd fd, uint8_t l) {
  auto t = std::make_shared<stream_transport>(io_, std::move(fd), max_frame_.load(), table_);
  t->twin_ = true;
  t->set_lanes(l);
  t->caller_poll_.max_ns = caller_poll_.max_ns;
  t->expect_leaders_ = expect_leaders_ && (l & peer_replies);  // (leaders read where their replies come)
  return t;
}

void stream_transport::fail_pending(const proto::error& why) {
  // A twin that carries the replies to ours (the server's) fails them at its EOF; one that
  // carries none has nothing to fail.
  if (!table_ || (twin_ && !(lanes_.load() & peer_replies))) return;
  pending_table::completions done;
  table_->fail_all(why, done);
  table_->settle(done);
}

void stream_transport::close(const proto::error& why) {
  closing_ = true;
  // A twin closes when the first socket's actor ends, which fails the table itself; a twin
  // that did so late could fail the next connection's requests.
  if (!twin_) fail_pending(why);
  if (gate_.has(read_gate::leader)) {  // wake a leader blocked in recvmsg (it sees closing_ and stops)
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
      self->stop();
      boost::system::error_code ec;
      self->epd_.cancel(ec);
      self->epd_.close(ec);
      if (self->direct_) self->direct_->close(ec);
      self->fd_open_ = false;
      self->sock_.reset();
      self->owner_ = nullptr;
      self->requests_ = nullptr;
      self->requests_direct_ = nullptr;
    }
  });
}

}  // namespace vfu
