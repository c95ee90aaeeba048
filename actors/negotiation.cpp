#include "actors/negotiation.hpp"

namespace vfu {

proto::version_request client_version(const proto::capabilities& caps) {
  proto::version_request v;
  v.major = proto::our_major;
  v.minor = proto::our_minor;
  v.caps_json = proto::to_json(caps, true);
  return v;
}

proto::result<proto::negotiated> client_check(const frame_ptr& reply, const proto::capabilities& proposed,
                                              const proto::quirks& q) {
  auto m = proto::decode(*reply, q);
  if (!m) return m.err();
  auto* vr = std::get_if<proto::version_reply>(&*m);
  if (!vr) return proto::error(proto::errc::protocol_violation, "VERSION answered with another message");
  auto caps = proto::parse_capabilities(vr->caps_json.value_or(""));
  if (!caps) return caps.err();
  return proto::client_check_reply(proto::our_major, proto::our_minor, proposed, vr->major, vr->minor, *caps,
                                   reply->fds.size());
}

proto::result<server_answer> server_version(const proto::version_request& req, const proto::server_offer& offer) {
  auto caps = proto::parse_capabilities(req.caps_json.value_or(""));
  if (!caps) return caps.err();
  auto n = proto::server_negotiate(req.major, req.minor, *caps, offer);
  if (!n) return n.err();
  server_answer a{*n, {}};
  a.reply.major = n->major;
  a.reply.minor = n->minor;
  a.reply.caps_json = proto::to_json(n->ours, true);
  return a;
}

conn_limits limits_from(const proto::negotiated& n) {
  conn_limits l;
  uint64_t recv = n.recv_max_data();
  l.max_frame = uint32_t(std::min<uint64_t>(recv + proto::limits::frame_overhead, UINT32_MAX));
  l.max_frame = std::max(l.max_frame, proto::limits::max_version_frame);
  l.decode.max_data_xfer = recv;
  l.send_max_fds = n.send_max_fds();
  l.send_max_data = n.send_max_data();
  return l;
}

conn_limits put_in_force(const proto::negotiated& n, connection& c) {
  auto l = limits_from(n);
  c.set_max_frame(l.max_frame);
  return l;
}

}  // namespace vfu
