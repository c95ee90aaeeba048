#define CAF_LOG_COMPONENT "vfu"
#include "actors/correlation_actor.hpp"

namespace vfu {

namespace {

using self_t = caf::stateful_actor<correlation_state>*;
using clock = pending_table::clock;

void fail(caf::response_promise& rp, proto::errc c, const std::string& why) {
  rp.deliver(call_result{nullptr, proto::error(c, why)});
}

// Registers and writes one request; false when there is no room (it stays queued).
bool send_one(self_t self, correlation_state::queued& q) {
  auto& st = self->state;
  if (!st.transport) {
    fail(q.rp, proto::errc::not_connected, "no connection");
    return true;
  }
  auto cmd = q.f->hdr().command;
  auto deadline = st.cfg.now() + q.timeout;
  auto id = st.table->add(pending_table::requester{nullptr, q.rp, true}, cmd, deadline, st.epoch,
                          std::chrono::milliseconds(0));
  if (!id) {
    if (id.err().code == proto::errc::busy) return false;
    fail(q.rp, id.err().code, id.err().message());
    return true;
  }
  q.f->set_msg_id(*id);
  CAF_LOG_DEBUG("send " << proto::describe(q.f->hdr(), q.f->fds.size()));
  if (auto sent = st.transport->send(q.f); !sent) {
    st.table->remove(*id);
    fail(q.rp, sent.err().code, sent.err().message());
    return true;
  }
  arm_sweep(self, *st.table, deadline, st.cfg.now());
  return true;
}

void pump(self_t self) {
  auto& st = self->state;
  while (!st.waiting.empty()) {
    if (!send_one(self, st.waiting.front())) {
      st.table->actors_wait_for_room();
      return;
    }
    st.waiting.pop_front();
  }
}

}  // namespace

void arm_sweep(const caf::actor& corr, pending_table& table, clock::time_point deadline, clock::time_point now) {
  auto at = table.timer_due_before(deadline);
  if (at == clock::time_point::max()) return;
  auto delay = std::chrono::duration_cast<std::chrono::milliseconds>(at - now) + std::chrono::milliseconds(1);
  caf::delayed_anon_send(corr, std::max(delay, std::chrono::milliseconds(1)), sweep_atom::value);
}

caf::behavior correlation_actor(caf::stateful_actor<correlation_state>* self, correlation_config cfg,
                                std::shared_ptr<pending_table> table) {
  self->state.cfg = cfg;
  self->state.table = std::move(table);
  self->state.table->set_deliverer(self);
  self->attach_functor([t = self->state.table](const caf::error&) { t->set_deliverer(nullptr); });
  return {
      [=](request_atom, frame_ptr& f, uint32_t ms) {
        auto& st = self->state;
        auto rp = self->make_response_promise();
        auto timeout = st.cfg.timeout_for(f->hdr().command, std::chrono::milliseconds(ms));
        correlation_state::queued q{std::move(f), rp, timeout};
        if (!st.waiting.empty() || !send_one(self, q)) {
          if (st.waiting.size() >= st.cfg.max_queued) {
            fail(q.rp, proto::errc::busy, "too many queued requests");
          } else {
            st.waiting.push_back(std::move(q));
            st.table->actors_wait_for_room();
          }
        }
        return rp;
      },
      [=](deliver_atom, caf::response_promise& rp, call_result& r) { rp.deliver(std::move(r)); },
      [=](pump_atom) { pump(self); },
      [=](sweep_atom) {
        auto& st = self->state;
        pending_table::completions done;
        auto next = st.table->sweep(st.cfg.now(), done);
        st.table->settle(done);
        if (next != clock::time_point::max()) arm_sweep(self, *st.table, next, st.cfg.now());
      },
      [=](attach_atom, connection_ptr& tr, uint64_t epoch) {
        auto& st = self->state;
        st.main = tr;
        st.transport = std::move(tr);
        st.epoch = epoch;
        pump(self);
      },
      [=](twin_atom, connection_ptr& twin, connection_ptr& main) {
        auto& st = self->state;
        if (st.main == main) st.transport = std::move(twin);  // (not an older connection's)
      },
      [=](connlost_atom) {
        auto& st = self->state;
        st.transport = st.main = nullptr;
        for (auto& q : st.waiting) fail(q.rp, proto::errc::not_connected, "connection lost");
        st.waiting.clear();
      },
  };
}

}  // namespace vfu
