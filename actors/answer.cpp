#define CAF_LOG_COMPONENT "vfu"
#include "actors/answer.hpp"

namespace vfu {

frame_ptr encode_reply(const proto::header& req, outbound& out) {
  if (!out.err && out.frame) {
    out.frame->set_msg_id(req.msg_id);
    if (out.gather) {  // (written later, so the data is copied now)
      out.frame->bytes.insert(out.frame->bytes.end(), out.gather, out.gather + out.gather_len);
      out.gather = nullptr;
    }
    return std::move(out.frame);
  }
  return make_frame_ptr(out.err     ? proto::make_error_reply(req, out.err)
                        : out.reply ? proto::make_frame(req.msg_id, *out.reply, 0, std::move(out.fds))
                                    : proto::make_error_reply(req, EIO));
}

outbound_ptr answer(inbound& in, outbound_ptr out) {
  if (!out) out = outbound::error(EIO);
  if (out->sent || in.hdr.no_reply()) return out;
  bool gathered = out->gather && !out->err;
  if (!in.writer || (!gathered && (!in.alone || out->close_after))) {
    if (gathered) encode_reply(in.hdr, *out);  // (the data cannot wait where it is)
    return out;
  }
  if (!in.claim()) return outbound::already_sent();  // answered ETIMEDOUT already
  proto::status sent;
  if (gathered) {
    out->frame->set_msg_id(in.hdr.msg_id);
    auto& head = out->frame->bytes;
    sent = in.writer->send_gathered(head.data(), head.size(), out->gather, out->gather_len);
  } else {
    auto f = encode_reply(in.hdr, *out);
    CAF_LOG_DEBUG("send " << proto::describe(f->hdr(), f->fds.size()));
    sent = in.writer->send_now(std::move(f));
  }
  // An error means the connection is going; its socket actor hears of it.
  if (!sent) CAF_LOG_DEBUG("reply not sent: " << sent.err().message());
  return outbound::already_sent();
}

outbound_ptr answer(inbound& in, proto::frame&& f) {
  if (!in.writer || !in.alone || in.hdr.no_reply()) return answer(in, outbound::of_frame(std::move(f)));
  if (!in.claim()) return outbound::already_sent();
  f.set_msg_id(in.hdr.msg_id);
  CAF_LOG_DEBUG("send " << proto::describe(f.hdr(), f.fds.size()));
  if (auto sent = in.writer->send_now(std::move(f)); !sent)
    CAF_LOG_DEBUG("reply not sent: " << sent.err().message());
  return outbound::already_sent();
}

void write_answer(reply_writer& w, const proto::header& req, outbound& out) {
  auto f = encode_reply(req, out);
  CAF_LOG_DEBUG("send " << proto::describe(f->hdr(), f->fds.size()));
  // A failed write means the connection is broken; the transport tells its socket actor.
  if (auto st = w.send(f); !st) CAF_LOG_DEBUG("reply not sent: " << st.err().message());
}

}  // namespace vfu
