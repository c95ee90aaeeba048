// direct_calls.hpp: the fast lane for requests made by plain threads (an emulator's vCPU).
//
// A round trip through actors costs a cross-thread wake-up per hop (caf-0.17.md section 8).
// For a thread blocked in endpoint::call the critical path is cut to what the protocol
// needs: the calling thread writes its frame itself (stream_transport::send is thread-safe)
// and the io thread hands the reply straight to the blocked thread. The correlation actor
// still owns every such request's lifecycle: it is told about it before the frame is
// written ("track"), and it times it out, fails it when the connection dies, and logs
// no-wait failures, exactly as for its own requests.
//
// Id spaces: the correlation actor allocates 1..0x7fff, direct calls 0x8000..0xffff, so
// neither ever reuses an id the other has pending.
#pragma once

#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <optional>
#include <unordered_map>

#include "actors/types.hpp"

namespace vfu {

class direct_calls {
 public:
  static constexpr uint16_t id_base = 0x8000;

  explicit direct_calls(uint32_t max_outstanding) : max_(max_outstanding ? max_outstanding : 1) {}

  /// Back-pressure: waits until fewer than max_outstanding thread requests are pending.
  bool acquire(std::chrono::milliseconds limit);
  void release();

  /// Registers a request; `slot` is null for no-wait requests. Returns its id.
  std::optional<uint16_t> add(std::shared_ptr<call_slot> slot, uint16_t command);
  void remove(uint16_t id);
  /// io thread: completes the blocked thread waiting for this reply, if any.
  void complete(const frame_ptr& reply);
  static bool owns(uint16_t id) noexcept { return id >= id_base; }

 private:
  struct entry {
    std::shared_ptr<call_slot> slot;
    uint16_t command = 0;
  };
  std::mutex m_;
  std::condition_variable cv_;
  uint32_t max_;
  uint32_t inflight_ = 0;
  uint16_t next_ = id_base;
  std::unordered_map<uint16_t, entry> map_;
};

}  // namespace vfu

CAF_ALLOW_UNSAFE_MESSAGE_TYPE(std::shared_ptr<vfu::direct_calls>)
