#define CAF_LOG_COMPONENT "vfu"
#include "actors/socket_actor.hpp"

namespace vfu {

namespace {
// How long a connection whose peer closed its end waits for the answers to what the peer
// sent before (eof_atom).
constexpr std::chrono::seconds eof_drain_limit{2};
}  // namespace

caf::behavior socket_actor(caf::stateful_actor<socket_state>* self, std::shared_ptr<stream_transport> tr,
                           caf::actor dispatcher) {
  self->state.transport = tr;
  self->state.dispatcher = std::move(dispatcher);
  self->attach_functor([tr](const caf::error& why) {
    tr->close(proto::error(proto::errc::peer_gone, "connection lost: " + render(why)));
  });
  tr->start(caf::actor_cast<caf::actor>(self), self->state.dispatcher);
  return {
      [=](ioerr_atom, proto::error& e) {
        CAF_LOG_INFO("connection ends: " << e.message());
        self->quit(to_caf(e));
      },
      [=](eof_atom, proto::error& e) {
        // The peer closed its end (or half-closed it) at a frame boundary, or declared a
        // frame too large to read and drop. What it sent before is answered first, as a
        // half-closing client expects: the requests may still sit in the dispatcher's or a
        // device's queue (an io pass can read the last requests and the EOF before any
        // actor runs). Our own requests can get no reply any more and fail at once. Then
        // the connection ends, with a bound on the wait.
        CAF_LOG_INFO("closing (" << e.message() << "): answering what the peer sent first");
        auto& st = self->state;
        st.transport->fail_pending(e);
        auto done = [=] { self->quit(to_caf(e)); };
        self->request(st.dispatcher, eof_drain_limit, drain_atom::value)
            .then([=] { done(); }, [=](caf::error&) { done(); });
      },
      [=](limits_atom, const conn_limits& l) { self->state.transport->set_max_frame(l.max_frame); },
      [=](close_atom) { self->quit(caf::exit_reason::user_shutdown); },
      [=](twin_atom, transport_ptr& twin) {
        self->state.twin = self->spawn<caf::linked>(socket_actor, std::move(twin), self->state.dispatcher);
      },
      [=](stats_atom) -> std::string {
        auto& t = *self->state.transport;
        return "frames_in=" + std::to_string(t.frames_in.load()) + " frames_out=" + std::to_string(t.frames_out.load()) +
               " bytes_in=" + std::to_string(t.bytes_in.load()) + " bytes_out=" + std::to_string(t.bytes_out.load()) +
               " rejected=" + std::to_string(t.rejected_replies.load() + t.rejected_requests.load()) +
               " waits_armed=" + std::to_string(t.waits_armed.load()) + " gathered=" + std::to_string(t.gathered.load()) +
               " gathered_copied=" + std::to_string(t.gathered_copied.load()) + " sent_now=" + std::to_string(t.sent_now.load()) +
               " writes=" + std::to_string(t.writes.load()) + " unanswered=" + std::to_string(t.unanswered()) +
               " awaiting=" + std::to_string(t.awaiting()) + " pauses=" + std::to_string(t.pauses.load()) +
               " leader_caught=" + std::to_string(t.leader_caught.load()) +
               " leader_slept=" + std::to_string(t.leader_slept.load()) + " misrouted=" + std::to_string(t.misrouted.load()) +
               " handed=" + std::to_string(t.handed.load()) + " direct=" + std::to_string(int(t.direct())) +
               (self->state.twin ? " twin=1" : "");
      },
  };
}

}  // namespace vfu
