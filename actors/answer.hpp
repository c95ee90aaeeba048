// answer.hpp: the one way an answer to the peer's request leaves. A handler (the device
// framework's actor, a function handler, a host's own actor) answers with an outbound; it
// is written:
//  - at once, through the request's connection, when nothing waits behind the request (the
//    dispatcher would otherwise write it one actor run later, at the loop's flush), and
//    always for a reply gathered from memory (it must leave before the handler can change
//    that memory): answer(), called by the handler as it returns;
//  - otherwise by the dispatcher, with the other replies of the same read batch, in one
//    sendmsg at the loop's flush: write_answer().
// Exactly one of the handler and the dispatcher's deadline answers (inbound::claim).
#pragma once

#include "actors/types.hpp"

namespace vfu {

/// The handler's answer to `in`: written now (outbound::sent comes back) or left to the
/// dispatcher (`out` comes back).
outbound_ptr answer(inbound& in, outbound_ptr out);
/// The same for a reply frame built in place (its msg_id is set here): written now, where it
/// can be, without an outbound. `f` is left as it was when it was written at once (so its
/// buffer can carry the next reply), and moved from otherwise.
outbound_ptr answer(inbound& in, proto::frame&& f);
/// The dispatcher's write of an answer to `req` on `w`, at the loop's flush.
void write_answer(reply_writer& w, const proto::header& req, outbound& out);
/// The reply frame to `req` that `out` stands for (an error reply for an errno, or for an
/// answer with neither message nor frame); takes out's frame or fds. Gathered data is
/// copied in.
frame_ptr encode_reply(const proto::header& req, outbound& out);

}  // namespace vfu
