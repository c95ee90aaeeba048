#define CAF_LOG_COMPONENT "vfu"
#include "actors/endpoint.hpp"

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/post.hpp>

#include "actors/socket_actor.hpp"
#include "actors/socket_io.hpp"

namespace vfu {

namespace asio = boost::asio;
using fd_box = std::shared_ptr<proto::unique_fd>;

const char* to_string(conn_state s) noexcept {
  switch (s) {
    case conn_state::connecting: return "connecting";
    case conn_state::negotiating: return "negotiating";
    case conn_state::ready: return "ready";
    case conn_state::recovering: return "recovering";
    case conn_state::closed: return "closed";
  }
  return "?";
}

proto::capabilities endpoint_config::default_client_caps() {
  proto::capabilities c;
  c.max_msg_fds = proto::limits::our_max_msg_fds;
  c.max_data_xfer_size = proto::limits::our_max_data_xfer;
  c.present = {"max_msg_fds", "max_data_xfer_size"};
  return c;
}

/// State shared by the API object (any thread) and the supervisor actor.
struct endpoint_status {
  mutable std::mutex m;
  mutable std::condition_variable cv;
  conn_state state = conn_state::connecting;
  proto::negotiated neg;
  proto::error last_error;
  uint64_t generation = 0;
  caf::actor socket;
  std::shared_ptr<stream_transport> transport;  ///< of the current connection, for direct calls
  uint64_t direct_epoch = 0;                    ///< direct_calls' epoch for that connection
  // The callback is called with cb_m held, so that once on_state() replaced it, the old one
  // is neither running nor will run (its owner may be gone).
  std::mutex cb_m;
  std::function<void(conn_state, const proto::error&)> cb;

  void set(conn_state s, const proto::error& e = {}) {
    {
      std::lock_guard<std::mutex> g(m);
      if (state == s && !e) return;
      state = s;
      if (e) last_error = e;
    }
    cv.notify_all();
    std::lock_guard<std::mutex> g(cb_m);
    if (cb) cb(s, e);
  }
};

namespace {

// Accepts clients on a listening socket, one at a time, on the io thread.
class listener : public std::enable_shared_from_this<listener> {
 public:
  listener(asio::io_context& io, proto::unique_fd fd) : acc_(io) {
    boost::system::error_code ec;
    acc_.assign(asio::local::stream_protocol(), fd.release(), ec);
  }
  void accept_one(caf::actor sup) {
    auto self = shared_from_this();
    asio::post(acc_.get_executor(), [self, sup] {
      self->acc_.async_accept([self, sup](const boost::system::error_code& ec, asio::local::stream_protocol::socket s) {
        if (ec == asio::error::operation_aborted) return;
        if (ec) {
          caf::anon_send(sup, ioerr_atom::value, proto::error(proto::errc::io_error, ec.value(), "accept: " + ec.message()));
          return;
        }
        int fd = s.release();
        ::fcntl(fd, F_SETFD, FD_CLOEXEC);
        caf::anon_send(sup, accepted_atom::value, std::make_shared<proto::unique_fd>(fd));
      });
    });
  }
  void close() {
    auto self = shared_from_this();
    asio::post(acc_.get_executor(), [self] {
      boost::system::error_code ec;
      self->acc_.close(ec);
    });
  }

 private:
  asio::local::stream_protocol::acceptor acc_;
};

struct supervisor_state {
  runtime* rt = nullptr;
  role r = role::client;
  endpoint_config cfg;
  std::shared_ptr<endpoint_status> status;
  caf::actor corr, disp, handler;
  std::shared_ptr<direct_calls> direct;
  std::string path;                    // client: where to reconnect
  std::shared_ptr<listener> lst;       // server: where clients come from
  caf::actor socket;
  std::chrono::milliseconds backoff{0};
  bool ever_ready = false;
  bool closing = false;
  proto::error negotiation_error;  ///< why the last VERSION exchange failed (reported on close)
  static inline const char* name = "vfu.supervisor";
};
using sup_t = caf::stateful_actor<supervisor_state>*;

proto::result<proto::unique_fd> dial(const std::string& path) {
  sockaddr_un sa{};
  sa.sun_family = AF_UNIX;
  if (path.size() >= sizeof sa.sun_path) return proto::error(proto::errc::bad_value, "socket path too long: " + path);
  std::memcpy(sa.sun_path, path.c_str(), path.size() + 1);
  proto::unique_fd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!fd) return proto::error(proto::errc::io_error, errno, "socket");
  if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0)
    return proto::error(proto::errc::not_connected, errno, "connect " + path + ": " + std::strerror(errno));
  return fd;
}

void start_connection(sup_t self, proto::unique_fd fd);

void negotiate_client(sup_t self) {
  auto& st = self->state;
  proto::version_request v;
  v.major = proto::our_major;
  v.minor = proto::our_minor;
  v.caps_json = proto::to_json(st.cfg.client_caps, true);
  auto f = make_frame_ptr(proto::make_frame(0, v));
  auto sock = st.socket;
  self->request(st.corr, caf::infinite, request_atom::value, f, uint32_t(0))
      .then([=](call_result& r) {
        auto& st = self->state;
        if (sock != st.socket) return;  // an older connection's answer
        auto fail = [&](const proto::error& e) {
          CAF_LOG_WARNING("VERSION negotiation failed: " << e.message());
          st.negotiation_error = e;
          self->send_exit(sock, caf::exit_reason::user_shutdown);
        };
        if (auto f2 = r.failure()) return fail(f2);
        auto m = proto::decode(*r.reply, st.cfg.quirks);
        if (!m) return fail(m.err());
        auto* vr = std::get_if<proto::version_reply>(&*m);
        if (!vr) return fail(proto::error(proto::errc::protocol_violation, "VERSION answered with another message"));
        auto caps = proto::parse_capabilities(vr->caps_json.value_or(""));
        if (!caps) return fail(caps.err());
        auto n = proto::client_check_reply(proto::our_major, proto::our_minor, st.cfg.client_caps, vr->major,
                                           vr->minor, *caps, r.reply->fds.size());
        if (!n) return fail(n.err());
        auto lim = limits_from(*n);
        self->send(sock, limits_atom::value, lim);
        self->send(st.disp, limits_atom::value, lim);
        {
          std::lock_guard<std::mutex> g(st.status->m);
          st.status->neg = *n;
          // In force before anyone can see "ready" and send: the socket actor's copy of
          // this limit may still be in its mailbox when a caller's request is answered.
          if (st.status->transport) st.status->transport->set_max_frame(lim.max_frame);
        }
        st.backoff = std::chrono::milliseconds(0);
        st.ever_ready = true;
        if (st.handler) self->send(st.handler, connup_atom::value, *n);
        st.status->set(conn_state::ready);
      });
}

void try_reconnect(sup_t self) {
  auto& st = self->state;
  if (st.closing) return;
  auto fd = dial(st.path);
  if (!fd) {
    if (!st.ever_ready) {  // the first attempt failed: report instead of retrying forever
      st.status->set(conn_state::closed, fd.err());
      return;
    }
    st.backoff = std::min(st.cfg.backoff_max, std::max(st.cfg.backoff_min, st.backoff * 2));
    CAF_LOG_INFO("reconnect to " << st.path << " failed (" << fd.err().message() << "), next in "
                                 << st.backoff.count() << " ms");
    self->delayed_send(self, st.backoff, reconnect_atom::value);
    return;
  }
  start_connection(self, std::move(*fd));
}

void start_connection(sup_t self, proto::unique_fd fd) {
  auto& st = self->state;
  auto tr = std::make_shared<stream_transport>(st.rt->io(), std::move(fd), proto::limits::max_version_frame, st.direct);
  tr->set_caller_poll_max_ns(st.cfg.caller_poll_max_ns);  // (resolved by the endpoint's constructor)
  st.socket = self->spawn<caf::monitored>(socket_actor, tr, st.corr, st.disp);
  {
    std::lock_guard<std::mutex> g(st.status->m);
    st.status->socket = st.socket;
    st.status->transport = tr;
    // The previous transport's close has moved the epoch on (the socket actor's exit ran
    // it before the supervisor heard of the death): this one belongs to `tr`.
    st.status->direct_epoch = st.direct->epoch();
    ++st.status->generation;
  }
  self->send(st.corr, attach_atom::value, st.socket);
  st.status->set(conn_state::negotiating);
  if (st.r == role::client) negotiate_client(self);
}

caf::behavior supervisor_actor(sup_t self, runtime* rt, role r, endpoint_config cfg,
                               std::shared_ptr<endpoint_status> status, caf::actor corr, caf::actor disp,
                               caf::actor handler, std::shared_ptr<direct_calls> direct) {
  auto& st = self->state;
  st.direct = std::move(direct);
  st.rt = rt;
  st.r = r;
  st.cfg = std::move(cfg);
  st.status = std::move(status);
  st.corr = std::move(corr);
  st.disp = std::move(disp);
  st.handler = std::move(handler);
  self->set_down_handler([=](caf::down_msg& dm) {
    auto& st = self->state;
    if (dm.source != st.socket.address()) return;
    st.socket = nullptr;
    {
      std::lock_guard<std::mutex> g(st.status->m);
      st.status->transport = nullptr;
    }
    proto::error why(proto::errc::peer_gone, "connection lost: " + render(dm.reason));
    if (st.negotiation_error) why = std::exchange(st.negotiation_error, proto::error{});
    CAF_LOG_INFO(why.message());
    self->send(st.disp, connlost_atom::value);
    if (st.handler) self->send(st.handler, connlost_atom::value);
    if (st.closing) return;
    if (st.r == role::server) {
      if (st.lst) {
        st.status->set(conn_state::connecting, why);
        st.lst->accept_one(self);
      } else {
        st.status->set(conn_state::closed, why);
      }
      return;
    }
    if (!st.cfg.reconnect || st.path.empty() || !st.ever_ready) {
      st.status->set(conn_state::closed, why);
      return;
    }
    st.status->set(conn_state::recovering, why);
    st.backoff = st.cfg.backoff_min;
    self->delayed_send(self, st.backoff, reconnect_atom::value);
  });
  return {
      [=](attach_atom, fd_box& fd) { start_connection(self, std::move(*fd)); },          // initial fd
      [=](attach_atom, const std::string& path) {                                         // client: dial
        self->state.path = path;
        try_reconnect(self);
      },
      [=](attach_atom, std::shared_ptr<listener>& l) {                                    // server: listen
        self->state.lst = l;
        self->state.status->set(conn_state::connecting);
        l->accept_one(self);
      },
      [=](accepted_atom, fd_box& fd) {
        if (self->state.closing) return;
        start_connection(self, std::move(*fd));
      },
      [=](ioerr_atom, proto::error& e) {  // the listener failed
        self->state.status->set(conn_state::closed, e);
      },
      [=](reconnect_atom) { try_reconnect(self); },
      [=](connup_atom, const proto::negotiated& n, caf::actor& sock) {  // server: VERSION done
        auto& st = self->state;
        if (sock != st.socket) return;
        {
          std::lock_guard<std::mutex> g(st.status->m);
          st.status->neg = n;
        }
        st.ever_ready = true;
        st.status->set(conn_state::ready);
      },
      [=](close_atom) {
        auto& st = self->state;
        st.closing = true;
        if (st.lst) st.lst->close();
        if (st.socket) self->send_exit(st.socket, caf::exit_reason::user_shutdown);
        self->send_exit(st.corr, caf::exit_reason::user_shutdown);
        self->send_exit(st.disp, caf::exit_reason::user_shutdown);
        st.status->set(conn_state::closed);
        self->quit();
      },
  };
}

}  // namespace

}  // namespace vfu

CAF_ALLOW_UNSAFE_MESSAGE_TYPE(std::shared_ptr<vfu::listener>)

namespace vfu {

endpoint::endpoint(runtime& rt, endpoint_config cfg, role r)
    : rt_(rt), cfg_(std::move(cfg)), role_(r), status_(std::make_shared<endpoint_status>()) {
  // Once, here: not at every reconnection, on an actor's thread.
  if (cfg_.caller_poll_max_ns < 0)
    cfg_.caller_poll_max_ns =
        runtime_options::poll_ns_from_env("VFU_CALLER_POLL_MAX_NS", endpoint_config::default_caller_poll_max_ns);
}

endpoint::~endpoint() { close(); }

void endpoint::start_actors(caf::actor handler) {
  auto& sys = rt_.system();
  corr_ = sys.spawn(correlation_actor, cfg_.correlation);
  direct_ = std::make_shared<direct_calls>(cfg_.correlation.max_outstanding);
  caf::anon_send(corr_, attach_atom::value, direct_);
  dispatcher_config dc;
  dc.role = role_;
  dc.quirks = cfg_.quirks;
  dc.offer = cfg_.offer;
  dc.handler_timeout = cfg_.handler_timeout;
  dc.handler_timeout_long = cfg_.handler_timeout_long;
  // The supervisor needs the dispatcher and the dispatcher tells the supervisor about
  // VERSION: spawn the dispatcher, then the supervisor, then introduce them.
  disp_ = sys.spawn(dispatcher_actor, dc, corr_);
  sup_ = sys.spawn(supervisor_actor, &rt_, role_, cfg_, status_, corr_, disp_, handler, direct_);
  caf::anon_send(disp_, attach_atom::value, sup_);
  if (handler) caf::anon_send(disp_, handler_atom::value, uint16_t(0), handler);
}

namespace {
template <class T>
proto::result<T> wait_ready(std::shared_ptr<endpoint_status> st, std::chrono::milliseconds timeout, T ep) {
  std::unique_lock<std::mutex> g(st->m);
  bool ok = st->cv.wait_for(g, timeout, [&] { return st->state == conn_state::ready || st->state == conn_state::closed; });
  if (!ok) return proto::error(proto::errc::timeout, "no VERSION exchange within the timeout");
  if (st->state == conn_state::closed) {
    auto e = st->last_error ? st->last_error : proto::error(proto::errc::not_connected, "connection closed");
    g.unlock();
    return e;
  }
  return ep;
}
}  // namespace

proto::result<std::unique_ptr<endpoint>> endpoint::connect(runtime& rt, const std::string& path, endpoint_config cfg,
                                                            caf::actor handler, std::chrono::milliseconds ready_timeout) {
  std::unique_ptr<endpoint> ep(new endpoint(rt, std::move(cfg), role::client));
  ep->start_actors(handler);
  caf::anon_send(ep->sup_, attach_atom::value, path);
  auto st = ep->status_;
  return wait_ready(st, ready_timeout, std::move(ep));
}

proto::result<std::unique_ptr<endpoint>> endpoint::connect_fd(runtime& rt, proto::unique_fd fd, endpoint_config cfg,
                                                               caf::actor handler, std::chrono::milliseconds ready_timeout) {
  if (!fd) return proto::error(proto::errc::bad_value, "invalid fd");
  cfg.reconnect = false;
  std::unique_ptr<endpoint> ep(new endpoint(rt, std::move(cfg), role::client));
  ep->start_actors(handler);
  caf::anon_send(ep->sup_, attach_atom::value, std::make_shared<proto::unique_fd>(std::move(fd)));
  auto st = ep->status_;
  return wait_ready(st, ready_timeout, std::move(ep));
}

proto::result<std::unique_ptr<endpoint>> endpoint::listen(runtime& rt, const std::string& path, endpoint_config cfg,
                                                           caf::actor device) {
  sockaddr_un sa{};
  sa.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof sa.sun_path)
    return proto::error(proto::errc::bad_value, "socket path empty or longer than 107 bytes: " + path);
  std::memcpy(sa.sun_path, path.c_str(), path.size() + 1);
  // Replace a stale socket file, but never delete anything that is not a socket.
  struct stat stbuf;
  if (::lstat(path.c_str(), &stbuf) == 0) {
    if (!S_ISSOCK(stbuf.st_mode)) return proto::error(proto::errc::bad_value, path + " exists and is not a socket");
    ::unlink(path.c_str());
  }
  proto::unique_fd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd) return proto::error(proto::errc::io_error, errno, "socket");
  if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0)
    return proto::error(proto::errc::io_error, errno, "bind " + path + ": " + std::strerror(errno));
  if (::listen(fd.get(), 64) != 0) return proto::error(proto::errc::io_error, errno, "listen: " + std::string(std::strerror(errno)));
  return serve_fd(rt, std::move(fd), std::move(cfg), std::move(device));
}

proto::result<std::unique_ptr<endpoint>> endpoint::serve_fd(runtime& rt, proto::unique_fd fd, endpoint_config cfg,
                                                             caf::actor device) {
  if (!fd) return proto::error(proto::errc::bad_value, "invalid fd");
  int listening = 0;
  socklen_t len = sizeof listening;
  if (::getsockopt(fd.get(), SOL_SOCKET, SO_ACCEPTCONN, &listening, &len) != 0)
    return proto::error(proto::errc::bad_value, errno, "fd is not a socket");
  int type = 0;
  len = sizeof type;
  ::getsockopt(fd.get(), SOL_SOCKET, SO_TYPE, &type, &len);
  if (type != SOCK_STREAM) return proto::error(proto::errc::bad_value, "fd is not a stream socket");
  std::unique_ptr<endpoint> ep(new endpoint(rt, std::move(cfg), role::server));
  ep->start_actors(device);
  if (listening) {
    auto l = std::make_shared<listener>(rt.io(), std::move(fd));
    caf::anon_send(ep->sup_, attach_atom::value, l);
  } else {
    caf::anon_send(ep->sup_, attach_atom::value, std::make_shared<proto::unique_fd>(std::move(fd)));
  }
  return ep;
}

std::shared_ptr<stream_transport> endpoint::ready_transport(uint64_t& epoch, proto::error& err) {
  std::lock_guard<std::mutex> g(status_->m);
  if (status_->state != conn_state::ready) {
    err = proto::error(proto::errc::not_connected, "no connection");
    return nullptr;
  }
  epoch = status_->direct_epoch;
  return status_->transport;
}

std::optional<uint16_t> endpoint::register_direct(proto::frame& frame, const std::shared_ptr<call_slot>& slot,
                                                  uint64_t epoch, std::chrono::milliseconds timeout, proto::error& err) {
  auto h = frame.hdr();
  bool replied = !h.no_reply();
  // Back-pressure: room among the outstanding requests, for as long as the call may take
  // (a no-wait request: its command's timeout).
  auto wait = timeout_for(h.command, timeout);
  if (replied && !direct_->acquire(wait)) {
    err = proto::error(proto::errc::busy, "too many outstanding requests (waited " + std::to_string(wait.count()) + " ms)");
    return std::nullopt;
  }
  auto id = direct_->add(replied ? slot : nullptr, h.command, epoch);
  if (!id) {
    if (replied) direct_->release();
    err = proto::error(proto::errc::not_connected, "connection lost, or no free message id");
    return std::nullopt;
  }
  if (!replied) direct_->remove(*id);  // nothing comes back: the id is free again
  frame.set_msg_id(*id);
  // A no-wait request is tracked by the correlation actor, which learns of it before it is
  // written, so its reply (and the retire message that follows it) can never arrive first.
  if (replied && !slot)
    caf::anon_send(corr_, track_atom::value, *id, h.command, uint32_t(timeout.count()));
  return id;
}

call_result endpoint::await_direct(uint16_t id, uint16_t cmd, call_slot& slot, clock::time_point deadline) {
  call_result r;
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - clock::now());
  if (slot.wait_for(std::max(left, std::chrono::milliseconds(0))) || !direct_->expire(id)) {
    r = slot.take();  // the reply, or the connection's loss
  } else {
    CAF_SET_LOGGER_SYS(&rt_.system());
    CAF_LOG_WARNING(proto::command_name(cmd) << " id " << id << " timed out");
    r = call_result{nullptr, proto::error(proto::errc::timeout, std::string(proto::command_name(cmd)) + " timed out")};
  }
  direct_->release();
  return r;
}

std::chrono::milliseconds endpoint::timeout_for(uint16_t cmd, std::chrono::milliseconds t) const {
  if (t.count()) return t;
  return classify(cmd) == timeout_class::long_op ? cfg_.correlation.long_timeout : cfg_.correlation.short_timeout;
}

std::optional<uint16_t> endpoint::send_direct(proto::frame frame, std::shared_ptr<call_slot> slot,
                                              std::chrono::milliseconds timeout, proto::error& err,
                                              transport_leader* lead, proto::byte_view tail) {
  uint64_t epoch = 0;
  auto tr = ready_transport(epoch, err);
  if (!tr) return std::nullopt;
  auto id = register_direct(frame, slot, epoch, timeout, err);
  if (!id) return std::nullopt;
  if (lead) lead->begin(tr);  // before the write, so that the reply cannot wake the loop
  auto st = tail.size ? tr->send_gathered(frame.bytes.data(), frame.bytes.size(), tail.data, tail.size)
                      : tr->send(make_frame_ptr(std::move(frame)));
  if (!st) err = st.err();  // see call_frame()
  return id;
}

call_result endpoint::call(const proto::message& m, proto::fd_list fds, std::chrono::milliseconds timeout) {
  return call_frame(proto::make_frame(0, m, 0, std::move(fds)), timeout);
}

call_result endpoint::call_frame(proto::frame frame, std::chrono::milliseconds timeout, reply_landing* landing,
                                 proto::byte_view tail) {
  auto cmd = frame.hdr().command;
  timeout = timeout_for(cmd, timeout);
  auto deadline = clock::now() + timeout;
  direct_calls::caller_scope in_call(*direct_);
  auto slot = std::make_shared<call_slot>();
  proto::error err;
  transport_leader lead;
  auto id = send_direct(std::move(frame), slot, timeout, err, cfg_.caller_reads ? &lead : nullptr, tail);
  if (!id) return call_result{nullptr, err};
  if (err) {  // not written: nothing will come back
    direct_->remove(*id);
    direct_->release();
    return call_result{nullptr, err};
  }
  if (landing) {
    landing->msg_id = *id;
    landing->from = landing->to = 0;
  }
  lead.wait(*slot, deadline, landing);
  lead.end();
  return await_direct(*id, cmd, *slot, deadline);
}

std::vector<call_result> endpoint::call_many(const std::vector<proto::message>& msgs, std::chrono::milliseconds timeout) {
  std::vector<call_result> out(msgs.size());
  direct_calls::caller_scope in_call(*direct_);
  // Never more at once than the back-pressure bound: the calls of one group cannot wait
  // for each other's completion.
  size_t group = std::max<uint32_t>(1, cfg_.correlation.max_outstanding);
  for (size_t base = 0; base < msgs.size(); base += group) {
    size_t n = std::min(group, msgs.size() - base);
    proto::error err;
    uint64_t epoch = 0;
    auto tr = ready_transport(epoch, err);
    struct pending {
      size_t i;
      uint16_t id, cmd;
      std::shared_ptr<call_slot> slot;
      clock::time_point deadline;
    };
    std::vector<pending> sent;
    std::vector<frame_ptr> frames;
    sent.reserve(n);
    frames.reserve(n);
    auto now = clock::now();
    for (size_t i = base; i < base + n; ++i) {
      if (!tr) {
        out[i] = call_result{nullptr, err};
        continue;
      }
      auto f = proto::make_frame(0, msgs[i]);
      uint16_t cmd = f.hdr().command;
      auto to = timeout_for(cmd, timeout);
      auto slot = std::make_shared<call_slot>();
      proto::error e;
      auto id = register_direct(f, slot, epoch, to, e);
      if (!id) {
        out[i] = call_result{nullptr, e};
        continue;
      }
      sent.push_back(pending{i, *id, cmd, std::move(slot), now + to});
      frames.push_back(make_frame_ptr(std::move(f)));
    }
    if (frames.empty()) continue;
    transport_leader lead;
    if (cfg_.caller_reads) lead.begin(tr);
    if (auto st = tr->send_many(frames.data(), frames.size()); !st) {
      for (auto& p : sent) {
        direct_->remove(p.id);
        direct_->release();
        out[p.i] = call_result{nullptr, st.err()};
      }
      continue;
    }
    for (auto& p : sent) lead.wait(*p.slot, p.deadline);
    lead.end();
    for (auto& p : sent) out[p.i] = await_direct(p.id, p.cmd, *p.slot, p.deadline);
  }
  return out;
}

proto::result<proto::message> endpoint::call_decoded(const proto::message& m, proto::fd_list fds,
                                                     std::chrono::milliseconds timeout) {
  proto::fd_list ignored;
  return call_decoded(m, std::move(fds), ignored, timeout);
}

proto::result<proto::message> endpoint::call_decoded(const proto::message& m, proto::fd_list fds,
                                                     proto::fd_list& reply_fds, std::chrono::milliseconds timeout) {
  auto r = call(m, std::move(fds), timeout);
  if (auto e = r.failure()) return e;
  proto::decode_limits lim;
  {
    std::lock_guard<std::mutex> g(status_->m);
    lim.max_data_xfer = status_->neg.ours.max_data_xfer_size;
  }
  auto d = proto::decode(*r.reply, cfg_.quirks, lim);
  if (d) reply_fds = std::move(r.reply->fds);
  return d;
}

// post() and post_noreply() take the same direct lane as call(), so everything one thread
// sends stays in the order it was sent.
void endpoint::post(const proto::message& m, proto::fd_list fds) {
  proto::error err;
  if (!send_direct(proto::make_frame(0, m, 0, std::move(fds)), nullptr, std::chrono::milliseconds(0), err))
    CAF_LOG_WARNING("no-wait " << proto::command_name(proto::command_of(m)) << " not sent: " << err.message());
}

void endpoint::post_noreply(const proto::message& m) {
  post_frame(proto::make_frame(0, m, proto::hflags::no_reply));
}

void endpoint::post_frame(proto::frame f) {
  proto::error err;
  auto cmd = f.hdr().command;
  if (!send_direct(std::move(f), nullptr, std::chrono::milliseconds(0), err))
    CAF_LOG_WARNING("posted " << proto::command_name(cmd) << " not sent: " << err.message());
}

call_result endpoint::wait_posted(std::chrono::milliseconds timeout) {
  caf::scoped_actor self{rt_.system()};
  call_result out{nullptr, proto::error(proto::errc::timeout, "wait for posted requests timed out")};
  self->request(corr_, timeout, waitpost_atom::value)
      .receive([&](call_result& r) { out = std::move(r); },
               [&](caf::error& e) { out.err = proto::error(proto::errc::timeout, render(e)); });
  return out;
}

conn_state endpoint::state() const {
  std::lock_guard<std::mutex> g(status_->m);
  return status_->state;
}

bool endpoint::wait_state(conn_state s, std::chrono::milliseconds timeout) const {
  std::unique_lock<std::mutex> g(status_->m);
  return status_->cv.wait_for(g, timeout, [&] { return status_->state == s; });
}

proto::negotiated endpoint::negotiated() const {
  std::lock_guard<std::mutex> g(status_->m);
  return status_->neg;
}

endpoint::peer_limits endpoint::limits() const {
  std::lock_guard<std::mutex> g(status_->m);
  auto& n = status_->neg;
  return peer_limits{n.send_max_data(), n.send_max_fds(), n.theirs.write_multiple};
}

proto::error endpoint::last_error() const {
  std::lock_guard<std::mutex> g(status_->m);
  return status_->last_error;
}

uint64_t endpoint::generation() const {
  std::lock_guard<std::mutex> g(status_->m);
  return status_->generation;
}

void endpoint::on_state(std::function<void(conn_state, const proto::error&)> cb) {
  std::lock_guard<std::mutex> g(status_->cb_m);
  status_->cb = std::move(cb);
}

void endpoint::set_handler(uint16_t command, caf::actor h) {
  caf::anon_send(disp_, handler_atom::value, command, std::move(h));
}

std::string endpoint::stats() {
  caf::scoped_actor self{rt_.system()};
  std::string out;
  caf::actor sock;
  {
    std::lock_guard<std::mutex> g(status_->m);
    sock = status_->socket;
  }
  if (sock)
    self->request(sock, std::chrono::seconds(1), stats_atom::value)
        .receive([&](std::string& s) { out = s; }, [&](caf::error&) {});
  self->request(corr_, std::chrono::seconds(1), stats_atom::value)
      .receive(
          [&](correlation_stats& c) {
            auto d = direct_->stats();
            out += (out.empty() ? "" : " ") + std::string("sent=") + std::to_string(c.sent + d.sent) +
                   " completed=" + std::to_string(c.completed + d.completed) +
                   " timeouts=" + std::to_string(c.timeouts + d.timeouts) + " late=" + std::to_string(d.late) +
                   " error_replies=" + std::to_string(c.error_replies) + " unexpected=" + std::to_string(c.unexpected) +
                   " pending_high_water=" + std::to_string(c.pending_high_water);
          },
          [&](caf::error&) {});
  return out;
}

void endpoint::close() {
  // Any thread, concurrently: one caller closes, and every caller returns once it is closed.
  if (!closed_.exchange(true)) {
    on_state(nullptr);
    caf::anon_send(sup_, close_atom::value);
  }
  wait_state(conn_state::closed, std::chrono::seconds(5));
}

}  // namespace vfu
