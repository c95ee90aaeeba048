// Defects found by reading the code (issue 17), each with the test that showed it: a
// hostile or unlucky peer, or concurrent callers, against the broker and the device
// framework over real sockets. docs/security.md lists them and how each was closed.
#include <sys/eventfd.h>
#include <sys/mman.h>

#include <atomic>
#include <gtest/gtest.h>
#include <thread>

#include "actors/endpoint.hpp"
#include "actors/handler.hpp"
#include "device/remote_device.hpp"
#include "device/samples.hpp"
#include "tests/test_support.hpp"

namespace {

using namespace vfu;
using namespace vfu::proto;
using namespace std::chrono_literals;

class RobustnessTest : public test::socket_dir_test {
 protected:
  void SetUp() override {
    socket_dir_test::SetUp();
    rt_ = std::make_unique<runtime>();
  }
  void TearDown() override {
    server_.reset();
    rt_.reset();
    socket_dir_test::TearDown();
  }
  /// A server endpoint for `device` on one end of a socketpair; returns the other end.
  unique_fd serve(caf::actor device, endpoint_config cfg = {}) {
    auto [a, b] = test::socket_pair();
    auto ep = endpoint::serve_fd(*rt_, std::move(a), cfg, device);
    EXPECT_TRUE(ep.ok());
    if (ep) server_ = std::move(ep.value());
    return std::move(b);
  }
  unique_fd serve_sample(const std::string& name, endpoint_config cfg = {}) {
    return serve(dev::spawn_device(rt_->system(), dev::make_sample(name)), cfg);
  }
  std::unique_ptr<runtime> rt_;
  std::unique_ptr<endpoint> server_;
};

/// The errno of an error reply, or 0 for a reply that is not an error, or -1 for none.
int answer(test::raw_peer& p, uint16_t id, std::chrono::milliseconds wait = 5s) {
  auto r = p.recv(wait);
  if (!r) return -1;
  EXPECT_EQ(r->hdr().msg_id, id);
  return r->hdr().is_error() ? int(r->hdr().error_no) : 0;
}

// 5. A second VERSION is refused (EINVAL): the limits it would renegotiate are in force for
// requests already in flight. The connection stays up.
TEST_F(RobustnessTest, ASecondVersionIsRefusedAndTheConnectionStays) {
  test::raw_peer peer(serve_sample("gpio"));
  ASSERT_TRUE(peer.version());
  version_request v;
  v.major = 0;
  v.minor = 2;
  v.caps_json = R"({"capabilities":{"max_data_xfer_size":65536}})";
  ASSERT_TRUE(peer.send(v, 7));
  EXPECT_EQ(answer(peer, 7), EINVAL) << "a second VERSION was answered with success";
  ASSERT_TRUE(peer.send(device_info_request{}, 8));
  EXPECT_EQ(answer(peer, 8), 0) << "the connection did not stay usable";
}

// A device that never answers a REGION_READ of offset 0x666 in time: it answers 300 ms
// late, through answer_now (as a device whose request nothing waits behind does) and as
// its reply to the dispatcher. Every other read is answered at once.
using late_atom = caf::atom_constant<caf::atom("late")>;
struct slow_state {
  std::vector<std::pair<caf::response_promise, inbound_ptr>> held;
};
caf::behavior slow_device(caf::stateful_actor<slow_state>* self, int) {
  return {
      [=](inbound_atom, inbound_ptr& in) -> caf::result<outbound_ptr> {
        auto* r = std::get_if<region_read_request>(&in->msg);
        if (!r) return outbound::error(ENOTSUP);
        region_read_reply rep{*r, std::vector<uint8_t>(r->count, 0x11)};
        if (r->offset != 0x666) return answer_now(*in, outbound::of(rep));
        self->state.held.emplace_back(self->make_response_promise(), in);
        self->delayed_send(self, 300ms, late_atom::value);
        return caf::delegated<outbound_ptr>{};
      },
      [=](late_atom) {
        for (auto& [rp, in] : self->state.held) {
          auto* r = std::get_if<region_read_request>(&in->msg);
          rp.deliver(answer_now(*in, outbound::of(region_read_reply{*r, std::vector<uint8_t>(r->count, 0x22)})));
        }
        self->state.held.clear();
      },
      [](connup_atom, const negotiated&) {},
      [](connlost_atom) {},
  };
}

// 3. A handler that does not answer within endpoint_config::handler_timeout: its request is
// answered ETIMEDOUT, the requests behind it are served in order, and its late answer never
// reaches the peer (whichever way it is written).
TEST_F(RobustnessTest, AHandlerPastItsDeadlineIsAnsweredEtimedoutAndItsLateAnswerDropped) {
  endpoint_config cfg;
  cfg.handler_timeout = 100ms;
  auto dev = rt_->system().spawn(slow_device, 0);
  test::raw_peer peer(serve(dev, cfg));
  ASSERT_TRUE(peer.version());
  region_read_request held{{0x666, 0, 4}}, quick{{0, 0, 4}};
  ASSERT_TRUE(peer.send(held, 1));
  ASSERT_TRUE(peer.send(quick, 2));
  EXPECT_EQ(answer(peer, 1), ETIMEDOUT) << "the silent handler's request was not answered ETIMEDOUT";
  EXPECT_EQ(answer(peer, 2), 0) << "the request behind it was not served";
  std::this_thread::sleep_for(500ms);  // the late answer comes meanwhile
  ASSERT_TRUE(peer.send(quick, 3));
  EXPECT_EQ(answer(peer, 3), 0) << "the late answer reached the peer";
  EXPECT_EQ(test::stat_value(server_->stats(), "unanswered"), 0) << server_->stats();
  ASSERT_TRUE(peer.send(held, 4));  // nothing waits behind this one: answer_now's way
  EXPECT_EQ(answer(peer, 4), ETIMEDOUT);
  std::this_thread::sleep_for(500ms);
  ASSERT_TRUE(peer.send(quick, 5));
  EXPECT_EQ(answer(peer, 5), 0) << "the late answer reached the peer";
  server_.reset();
  caf::anon_send_exit(dev, caf::exit_reason::user_shutdown);
}

}  // namespace
