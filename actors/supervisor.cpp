#define CAF_LOG_COMPONENT "vfu"
#include "actors/supervisor.hpp"

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/post.hpp>

#include "actors/negotiation.hpp"
#include "actors/socket_actor.hpp"
#include "actors/twin_socket.hpp"

namespace vfu {

namespace asio = boost::asio;
using fd_box = std::shared_ptr<proto::unique_fd>;

void endpoint_status::set(conn_state s, const proto::error& e) {
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

std::shared_ptr<listener> make_listener(asio::io_context& io, proto::unique_fd fd) {
  return std::make_shared<listener>(io, std::move(fd));
}

namespace {

struct supervisor_state {
  supervisor_config c;
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

void negotiate_client(sup_t self, transport_ptr tr) {
  auto& c = self->state.c;
  auto f = make_frame_ptr(proto::make_frame(0, client_version(c.cfg.client_caps)));
  auto sock = self->state.socket;
  self->request(c.corr, caf::infinite, request_atom::value, f, uint32_t(0)).then([=](call_result& r) {
    auto& st = self->state;
    if (sock != st.socket) return;  // an older connection's answer
    auto fail = [&](const proto::error& e) {
      CAF_LOG_WARNING("VERSION negotiation failed: " << e.message());
      st.negotiation_error = e;
      self->send_exit(sock, caf::exit_reason::user_shutdown);
    };
    if (auto e = r.failure()) return fail(e);
    auto n = client_check(r.reply, st.c.cfg.client_caps, st.c.cfg.quirks);
    if (!n) return fail(n.err());
    // In force before anyone can see "ready" and send.
    self->send(st.c.disp, limits_atom::value, put_in_force(*n, *tr));
    if (n->theirs.twin_socket)
      if (auto t = accept_twin(sock, *tr, std::move(r.reply->fds[*n->theirs.twin_fd_index])); !t) return fail(t.err());
    {
      std::lock_guard<std::mutex> g(st.c.status->m);
      st.c.status->neg = *n;
    }
    st.backoff = std::chrono::milliseconds(0);
    st.ever_ready = true;
    if (st.c.handler) self->send(st.c.handler, connup_atom::value, *n);
    st.c.status->set(conn_state::ready);
  });
}

void start_connection(sup_t self, proto::unique_fd fd) {
  auto& st = self->state;
  auto tr = std::make_shared<stream_transport>(*st.c.io, std::move(fd), proto::limits::max_version_frame, st.c.table);
  tr->set_caller_poll_max_ns(st.c.cfg.caller_poll_max_ns);  // (resolved by the endpoint's constructor)
  if (st.c.r == role::client && st.c.cfg.caller_reads) tr->expect_leaders();
  st.socket = self->spawn<caf::monitored>(socket_actor, tr, st.c.disp);
  uint64_t epoch = st.c.table->epoch();  // (the last connection's close moved it on)
  {
    std::lock_guard<std::mutex> g(st.c.status->m);
    st.c.status->socket = st.socket;
    st.c.status->transport = tr;
    st.c.status->epoch = epoch;
    ++st.c.status->generation;
  }
  self->send(st.c.corr, attach_atom::value, connection_ptr(tr), epoch);
  st.c.status->set(conn_state::negotiating);
  if (st.c.r == role::client) negotiate_client(self, tr);
}

void try_reconnect(sup_t self) {
  auto& st = self->state;
  if (st.closing) return;
  auto fd = st.c.dial ? st.c.dial(st.path) : dial(st.path);
  if (!fd) {
    if (!st.ever_ready) {  // the first attempt failed: report instead of retrying forever
      st.c.status->set(conn_state::closed, fd.err());
      return;
    }
    st.backoff = std::min(st.c.cfg.backoff_max, std::max(st.c.cfg.backoff_min, st.backoff * 2));
    CAF_LOG_INFO("reconnect to " << st.path << " failed (" << fd.err().message() << "), next in "
                                 << st.backoff.count() << " ms");
    self->delayed_send(self, st.backoff, reconnect_atom::value);
    return;
  }
  start_connection(self, std::move(*fd));
}

// The socket actor died: everyone hears of the loss, then the next connection is made.
void on_lost(sup_t self, const caf::down_msg& dm) {
  auto& st = self->state;
  st.socket = nullptr;
  {
    std::lock_guard<std::mutex> g(st.c.status->m);
    st.c.status->transport = nullptr;
  }
  proto::error why(proto::errc::peer_gone, "connection lost: " + render(dm.reason));
  if (st.negotiation_error) why = std::exchange(st.negotiation_error, proto::error{});
  CAF_LOG_INFO(why.message());
  self->send(st.c.disp, connlost_atom::value);
  self->send(st.c.corr, connlost_atom::value);
  if (st.c.handler) self->send(st.c.handler, connlost_atom::value);
  if (st.closing) return;
  if (st.c.r == role::server) {
    if (st.lst) {
      st.c.status->set(conn_state::connecting, why);
      st.lst->accept_one(self);
    } else {
      st.c.status->set(conn_state::closed, why);
    }
    return;
  }
  if (!st.c.cfg.reconnect || st.path.empty() || !st.ever_ready) {
    st.c.status->set(conn_state::closed, why);
    return;
  }
  st.c.status->set(conn_state::recovering, why);
  st.backoff = st.c.cfg.backoff_min;
  self->delayed_send(self, st.backoff, reconnect_atom::value);
}

caf::behavior supervisor_actor(sup_t self, supervisor_config c) {
  self->state.c = std::move(c);
  self->set_down_handler([=](caf::down_msg& dm) {
    if (dm.source == self->state.socket.address()) on_lost(self, dm);
  });
  return {
      [=](attach_atom, fd_box& fd) { start_connection(self, std::move(*fd)); },  // a connected fd
      [=](attach_atom, const std::string& path) {                                 // client: dial
        self->state.path = path;
        try_reconnect(self);
      },
      [=](attach_atom, std::shared_ptr<listener>& l) {  // server: listen
        self->state.lst = l;
        self->state.c.status->set(conn_state::connecting);
        l->accept_one(self);
      },
      [=](accepted_atom, fd_box& fd) {
        if (!self->state.closing) start_connection(self, std::move(*fd));
      },
      [=](ioerr_atom, proto::error& e) { self->state.c.status->set(conn_state::closed, e); },  // the listener failed
      [=](reconnect_atom) { try_reconnect(self); },
      [=](connup_atom, const proto::negotiated& n, caf::actor& sock, connection_ptr& requests) {  // server: VERSION done
        auto& st = self->state;
        if (sock != st.socket) return;
        {
          std::lock_guard<std::mutex> g(st.c.status->m);
          st.c.status->neg = n;
          // A host's own calls (DMA from a plain thread) go where the device's go.
          if (auto t = std::dynamic_pointer_cast<stream_transport>(requests)) st.c.status->transport = t;
        }
        st.ever_ready = true;
        st.c.status->set(conn_state::ready);
      },
      [=](close_atom) {
        auto& st = self->state;
        st.closing = true;
        if (st.lst) st.lst->close();
        if (st.socket) self->send_exit(st.socket, caf::exit_reason::user_shutdown);
        // This actor will not see the socket actor go: the handler (a device, which may be
        // served again by another endpoint) hears of the loss now.
        if (st.socket && st.c.handler) self->send(st.c.handler, connlost_atom::value);
        self->send_exit(st.c.corr, caf::exit_reason::user_shutdown);
        self->send_exit(st.c.disp, caf::exit_reason::user_shutdown);
        st.c.status->set(conn_state::closed);
        self->quit();
      },
  };
}

}  // namespace

caf::actor spawn_supervisor(caf::actor_system& sys, supervisor_config c) { return sys.spawn(supervisor_actor, std::move(c)); }

}  // namespace vfu
