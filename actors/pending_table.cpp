#define CAF_LOG_COMPONENT "vfu"
#include "actors/pending_table.hpp"

#include <algorithm>

namespace vfu {

void pending_table::set_deliverer(caf::actor a) {
  std::lock_guard<std::mutex> g(m_);
  deliverer_ = std::move(a);
}

void pending_table::actors_wait_for_room() {
  std::lock_guard<std::mutex> g(m_);
  actors_waiting_ = true;
}

void pending_table::kick_waiting_actors() {
  caf::actor to;
  {
    std::lock_guard<std::mutex> g(m_);
    if (!actors_waiting_ || map_.size() >= max_) return;
    actors_waiting_ = false;
    to = deliverer_;
  }
  if (to) caf::anon_send(to, pump_atom::value);
}

void pending_table::settle(completions& done) {
  if (done.empty()) return;
  caf::actor deliverer;
  {
    std::lock_guard<std::mutex> g(m_);
    deliverer = deliverer_;
  }
  for (auto& c : done) {
    if (c.who.slot) {
      c.who.slot->complete(std::move(c.result));
    } else if (c.who.actor) {
      if (deliverer) caf::anon_send(deliverer, deliver_atom::value, std::move(c.who.promise), std::move(c.result));
    } else if (auto e = c.result.failure()) {
      CAF_LOG_WARNING("no-wait " << proto::command_name(c.cmd) << " id " << c.id << " failed: " << e.message());
    }
  }
  done.clear();
  kick_waiting_actors();
}

uint64_t pending_table::epoch() {
  std::lock_guard<std::mutex> g(m_);
  return epoch_;
}

proto::result<uint16_t> pending_table::add(requester who, uint16_t cmd, clock::time_point deadline, uint64_t epoch,
                                           std::chrono::milliseconds wait) {
  std::unique_lock<std::mutex> g(m_);
  if (!room_.wait_for(g, wait, [&] { return map_.size() < max_ || epoch != epoch_; }) && map_.size() >= max_)
    return proto::error(proto::errc::busy, "too many outstanding requests (waited " + std::to_string(wait.count()) + " ms)");
  if (epoch != epoch_) return proto::error(proto::errc::not_connected, "connection lost");
  uint16_t id = next_;
  while (map_.count(id)) id = uint16_t(id == 0xffff ? 1 : id + 1);
  next_ = uint16_t(id == 0xffff ? 1 : id + 1);
  // An id that comes round again is no longer "late": its new reply is a real one.
  if (auto it = std::find(late_.begin(), late_.end(), id); it != late_.end()) late_.erase(it);
  bool nowait = !who.slot && !who.actor;
  map_.emplace(id, entry{std::move(who), cmd, deadline});
  if (nowait) youngest_nowait_ = id;
  ++stats_.sent;
  stats_.pending_high_water = std::max(stats_.pending_high_water, uint32_t(map_.size()));
  return id;
}

void pending_table::remove(uint16_t id) {
  {
    std::lock_guard<std::mutex> g(m_);
    map_.erase(id);
  }
  room_.notify_one();
  kick_waiting_actors();
}

uint16_t pending_table::noreply_id() {
  std::lock_guard<std::mutex> g(m_);
  uint16_t id = next_;
  while (map_.count(id)) id = uint16_t(id == 0xffff ? 1 : id + 1);
  next_ = uint16_t(id == 0xffff ? 1 : id + 1);
  return id;
}

void pending_table::finish_locked(std::unordered_map<uint16_t, entry>::iterator it, call_result r, completions& done) {
  uint16_t id = it->first;
  if (!it->second.who.slot && !it->second.who.actor) record_nowait_locked(id, r);
  done.push_back(completion{std::move(it->second.who), id, it->second.cmd, std::move(r)});
  map_.erase(it);
  room_.notify_one();
}

void pending_table::record_nowait_locked(uint16_t id, const call_result& r) {
  if (int(id) != youngest_nowait_) return;
  youngest_nowait_ = -1;
  nowait_result_ = r;
  for (auto& s : nowait_waiters_) s->complete(r);
  nowait_waiters_.clear();
}

pending_table::outcome pending_table::complete(frame_ptr reply, completions& done) {
  auto h = reply->hdr();
  std::lock_guard<std::mutex> g(m_);
  auto it = map_.find(h.msg_id);
  if (it == map_.end()) {
    if (std::find(late_.begin(), late_.end(), h.msg_id) != late_.end()) {
      ++stats_.late;
      return outcome::late;
    }
    ++stats_.unexpected;
    return outcome::unexpected;
  }
  ++stats_.completed;
  if (h.command != it->second.cmd) {
    auto why = proto::error(proto::errc::protocol_violation, std::string("reply is for ") + proto::command_name(h.command) +
                                                                 ", request was " + proto::command_name(it->second.cmd));
    finish_locked(it, call_result{nullptr, why}, done);
    return outcome::completed;
  }
  if (h.is_error()) ++stats_.error_replies;
  finish_locked(it, call_result{std::move(reply), {}}, done);
  return outcome::completed;
}

void pending_table::reject(const proto::header& h, const proto::error& why, completions& done) {
  std::lock_guard<std::mutex> g(m_);
  auto it = map_.find(h.msg_id);
  if (it == map_.end()) return;
  ++stats_.completed;
  finish_locked(it, call_result{nullptr, why}, done);
}

bool pending_table::expire(uint16_t id) {
  {
    std::lock_guard<std::mutex> g(m_);
    auto it = map_.find(id);
    if (it == map_.end()) return false;
    map_.erase(it);
    ++stats_.timeouts;
    late_.push_back(id);
    if (late_.size() > late_memory) late_.pop_front();
  }
  room_.notify_one();
  kick_waiting_actors();
  return true;
}

pending_table::clock::time_point pending_table::sweep(clock::time_point now, completions& done) {
  std::lock_guard<std::mutex> g(m_);
  timer_at_ = clock::time_point::max();
  auto next = clock::time_point::max();
  for (auto it = map_.begin(); it != map_.end();) {
    auto cur = it++;
    if (!nobody_blocks(cur->second)) continue;  // (a blocked caller times itself out)
    if (cur->second.deadline > now) {
      next = std::min(next, cur->second.deadline);
      continue;
    }
    uint16_t id = cur->first;
    ++stats_.timeouts;
    late_.push_back(id);
    if (late_.size() > late_memory) late_.pop_front();
    auto what = std::string(proto::command_name(cur->second.cmd)) + " timed out";
    CAF_LOG_WARNING(proto::command_name(cur->second.cmd) << " id " << id << " timed out");
    finish_locked(cur, call_result{nullptr, proto::error(proto::errc::timeout, what)}, done);
  }
  return next;
}

pending_table::clock::time_point pending_table::timer_due_before(clock::time_point t) {
  std::lock_guard<std::mutex> g(m_);
  if (t >= timer_at_) return clock::time_point::max();
  timer_at_ = t;
  return t;
}

void pending_table::fail_all(const proto::error& why, completions& done) {
  {
    std::lock_guard<std::mutex> g(m_);
    ++epoch_;
    while (!map_.empty()) {
      ++stats_.failed_on_loss;
      finish_locked(map_.begin(), call_result{nullptr, why}, done);
    }
  }
  room_.notify_all();  // (waiters for room see the new epoch)
}

call_result pending_table::wait_posted(std::chrono::milliseconds timeout) {
  auto slot = std::make_shared<call_slot>();
  {
    std::lock_guard<std::mutex> g(m_);
    if (youngest_nowait_ < 0) {
      // Already done: its outcome, or success if nothing was ever posted.
      call_result r = nowait_result_;
      if (!r.reply && !r.err) {
        proto::frame f;
        f.bytes.resize(proto::header_size);
        f.set_hdr(proto::header{0, 0, uint32_t(proto::header_size), proto::hflags::type_reply, 0});
        r.reply = make_frame_ptr(std::move(f));
      }
      return r;
    }
    nowait_waiters_.push_back(slot);
  }
  auto r = slot->wait(timeout);
  if (r.err && r.err.code == proto::errc::timeout) r.err = proto::error(proto::errc::timeout, "wait for posted requests timed out");
  return r;
}

pending_table::counters pending_table::stats() {
  std::lock_guard<std::mutex> g(m_);
  return stats_;
}

std::string pending_table::stats_text() {
  auto s = stats();
  return "sent=" + std::to_string(s.sent) + " completed=" + std::to_string(s.completed) +
         " timeouts=" + std::to_string(s.timeouts) + " late=" + std::to_string(s.late) +
         " error_replies=" + std::to_string(s.error_replies) + " unexpected=" + std::to_string(s.unexpected) +
         " pending_high_water=" + std::to_string(s.pending_high_water);
}

}  // namespace vfu
