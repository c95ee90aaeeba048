#include "actors/direct_calls.hpp"

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

std::optional<uint16_t> direct_calls::add(std::shared_ptr<call_slot> slot, uint16_t command) {
  std::lock_guard<std::mutex> g(m_);
  if (map_.size() >= 0x8000 - 1) return std::nullopt;
  uint16_t id = next_;
  while (map_.count(id)) id = uint16_t(id + 1) < id_base ? id_base : uint16_t(id + 1);
  next_ = uint16_t(id + 1) < id_base ? id_base : uint16_t(id + 1);
  map_.emplace(id, entry{std::move(slot), command});
  return id;
}

void direct_calls::remove(uint16_t id) {
  std::lock_guard<std::mutex> g(m_);
  map_.erase(id);
}

void direct_calls::complete(const frame_ptr& reply) {
  std::shared_ptr<call_slot> slot;
  uint16_t cmd = 0;
  auto h = reply->hdr();
  {
    std::lock_guard<std::mutex> g(m_);
    auto it = map_.find(h.msg_id);
    if (it == map_.end()) return;
    slot = std::move(it->second.slot);
    cmd = it->second.command;
    map_.erase(it);
  }
  if (!slot) return;  // a no-wait request: the correlation actor deals with its reply
  if (h.command != cmd)
    slot->complete(call_result{nullptr, proto::error(proto::errc::protocol_violation,
                                                     std::string("reply is for ") + proto::command_name(h.command) +
                                                         ", request was " + proto::command_name(cmd))});
  else
    slot->complete(call_result{reply, {}});
}

}  // namespace vfu
