// read_gate.hpp: why a connection does not read now. Each reason has one owner, who sets
// and clears it; reading goes on while no reason holds.
#pragma once

#include <atomic>
#include <cstdint>

namespace vfu {

class read_gate {
 public:
  enum reason : uint8_t {
    leader = 1,   ///< a calling thread reads (stream_transport::lead_begin): not the loop
    flow = 2,     ///< too many of the peer's requests unanswered (flow_control)
    stopped = 4,  ///< reading has ended: EOF, an error, or close()
  };
  /// Sets `r`; true if it was not set before (the caller made the change).
  bool set(reason r) noexcept { return !(bits_.fetch_or(r, std::memory_order_acq_rel) & r); }
  /// Clears `r`; true if it was set (exactly one caller sees true for each set).
  bool clear(reason r) noexcept { return bits_.fetch_and(uint8_t(~r), std::memory_order_acq_rel) & r; }
  bool has(reason r) const noexcept { return bits_.load(std::memory_order_acquire) & r; }
  /// No reason holds: the loop's readiness wait may include the socket.
  bool open() const noexcept { return bits_.load(std::memory_order_acquire) == 0; }
  /// Nothing but a leader holds: whoever holds the read lock may read.
  bool readable() const noexcept { return (bits_.load(std::memory_order_acquire) & (flow | stopped)) == 0; }

 private:
  std::atomic<uint8_t> bits_{0};
};

}  // namespace vfu
