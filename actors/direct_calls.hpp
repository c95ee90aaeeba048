// direct_calls.hpp: the fast lane for requests made by plain threads (an emulator's vCPU).
//
// A round trip through actors costs a cross-thread wake-up per hop (caf-0.17.md section 8).
// For a thread blocked in endpoint::call the critical path is cut to what the protocol
// needs: the calling thread writes its frame itself (stream_transport::send is thread-safe)
// and the event loop hands the reply straight to the blocked thread: one wake-up, as for a
// raw socket client. Who completes a blocking call, exactly once:
//  - its reply: the event loop, from the read batch (complete());
//  - its timeout: the calling thread itself (expire()); a reply that comes later is
//    recognised and dropped quietly, without desyncing the stream;
//  - the connection's death: the transport, as it closes (fail_all()), at once for every
//    call, so nobody waits out a timeout.
// An epoch ties each call to one connection: fail_all() moves it on, and a call registered
// with an older epoch is refused instead of being written to a connection that is gone.
//
// No-wait requests (endpoint::post) also take this lane, so they stay in order with a
// thread's calls, but the correlation actor tracks them: it times them out, logs their
// failures and answers wait_posted (a "track" message before the write, a "retire" after).
//
// Id spaces: the correlation actor allocates 1..0x7fff, direct calls 0x8000..0xffff, so
// neither ever reuses an id the other has pending.
#pragma once

#include <chrono>
#include <condition_variable>
#include <deque>
#include <atomic>
#include <memory>
#include <mutex>
#include <optional>
#include <unordered_map>

#include "actors/types.hpp"

namespace vfu {

class direct_calls {
 public:
  static constexpr uint16_t id_base = 0x8000;
  /// Timed-out ids remembered, so that their late replies are dropped quietly.
  static constexpr size_t late_memory = 256;

  explicit direct_calls(uint32_t max_outstanding) : max_(max_outstanding ? max_outstanding : 1) {}

  /// Back-pressure: waits until fewer than max_outstanding thread requests are pending.
  bool acquire(std::chrono::milliseconds limit);
  void release();

  /// Threads inside a blocking call (endpoint::call_frame, call_many) now, from before
  /// they write until they return: a thread whose reply has come but which has not run yet
  /// still counts. A reading caller polls only while it is alone (stream_transport).
  class caller_scope {
   public:
    explicit caller_scope(direct_calls& d) : d_(d) { d_.callers_.fetch_add(1, std::memory_order_relaxed); }
    ~caller_scope() { d_.callers_.fetch_sub(1, std::memory_order_relaxed); }
    caller_scope(const caller_scope&) = delete;
    caller_scope& operator=(const caller_scope&) = delete;

   private:
    direct_calls& d_;
  };
  uint32_t callers() const noexcept { return callers_.load(std::memory_order_relaxed); }

  /// The current connection's epoch (see above).
  uint64_t epoch();
  /// Registers a request; `slot` is null for no-wait requests. Fails (nullopt) when `epoch`
  /// is not the current one or no id is free.
  std::optional<uint16_t> add(std::shared_ptr<call_slot> slot, uint16_t command, uint64_t epoch);
  void remove(uint16_t id);
  /// The caller's timeout: true if the call was still pending (it is now expired and its
  /// late reply will be dropped), false if it completed meanwhile.
  bool expire(uint16_t id);

  enum class outcome : uint8_t {
    completed,  ///< a blocked thread has its reply
    nowait,     ///< a no-wait request's reply: the correlation actor retires it
    late,       ///< the reply to a call that timed out: drop it
    unknown,    ///< no such request: the correlation actor logs and counts it
  };
  /// Event loop: hands a reply to the thread waiting for it.
  outcome complete(const frame_ptr& reply);
  /// The connection is gone: completes every blocked call with `why` and moves the epoch on.
  void fail_all(const proto::error& why);
  static bool owns(uint16_t id) noexcept { return id >= id_base; }

  struct counters {
    uint64_t sent = 0, completed = 0, timeouts = 0, late = 0, failed_on_loss = 0;
  };
  counters stats();

 private:
  struct entry {
    std::shared_ptr<call_slot> slot;
    uint16_t command = 0;
  };
  std::mutex m_;
  std::condition_variable cv_;
  uint32_t max_;
  uint32_t inflight_ = 0;
  std::atomic<uint32_t> callers_{0};
  uint16_t next_ = id_base;
  uint64_t epoch_ = 0;
  std::unordered_map<uint16_t, entry> map_;
  std::deque<uint16_t> expired_;
  counters stats_;
};

}  // namespace vfu

CAF_ALLOW_UNSAFE_MESSAGE_TYPE(std::shared_ptr<vfu::direct_calls>)
