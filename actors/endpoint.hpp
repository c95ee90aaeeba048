// endpoint.hpp: the embedding API. One endpoint = one vfio-user connection slot in either
// role, with its supervisor, correlation, dispatcher and (per connection) socket actor
// (docs/architecture.md). What happens to each kind of request it makes (call, call_many,
// post, post_noreply, an actor's request): pending_table.hpp's lifecycle table.
//
//   vfu::runtime rt;                                   // actor system + io thread
//   auto ep = vfu::endpoint::connect(rt, "/tmp/dev.sock", cfg);   // client: connect+VERSION
//   auto r = (*ep)->call(proto::region_read_request{{0, 7, 4}});  // blocks this thread
//
// Threading rules:
//  - call(), call_many(), call_frame(), call_decoded(), post(), post_noreply(), post_frame(), wait_posted(),
//    state(), wait_state(),
//    negotiated() and close() may be called from any non-CAF thread (an emulator's vCPU or
//    main thread), concurrently.
//  - From inside an actor, never block: send (request_atom, frame_ptr, timeout_ms) to
//    correlation() and use .then(). A blocking call from a CAF worker can deadlock the
//    scheduler (one worker by default).
//  - on_state callbacks run on a CAF worker: they must not block on this endpoint.
//  - The runtime must outlive every endpoint.
//  - A thread blocked in call(), call_frame() or call_many() may read the socket itself
//    while it waits (endpoint_config::caller_reads): it then also hands the peer's requests
//    and other threads' replies on, and returns as soon as its own reply is in. Nothing for
//    the host to do; the event loop takes over when no caller reads.
//  - The endpoint owns its socket: a connected fd given to connect_fd()/serve_fd() is
//    switched to blocking mode (every read and write of the loop passes MSG_DONTWAIT) and
//    must not be used by the host afterwards.
//
// Supervision: when the socket actor dies (EOF, bad header, socket error) every pending
// request fails at once with the cause, device actors get (connlost_atom), and the
// supervisor restarts: a client reconnects with bounded exponential backoff and renegotiates
// VERSION; a server accepts its next client (one client at a time; others wait in the
// listen backlog). The state is observable: connecting, negotiating, ready, recovering,
// closed.
#pragma once

#include <caf/all.hpp>

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <string>

#include "actors/correlation_actor.hpp"
#include "actors/pending_table.hpp"
#include "actors/dispatcher_actor.hpp"
#include "actors/runtime.hpp"
#include "actors/types.hpp"

namespace vfu {

enum class conn_state : uint8_t { connecting, negotiating, ready, recovering, closed };
const char* to_string(conn_state s) noexcept;

struct endpoint_config {
  proto::quirks quirks;
  correlation_config correlation;
  /// Server role: how long a device or host handler may take to answer one request before
  /// the dispatcher answers it ETIMEDOUT (and drops its late answer); the long one for
  /// DEVICE_RESET, migration, DMA_MAP and DMA_UNMAP.
  std::chrono::milliseconds handler_timeout{60000};
  std::chrono::milliseconds handler_timeout_long{600000};
  /// A thread blocked in call(), call_frame() or call_many() reads the socket itself while
  /// nobody else does (stream_transport's leader), so its reply wakes it directly instead
  /// of waking the event loop, which then wakes it. false: the loop reads every reply.
  bool caller_reads = true;
  /// Such a caller first polls the socket for its reply (recvmsg without waiting) for up to
  /// this long, and only then sleeps in recvmsg: a reply that comes within the window costs
  /// no sleep and no wake-up, most of a round trip's cost (docs/performance.md; KVM polls
  /// a halted vCPU for the same reason). The window adapts per connection as the
  /// event loop's does (event_loop::adaptive_poll): it grows while replies come within
  /// max, and falls to 0 after a longer wait, so slow replies cost no polling. The CPU it
  /// spends is the waiting caller's own thread's, only while a call is outstanding.
  /// 0: never poll. -1 (the default): the environment's VFU_CALLER_POLL_MAX_NS, or
  /// default_caller_poll_max_ns without it.
  int64_t caller_poll_max_ns = -1;
  static constexpr int64_t default_caller_poll_max_ns = 65536;
  // Client role.
  proto::capabilities client_caps = default_client_caps();
  bool reconnect = true;
  std::chrono::milliseconds backoff_min{10};
  std::chrono::milliseconds backoff_max{2000};
  // Server role.
  proto::server_offer offer;

  static proto::capabilities default_client_caps();
};

struct endpoint_status;  // shared between the API object and its supervisor
class stream_transport;
class transport_leader;

class endpoint {
 public:
  ~endpoint();
  endpoint(const endpoint&) = delete;
  endpoint& operator=(const endpoint&) = delete;

  /// Client: connects to `path`, negotiates VERSION, and returns once ready (or the first
  /// attempt's error). `handler` serves the server's requests (DMA_READ/DMA_WRITE).
  static proto::result<std::unique_ptr<endpoint>> connect(runtime& rt, const std::string& path,
                                                          endpoint_config cfg = {}, caf::actor handler = {},
                                                          std::chrono::milliseconds ready_timeout = std::chrono::seconds(5));
  /// Client over an already-connected socket (no reconnect: there is nothing to dial).
  static proto::result<std::unique_ptr<endpoint>> connect_fd(runtime& rt, proto::unique_fd fd,
                                                             endpoint_config cfg = {}, caf::actor handler = {},
                                                             std::chrono::milliseconds ready_timeout = std::chrono::seconds(5));
  /// Server: listens on `path` (a stale socket file is replaced) and serves `device`.
  static proto::result<std::unique_ptr<endpoint>> listen(runtime& rt, const std::string& path,
                                                         endpoint_config cfg, caf::actor device);
  /// Server on an fd: a listening socket (accepts clients) or a connected one (serves it).
  static proto::result<std::unique_ptr<endpoint>> serve_fd(runtime& rt, proto::unique_fd fd,
                                                           endpoint_config cfg, caf::actor device);

  /// Sends a request and blocks until it completes (reply, error reply, timeout, or loss).
  /// `timeout` 0 = the command class's timeout.
  call_result call(const proto::message& m, proto::fd_list fds = {},
                   std::chrono::milliseconds timeout = std::chrono::milliseconds(0));
  /// Several independent requests at once: written together (gathered into as few sendmsg
  /// calls as possible, at most correlation.max_outstanding at a time), then waited for
  /// together. Results are in the order of `msgs`; each completes on its own (reply, error
  /// reply, its own timeout, or the connection's loss). For a host with a batch of accesses
  /// ready (coalesced MMIO, a queue of config reads): one wake-up for the whole batch.
  std::vector<call_result> call_many(const std::vector<proto::message>& msgs,
                                     std::chrono::milliseconds timeout = std::chrono::milliseconds(0));
  /// call() with a frame built by the caller (msg_id is assigned here): bulk data paths
  /// build REGION_WRITE frames in one allocation (proto::make_region_frame).
  /// With `landing` (its dest, len and frame_offset set), the reply's bulk data may be
  /// received straight into the caller's buffer (reply_landing says which part was).
  /// With `tail`, the frame is only the message's head (its msg_size counts the tail) and
  /// the tail's bytes are written straight from the caller's buffer (a REGION_WRITE's data;
  /// stream_transport::send_gathered).
  call_result call_frame(proto::frame f, std::chrono::milliseconds timeout = std::chrono::milliseconds(0),
                         reply_landing* landing = nullptr, proto::byte_view tail = {});
  /// call() and decode the reply; an error reply becomes errc::remote_error with its errno.
  proto::result<proto::message> call_decoded(const proto::message& m, proto::fd_list fds = {},
                                             std::chrono::milliseconds timeout = std::chrono::milliseconds(0));
  /// Like call_decoded, and hands over the reply's fds.
  proto::result<proto::message> call_decoded(const proto::message& m, proto::fd_list fds,
                                             proto::fd_list& reply_fds,
                                             std::chrono::milliseconds timeout = std::chrono::milliseconds(0));
  /// No-wait: sent in order, a reply is expected but nobody waits; failures are logged.
  void post(const proto::message& m, proto::fd_list fds = {});
  /// NO_REPLY: the peer sends nothing back (posted region writes).
  void post_noreply(const proto::message& m);
  /// post() or post_noreply() (by its header's NO_REPLY flag) of a frame built by the caller.
  void post_frame(proto::frame f);
  /// Waits for the youngest no-wait request to complete.
  call_result wait_posted(std::chrono::milliseconds timeout = std::chrono::seconds(5));

  conn_state state() const;
  /// Waits until the state is `s` (true) or the timeout passes (false).
  bool wait_state(conn_state s, std::chrono::milliseconds timeout) const;
  proto::negotiated negotiated() const;
  /// What a data path needs of negotiated() on every call, without copying the capability
  /// sets (their key lists allocate).
  struct peer_limits {
    uint64_t send_max_data = 0;
    uint32_t send_max_fds = 0;
    bool write_multiple = false;
  };
  peer_limits limits() const;
  /// The error that ended the last connection (if any).
  proto::error last_error() const;
  /// Called on every state change (on a CAF worker; must not block on this endpoint).
  void on_state(std::function<void(conn_state, const proto::error&)> cb);
  /// Connections made so far (1 after the first; a reconnect or next client adds one).
  uint64_t generation() const;

  caf::actor correlation() const { return corr_; }
  caf::actor dispatcher() const { return disp_; }
  caf::actor supervisor() const { return sup_; }
  runtime& rt() { return rt_; }
  const endpoint_config& config() const { return cfg_; }

  /// Registers a handler for one command (0 = every command without its own handler).
  void set_handler(uint16_t command, caf::actor h);
  /// "frames_in=.. frames_out=.." for the current connection, the dispatcher's "served=..
  /// in_place=..", and the correlation stats.
  std::string stats();

  void close();

 private:
  endpoint(runtime& rt, endpoint_config cfg, role r);
  void start_actors(caf::actor handler);
  /// A thread's request (calls.cpp, pending_table.hpp): registers and writes it. With
  /// `lead`, the caller tries to become the reader just before the write.
  using clock = std::chrono::steady_clock;
  std::optional<uint16_t> send_request(proto::frame f, std::shared_ptr<call_slot> slot,
                                       std::chrono::milliseconds timeout, proto::error& err,
                                       transport_leader* lead = nullptr, proto::byte_view tail = {});
  /// The current connection's transport and epoch, if it is ready.
  std::shared_ptr<stream_transport> ready_transport(uint64_t& epoch, proto::error& err);
  /// Registers a request in the pending table (back-pressure, id) and sets the frame's id.
  std::optional<uint16_t> register_request(proto::frame& f, const std::shared_ptr<call_slot>& slot, uint64_t epoch,
                                           std::chrono::milliseconds timeout, proto::error& err);
  /// Waits for a registered call until `deadline`, then times it out.
  call_result await_reply(uint16_t id, uint16_t cmd, call_slot& slot, clock::time_point deadline);

  runtime& rt_;
  endpoint_config cfg_;
  role role_;
  std::shared_ptr<endpoint_status> status_;
  std::shared_ptr<pending_table> table_;
  caf::actor corr_, disp_, sup_;
  std::atomic<bool> closed_{false};
};

}  // namespace vfu

CAF_ALLOW_UNSAFE_MESSAGE_TYPE(std::shared_ptr<vfu::proto::unique_fd>)
