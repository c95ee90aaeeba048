// pending_table.hpp: every request of ours that expects a reply, whoever waits for it, in
// one table with one id space (1..0xffff, never an id still pending). Any thread may use it;
// one mutex guards it, and completions run outside that lock (settle()).
//
// The lifecycle of each kind of request (QEMU's proxy.c keeps such a table too):
//
// | kind           | made by                             | written by           | completed by       | timeout                  | connection lost |
// |----------------|-------------------------------------|----------------------|--------------------|--------------------------|-----------------|
// | blocking call  | endpoint::call, call_frame (thread) | the calling thread   | reader: its slot   | the caller, at its       | fail_all()      |
// |                |                                     | (or it leads, and    | wakes it           | deadline (expire)        |                 |
// |                |                                     | reads it: transport) |                    |                          |                 |
// | call_many      | endpoint::call_many (thread)        | the calling thread,  | reader: each slot  | the caller (expire)      | fail_all()      |
// |                |                                     | one sendmsg          |                    |                          |                 |
// | no-wait (post) | endpoint::post (thread)             | the calling thread   | reader: the table  | sweep() (correlation     | fail_all()      |
// |                |                                     |                      | (wait_posted)      | actor's timer)           |                 |
// | actor request  | (request_atom) to the correlation   | the correlation      | reader, then the   | sweep()                  | fail_all()      |
// |                | actor (a device's DMA_READ)         | actor                | correlation actor  |                          |                 |
// |                |                                     |                      | delivers           |                          |                 |
// | NO_REPLY       | endpoint::post_noreply (thread)     | the calling thread   | - (never pending)  | -                        | -               |
//
// "Reader" is whoever reads the connection: the event loop, or a calling thread that leads
// (stream_transport). A reply completes its request exactly once; a reply to a request that
// timed out is recognised as late and dropped quietly; one nobody asked for is counted as
// unexpected and dropped. The stream stays in sync either way. An epoch ties a request to
// the connection it was written on: fail_all() moves it on, and a request registered with
// an older epoch is refused.
#pragma once

#include <caf/all.hpp>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "actors/types.hpp"

namespace vfu {

class pending_table {
 public:
  using clock = std::chrono::steady_clock;
  /// Ids of timed-out requests remembered, so that their late replies are dropped quietly.
  static constexpr size_t late_memory = 256;

  explicit pending_table(uint32_t max_outstanding) : max_(max_outstanding ? max_outstanding : 1) {}

  /// Who waits for a request: a blocked thread (its slot), an actor (its promise, which only
  /// the correlation actor delivers), or nobody (a no-wait request: both empty).
  struct requester {
    std::shared_ptr<call_slot> slot;
    caf::response_promise promise;
    bool actor = false;
  };
  /// A request's outcome, applied by settle() outside the table's lock.
  struct completion {
    requester who;
    uint16_t id = 0, cmd = 0;
    call_result result;
  };
  using completions = std::vector<completion>;

  /// The actor that delivers actor requesters' results (the correlation actor).
  void set_deliverer(caf::actor a);
  /// Applies completions: wakes threads, hands actors' results to the deliverer, logs
  /// failed no-wait requests.
  void settle(completions& done);

  /// The current connection's epoch (see above).
  uint64_t epoch();
  /// Registers a request (back-pressure: at most max_outstanding pending; a thread waits up
  /// to `wait` for room, 0 = not at all). Fails with not_connected when `epoch` is not the
  /// current one, with busy when there is no room.
  proto::result<uint16_t> add(requester who, uint16_t cmd, clock::time_point deadline, uint64_t epoch,
                              std::chrono::milliseconds wait);
  /// A registered request that was not written after all: it completes with nothing.
  void remove(uint16_t id);
  /// An id for a NO_REPLY frame (never pending).
  uint16_t noreply_id();
  /// Actor requests wait for room (the deliverer queues them): it gets (pump_atom) once a
  /// request completes and there is room again.
  void actors_wait_for_room();

  enum class outcome : uint8_t { completed, late, unexpected };
  /// A reply was read.
  outcome complete(frame_ptr reply, completions& done);
  /// A reply was rejected by size (drained): its request fails with `why`.
  void reject(const proto::header& h, const proto::error& why, completions& done);
  /// A blocked caller's deadline passed: true if its request was still pending (it is now
  /// timed out, and its late reply will be dropped), false if it completed meanwhile.
  bool expire(uint16_t id);
  /// Times out the requests nobody blocks on whose deadline has passed; returns the next
  /// such deadline (max: none).
  clock::time_point sweep(clock::time_point now, completions& done);
  /// The deadline of the earliest request nobody blocks on, if it is before `t`: the
  /// correlation actor's timer is due earlier (max: none). Takes the slot of that timer.
  clock::time_point timer_due_before(clock::time_point t);
  /// The connection is gone: every pending request fails with `why`, the epoch moves on.
  void fail_all(const proto::error& why, completions& done);

  /// Waits for the youngest no-wait request to complete (its result), or `timeout`.
  call_result wait_posted(std::chrono::milliseconds timeout);

  /// Threads inside a blocking call now, from before they write until they return (a thread
  /// whose reply has come but which has not run yet still counts). A reading caller polls
  /// only while it is alone (stream_transport).
  class caller_scope {
   public:
    explicit caller_scope(pending_table& t) : t_(t) { t_.callers_.fetch_add(1, std::memory_order_relaxed); }
    ~caller_scope() { t_.callers_.fetch_sub(1, std::memory_order_relaxed); }
    caller_scope(const caller_scope&) = delete;
    caller_scope& operator=(const caller_scope&) = delete;

   private:
    pending_table& t_;
  };
  uint32_t callers() const noexcept { return callers_.load(std::memory_order_relaxed); }

  struct counters {
    uint64_t sent = 0, completed = 0, timeouts = 0, late = 0, error_replies = 0, unexpected = 0, failed_on_loss = 0;
    uint32_t pending_high_water = 0;
  };
  counters stats();
  /// "sent=.. completed=.. timeouts=.." for endpoint::stats().
  std::string stats_text();

 private:
  struct entry {
    requester who;
    uint16_t cmd = 0;
    clock::time_point deadline;
  };
  bool nobody_blocks(const entry& e) const noexcept { return !e.who.slot; }
  /// Takes entry `it` out (room for a waiting thread) and records its completion.
  void finish_locked(std::unordered_map<uint16_t, entry>::iterator it, call_result r, completions& done);
  void record_nowait_locked(uint16_t id, const call_result& r);
  void kick_waiting_actors();

  std::mutex m_;
  std::condition_variable room_;
  uint32_t max_;
  std::atomic<uint32_t> callers_{0};
  uint16_t next_ = 1;
  uint64_t epoch_ = 0;
  std::unordered_map<uint16_t, entry> map_;
  std::deque<uint16_t> late_;
  clock::time_point timer_at_ = clock::time_point::max();  ///< the deliverer's sweep timer
  caf::actor deliverer_;
  bool actors_waiting_ = false;
  // wait_posted: the youngest no-wait request and what its waiters get.
  int youngest_nowait_ = -1;
  call_result nowait_result_;
  std::vector<std::shared_ptr<call_slot>> nowait_waiters_;
  counters stats_;
};

}  // namespace vfu

CAF_ALLOW_UNSAFE_MESSAGE_TYPE(std::shared_ptr<vfu::pending_table>)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(caf::response_promise)
