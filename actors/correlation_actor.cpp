#define CAF_LOG_COMPONENT "vfu"
#include "actors/correlation_actor.hpp"

namespace vfu {

namespace {

using clock = std::chrono::steady_clock;
using state_t = correlation_state;
using self_t = caf::stateful_actor<correlation_state>*;

void complete(self_t self, state_t::entry& e, uint16_t id, call_result r) {
  auto& st = self->state;
  ++st.stats.completed;
  if (e.tracked && st.direct) {
    st.direct->remove(id);
    st.direct->release();
  }
  switch (e.k) {
    case state_t::kind::blocking: e.guard->complete(std::move(r)); break;
    case state_t::kind::promise: e.rp.deliver(std::move(r)); break;
    case state_t::kind::nowait: {
      auto f = r.failure();
      if (f) CAF_LOG_WARNING("no-wait " << proto::command_name(e.cmd) << " id " << id << " failed: " << f.message());
      if (int(id) == st.youngest_nowait) {
        st.youngest_nowait = -1;
        st.youngest_nowait_result = r;
        for (auto& rp : st.nowait_waiters) rp.deliver(r);
        st.nowait_waiters.clear();
      }
      break;
    }
  }
}

void schedule_sweep(self_t self, clock::time_point deadline) {
  auto& st = self->state;
  if (deadline >= st.next_sweep) return;
  st.next_sweep = deadline;
  auto delay = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - clock::now()) + std::chrono::milliseconds(1);
  if (delay.count() < 1) delay = std::chrono::milliseconds(1);
  self->delayed_send(self, delay, sweep_atom::value);
}

void send_now(self_t self, state_t::queued q);

void pump_waiting(self_t self) {
  auto& st = self->state;
  while (!st.waiting.empty() && st.pending.size() < st.cfg.max_outstanding && st.socket) {
    auto q = std::move(st.waiting.front());
    st.waiting.pop_front();
    send_now(self, std::move(q));
  }
}

void send_now(self_t self, state_t::queued q) {
  auto& st = self->state;
  // Next free id in 1..0x7fff (0x8000 and up belong to direct calls): wraps, and skips ids
  // still pending (pending < 0x7fff by max_outstanding).
  auto next = [](uint16_t i) { return uint16_t(i >= direct_calls::id_base - 1 ? 1 : i + 1); };
  uint16_t id = st.next_id;
  while (st.pending.count(id)) id = next(id);
  st.next_id = next(id);
  q.f->set_msg_id(id);
  state_t::entry e;
  e.cmd = q.f->hdr().command;
  e.k = q.k;
  e.deadline = clock::now() + q.timeout;
  e.guard = std::move(q.guard);
  e.rp = std::move(q.rp);
  if (q.k == state_t::kind::nowait) {
    st.youngest_nowait = id;
  }
  schedule_sweep(self, e.deadline);
  st.pending.emplace(id, std::move(e));
  if (st.pending.size() > st.stats.pending_high_water) st.stats.pending_high_water = uint32_t(st.pending.size());
  ++st.stats.sent;
  self->send(st.socket, send_atom::value, std::move(q.f));
}

void submit(self_t self, state_t::queued q) {
  auto& st = self->state;
  if (!st.socket) {
    call_result r{nullptr, proto::error(proto::errc::not_connected, "no connection")};
    state_t::entry e;
    e.cmd = q.f->hdr().command;
    e.k = q.k;
    e.guard = std::move(q.guard);
    e.rp = std::move(q.rp);
    complete(self, e, 0, std::move(r));
    return;
  }
  if (st.pending.size() >= st.cfg.max_outstanding) {
    if (st.waiting.size() >= st.cfg.max_queued) {
      state_t::entry e;
      e.k = q.k;
      e.guard = std::move(q.guard);
      e.rp = std::move(q.rp);
      complete(self, e, 0, call_result{nullptr, proto::error(proto::errc::busy, "too many queued requests")});
      return;
    }
    st.waiting.push_back(std::move(q));
    return;
  }
  send_now(self, std::move(q));
}

std::chrono::milliseconds timeout_for(self_t self, const frame_ptr& f, uint32_t ms) {
  if (ms) return std::chrono::milliseconds(ms);
  return classify(f->hdr().command) == timeout_class::long_op ? self->state.cfg.long_timeout
                                                              : self->state.cfg.short_timeout;
}

void fail_all(self_t self, const proto::error& why) {
  auto& st = self->state;
  auto pending = std::move(st.pending);
  st.pending.clear();
  for (auto& [id, e] : pending) {
    ++st.stats.failed_on_loss;
    complete(self, e, id, call_result{nullptr, why});
  }
  auto waiting = std::move(st.waiting);
  st.waiting.clear();
  for (auto& q : waiting) {
    state_t::entry e;
    e.k = q.k;
    e.guard = std::move(q.guard);
    e.rp = std::move(q.rp);
    complete(self, e, 0, call_result{nullptr, why});
  }
}

}  // namespace

correlation_state::~correlation_state() {
  // Whatever ends the actor, nobody stays blocked: blocking guards complete in their own
  // destructors, promises are failed here (CAF 0.17 has no broken_promise).
  call_result r{nullptr, proto::error(proto::errc::peer_gone, "connection closed")};
  for (auto& kv : pending)
    if (kv.second.k == kind::promise) kv.second.rp.deliver(r);
  for (auto& q : waiting)
    if (q.k == kind::promise) q.rp.deliver(r);
  for (auto& rp : nowait_waiters) rp.deliver(r);
}

caf::behavior correlation_actor(caf::stateful_actor<correlation_state>* self, correlation_config cfg) {
  self->state.cfg = cfg;
  self->set_down_handler([=](caf::down_msg& dm) {
    auto& st = self->state;
    if (dm.source != st.socket.address()) return;
    st.socket = nullptr;
    fail_all(self, proto::error(proto::errc::peer_gone, "connection lost: " + render(dm.reason)));
  });
  return {
      [=](attach_atom, std::shared_ptr<direct_calls>& d) { self->state.direct = d; },
      [=](track_atom, uint16_t id, uint16_t cmd, uint32_t ms) {  // a no-wait direct request
        auto& st = self->state;
        state_t::entry e;
        e.cmd = cmd;
        e.k = state_t::kind::nowait;
        e.tracked = true;
        if (!st.socket) {
          complete(self, e, id, call_result{nullptr, proto::error(proto::errc::not_connected, "no connection")});
          return;
        }
        auto to = ms ? std::chrono::milliseconds(ms)
                     : (classify(cmd) == timeout_class::long_op ? st.cfg.long_timeout : st.cfg.short_timeout);
        e.deadline = clock::now() + to;
        st.youngest_nowait = id;
        schedule_sweep(self, e.deadline);
        st.pending.emplace(id, std::move(e));
        if (st.pending.size() > st.stats.pending_high_water) st.stats.pending_high_water = uint32_t(st.pending.size());
        ++st.stats.sent;
      },
      [=](retire_atom, std::vector<proto::header>& hs) {
        auto& st = self->state;
        for (auto& h : hs) {
          auto it = st.pending.find(h.msg_id);
          if (it == st.pending.end()) {
            ++st.stats.unexpected;
            CAF_LOG_WARNING("dropped unexpected reply " << proto::describe(h, 0));
            continue;
          }
          auto e = std::move(it->second);
          st.pending.erase(it);
          if (h.is_error()) ++st.stats.error_replies;
          // The blocked thread already has the reply; a no-wait requester gets its header.
          proto::frame hf;
          hf.bytes.resize(proto::header_size);
          hf.set_hdr(h);
          hf.bytes.resize(proto::header_size);
          complete(self, e, h.msg_id, call_result{make_frame_ptr(std::move(hf)), {}});
        }
      },
      [=](attach_atom, caf::actor& sock) {
        auto& st = self->state;
        if (st.socket) fail_all(self, proto::error(proto::errc::peer_gone, "connection replaced"));
        st.socket = sock;
        self->monitor(sock);
        pump_waiting(self);
      },
      [=](call_atom, frame_ptr& f, call_guard_ptr& g, uint32_t ms) {
        auto to = timeout_for(self, f, ms);
        submit(self, state_t::queued{std::move(f), state_t::kind::blocking, std::move(g), {}, to});
      },
      [=](request_atom, frame_ptr& f, uint32_t ms) {
        auto to = timeout_for(self, f, ms);
        auto rp = self->make_response_promise();
        submit(self, state_t::queued{std::move(f), state_t::kind::promise, nullptr, rp, to});
        return rp;
      },
      [=](post_atom, frame_ptr& f) {
        auto to = timeout_for(self, f, 0);
        submit(self, state_t::queued{std::move(f), state_t::kind::nowait, nullptr, {}, to});
      },
      [=](noreply_atom, frame_ptr& f) {
        auto& st = self->state;
        if (!st.socket) {
          CAF_LOG_WARNING("posted " << proto::command_name(f->hdr().command) << " dropped: no connection");
          return;
        }
        // Ordered with everything else we send: same path to the same socket actor.
        f->set_msg_id(st.next_id);
        st.next_id = uint16_t(st.next_id >= direct_calls::id_base - 1 ? 1 : st.next_id + 1);
        self->send(st.socket, send_atom::value, std::move(f));
      },
      [=](waitpost_atom) {
        auto& st = self->state;
        auto rp = self->make_response_promise();
        if (st.youngest_nowait < 0) {
          // Already done: its outcome, or success if nothing was ever posted.
          auto r = st.youngest_nowait_result;
          if (!r.reply && !r.err) {
            proto::frame f;
            f.bytes.resize(proto::header_size);
            f.set_hdr(proto::header{0, 0, uint32_t(proto::header_size), proto::hflags::type_reply, 0});
            r.reply = make_frame_ptr(std::move(f));
          }
          rp.deliver(r);
        } else {
          st.nowait_waiters.push_back(rp);
        }
        return rp;
      },
      [=](reply_atom, frame_ptr& f) {
        auto& st = self->state;
        auto h = f->hdr();
        auto it = st.pending.find(h.msg_id);
        if (it == st.pending.end()) {
          ++st.stats.unexpected;
          CAF_LOG_WARNING("dropped unexpected reply " << proto::describe(h, f->fds.size()));
          return;  // the frame (and its fds) is released here; the stream is in sync
        }
        auto e = std::move(it->second);
        st.pending.erase(it);
        if (h.command != e.cmd) {
          CAF_LOG_WARNING("reply command mismatch: " << proto::describe(h, f->fds.size()) << " for "
                                                     << proto::command_name(e.cmd));
          complete(self, e, h.msg_id,
                   call_result{nullptr, proto::error(proto::errc::protocol_violation,
                                                     std::string("reply is for ") + proto::command_name(h.command) +
                                                         ", request was " + proto::command_name(e.cmd))});
        } else {
          if (h.is_error()) ++st.stats.error_replies;
          complete(self, e, h.msg_id, call_result{std::move(f), {}});
        }
        pump_waiting(self);
      },
      [=](reject_atom, const proto::header& h, const proto::error& why) {
        auto& st = self->state;
        auto it = st.pending.find(h.msg_id);
        if (it == st.pending.end()) return;
        auto e = std::move(it->second);
        st.pending.erase(it);
        complete(self, e, h.msg_id, call_result{nullptr, why});
        pump_waiting(self);
      },
      [=](sweep_atom) {
        auto& st = self->state;
        auto now = clock::now();
        st.next_sweep = clock::time_point::max();
        auto earliest = clock::time_point::max();
        for (auto it = st.pending.begin(); it != st.pending.end();) {
          if (it->second.deadline <= now) {
            auto e = std::move(it->second);
            uint16_t id = it->first;
            it = st.pending.erase(it);
            ++st.stats.timeouts;
            CAF_LOG_WARNING(proto::command_name(e.cmd) << " id " << id << " timed out");
            // The late reply, if it ever comes, finds no entry and is dropped.
            complete(self, e, id, call_result{nullptr, proto::error(proto::errc::timeout,
                                                                    std::string(proto::command_name(e.cmd)) + " timed out")});
          } else {
            earliest = std::min(earliest, it->second.deadline);
            ++it;
          }
        }
        if (earliest != clock::time_point::max()) schedule_sweep(self, earliest);
        pump_waiting(self);
      },
      [=](failall_atom, const proto::error& why) { fail_all(self, why); },
      [=](stats_atom) { return self->state.stats; },
      [=](close_atom) { self->quit(caf::exit_reason::user_shutdown); },
  };
}

}  // namespace vfu
