#define CAF_LOG_COMPONENT "vfu"
#include "actors/endpoint.hpp"

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#include "actors/supervisor.hpp"

namespace vfu {

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
  c.twin_socket = true;  // our DMA never meets our own requests on one socket
  c.present = {"max_msg_fds", "max_data_xfer_size", "twin_socket"};
  return c;
}

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
  table_ = std::make_shared<pending_table>(cfg_.correlation.max_outstanding);
  corr_ = sys.spawn(correlation_actor, cfg_.correlation, table_);
  dispatcher_config dc;
  dc.role = role_;
  dc.quirks = cfg_.quirks;
  dc.offer = cfg_.offer;
  dc.handler_timeout = cfg_.handler_timeout;
  dc.handler_timeout_long = cfg_.handler_timeout_long;
  // The supervisor needs the dispatcher and the dispatcher tells the supervisor about
  // VERSION: spawn the dispatcher, then the supervisor, then introduce them.
  disp_ = spawn_dispatcher(sys, dc, corr_);
  sup_ = spawn_supervisor(sys, supervisor_config{&rt_.io(), role_, cfg_, status_, table_, corr_, disp_, handler, {}});
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
    auto l = make_listener(rt.io(), std::move(fd));
    caf::anon_send(ep->sup_, attach_atom::value, l);
  } else {
    caf::anon_send(ep->sup_, attach_atom::value, std::make_shared<proto::unique_fd>(std::move(fd)));
  }
  return ep;
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
  self->request(disp_, std::chrono::seconds(1), stats_atom::value)
      .receive([&](std::string& s) { out += (out.empty() ? "" : " ") + s; }, [&](caf::error&) {});
  return out + (out.empty() ? "" : " ") + table_->stats_text();
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
