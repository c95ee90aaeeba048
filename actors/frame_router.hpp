// frame_router.hpp: what the frames of one read pass become, and the flow control of the
// peer's requests. Pure: no socket and no thread of its own, so both can be tested alone
// (the counters are atomics: the dispatcher answers requests on other threads).
#pragma once

#include <atomic>
#include <cstdint>
#include <utility>
#include <vector>

#include "actors/types.hpp"
#include "protocol/assembler.hpp"

namespace vfu {

/// The peer's requests read but not yet answered (at the dispatcher or a device), and our
/// requests written but not yet answered. Above either bound on the first the connection
/// stops reading (the peer's writes then block) until half are answered. While a request
/// of ours awaits its reply, the bounds are four times as high: that reply may sit behind
/// the peer's requests (a device's DMA_READ while the peer pipelines), and a reader that
/// stopped would never see it. A read pass may overshoot by what it read (at most 64 KiB of
/// small requests, or one frame).
class flow_control {
 public:
  static constexpr uint32_t max_requests = 4096;
  static constexpr uint64_t max_bytes = 64ull << 20;
  static constexpr uint32_t awaiting_factor = 4;

  /// Whether reading must stop, with `more` requests of `more_bytes` bytes more unanswered.
  bool stop_reading(uint64_t more = 0, uint64_t more_bytes = 0) const noexcept;
  void requests_in(uint32_t n, uint64_t bytes) noexcept;
  /// One request answered (or dropped); true when the unanswered fell to half the bounds.
  bool request_done(uint64_t bytes) noexcept;
  /// A request of ours was written: true if it is the only one awaited now.
  bool request_out() noexcept { return awaiting_.fetch_add(1, std::memory_order_relaxed) == 0; }
  void reply_in() noexcept;

  uint32_t unanswered() const noexcept { return unanswered_.load(std::memory_order_relaxed); }
  uint64_t unanswered_bytes() const noexcept { return unanswered_bytes_.load(std::memory_order_relaxed); }
  uint32_t awaiting() const noexcept { return awaiting_.load(std::memory_order_relaxed); }

 private:
  std::atomic<uint32_t> unanswered_{0};
  std::atomic<uint64_t> unanswered_bytes_{0};
  std::atomic<uint32_t> awaiting_{0};
};

/// What a request handed to the dispatcher counts for flow control: its frame's bytes (0 for
/// one rejected by size, whose body was drained).
inline uint64_t request_bytes(const proto::frame_assembler::event& ev) {
  return ev.kind == proto::frame_assembler::event::frame_ready ? ev.f.bytes.size() : 0;
}

/// The frames of one read pass, sorted by where they go.
struct routed {
  event_batch requests;              ///< the peer's requests, for the dispatcher
  uint64_t request_bytes = 0;
  std::vector<frame_ptr> replies;    ///< replies to ours, for the pending table
  std::vector<std::pair<proto::header, proto::error>> rejected_replies;  ///< too large
  uint32_t frames = 0;               ///< complete frames read
  uint32_t rejected_requests = 0;    ///< requests too large (answered by the dispatcher)
  proto::error fatal;                ///< the assembler's: the stream cannot be trusted
  proto::error overflow;             ///< a frame declared far over the limit: answer, then close
};

/// Sorts a read pass's events (moving them out of `evs`) and counts them in `flow`: the
/// requests as unanswered, the replies as answers to ours. The requests go into `*spare`
/// (taken) if it holds an empty batch, which keeps its capacity.
routed route(std::vector<proto::frame_assembler::event>& evs, flow_control& flow, event_batch* spare = nullptr);

}  // namespace vfu
