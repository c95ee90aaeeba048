// The actors' logic, deterministically: CAF's test coordinator runs every actor on the
// test's thread, one message at a time, and its clock moves only when a test moves it
// (advance_time), so deadlines, timeouts and backoff are checked to the millisecond and no
// test sleeps. The dispatcher and the correlation actor write to a connection that records
// (vfu::connection); the supervisor's connections are socketpairs nobody reads or writes
// (their io_context never runs), and its dials are the test's.
#include <gtest/gtest.h>
#include <sys/socket.h>

#include <caf/all.hpp>
#include <caf/scheduler/test_coordinator.hpp>

#include "actors/correlation_actor.hpp"
#include "actors/dispatcher_actor.hpp"
#include "actors/negotiation.hpp"
#include "actors/pending_table.hpp"
#include "actors/supervisor.hpp"

namespace {

using namespace vfu;
using namespace std::chrono_literals;
using proto::errc;

// What the actors wrote, in order, and what they told the connection's reader.
class recording_connection : public connection {
 public:
  proto::status send(const frame_ptr& f) override { return record(f); }
  proto::status send_now(frame_ptr f) override { return record(std::move(f)); }
  proto::status send_gathered(const uint8_t* head, size_t head_len, const uint8_t* data, size_t len) override {
    auto f = std::make_shared<proto::frame>();
    f->bytes.assign(head, head + head_len);
    f->bytes.insert(f->bytes.end(), data, data + len);
    return record(std::move(f));
  }
  bool closing() const noexcept override { return over; }
  void request_done(uint64_t) override { ++done; }
  void set_max_frame(uint32_t n) noexcept override { max_frame = n; }

  std::vector<uint16_t> ids() const {
    std::vector<uint16_t> v;
    for (auto& f : sent) v.push_back(f->hdr().msg_id);
    return v;
  }
  std::vector<frame_ptr> sent;
  size_t done = 0;  ///< requests the dispatcher is done with (flow control)
  bool over = false;
  uint32_t max_frame = 0;

 private:
  proto::status record(frame_ptr f) {
    sent.push_back(std::move(f));
    return {};
  }
};

caf::scheduler::test_coordinator* g_sched = nullptr;
std::chrono::steady_clock::time_point test_now() { return g_sched->clock().now(); }

class Coordinated : public ::testing::Test {
 protected:
  Coordinated() : sys(configured(cfg)), sched(dynamic_cast<caf::scheduler::test_coordinator&>(sys.scheduler())) {
    sched.clock().current_time += 1h;  // (not zero: time_point::min() must stay in the past)
    g_sched = &sched;
  }
  ~Coordinated() override {
    for (auto& a : spawned) caf::anon_send_exit(a, caf::exit_reason::user_shutdown);
    sched.run();
    sys.await_actors_before_shutdown(false);
    g_sched = nullptr;
  }
  static caf::actor_system_config& configured(caf::actor_system_config& c) {
    c.set("scheduler.policy", caf::atom("testing"));
    c.set("logger.console", caf::atom("none"));
    c.set("logger.file-verbosity", caf::atom("quiet"));
    return c;
  }
  template <class... Ts>
  caf::actor spawn(Ts&&... xs) {
    auto a = sys.spawn(std::forward<Ts>(xs)...);
    spawned.push_back(a);
    return a;
  }
  void advance(std::chrono::milliseconds d) {
    sched.advance_time(d);
    sched.run();
  }

  caf::actor_system_config cfg;
  caf::actor_system sys;
  caf::scheduler::test_coordinator& sched;
  std::vector<caf::actor> spawned;
};

frame_ptr region_read(uint16_t id) { return make_frame_ptr(proto::make_frame(id, proto::region_read_request{{0, 0, 4}})); }

// ---------------------------------------------------------------------------------------
// The dispatcher

// A device that holds each request until the test answers it: (deliver_atom, i, answer)
// answers the i-th (in the actor: a promise is delivered from its own actor's context).
struct held_requests {
  std::vector<inbound_ptr> seen;
  std::vector<caf::response_promise> promises;
  int connups = 0;
};

caf::behavior holding_device(caf::event_based_actor* self, std::shared_ptr<held_requests> h) {
  return {
      [=](inbound_atom, inbound_ptr& in) -> caf::result<outbound_ptr> {
        h->seen.push_back(in);
        h->promises.push_back(self->make_response_promise());
        return caf::delegated<outbound_ptr>{};
      },
      [=](connup_atom, const proto::negotiated&) { ++h->connups; },
      [=](deliver_atom, uint32_t i, outbound_ptr& out) { h->promises.at(i).deliver(std::move(out)); },
  };
}

// Stands in for a connection's socket actor: counts the closes it is told to do.
caf::behavior counting_socket(caf::event_based_actor*, std::shared_ptr<int> closes) {
  return {[=](close_atom) { ++*closes; }};
}

class Dispatcher : public Coordinated {
 protected:
  void start(role r, std::chrono::milliseconds handler_timeout = 5s) {
    dispatcher_config dc;
    dc.role = r;
    dc.handler_timeout = handler_timeout;
    dc.now = &test_now;
    disp = spawn(dispatcher_actor, dc, caf::actor{});
    device = spawn(holding_device, held);
    caf::anon_send(disp, handler_atom::value, uint16_t(0), device);
    sock = spawn(counting_socket, closes);
    sched.run();
  }
  void deliver(std::vector<frame_ptr> frames) {
    auto b = std::make_shared<std::vector<proto::frame_assembler::event>>();
    for (auto& f : frames) b->push_back({proto::frame_assembler::event::frame_ready, std::move(*f), {}, {}});
    caf::anon_send(disp, inbound_atom::value, b, sock, connection_ptr(conn));
    sched.run();
  }
  void negotiate() {
    deliver({make_frame_ptr(proto::make_frame(0, client_version(proto::capabilities{})))});
    conn->sent.clear();
  }
  void answer(size_t i, uint16_t num_regions = 9) {
    proto::device_info_reply r;
    r.num_regions = num_regions;
    caf::anon_send(device, deliver_atom::value, uint32_t(i), outbound::of(r));
    sched.run();
  }

  caf::actor disp, device, sock;
  std::shared_ptr<held_requests> held = std::make_shared<held_requests>();
  std::shared_ptr<int> closes = std::make_shared<int>(0);
  std::shared_ptr<recording_connection> conn = std::make_shared<recording_connection>();
};

frame_ptr unknown_command(uint16_t id) {
  proto::frame f;
  f.bytes.resize(proto::header_size);
  f.set_hdr(proto::header{id, 0x7f, uint32_t(proto::header_size), proto::hflags::type_command, 0});
  return make_frame_ptr(std::move(f));
}

TEST_F(Dispatcher, AnswersVersionItselfWithTheFrameLimitInForceFirst) {
  start(role::server);
  deliver({make_frame_ptr(proto::make_frame(0, client_version(proto::capabilities{})))});
  ASSERT_EQ(conn->sent.size(), 1u);
  auto reply = proto::decode(*conn->sent[0]);
  ASSERT_TRUE(reply);
  EXPECT_TRUE(std::holds_alternative<proto::version_reply>(*reply));
  EXPECT_GT(conn->max_frame, proto::limits::max_version_frame) << "the negotiated limit, set before the reply left";
  EXPECT_EQ(held->connups, 1) << "the device hears of the new connection";
  EXPECT_TRUE(held->seen.empty());
}

TEST_F(Dispatcher, AnswersInArrivalOrderEvenWhenAnErrorIsDecidedAtOnce) {
  start(role::server);
  negotiate();
  // 1 and 3 go to the device, one at a time; 2 (a command nobody knows) is answered ENOSYS
  // by the dispatcher, but only after 1.
  deliver({region_read(1), unknown_command(2), region_read(3)});
  EXPECT_TRUE(conn->sent.empty());
  ASSERT_EQ(held->seen.size(), 1u) << "the device gets one request at a time";
  EXPECT_EQ(conn->done, 1u) << "only VERSION is done: 2 waits its turn, unanswered";
  answer(0);
  ASSERT_EQ(held->seen.size(), 2u);
  EXPECT_EQ(held->seen[1]->hdr.msg_id, 3);
  EXPECT_EQ(conn->ids(), (std::vector<uint16_t>{1, 2}));
  EXPECT_EQ(conn->sent[1]->hdr().error_no, uint32_t(ENOSYS));
  answer(1);
  EXPECT_EQ(conn->ids(), (std::vector<uint16_t>{1, 2, 3}));
  EXPECT_FALSE(conn->sent[2]->hdr().is_error());
  EXPECT_EQ(conn->done, 4u);
}

TEST_F(Dispatcher, AHandlerPastItsDeadlineIsAnsweredETIMEDOUTAndItsLateAnswerDropped) {
  start(role::server, 5s);
  negotiate();
  deliver({region_read(1), region_read(2)});
  advance(4999ms);
  EXPECT_TRUE(conn->sent.empty());
  advance(1ms);
  ASSERT_EQ(conn->ids(), (std::vector<uint16_t>{1}));
  EXPECT_EQ(conn->sent[0]->hdr().error_no, uint32_t(ETIMEDOUT));
  ASSERT_EQ(held->seen.size(), 2u) << "the next request goes on";
  answer(0);  // too late
  EXPECT_EQ(conn->sent.size(), 1u);
  advance(4999ms);  // the second request has a deadline of its own
  EXPECT_EQ(conn->sent.size(), 1u);
  answer(1);
  EXPECT_EQ(conn->ids(), (std::vector<uint16_t>{1, 2}));
  EXPECT_FALSE(conn->sent[1]->hdr().is_error());
}

TEST_F(Dispatcher, ADeviceThatDiesWhileServingIsAnsweredEIO) {
  start(role::server);
  negotiate();
  auto other = std::make_shared<held_requests>();
  auto info = spawn(holding_device, other);
  caf::anon_send(disp, handler_atom::value, uint16_t(proto::command::device_get_info), info);
  sched.run();
  deliver({region_read(1), make_frame_ptr(proto::make_frame(2, proto::device_info_request{}))});
  ASSERT_EQ(held->seen.size(), 1u);
  caf::anon_send_exit(device, caf::exit_reason::kill);
  sched.run();
  ASSERT_EQ(conn->ids(), (std::vector<uint16_t>{1}));
  EXPECT_EQ(conn->sent[0]->hdr().error_no, uint32_t(EIO));
  ASSERT_EQ(other->seen.size(), 1u) << "the request behind it goes to its own handler";
  caf::anon_send(info, deliver_atom::value, uint32_t(0), outbound::of(proto::device_info_reply{}));
  sched.run();
  EXPECT_EQ(conn->ids(), (std::vector<uint16_t>{1, 2}));
}

TEST_F(Dispatcher, AServerWhoseFirstCommandIsNotVersionRefusesItAndCloses) {
  start(role::server);
  deliver({region_read(1)});
  ASSERT_EQ(conn->sent.size(), 1u);
  EXPECT_EQ(conn->sent[0]->hdr().error_no, uint32_t(EINVAL));
  EXPECT_EQ(*closes, 1);
  EXPECT_TRUE(held->seen.empty());
}

TEST_F(Dispatcher, ASecondVersionIsRefusedAndTheConnectionKept) {
  start(role::server);
  negotiate();
  deliver({make_frame_ptr(proto::make_frame(5, client_version(proto::capabilities{})))});
  ASSERT_EQ(conn->sent.size(), 1u);
  EXPECT_EQ(conn->sent[0]->hdr().error_no, uint32_t(EINVAL));
  EXPECT_EQ(*closes, 0);
}

TEST_F(Dispatcher, RequestsOfALostConnectionThatNoDeviceSawAreDropped) {
  start(role::server);
  negotiate();
  deliver({region_read(1), region_read(2), region_read(3)});
  caf::anon_send(disp, connlost_atom::value);
  sched.run();
  EXPECT_EQ(conn->done, 3u) << "2 and 3 count as done: they will never be answered";
  answer(0);
  EXPECT_EQ(conn->ids(), (std::vector<uint16_t>{1}));
  EXPECT_EQ(held->seen.size(), 1u);
}

TEST_F(Dispatcher, DrainIsAnsweredOnceEverythingReceivedIsAnswered) {
  start(role::server);
  negotiate();
  deliver({region_read(1), region_read(2)});
  auto drained = std::make_shared<bool>(false);
  // The int: CAF 0.17 binds a null tuple for an actor spawned without arguments (UBSan).
  spawn([=](caf::event_based_actor* self, int) {
    self->request(disp, caf::infinite, drain_atom::value).then([=] { *drained = true; });
  }, 0);
  sched.run();
  answer(0);
  EXPECT_FALSE(*drained);
  answer(1);
  EXPECT_TRUE(*drained);
}

// ---------------------------------------------------------------------------------------
// The correlation actor and the pending table

class Correlation : public Coordinated {
 protected:
  void start(uint32_t max_outstanding = 16, uint32_t max_queued = 65536, bool attached = true) {
    table = std::make_shared<pending_table>(max_outstanding);
    correlation_config cc;
    cc.short_timeout = 5s;
    cc.max_outstanding = max_outstanding;
    cc.max_queued = max_queued;
    cc.now = &test_now;
    corr = spawn(correlation_actor, cc, table);
    if (attached) caf::anon_send(corr, attach_atom::value, connection_ptr(conn), table->epoch());
    sched.run();
  }
  // An actor's request: its result, once it has one.
  std::shared_ptr<std::optional<call_result>> ask(uint16_t cmd_id = 0) {
    auto out = std::make_shared<std::optional<call_result>>();
    auto f = region_read(cmd_id);
    spawn([=, corr = corr](caf::event_based_actor* self, int) {
      self->request(corr, caf::infinite, request_atom::value, f, uint32_t(0))
          .then([=](call_result& r) { *out = std::move(r); });
    }, 0);
    sched.run();
    return out;
  }
  // The reader: a reply read for the request written as conn->sent[i].
  pending_table::outcome reply_to(size_t i) {
    auto id = conn->sent.at(i)->hdr().msg_id;
    proto::region_read_reply r;
    r.count = 4;
    r.data.assign(4, uint8_t(id));
    pending_table::completions done;
    auto o = table->complete(make_frame_ptr(proto::make_frame(id, r)), done);
    table->settle(done);
    sched.run();
    return o;
  }

  caf::actor corr;
  std::shared_ptr<pending_table> table;
  std::shared_ptr<recording_connection> conn = std::make_shared<recording_connection>();
};

TEST_F(Correlation, WithoutAConnectionARequestFailsAtOnce) {
  start(16, 65536, false);
  auto r = ask();
  ASSERT_TRUE(*r);
  EXPECT_EQ((*r)->err.code, errc::not_connected);
}

TEST_F(Correlation, TheReplyReachesItsRequester) {
  start();
  auto a = ask(), b = ask();
  ASSERT_EQ(conn->sent.size(), 2u);
  EXPECT_NE(conn->sent[0]->hdr().msg_id, conn->sent[1]->hdr().msg_id) << "the table assigns distinct ids";
  EXPECT_EQ(reply_to(1), pending_table::outcome::completed);
  EXPECT_FALSE(*a);
  ASSERT_TRUE(*b);
  ASSERT_TRUE((*b)->ok());
  EXPECT_EQ((*b)->reply->hdr().msg_id, conn->sent[1]->hdr().msg_id);
}

TEST_F(Correlation, ARequestTimesOutAtItsDeadlineAndItsLateReplyIsDropped) {
  start();
  auto r = ask();
  advance(4999ms);
  EXPECT_FALSE(*r);
  advance(2ms);  // (the timer fires a millisecond after the deadline)
  ASSERT_TRUE(*r);
  EXPECT_EQ((*r)->err.code, errc::timeout);
  EXPECT_EQ(reply_to(0), pending_table::outcome::late);
  EXPECT_EQ(table->stats().timeouts, 1u);
}

TEST_F(Correlation, BeyondMaxOutstandingRequestsWaitForRoomInOrder) {
  start(2);
  auto a = ask(), b = ask(), c = ask();
  ASSERT_EQ(conn->sent.size(), 2u) << "the third waits: two are pending";
  reply_to(0);
  ASSERT_EQ(conn->sent.size(), 3u) << "written once the first completed";
  reply_to(2);
  reply_to(1);
  EXPECT_TRUE(*a && (*a)->ok());
  EXPECT_TRUE(*b && (*b)->ok());
  EXPECT_TRUE(*c && (*c)->ok());
}

TEST_F(Correlation, PastTheQueueARequestIsRefusedBusy) {
  start(1, 1);
  auto a = ask(), b = ask(), c = ask();
  EXPECT_EQ(conn->sent.size(), 1u);
  EXPECT_FALSE(*b);
  ASSERT_TRUE(*c);
  EXPECT_EQ((*c)->err.code, errc::busy);
}

TEST_F(Correlation, TheConnectionsLossFailsEveryRequestAtOnce) {
  start(2);
  auto a = ask(), b = ask(), c = ask();  // c waits for room
  caf::anon_send(corr, connlost_atom::value);  // the supervisor
  sched.run();
  pending_table::completions done;
  table->fail_all(proto::error(errc::peer_gone, "connection lost"), done);  // the transport's close
  table->settle(done);
  sched.run();
  for (auto* r : {&a, &b, &c}) ASSERT_TRUE(**r);
  EXPECT_EQ((*a)->err.code, errc::peer_gone);
  EXPECT_EQ((*b)->err.code, errc::peer_gone);
  EXPECT_EQ((*c)->err.code, errc::not_connected);
  EXPECT_EQ(conn->sent.size(), 2u) << "the queued request was never written";
  auto d = ask();
  ASSERT_TRUE(*d);
  EXPECT_EQ((*d)->err.code, errc::not_connected);
}

// ---------------------------------------------------------------------------------------
// The supervisor

// Records what the supervisor tells an actor; as the correlation actor, answers VERSION
// requests as our server would (or refuses them).
struct told {
  int connlost = 0, connup = 0, limits = 0, attach = 0;
  bool refuse_version = false;
};

caf::behavior recording_peer_side(caf::event_based_actor*, std::shared_ptr<told> t) {
  return {
      [=](request_atom, frame_ptr& f, uint32_t) {
        if (t->refuse_version) return call_result{make_frame_ptr(proto::make_error_reply(f->hdr(), ENOTSUP)), {}};
        auto req = proto::decode(*f);
        proto::server_offer one_socket;  // (no socketpair to hand over here)
        one_socket.twin_socket = false;
        auto a = server_version(std::get<proto::version_request>(*req), one_socket);
        return call_result{make_frame_ptr(proto::make_frame(f->hdr().msg_id, a->reply)), {}};
      },
      [=](attach_atom, connection_ptr&, uint64_t) { ++t->attach; },
      [=](limits_atom, const conn_limits&) { ++t->limits; },
      [=](connup_atom, const proto::negotiated&) { ++t->connup; },
      [=](connlost_atom) { ++t->connlost; },
  };
}

class Supervisor : public Coordinated {
 protected:
  ~Supervisor() override {
    if (sup) caf::anon_send(sup, close_atom::value);
    sched.run();
    io.poll();  // the transports' closes
  }
  void start(role r) {
    corr = spawn(recording_peer_side, corr_told);
    disp = spawn(recording_peer_side, disp_told);
    dev = spawn(recording_peer_side, dev_told);
    endpoint_config ec;
    ec.backoff_min = 10ms;
    ec.backoff_max = 40ms;
    supervisor_config c{&io, r, ec, status, std::make_shared<pending_table>(16), corr, disp, dev,
                        [this](const std::string&) -> proto::result<proto::unique_fd> {
                          ++dials;
                          if (!dial_ok) return proto::error(errc::not_connected, ECONNREFUSED, "refused");
                          return connected_fd();
                        }};
    sup = spawn_supervisor(sys, c);
    spawned.push_back(sup);
  }
  proto::unique_fd connected_fd() {
    int sv[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) return proto::unique_fd{};
    peers.emplace_back(sv[1]);
    return proto::unique_fd(sv[0]);
  }
  conn_state state() {
    std::lock_guard<std::mutex> g(status->m);
    return status->state;
  }
  void lose_connection() {
    caf::actor s;
    {
      std::lock_guard<std::mutex> g(status->m);
      s = status->socket;
    }
    caf::anon_send_exit(s, caf::exit_reason::user_shutdown);
    sched.run();
  }

  boost::asio::io_context io;
  std::vector<proto::unique_fd> peers;
  std::shared_ptr<endpoint_status> status = std::make_shared<endpoint_status>();
  std::shared_ptr<told> corr_told = std::make_shared<told>(), disp_told = std::make_shared<told>(),
                        dev_told = std::make_shared<told>();
  caf::actor corr, disp, dev, sup;
  int dials = 0;
  bool dial_ok = true;
};

TEST_F(Supervisor, AClientNegotiatesThenRedialsWithDoublingBackoffAfterALoss) {
  start(role::client);
  caf::anon_send(sup, attach_atom::value, std::string("/run/dev.sock"));
  sched.run();
  EXPECT_EQ(dials, 1);
  EXPECT_EQ(state(), conn_state::ready);
  EXPECT_EQ(corr_told->attach, 1);
  EXPECT_EQ(disp_told->limits, 1) << "the dispatcher decodes with the negotiated limits";
  EXPECT_EQ(dev_told->connup, 1);

  dial_ok = false;
  lose_connection();
  EXPECT_EQ(state(), conn_state::recovering);
  EXPECT_EQ(corr_told->connlost, 1);
  EXPECT_EQ(disp_told->connlost, 1);
  EXPECT_EQ(dev_told->connlost, 1);
  // Redials after 10, then 20, 40 and 40 ms (backoff_min doubling up to backoff_max).
  for (auto wait : {10ms, 20ms, 40ms, 40ms}) {
    int before = dials;
    advance(wait - 1ms);
    EXPECT_EQ(dials, before) << "not before " << wait.count() << " ms";
    advance(1ms);
    EXPECT_EQ(dials, before + 1) << "at " << wait.count() << " ms";
    EXPECT_EQ(state(), conn_state::recovering);
  }
  dial_ok = true;
  advance(40ms);
  EXPECT_EQ(state(), conn_state::ready);
  EXPECT_EQ(corr_told->attach, 2);
  EXPECT_EQ(dev_told->connup, 2);
  dial_ok = false;
  lose_connection();
  int before = dials;
  advance(10ms);
  EXPECT_EQ(dials, before + 1) << "a good connection resets the backoff";
}

TEST_F(Supervisor, AClientsFirstFailedDialIsReportedNotRetried) {
  dial_ok = false;
  start(role::client);
  caf::anon_send(sup, attach_atom::value, std::string("/run/dev.sock"));
  sched.run();
  EXPECT_EQ(state(), conn_state::closed);
  EXPECT_EQ(status->last_error.code, errc::not_connected);
  advance(10s);
  EXPECT_EQ(dials, 1);
}

TEST_F(Supervisor, ARefusedVersionClosesTheConnectionWithThatReason) {
  corr_told->refuse_version = true;
  start(role::client);
  caf::anon_send(sup, attach_atom::value, std::string("/run/dev.sock"));
  sched.run();
  EXPECT_EQ(state(), conn_state::closed);
  EXPECT_EQ(status->last_error.code, errc::remote_error);
  EXPECT_EQ(status->last_error.errnum, ENOTSUP);
  EXPECT_EQ(dev_told->connlost, 1);
  advance(10s);
  EXPECT_EQ(dials, 1) << "never ready: not redialled";
}

TEST_F(Supervisor, AServerConnectionIsReadyWhenTheDispatcherNegotiatedAndClosedWhenLost) {
  start(role::server);
  caf::anon_send(sup, attach_atom::value, std::make_shared<proto::unique_fd>(connected_fd()));
  sched.run();
  EXPECT_EQ(state(), conn_state::negotiating);
  caf::actor s;
  {
    std::lock_guard<std::mutex> g(status->m);
    s = status->socket;
  }
  caf::anon_send(sup, connup_atom::value, proto::negotiated{}, s, connection_ptr{});
  sched.run();
  EXPECT_EQ(state(), conn_state::ready);
  lose_connection();
  EXPECT_EQ(state(), conn_state::closed) << "no listener to accept the next client from";
  EXPECT_EQ(disp_told->connlost, 1);
  EXPECT_EQ(corr_told->connlost, 1);
}

}  // namespace
