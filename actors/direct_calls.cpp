#include "actors/direct_calls.hpp"

#include <algorithm>

namespace vfu {

bool direct_calls::acquire(std::chrono::milliseconds limit) {
  std::unique_lock<std::mutex> g(m_);
  if (!cv_.wait_for(g, limit, [&] { return inflight_ < max_; })) return false;
  ++inflight_;
  return true;
}

void direct_calls::release() {
  {
    std::lock_guard<std::mutex> g(m_);
    if (inflight_) --inflight_;
  }
  cv_.notify_one();
}

uint64_t direct_calls::epoch() {
  std::lock_guard<std::mutex> g(m_);
  return epoch_;
}

std::optional<uint16_t> direct_calls::add(std::shared_ptr<call_slot> slot, uint16_t command, uint64_t epoch) {
  std::lock_guard<std::mutex> g(m_);
  if (epoch != epoch_ || map_.size() >= 0x8000 - 1) return std::nullopt;
  auto next = [](uint16_t i) { return uint16_t(i + 1) < id_base ? id_base : uint16_t(i + 1); };
  uint16_t id = next_;
  while (map_.count(id)) id = next(id);
  next_ = next(id);
  // An id that comes round again is no longer "late": its new reply is a real one.
  if (auto it = std::find(expired_.begin(), expired_.end(), id); it != expired_.end()) expired_.erase(it);
  if (slot) ++stats_.sent;  // no-wait requests are counted by the correlation actor
  map_.emplace(id, entry{std::move(slot), command});
  return id;
}

void direct_calls::remove(uint16_t id) {
  std::lock_guard<std::mutex> g(m_);
  map_.erase(id);
}

bool direct_calls::expire(uint16_t id) {
  std::lock_guard<std::mutex> g(m_);
  if (!map_.erase(id)) return false;
  ++stats_.timeouts;
  expired_.push_back(id);
  if (expired_.size() > late_memory) expired_.pop_front();
  return true;
}

direct_calls::outcome direct_calls::complete(const frame_ptr& reply) {
  std::shared_ptr<call_slot> slot;
  uint16_t cmd = 0;
  auto h = reply->hdr();
  {
    std::lock_guard<std::mutex> g(m_);
    auto it = map_.find(h.msg_id);
    if (it == map_.end()) {
      auto late = std::find(expired_.begin(), expired_.end(), h.msg_id);
      if (late == expired_.end()) return outcome::unknown;
      expired_.erase(late);
      ++stats_.late;
      return outcome::late;
    }
    slot = std::move(it->second.slot);
    cmd = it->second.command;
    map_.erase(it);
    if (slot) ++stats_.completed;
  }
  if (!slot) return outcome::nowait;
  if (h.command != cmd)
    slot->complete(call_result{nullptr, proto::error(proto::errc::protocol_violation,
                                                     std::string("reply is for ") + proto::command_name(h.command) +
                                                         ", request was " + proto::command_name(cmd))});
  else
    slot->complete(call_result{reply, {}});
  return outcome::completed;
}

void direct_calls::fail_all(const proto::error& why) {
  std::vector<std::shared_ptr<call_slot>> slots;
  {
    std::lock_guard<std::mutex> g(m_);
    ++epoch_;
    for (auto it = map_.begin(); it != map_.end();) {
      if (it->second.slot) {  // no-wait entries are the correlation actor's to fail
        slots.push_back(std::move(it->second.slot));
        it = map_.erase(it);
        ++stats_.failed_on_loss;
      } else {
        ++it;
      }
    }
  }
  for (auto& s : slots) s->complete(call_result{nullptr, why});
}

direct_calls::counters direct_calls::stats() {
  std::lock_guard<std::mutex> g(m_);
  return stats_;
}

}  // namespace vfu
