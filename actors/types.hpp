// types.hpp: every message type and atom that crosses an actor boundary in vfu-broker, in
// one place (style lesson 6).
//
// A frame's way (docs/architecture.md): the reader (stream_transport) reads bytes and fds
// and assembles frames; a reply completes its request in the pending table (whose header
// has each request kind's lifecycle), a batch of requests goes to the dispatcher. Frames and
// fds are move-only, and CAF 0.17 messages must be copyable, so they travel inside
// shared_ptrs: the buffer is never copied, and the fds close when the last holder drops the
// message (also when CAF drops a message sent to a dead actor).
#pragma once

#include <caf/all.hpp>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <optional>

#include "protocol/assembler.hpp"
#include "protocol/capabilities.hpp"
#include "protocol/errc.hpp"
#include "protocol/frame.hpp"
#include "protocol/messages.hpp"

namespace vfu {

using frame_ptr = std::shared_ptr<proto::frame>;
using event_batch = std::shared_ptr<std::vector<proto::frame_assembler::event>>;

inline frame_ptr make_frame_ptr(proto::frame f) { return std::make_shared<proto::frame>(std::move(f)); }

/// What a request ends with: the reply frame (possibly an error reply), or an error that
/// happened on our side (timeout, connection lost, ...). Exactly one of the two is set.
struct call_result {
  frame_ptr reply;
  proto::error err;
  bool ok() const { return !err && reply; }
  /// The error as seen by the caller: ours, or the peer's error reply as remote_error.
  proto::error failure() const;
};

/// A blocked thread's completion slot, completed exactly once (pending_table.hpp).
class call_slot {
 public:
  void complete(call_result r);
  /// Waits up to `limit`; returns the result (a timeout error if the limit passed, which
  /// only happens if the broker itself is wedged: every path completes the slot).
  call_result wait(std::chrono::milliseconds limit);
  /// Waits up to `limit` for the completion; true when it came (take() it then).
  bool wait_for(std::chrono::milliseconds limit);
  call_result take();
  bool done();

 private:
  std::mutex m_;
  std::condition_variable cv_;
  bool done_ = false;
  call_result result_;
};

/// Where a blocking call wants its reply's bulk data: the bytes of the reply frame from
/// `frame_offset` on (a REGION_READ reply's data) go to `dest` (`len` bytes). A leader that
/// reads that reply (stream_transport::lead_wait) receives them straight into `dest`,
/// sparing a copy; data bytes [from, to) landed there, the rest is in the reply frame as
/// usual (from == to: none landed). Set up by the caller, filled while it leads.
struct reply_landing {
  uint16_t msg_id = 0;
  size_t frame_offset = 0;
  uint8_t* dest = nullptr;
  size_t len = 0;
  size_t from = 0, to = 0;
};

/// A connection's write side as answer() uses it (stream_transport).
class reply_writer {
 public:
  virtual ~reply_writer() = default;
  /// Writes `f` after what is queued; on the event loop's thread at its deferred flush, with
  /// the other replies of the same read batch. An error means the connection is broken.
  virtual proto::status send(const frame_ptr& f) = 0;
  /// Writes `f` after what is queued, now rather than at the event loop's deferred flush.
  /// An error means the connection is broken.
  virtual proto::status send_now(frame_ptr f) = 0;
  /// The same for a frame the caller gives up: written from where it is if it can leave at
  /// once (the usual case), queued otherwise. A writer that wrote it from where it was
  /// leaves `f` as it was, its buffer the caller's again (stream_transport does); this
  /// default moves from it.
  virtual proto::status send_now(proto::frame&& f) { return send_now(make_frame_ptr(std::move(f))); }
  /// Writes one frame made of `head` followed by `data`, gathered from where they are (a
  /// device's memory): by the time it returns, the frame is in the socket or, where the
  /// socket had no room, copied into the send queue. So the caller may change `data` right
  /// after. An error means the connection is broken.
  virtual proto::status send_gathered(const uint8_t* head, size_t head_len, const uint8_t* data, size_t len) = 0;
};

/// One connection as the actors use it: its write side, and what the dispatcher tells its
/// reader. stream_transport is the connection; the actors' unit tests record instead.
class connection : public reply_writer {
 public:
  /// The connection is over (it was closed): what was read from it is dropped.
  virtual bool closing() const noexcept = 0;
  /// The dispatcher is done with one of the peer's requests (answered or dropped), of
  /// request_bytes(): flow control (frame_router.hpp).
  virtual void request_done(uint64_t bytes) = 0;
  /// Largest frame accepted from the next header on (any thread).
  virtual void set_max_frame(uint32_t n) noexcept = 0;
};
using connection_ptr = std::shared_ptr<connection>;

/// Where the actors' deadlines read the time (steady_clock; the actors' unit tests step it).
using clock_fn = std::chrono::steady_clock::time_point (*)();
inline std::chrono::steady_clock::time_point steady_now() { return std::chrono::steady_clock::now(); }

/// An inbound request after decoding, handed to a device actor. A handler answers it by
/// returning answer(in, outbound) (answer.hpp), or an outbound for the dispatcher to write.
struct inbound {
  proto::header hdr;
  proto::message msg;
  proto::fd_list fds;
  caf::actor correlation;  ///< for requests back to the peer (server DMA_READ/WRITE)
  // The broker's, for answer(): the connection the request came from (null when it did not
  // come from one), and whether requests of the same connection wait behind it.
  std::shared_ptr<reply_writer> writer;
  bool alone = false;
  /// The right to answer, taken once: by a device that writes its reply itself, or by the
  /// dispatcher when the handler's deadline passes (ETIMEDOUT). The loser stays silent, so
  /// the peer never gets two answers to one request.
  bool claim() noexcept { return !answered_.exchange(true, std::memory_order_acq_rel); }
  /// The dispatcher's: a request answered, its inbound held by nobody else, is emptied to
  /// carry the next one (no allocation per request).
  void recycle() noexcept {
    msg = proto::message{};
    fds.clear();
    writer = nullptr;
    alone = false;
    answered_.store(false, std::memory_order_relaxed);
  }

 private:
  std::atomic<bool> answered_{false};
};

using inbound_ptr = std::shared_ptr<inbound>;

/// A handler's answer: an errno, a reply message with optional fds, a reply frame built in
/// place (its msg_id is set when it leaves), or a reply gathered from memory: a head frame
/// whose msg_size counts `gather_len` more bytes at `gather`, which answer() writes before
/// the handler can change them.
struct outbound {
  int err = 0;
  std::optional<proto::message> reply;
  frame_ptr frame;
  const uint8_t* gather = nullptr;
  size_t gather_len = 0;
  proto::fd_list fds;
  /// Set by the VERSION handler: the connection's negotiated parameters take effect.
  std::optional<proto::negotiated> negotiated;
  /// Set when the handler wants the connection closed after this reply (e.g. VERSION
  /// negotiation failed).
  bool close_after = false;
  /// answer() has written it: nothing more to send.
  bool sent = false;

  static std::shared_ptr<outbound> error(int e) {
    auto o = std::make_shared<outbound>();
    o->err = e;
    return o;
  }
  /// One shared instance (an allocation less per answer written at once): never change it.
  static std::shared_ptr<outbound> already_sent() {
    static const std::shared_ptr<outbound> sent_one = [] {
      auto o = std::make_shared<outbound>();
      o->sent = true;
      return o;
    }();
    return sent_one;
  }
  static std::shared_ptr<outbound> of_frame(proto::frame f) {
    auto o = std::make_shared<outbound>();
    o->frame = make_frame_ptr(std::move(f));
    return o;
  }
  static std::shared_ptr<outbound> gathered(proto::frame head, const uint8_t* data, size_t len) {
    auto o = of_frame(std::move(head));
    o->gather = data;
    o->gather_len = len;
    return o;
  }
  static std::shared_ptr<outbound> of(proto::message m, proto::fd_list fds = {}) {
    auto o = std::make_shared<outbound>();
    o->reply = std::move(m);
    o->fds = std::move(fds);
    return o;
  }
};

using outbound_ptr = std::shared_ptr<outbound>;

// ---- Same-thread handoff (docs/architecture.md). On the event loop every actor of the
// system runs on the loop's one thread, so an actor whose mailbox is blocked (idle, nothing
// queued: CAF marks it so only when it finds its mailbox empty, and a new message unblocks
// it) is not running and has nothing to handle first. There, instead of sending it a message
// that would make it run once the sender is done, the sender may call it in place through
// one of these entries: one message, one mailbox allocation and one actor run less, and the
// same result. An actor class (on in_place_actor) implements them next to its behavior.

/// A handler actor (a device) that answers some requests in place.
class direct_handler {
 public:
  /// On its system's event loop only. The answer to `in`, exactly as the actor would give
  /// it (answer() included), or nullptr: the request goes as a message (the actor is not
  /// idle or is gone, or the answer comes later). Returning nullptr leaves no trace.
  virtual outbound_ptr serve_now(const inbound_ptr& in) = 0;

 protected:
  ~direct_handler() = default;
};

/// A requests actor (the dispatcher) that takes a transport's batch in place.
class direct_requests {
 public:
  /// On its system's event loop only. True if it took `reqs`, as it takes (inbound_atom,
  /// reqs, sock, tr); false: send them.
  virtual bool take_now(event_batch& reqs, const caf::actor& sock, const connection_ptr& tr) = 0;

 protected:
  ~direct_requests() = default;
};

/// Ends `a` after `e` escaped a call in place, as CAF ends an actor whose handler throws.
void end_after_throw(caf::local_actor& a, const std::exception& e);

/// The base of an actor class with a direct entry.
template <class State>
class in_place_actor : public caf::stateful_actor<State> {
 public:
  using caf::stateful_actor<State>::stateful_actor;

 protected:
  /// Whether it may be called in place now: set up (its behavior made), idle, and not gone
  /// (a closed mailbox is not blocked; nor is one holding the exit after a throw).
  bool idle() { return this->getf(caf::abstract_actor::is_initialized_flag) && this->mailbox().blocked(); }
  /// `work()`; if it throws, the actor ends (end_after_throw) and `failed()` stands for it.
  template <class Work, class Failed>
  auto in_place(Work&& work, Failed&& failed) -> decltype(work()) {
    try {
      return work();
    } catch (const std::exception& e) {
      end_after_throw(*this, e);
      return failed();
    }
  }
};

/// Whether `a` is a scheduled actor of `sys` and `sys` runs on an event loop.
bool on_event_loop(caf::actor_system& sys, const caf::actor& a);

/// `a`'s entry of kind T (direct_handler, direct_requests), or nullptr. It lives as long as
/// `a` does; call it only where event_loop::on_loop_of(sys).
template <class T>
T* direct_entry(caf::actor_system& sys, const caf::actor& a) {
  return on_event_loop(sys, a) ? dynamic_cast<T*>(caf::actor_cast<caf::abstract_actor*>(a)) : nullptr;
}

/// Connection parameters that change after VERSION.
struct conn_limits {
  uint32_t max_frame = proto::limits::max_version_frame;
  proto::decode_limits decode;
  uint32_t send_max_fds = 1;
  uint64_t send_max_data = proto::limits::default_max_data_xfer;
};

/// Request classes: each has its own timeout (correlation actor).
enum class timeout_class : uint8_t { short_op = 0, long_op = 1 };
timeout_class classify(uint16_t command) noexcept;

// Atoms (0.17: at most 10 characters).
using ioerr_atom = caf::atom_constant<caf::atom("ioerr")>;
using request_atom = caf::atom_constant<caf::atom("request")>;
using inbound_atom = caf::atom_constant<caf::atom("inbound")>;
using sweep_atom = caf::atom_constant<caf::atom("sweep")>;
using attach_atom = caf::atom_constant<caf::atom("attach")>;
using limits_atom = caf::atom_constant<caf::atom("limits")>;
using connlost_atom = caf::atom_constant<caf::atom("connlost")>;
using connup_atom = caf::atom_constant<caf::atom("connup")>;
using twin_atom = caf::atom_constant<caf::atom("twin")>;
using handler_atom = caf::atom_constant<caf::atom("handler")>;
using stats_atom = caf::atom_constant<caf::atom("stats")>;
using accepted_atom = caf::atom_constant<caf::atom("accepted")>;
using reconnect_atom = caf::atom_constant<caf::atom("reconnect")>;
using close_atom = caf::atom_constant<caf::atom("close")>;
using eof_atom = caf::atom_constant<caf::atom("eof")>;
using drain_atom = caf::atom_constant<caf::atom("drain")>;
using deliver_atom = caf::atom_constant<caf::atom("deliver")>;
using pump_atom = caf::atom_constant<caf::atom("pump")>;
using deadline_atom = caf::atom_constant<caf::atom("deadline")>;

/// Renders a CAF error (including our "vfu" category) as text.
std::string render(const caf::error& e);
/// Makes the caf::error for a proto::error (category "vfu", context = message).
caf::error to_caf(const proto::error& e);

}  // namespace vfu

CAF_ERROR_CODE_ENUM(vfu::proto::errc, "vfu")
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(vfu::frame_ptr)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(vfu::event_batch)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(vfu::call_result)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(vfu::inbound_ptr)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(vfu::outbound_ptr)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(vfu::connection_ptr)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(vfu::conn_limits)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(vfu::proto::header)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(std::vector<vfu::proto::header>)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(vfu::proto::error)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(vfu::proto::negotiated)
