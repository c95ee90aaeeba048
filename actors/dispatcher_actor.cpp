#define CAF_LOG_COMPONENT "vfu"
#include "actors/dispatcher_actor.hpp"

#include <atomic>
#include <cstring>

#include "actors/answer.hpp"
#include "actors/event_loop.hpp"
#include "actors/frame_router.hpp"
#include "actors/negotiation.hpp"
#include "actors/twin_socket.hpp"

namespace vfu {

namespace {

using self_t = caf::stateful_actor<dispatcher_state>*;

// A request's connection: its socket actor (told to close) and its transport, which the
// answer goes straight into.
struct conn_route {
  const caf::actor& sock;
  const connection_ptr& tr;
};

void send_frame(self_t, const conn_route& r, frame_ptr f) {
  CAF_LOG_DEBUG("send " << proto::describe(f->hdr(), f->fds.size()));
  // A failed write means the connection is broken; the transport tells its socket actor.
  if (auto st = r.tr->send(f); !st) CAF_LOG_DEBUG("reply not sent: " << st.err().message());
}

void reply(self_t, const conn_route& r, const proto::header& req, outbound& out) {
  if (req.no_reply() || out.sent) return;
  write_answer(*r.tr, req, out);
}

void error_reply(self_t self, const conn_route& r, const proto::header& req, int err) {
  if (req.no_reply()) return;
  send_frame(self, r, make_frame_ptr(proto::make_error_reply(req, err)));
}

// An error answer to a request that never reaches a device (undecodable, oversized, no
// handler). Commands are answered strictly in arrival order: while requests before it are
// still queued or being served, it waits its turn in the queue.
void error_in_turn(self_t self, const conn_route& r, const proto::header& req, int err, request_ticket ticket) {
  auto& st = self->state;
  if (req.no_reply()) return;
  if (!st.busy && st.queue.empty()) return error_reply(self, r, req, err);
  st.queue.push_back(dispatcher_state::item{r.sock, r.tr, req, nullptr, dispatcher_state::handler_ref{},
                                            make_frame_ptr(proto::make_error_reply(req, err)), std::move(ticket)});
}

// Server role: VERSION negotiation (negotiation.hpp). A refusal closes the connection.
void serve_version(self_t self, const conn_route& r, const proto::header& h, const proto::version_request& v) {
  auto& st = self->state;
  auto a = server_version(v, st.cfg.offer);
  if (!a) {
    CAF_LOG_WARNING("VERSION from the client refused: " << a.err().message());
    error_reply(self, r, h, proto::to_wire_errno(a.err()));
    self->send(r.sock, close_atom::value);
    return;
  }
  // In force before the client can send anything else, i.e. before it sees the reply.
  st.limits = put_in_force(a->n, *r.tr).decode;
  st.negotiated = true;
  proto::fd_list fds;
  connection_ptr requests = r.tr;  // where our requests go
  if (a->n.ours.twin_socket) {
    if (auto t = offer_twin(r.sock, r.tr, st.correlation)) {
      fds.push_back(std::move(t->theirs));
      requests = t->twin;
    } else {  // answered "supported": false, one socket
      CAF_LOG_WARNING("no twin socket: " << t.err().message());
      a->n.ours.twin_socket = false;
      a->n.ours.twin_fd_index.reset();
      a->reply.caps_json = proto::to_json(a->n.ours, true);
    }
  }
  auto f = proto::make_frame(h.msg_id, a->reply);
  f.fds = std::move(fds);
  send_frame(self, r, make_frame_ptr(std::move(f)));
  if (st.cfg.supervisor) self->send(st.cfg.supervisor, connup_atom::value, a->n, r.sock, requests);
  if (st.device.actor) self->send(st.device.actor, connup_atom::value, a->n);
}

void dispatch_next(self_t self);

// A request answered in place whose inbound nobody else holds: emptied now (its fds close,
// its connection is not kept), it carries the next request.
void keep_spare(dispatcher_state& st, inbound_ptr& in) {
  if (st.spare_in || in.use_count() != 1) return;
  // (use_count reads relaxed: whatever a handler's thread did with it before letting go
  // happens before what follows.)
  std::atomic_thread_fence(std::memory_order_acquire);
  in->recycle();
  st.spare_in = std::move(in);
}

void finish(self_t self, uint64_t seq, outbound_ptr out, int err) {
  auto& st = self->state;
  if (!st.busy || seq != st.seq) return;  // answered already (timed out, its device died)
  conn_route r{st.current_sock, st.current_tr};
  st.current_in = nullptr;
  if (out) reply(self, r, st.current, *out);
  else error_reply(self, r, st.current, err ? err : EIO);
  if (out && out->close_after) self->send(st.current_sock, close_atom::value);
  st.current_tr = nullptr;  // a connection that ends must not live on here
  st.current_ticket.done();
  st.busy = false;
  dispatch_next(self);
}

// The request at the device has a deadline. One timer serves a run of requests: it is armed
// when no timer is due before the current deadline, and when it fires, the request then
// current is timed out if its own deadline has passed, or a timer is armed for it.
void arm_deadline(self_t self) {
  auto& st = self->state;
  if (!st.busy || st.deadline >= st.timer_at) return;
  st.timer_at = st.deadline;
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(st.deadline - st.cfg.now());
  self->delayed_send(self, std::max(left, std::chrono::milliseconds(1)), deadline_atom::value,
                     int64_t(st.deadline.time_since_epoch().count()));
}

void on_deadline(self_t self, int64_t at) {
  auto& st = self->state;
  if (at == st.timer_at.time_since_epoch().count()) st.timer_at = std::chrono::steady_clock::time_point::max();
  if (!st.busy) return;
  if (st.cfg.now() < st.deadline) return arm_deadline(self);
  // A device that wrote its answer itself has claimed it: that answer stands.
  if (st.current_in && !st.current_in->claim()) return;
  CAF_LOG_WARNING("no answer to " << proto::describe(st.current, 0) << " by its deadline: ETIMEDOUT");
  ++st.timed_out;
  finish(self, st.seq, nullptr, ETIMEDOUT);
}

// Hands a request to its handler. One that can be called in place (direct_handler) answers
// at once: true. The others get it as a message, and the dispatcher is busy until they
// answer (finish).
bool hand_over(self_t self, const caf::actor& sock, const connection_ptr& tr, const proto::header& hdr,
               inbound_ptr& in, const dispatcher_state::handler_ref& target, request_ticket& ticket) {
  auto& st = self->state;
  if (target.direct && event_loop::on_loop_of(self->home_system())) {
    if (auto out = target.direct->serve_now(in)) {
      ++st.in_place;
      reply(self, conn_route{sock, tr}, hdr, *out);
      if (out->close_after) self->send(sock, close_atom::value);
      ticket.done();
      return true;
    }
  }
  st.busy = true;
  uint64_t seq = ++st.seq;
  st.current = hdr;
  st.current_sock = sock;
  st.current_tr = tr;
  st.current_target = target.actor;
  st.current_ticket = std::move(ticket);
  st.current_in = in;
  st.deadline = st.cfg.now() + (classify(hdr.command) == timeout_class::long_op ? st.cfg.handler_timeout_long
                                                                                 : st.cfg.handler_timeout);
  arm_deadline(self);
  self->request(target.actor, caf::infinite, inbound_atom::value, std::move(in))
      .then([=](outbound_ptr& out) { finish(self, seq, out ? out : outbound::error(EIO), 0); },
            [=](caf::error& e) {
              CAF_LOG_WARNING("handler failed: " << render(e));
              finish(self, seq, nullptr, EIO);
            });
  return false;
}

// Hands the queue's requests to their handlers, in order, while they answer in place; the
// rest waits for the answer of the one that went as a message (finish).
void dispatch_next(self_t self) {
  auto& st = self->state;
  for (;;) {
    while (!st.busy && !st.queue.empty() && st.queue.front().ready) {  // (error_in_turn)
      auto it = std::move(st.queue.front());
      st.queue.pop_front();
      send_frame(self, conn_route{it.sock, it.tr}, std::move(it.ready));
    }  // (each item's ticket goes with it: answered)
    if (st.busy || st.queue.empty()) {
      if (!st.busy && !st.drains.empty()) {  // every request so far is answered
        for (auto& p : st.drains) p.deliver(caf::unit);
        st.drains.clear();
      }
      return;
    }
    auto it = std::move(st.queue.front());
    st.queue.pop_front();
    it.in->alone = st.queue.empty();
    if (!hand_over(self, it.sock, it.tr, it.hdr, it.in, it.target, it.ticket)) return;
    keep_spare(st, it.in);
  }
}

// One request from the peer: decoded, answered here (errors, VERSION) or queued for its
// device (dispatch_next hands it over); the last of a batch that finds the dispatcher idle
// goes to its device at once. `tr`: the transport it came from, which the answer goes to.
void on_request(self_t self, const caf::actor& sock, const connection_ptr& tr, proto::frame& f, request_ticket ticket,
                bool last) {
  auto& st = self->state;
  conn_route r{sock, tr};
  auto h = f.hdr();
  if (tr->closing()) {
    // Read just before its connection ended: like a message to a dead socket actor, it is
    // dropped (the device may already have been told the connection is lost).
    CAF_LOG_DEBUG("dropped " << proto::describe(h, f.fds.size()) << ": its connection has ended");
    return;
  }
  CAF_LOG_DEBUG("recv " << proto::describe(h, f.fds.size()));
  const dispatcher_state::handler_ref* target = &st.device;
  if (!st.by_command.empty())
    if (auto it = st.by_command.find(h.command); it != st.by_command.end()) target = &it->second;
  // A REGION_WRITE's data stays in its frame, which the message shares (proto::shared_bytes):
  // no copy of up to max_data_xfer_size bytes, and no handler can outlive the bytes.
  std::shared_ptr<proto::frame> shared;
  if (h.command == uint16_t(proto::command::region_write) && h.is_command()) shared = make_frame_ptr(std::move(f));
  proto::frame& fr = shared ? *shared : f;
  auto m = shared ? proto::decode(std::shared_ptr<const proto::frame>(shared), st.cfg.quirks, st.limits)
                  : proto::decode(fr, st.cfg.quirks, st.limits);
  if (!m) {
    ++st.decode_errors;
    CAF_LOG_WARNING("bad request " << proto::describe(h, fr.fds.size()) << ": " << m.err().message());
    error_in_turn(self, r, h, proto::to_wire_errno(m.err()), std::move(ticket));
    return;  // the frame's fds close with it
  }
  if (st.cfg.role == role::server) {
    if (auto* v = std::get_if<proto::version_request>(&*m)) {
      // Once: renegotiating limits under requests in flight is not in the protocol.
      if (st.negotiated) return error_in_turn(self, r, h, EINVAL, std::move(ticket));
      serve_version(self, r, h, *v);
      return;
    }
    if (!st.negotiated) {
      CAF_LOG_WARNING("first command is not VERSION: " << proto::describe(h, fr.fds.size()));
      error_reply(self, r, h, EINVAL);
      self->send(sock, close_atom::value);
      return;
    }
  }
  if (!target->actor) {
    error_in_turn(self, r, h, ENOTSUP, std::move(ticket));
    return;
  }
  auto in = st.spare_in ? std::move(st.spare_in) : std::make_shared<inbound>();
  in->hdr = h;
  in->msg = std::move(*m);
  in->fds = std::move(fr.fds);
  if (in->correlation != st.correlation) in->correlation = st.correlation;
  in->writer = tr;
  ++st.served;
  if (last && !st.busy && st.queue.empty()) {  // (nothing before it to wait for, nothing behind it)
    in->alone = true;
    if (hand_over(self, sock, tr, h, in, *target, ticket)) keep_spare(st, in);
    return;
  }
  st.queue.push_back(dispatcher_state::item{sock, tr, h, std::move(in), *target, nullptr, std::move(ticket)});
}

// A transport's batch of requests. The whole batch is queued before the first request goes
// out, so that each knows whether others wait behind it (inbound::alone).
void on_batch(self_t self, event_batch& reqs, const caf::actor& sock, const connection_ptr& tr) {
  for (auto& ev : *reqs) {
    request_ticket ticket(tr, request_bytes(ev));
    if (ev.kind == proto::frame_assembler::event::frame_ready) {
      on_request(self, sock, tr, ev.f, std::move(ticket), &ev == &reqs->back());
    } else if (!tr->closing()) {  // rejected by the transport (too large): drained
      CAF_LOG_WARNING("rejected " << proto::describe(ev.hdr, 0) << ": " << ev.err.message());
      error_in_turn(self, conn_route{sock, tr}, ev.hdr, proto::to_wire_errno(ev.err), std::move(ticket));
    }
  }
  dispatch_next(self);
}

// The dispatcher with its direct entry: a transport on the same event loop hands it a batch
// in place while it is idle.
class dispatcher final : public in_place_actor<dispatcher_state>, public direct_requests {
 public:
  dispatcher(caf::actor_config& cfg, dispatcher_config dc, caf::actor correlation)
      : in_place_actor(cfg), dc_(std::move(dc)), correlation_(std::move(correlation)) {}

  caf::behavior make_behavior() override { return dispatcher_actor(this, std::move(dc_), std::move(correlation_)); }

  bool take_now(event_batch& reqs, const caf::actor& sock, const connection_ptr& tr) override {
    if (!idle()) return false;
    // (After a throw the connection's requests fail as when a dispatcher dies.)
    return in_place([&] { return on_batch(this, reqs, sock, tr), true; }, [] { return true; });
  }

 private:
  dispatcher_config dc_;
  caf::actor correlation_;
};

}  // namespace

caf::actor spawn_dispatcher(caf::actor_system& sys, dispatcher_config cfg, caf::actor correlation) {
  return sys.spawn<dispatcher>(std::move(cfg), std::move(correlation));
}

caf::behavior dispatcher_actor(caf::stateful_actor<dispatcher_state>* self, dispatcher_config cfg,
                               caf::actor correlation) {
  self->state.cfg = std::move(cfg);
  self->state.correlation = std::move(correlation);
  self->set_down_handler([=](caf::down_msg& dm) {
    auto& st = self->state;
    if (st.busy && dm.source == st.current_target.address()) {
      CAF_LOG_WARNING("device actor died while serving " << proto::describe(st.current, 0));
      finish(self, st.seq, nullptr, EIO);
    }
  });
  return {
      [=](handler_atom, uint16_t cmd, caf::actor& h) {
        self->monitor(h);
        dispatcher_state::handler_ref ref{h, direct_entry<direct_handler>(self->home_system(), h)};
        if (cmd == 0) self->state.device = std::move(ref);
        else self->state.by_command[cmd] = std::move(ref);
      },
      [=](attach_atom, caf::actor& sup) { self->state.cfg.supervisor = sup; },
      [=](limits_atom, const conn_limits& l) {
        self->state.limits = l.decode;
        self->state.negotiated = true;
      },
      [=](connlost_atom) {
        // Requests of the lost connection that the device has not seen are dropped.
        self->state.queue.clear();
        self->state.negotiated = false;
        self->state.limits = proto::decode_limits{};
      },
      [=](inbound_atom, event_batch& reqs, caf::actor& sock, connection_ptr& tr) { on_batch(self, reqs, sock, tr); },
      [=](drain_atom) -> caf::result<void> {
        auto& st = self->state;
        if (!st.busy && st.queue.empty()) return caf::unit;
        st.drains.push_back(self->make_response_promise());
        return caf::delegated<void>{};
      },
      [=](deadline_atom, int64_t at) { on_deadline(self, at); },
      [=](stats_atom) -> std::string {
        auto& st = self->state;
        return "served=" + std::to_string(st.served) + " in_place=" + std::to_string(st.in_place) +
               " decode_errors=" + std::to_string(st.decode_errors) + " timed_out=" + std::to_string(st.timed_out);
      },
      [=](close_atom) { self->quit(caf::exit_reason::user_shutdown); },
  };
}

}  // namespace vfu
