// The transport's pure parts, without a socket: what a read pass's frames become
// (frame_router), flow control's bounds, and the read gate's reasons.
#include <gtest/gtest.h>

#include "actors/frame_router.hpp"
#include "actors/read_gate.hpp"

namespace {

using namespace vfu;
using ev_t = proto::frame_assembler::event;

ev_t frame_ev(uint16_t id, bool reply, size_t payload = 0) {
  proto::frame f;
  f.bytes.resize(proto::header_size + payload);
  f.set_hdr(proto::header{id, uint16_t(proto::command::region_read), uint32_t(f.bytes.size()),
                          reply ? proto::hflags::type_reply : proto::hflags::type_command, 0});
  return ev_t{ev_t::frame_ready, std::move(f), {}, {}};
}
ev_t rejected_ev(uint16_t id, bool reply) {
  proto::header h{id, uint16_t(proto::command::region_write), 1u << 30, reply ? proto::hflags::type_reply : 0u, 0};
  return ev_t{ev_t::rejected, {}, h, proto::error(proto::errc::too_large, "too large")};
}

TEST(FrameRouter, SortsAPassIntoRepliesRequestsAndTheEnd) {
  flow_control flow;
  std::vector<ev_t> evs;
  evs.push_back(frame_ev(1, false, 16));
  evs.push_back(frame_ev(2, true));
  evs.push_back(rejected_ev(3, false));
  evs.push_back(rejected_ev(4, true));
  evs.push_back(ev_t{ev_t::fatal, {}, {}, proto::error(proto::errc::bad_header, "bad")});
  ASSERT_TRUE(flow.request_out());  // one request of ours awaits its reply
  auto r = route(evs, flow);
  EXPECT_TRUE(evs.empty());
  ASSERT_TRUE(r.requests);
  ASSERT_EQ(r.requests->size(), 2u);  // the well-formed one and the one rejected by size
  EXPECT_EQ((*r.requests)[0].f.hdr().msg_id, 1);
  EXPECT_EQ((*r.requests)[1].hdr.msg_id, 3);
  EXPECT_EQ(r.request_bytes, 32u);  // a rejected request counts no bytes (its body is drained)
  ASSERT_EQ(r.replies.size(), 1u);
  EXPECT_EQ(r.replies[0]->hdr().msg_id, 2);
  ASSERT_EQ(r.rejected_replies.size(), 1u);
  EXPECT_EQ(r.rejected_replies[0].first.msg_id, 4);
  EXPECT_EQ(r.frames, 2u);
  EXPECT_EQ(r.rejected_requests, 1u);
  EXPECT_EQ(r.fatal.code, proto::errc::bad_header);
  EXPECT_FALSE(r.overflow);
  EXPECT_EQ(flow.unanswered(), 2u);
  EXPECT_EQ(flow.unanswered_bytes(), 32u);
  EXPECT_EQ(flow.awaiting(), 0u) << "the replies (one rejected) answered ours, and never below 0";
}

TEST(FrameRouter, AFrameFarOverTheLimitIsAnsweredThenClosed) {
  flow_control flow;
  std::vector<ev_t> evs;
  evs.push_back(rejected_ev(9, false));
  evs.push_back(ev_t{ev_t::fatal, {}, {}, proto::error(proto::errc::too_large, "far over")});
  auto r = route(evs, flow);
  ASSERT_TRUE(r.requests);
  EXPECT_EQ(r.requests->size(), 1u);
  EXPECT_FALSE(r.fatal);
  EXPECT_EQ(r.overflow.code, proto::errc::too_large);
}

TEST(FlowControl, StopsAtTheBoundsAndResumesAtHalf) {
  flow_control flow;
  EXPECT_FALSE(flow.stop_reading());
  flow.requests_in(flow_control::max_requests - 1, 100);
  EXPECT_FALSE(flow.stop_reading());
  EXPECT_TRUE(flow.stop_reading(1, 0));
  flow.requests_in(1, 0);
  EXPECT_TRUE(flow.stop_reading());
  // While a request of ours awaits its reply, four times as many.
  flow.request_out();
  EXPECT_FALSE(flow.stop_reading());
  EXPECT_TRUE(flow.stop_reading(3 * flow_control::max_requests, 0));
  flow.reply_in();
  EXPECT_TRUE(flow.stop_reading());
  bool low = false;
  for (uint32_t i = 0; i < flow_control::max_requests / 2 - 1; ++i) low = flow.request_done(0);
  EXPECT_FALSE(low);
  EXPECT_TRUE(flow.request_done(100)) << "half answered: the low mark";
  // Bytes bound alone.
  flow_control b;
  b.requests_in(1, flow_control::max_bytes);
  EXPECT_TRUE(b.stop_reading());
}

TEST(ReadGate, EachReasonIsSetAndClearedOnce) {
  read_gate g;
  EXPECT_TRUE(g.open());
  EXPECT_TRUE(g.set(read_gate::leader));
  EXPECT_FALSE(g.set(read_gate::leader));
  EXPECT_FALSE(g.open());
  EXPECT_TRUE(g.readable()) << "a leader holds: whoever has the read lock reads";
  EXPECT_TRUE(g.set(read_gate::flow));
  EXPECT_FALSE(g.readable());
  EXPECT_TRUE(g.clear(read_gate::flow));
  EXPECT_FALSE(g.clear(read_gate::flow)) << "one resumption however many answers see the low mark";
  EXPECT_TRUE(g.clear(read_gate::leader));
  EXPECT_TRUE(g.open());
  g.set(read_gate::stopped);
  EXPECT_FALSE(g.readable());
}

}  // namespace
