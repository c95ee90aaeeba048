// stream_transport.hpp: the byte level of one vfio-user connection, on an AF_UNIX stream
// socket. Its parts, a file each:
//  - stream_transport.cpp: set-up, readiness (the loop's own set, Asio on a private epoll
//    set, or Asio on the socket itself), leaders, close;
//  - frame_reader.cpp: read passes (recvmsg, fds, large bodies read in place, landings);
//  - frame_router.hpp: what the frames become (replies, requests, fatal events) and the
//    flow control of the peer's requests; pure;
//  - read_gate.hpp: the reasons not to read now;
//  - write_queue.cpp: writes, in order, gathered, with fds.
//
// Ownership and threads:
//  - stream_transport owns the socket. The io thread reads: it waits for readiness with
//    Asio, drains the socket with recvmsg(MSG_DONTWAIT | MSG_CMSG_CLOEXEC), wraps every
//    received fd in a unique_fd at once and assembles frames; replies complete their
//    requests in the pending table, requests go to the dispatcher in one batch per read
//    pass, and the connection's end to its socket actor. MSG_CTRUNC is fatal (fds were
//    lost). While the loop polls it also reads without a readiness event (poll_read; the
//    wait stays armed).
//  - A thread blocked in a call may read instead (lead_begin/lead_wait/lead_end): it blocks
//    in recvmsg itself and handles whatever arrives exactly as the io thread would, so its
//    reply costs it one wake-up, as for a raw socket client, instead of two (io thread, then
//    caller). One reader at a time (rm_). For the io thread not to be woken as well, Asio
//    does not watch the socket itself but a private epoll instance holding it (level-
//    triggered); a leader takes EPOLLIN out of it while it reads and puts it back after,
//    when anything that arrived meanwhile wakes the io thread at once. (A connection no
//    leader is expected on waits in Asio's reactor itself until one comes, leave_direct,
//    or until a loop that does not poll has another socket to read: join_watch.)
//    The socket's file is blocking for the leader's sake (with SO_RCVTIMEO slices); every
//    other read and every write passes MSG_DONTWAIT.
//  - Writes go through send(), from any thread (the dispatcher, the correlation actor, a
//    device answering itself, or a calling thread): whole frames, in the order send() was called, under one mutex. What
//    the socket does not take at once is queued and written by the io thread when the
//    socket is writable again; no caller ever blocks on a full socket. close() takes the
//    read mutex and this one before it closes the fd, so no read or write can use the fd
//    after it was closed (and its number reused).
//  - Batching: on the event loop thread (event_loop.hpp), a frame without fds is queued and
//    written when the loop runs out of actor work, so the replies to one read batch leave
//    in one sendmsg. Queued frames without fds are gathered into one sendmsg; a frame with
//    fds is always written in a sendmsg of its own, with the fds on its first byte: a peer
//    that reads the header first (libvfio-user, QEMU) gets the fds with that header, and
//    our assembler gives them to the frame that holds the read's last byte.
#pragma once

#include <sys/uio.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <caf/all.hpp>

#include <atomic>
#include <chrono>
#include <deque>
#include <memory>
#include <mutex>
#include <utility>

#include "actors/event_loop.hpp"
#include "actors/frame_router.hpp"
#include "actors/read_gate.hpp"
#include "actors/types.hpp"
#include "protocol/assembler.hpp"
#include "protocol/frame.hpp"

namespace vfu {

class pending_table;

/// Bytes a peer may leave unread in our send queue before we give up on it.
inline constexpr size_t max_send_queue = 128u << 20;

class stream_transport : public deferred_writer,
                         public pollable,
                         public connection,
                         public std::enable_shared_from_this<stream_transport> {
 public:
  stream_transport(boost::asio::io_context& io, proto::unique_fd fd, uint32_t max_frame,
                   std::shared_ptr<pending_table> table = nullptr);
  ~stream_transport() override;

  /// Sends a whole frame (any thread). An error means the connection is broken; the owner
  /// is told with (ioerr_atom) as well.
  proto::status send(const frame_ptr& f) override;
  /// Sends `n` frames in order, gathered into as few sendmsg calls as the fd rule allows.
  proto::status send_many(const frame_ptr* fs, size_t n);
  /// Sends one frame without fds gathered from `head` and `data` (connection), now: after
  /// what is queued, in one sendmsg where the socket has room; what it has no room for is
  /// copied into the queue. No copy of `data` at all in the usual case.
  proto::status send_gathered(const uint8_t* head, size_t head_len, const uint8_t* data, size_t len) override;
  /// Sends `f` after what is queued, gathered with it into as few sendmsg calls as the fd
  /// rule allows, now: not at the loop's deferred flush (connection).
  proto::status send_now(frame_ptr f) override;
  proto::status send_now(proto::frame&& f) override;
  /// Counters of send_gathered: frames sent, and how many of them had to be copied (in part).
  std::atomic<uint64_t> gathered{0}, gathered_copied{0};
  /// Frames given to send_now, and sendmsg calls that wrote bytes (frames_out / writes is
  /// how well replies are batched).
  std::atomic<uint64_t> sent_now{0}, writes{0};
  /// Starts reading. Replies complete their requests in the pending table; the peer's
  /// requests, well-formed or rejected by size, go to `requests` (the dispatcher, which
  /// answers through this transport) as (inbound_atom, event_batch, owner, connection_ptr); an
  /// EOF or a fatal condition goes to `owner` (the socket actor) as (eof_atom or ioerr_atom,
  /// proto::error), and reading stops.
  void start(caf::actor owner, caf::actor requests);
  /// Largest frame accepted from the next header on (any thread).
  void set_max_frame(uint32_t n) noexcept override { max_frame_.store(n, std::memory_order_relaxed); }
  /// Stops reading and closes the socket (on the io thread). Every pending request fails at
  /// once with `why`.
  void close(const proto::error& why = proto::error(proto::errc::peer_gone, "connection closed"));
  /// Writes what send() queued on the event loop (called by the loop when it goes idle).
  void flush_deferred() override;
  /// Reads what has arrived, without waiting for readiness (called by the polling loop).
  bool poll_read() override;
  std::shared_ptr<pollable> pollable_ref() override { return shared_from_this(); }
  void arm_wait() override { arm(); }
  void join_watch() override;
  bool on_ready() override;

  /// A calling thread becomes the reader until lead_end(), if nobody else reads now (false:
  /// wait for the io thread as usual). Call it before writing the request, so that its
  /// reply cannot wake the io thread.
  bool lead_begin();
  /// Leader: reads and handles what arrives until `slot` completes, the deadline passes or
  /// the connection ends. With `landing`, the bulk data of the reply it names is received
  /// straight into the caller's buffer (reply_landing).
  /// It first polls the socket (recvmsg without waiting) for up to the connection's
  /// adaptive window (set_caller_poll_max_ns), and sleeps in recvmsg only after that.
  void lead_wait(call_slot& slot, std::chrono::steady_clock::time_point deadline, reply_landing* landing = nullptr);
  void lead_end();
  /// The longest a leader polls before it sleeps (0: never; endpoint_config::
  /// caller_poll_max_ns). Before start().
  void set_caller_poll_max_ns(int64_t n) noexcept { caller_poll_.max_ns = std::clamp<int64_t>(n, 0, 1000000000); }
  /// Callers will lead on this connection (a client's, endpoint_config::caller_reads): the
  /// private set watches the socket from the start, not Asio's reactor (begin_watching).
  /// Before start().
  void expect_leaders() noexcept { expect_leaders_ = true; }
  /// Fails every pending request of ours now (the peer closed its end: no reply can come).
  void fail_pending(const proto::error& why);
  /// The dispatcher is done with one of the peer's requests this transport handed it (its
  /// answer written, or the request dropped), of request_bytes(). Any thread. Flow
  /// control: with too many requests unanswered the transport stops reading (the peer's
  /// writes block) and reads again once half of them are answered.
  void request_done(uint64_t bytes) override;
  /// Our own requests written and not yet answered (a reply read), as flow control counts
  /// them: while there are any, reading stops only at four times the bounds. A request
  /// that never gets its reply keeps the higher bounds.
  uint32_t awaiting() const noexcept { return flow_.awaiting(); }
  /// close() was called: the connection is over (its socket actor has ended).
  bool closing() const noexcept override { return closing_.load(); }

  /// What the peer may send on this socket. With a twin socket (twin_socket.hpp) a
  /// connection's directions split: one socket carries the client's requests and their
  /// replies, the other the server's. A request on the wrong socket is answered EINVAL; a
  /// reply there completes nothing (dropped, counted in misrouted).
  enum lanes : uint8_t { peer_requests = 1, peer_replies = 2, both_lanes = 3 };
  void set_lanes(uint8_t l) noexcept { lanes_.store(l, std::memory_order_relaxed); }
  /// A twin of this connection on `fd` (connected): the same io context, pending table,
  /// frame limit and caller polling; it carries `l`. Closing it does not fail the pending
  /// table (its socket actor is linked to this one's, whose close does); its EOF does when
  /// it carries the replies to ours.
  std::shared_ptr<stream_transport> make_twin(proto::unique_fd fd, uint8_t l);
  /// Frames that came on the wrong socket of a twin pair.
  std::atomic<uint64_t> misrouted{0};


  /// Counters for inspection.
  std::atomic<uint64_t> frames_in{0}, bytes_in{0}, frames_out{0}, bytes_out{0};
  /// Batches of the peer's requests the dispatcher took in place (direct_requests).
  std::atomic<uint64_t> handed{0};
  /// Requests too large to accept (drained; the dispatcher answers them with an error), and
  /// replies too large (their requests fail).
  std::atomic<uint64_t> rejected_requests{0}, rejected_replies{0};
  /// Times reading stopped because too many of the peer's requests were unanswered.
  std::atomic<uint64_t> pauses{0};
  /// The peer's requests handed to the dispatcher and not yet answered.
  uint32_t unanswered() const noexcept { return flow_.unanswered(); }
  /// Readiness waits armed (each costs Asio an epoll_ctl).
  std::atomic<uint64_t> waits_armed{0};
  /// The socket waits in Asio's reactor itself, not through the private set (begin_watching).
  bool direct() const noexcept { return direct_on_.load(std::memory_order_relaxed); }
  /// Leaders' waits for a reply that ended while polling (no sleep, no wake-up), and that
  /// slept (whether or not they polled first).
  std::atomic<uint64_t> leader_caught{0}, leader_slept{0};

 private:
  void arm();
  /// Io thread: the private set watches the socket from now on, for good (the first
  /// leader or write waiting for room needs it); the socket's file is blocking again.
  void leave_direct();
  /// Io thread, em_ held: the socket leaves Asio's reactor (direct_) for the loop's set
  /// `to_ep` (it is there already) or, with -1, for the private set; blocking again. 0 or errno.
  int leave_reactor_locked(int to_ep);
  /// Io thread: the socket could not be watched: the connection ends (err: the errno).
  void watch_failed(int err);
  /// Io thread, once, at start: the loop's own set takes the socket (event_loop::watch),
  /// or else Asio's reactor (direct_) or the private set.
  void begin_watching();
  void on_event();
  /// One read pass and the delivery of what it read, if nobody else is reading. True if it
  /// received anything (bytes, EOF or an error); false after a read that found the socket
  /// empty. _locked: rm_ held; `block`: the first recvmsg waits (a leader). (frame_reader.cpp)
  bool read_pass();
  bool read_pass_locked(bool block);
  struct read_outcome;
  /// One recvmsg into the assembler (or straight into a frame's body, or a landing).
  bool read_once(bool wait, std::vector<proto::frame_assembler::event>& evs, read_outcome& out);
  /// Hands what a pass read on: replies to the pending table, requests to the dispatcher,
  /// the end of the connection to the owner; flow control may stop reading.
  void deliver(std::vector<proto::frame_assembler::event>& evs, read_outcome& out);
  /// The private epoll set's events for the socket (em_ taken here). False on an error.
  bool set_events(uint32_t add, uint32_t remove);
  bool set_events_locked(uint32_t add, uint32_t remove);
  /// EPOLLIN in the private set while the read gate is open.
  bool sync_read_events();
  /// Flow control stopped reading: the gate's `flow` reason goes and EPOLLIN comes back.
  void resume_reading();
  /// A request of ours is written: its reply may sit behind the peer's requests.
  void count_request_out(const proto::header& h);
  /// The peer's requests on a socket that carries none: each answered EINVAL, none kept.
  void refuse_requests(const event_batch& reqs);
  /// Stops reading for good (on an error or the end of the stream); leaves the loop's own
  /// set (event_loop::watch).
  void stop();
  bool stopped() const noexcept { return gate_.has(read_gate::stopped); }
  // write_queue.cpp
  void arm_writable();
  void on_writable();
  /// Writes queued frames; wm_ held. False on a socket error.
  bool flush_locked();
  /// Queues `f` behind the others (wm_ held); an error, and the connection failed, when the
  /// peer has left more than max_send_queue unread.
  /// send_now's part under wm_: queued, then written unless a write waits for room.
  proto::status send_now_locked(frame_ptr f);
  /// One sendmsg of `iov` (`total` bytes) now, under wm_, with the queue empty: the bytes
  /// written, counted (a frame written whole counts as sent), or -1 after write_failed().
  ssize_t write_now_locked(const iovec* iov, size_t n, size_t total, const proto::fd_list* fds);
  proto::status enqueue_locked(frame_ptr f);
  void write_failed(int err);

  std::shared_ptr<pending_table> table_;  ///< where replies complete their requests
  proto::error setup_error_;
  std::mutex wm_;
  std::deque<frame_ptr> outq_;
  size_t out_off_ = 0;
  size_t queued_ = 0;
  std::atomic<bool> write_armed_{false};  ///< wm_ (read without it only to skip taking it: on_writable)
  bool flush_pending_ = false;  ///< registered with the event loop's deferred flush
  bool closed_ = false;

  boost::asio::io_context& io_;
  proto::unique_fd sock_;                        ///< the socket (closed under rm_ and wm_)
  boost::asio::posix::stream_descriptor epd_;    ///< the private epoll set, as Asio sees it
  int fd_;
  bool fd_open_ = true;                          ///< wm_: sock_ not closed yet
  std::mutex em_;
  uint32_t events_ = 0;                          ///< em_: the socket's events in its set
  bool in_set_ = false;                          ///< em_: the set watching it holds it (set_events_locked)
  std::atomic<uint32_t> max_frame_;
  std::mutex rm_;                                ///< one reader at a time: asm_, owner_
  proto::frame_assembler asm_;
  caf::actor owner_;
  caf::actor requests_;                          ///< rm_: the dispatcher
  direct_requests* requests_direct_ = nullptr;   ///< rm_: its direct entry, if it has one
  event_batch spare_batch_;                      ///< rm_: an empty batch the dispatcher gave back (route())
  reply_landing* landing_ = nullptr;            ///< rm_: the leader's, while it waits
  event_loop::adaptive_poll caller_poll_;        ///< rm_: how long a leader polls
  std::atomic<bool> started_{false};            ///< owner_ is set
  std::atomic<bool> closing_{false};            ///< close() was called
  read_gate gate_;                               ///< why the connection does not read now
  flow_control flow_;                            ///< the peer's requests unanswered, ours awaited
  bool wait_armed_ = false;                      ///< a readiness wait is pending (io thread)
  bool watched_ = false;                         ///< em_: the loop's own set took the socket (for good)
  int watch_ep_ = -1;                            ///< em_: that set, until stop() takes the socket out
  uint64_t watch_id_ = 0;                        ///< em_: the socket's id there (its events' data)
  std::atomic<uint8_t> lanes_{both_lanes};
  bool twin_ = false;                            ///< made by make_twin()
  /// Io thread: the socket itself (a duplicate of fd_) in Asio's reactor, while no leader
  /// and no write waiting for room needs the private set (leave_direct); null otherwise.
  std::unique_ptr<boost::asio::posix::stream_descriptor> direct_;
  bool expect_leaders_ = false;
  std::atomic<bool> direct_on_{false};          ///< direct_ is set: leaders must wait
  std::atomic<bool> leave_asked_{false};        ///< a leader asked the io thread to leave_direct()
};

/// A caller's leadership of one transport (stream_transport::lead_begin), for one call or
/// one batch: begin() before writing, wait() for the replies, and lead_end() when it goes
/// out of scope (or at end()), on every path. All no-ops if begin() found someone reading.
class transport_leader {
 public:
  transport_leader() = default;
  ~transport_leader() { end(); }
  transport_leader(const transport_leader&) = delete;
  transport_leader& operator=(const transport_leader&) = delete;
  bool begin(const std::shared_ptr<stream_transport>& t) {
    if (t->lead_begin()) tr_ = t;
    return bool(tr_);
  }
  void wait(call_slot& slot, std::chrono::steady_clock::time_point deadline, reply_landing* landing = nullptr) {
    if (tr_) tr_->lead_wait(slot, deadline, landing);
  }
  void end() {
    if (tr_) std::exchange(tr_, nullptr)->lead_end();
  }

 private:
  std::shared_ptr<stream_transport> tr_;
};

/// One sendmsg of `iov` (with `fds`, if any, as SCM_RIGHTS), retried on EINTR. Returns the
/// bytes written (0 when the socket is full), or -errno.
ssize_t send_iov(int fd, const iovec* iov, size_t n, const proto::fd_list* fds);

using transport_ptr = std::shared_ptr<stream_transport>;

}  // namespace vfu

CAF_ALLOW_UNSAFE_MESSAGE_TYPE(vfu::transport_ptr)
