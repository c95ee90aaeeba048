// vfu-trace: what tcpdump is to TCP, for vfio-user. It sits between a client and a server,
// passes every frame on unchanged, with its fds, in order, both ways, and prints one
// decoded line per frame: time, direction, id, command, size, flags, errno, fds, the
// command's key fields, and for a reply its request's latency.
//
//   vfu-trace --listen=PATH --connect=PATH [--vec=FILE] [--hex] [--json] [--quirks=qemu|...] [--once]
//
// Clients are taken one after another; each gets its own connection to the server (a
// session). A frame that cannot be a frame (msg_size under 16 or over the limit, bad type
// bits, too many fds) ends its session: after it nobody knows where the next frame starts,
// so passing bytes on would only hand the peer garbage. Both sides are then closed, and the
// line says why. A twin socket handed over in the server's VERSION reply is followed: the
// client gets one end of the tracer's own pair instead, and the twin's frames are shown as
// "twin" (recorded as session "<n>/twin" in --vec). Exit 0 after --once's session or SIGINT/SIGTERM; 2 for bad arguments.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <deque>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "protocol/assembler.hpp"
#include "protocol/capabilities.hpp"
#include "protocol/fd_passing.hpp"
#include "protocol/limits.hpp"
#include "protocol/messages.hpp"
#include "tools/harness/fields.hpp"

using namespace vfu;
using namespace vfu::proto;
using json = nlohmann::json;
using clk = std::chrono::steady_clock;

namespace {

volatile sig_atomic_t g_stop = 0;

int usage(const std::string& why) {
  if (!why.empty()) std::fprintf(stderr, "vfu-trace: %s\n", why.c_str());
  std::fprintf(why.empty() ? stdout : stderr,
               "usage: vfu-trace --listen=PATH --connect=PATH [--vec=FILE] [--hex] [--json]\n"
               "                 [--quirks=spec|qemu|libvfio-user] [--once]\n"
               "  Passes every frame between the client that connects to --listen and the server at\n"
               "  --connect, and prints each one decoded (docs/interop.md).\n");
  return why.empty() ? 0 : 2;
}

struct options {
  std::string listen, connect, vec;
  bool hex = false, as_json = false, once = false;
  quirks q;
};

// One direction's bytes waiting to be written, each frame with its fds.
struct out_queue {
  struct item {
    std::vector<uint8_t> bytes;
    fd_list fds;
    size_t done = 0;
  };
  std::deque<item> q;
  size_t bytes = 0;
  // Writes what the socket takes now; false when the peer is gone.
  bool flush(int fd) {
    while (!q.empty()) {
      auto& it = q.front();
      iovec iov{it.bytes.data() + it.done, it.bytes.size() - it.done};
      msghdr mh{};
      mh.msg_iov = &iov;
      mh.msg_iovlen = 1;
      std::vector<uint8_t> cbuf;
      if (it.done == 0 && !it.fds.empty()) {  // the fds go with the frame's first byte
        cbuf.assign(CMSG_SPACE(sizeof(int) * it.fds.size()), 0);
        mh.msg_control = cbuf.data();
        mh.msg_controllen = cbuf.size();
        cmsghdr* c = CMSG_FIRSTHDR(&mh);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int) * it.fds.size());
        for (size_t i = 0; i < it.fds.size(); ++i) {
          int v = it.fds[i].get();
          std::memcpy(CMSG_DATA(c) + i * sizeof(int), &v, sizeof v);
        }
      }
      ssize_t n = ::sendmsg(fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
      if (n < 0) return errno == EAGAIN || errno == EINTR;
      if (it.done == 0) it.fds.clear();  // sent: ours close now, the peer has its own
      it.done += size_t(n);
      bytes -= size_t(n);
      if (it.done == it.bytes.size()) q.pop_front();
    }
    return true;
  }
};

struct side {
  unique_fd fd;
  const char* dir;  ///< the direction of what is read here: "C>S" or "S>C"
  bool twin = false;  ///< on the twin socket
  frame_assembler in{uint32_t(limits::max_data_xfer_ceiling + 4096)};
  out_queue out;    ///< what goes to this side
  bool eof = false;
};

// A client-facing and a server-facing socket: the connection, or its twin socket.
struct link {
  side c, s;
  bool open() const { return bool(c.fd); }
};

class session {
 public:
  session(const options& o, int n, unique_fd client, unique_fd server, std::ofstream* vec)
      : o_(o), n_(n), vec_(vec), t0_(clk::now()) {
    main_.c.fd = std::move(client);
    main_.s.fd = std::move(server);
    for (auto* l : {&main_, &twin_}) {
      l->c.dir = "C>S";
      l->s.dir = "S>C";
    }
    twin_.c.twin = twin_.s.twin = true;
  }

  // Relays until a side of either socket closes or sends what cannot be a frame (the peers
  // end the whole connection when one of its sockets goes).
  void run() {
    note("session " + std::to_string(n_) + " begins");
    while (!g_stop) {
      pollfd p[4];
      int np = 0;
      for (auto* l : {&main_, &twin_}) {
        if (!l->open()) continue;
        p[np] = {l->c.fd.get(), 0, 0};
        p[np + 1] = {l->s.fd.get(), 0, 0};
        // Read a side only while what it sends is not piling up on the way out.
        if (!l->c.eof && l->s.out.bytes < (8u << 20)) p[np].events |= POLLIN;
        if (!l->s.eof && l->c.out.bytes < (8u << 20)) p[np + 1].events |= POLLIN;
        if (!l->c.out.q.empty()) p[np].events |= POLLOUT;
        if (!l->s.out.q.empty()) p[np + 1].events |= POLLOUT;
        np += 2;
      }
      if (::poll(p, nfds_t(np), 200) < 0 && errno != EINTR) break;
      int i = 0;
      for (auto* l : {&main_, &twin_}) {
        if (i >= np) break;
        std::string what = l->c.twin ? "twin socket" : "connection";
        if (!l->open()) continue;
        auto& pc = p[i];
        auto& ps = p[i + 1];
        i += 2;
        if ((pc.revents & POLLOUT) && !l->c.out.flush(l->c.fd.get())) return end("the client went away (" + what + ")");
        if ((ps.revents & POLLOUT) && !l->s.out.flush(l->s.fd.get())) return end("the server went away (" + what + ")");
        if ((pc.revents & (POLLIN | POLLHUP | POLLERR)) && !pump(l->c, l->s)) return;
        if ((ps.revents & (POLLIN | POLLHUP | POLLERR)) && !pump(l->s, l->c)) return;
        if ((l->c.eof && l->c.out.q.empty() && l->s.out.q.empty()) || (l->s.eof && l->c.out.q.empty()))
          return end(std::string(l->c.eof ? "the client closed" : "the server closed") + " (" + what + ")");
      }
    }
    end("stopped");
  }

 private:
  // A VERSION reply that hands over the server's twin socket: the tracer keeps that fd, and
  // the client gets one end of a pair of its own instead, at the same index, so that the
  // twin's frames pass (and are shown) here too. The frame's bytes do not change.
  void follow_twin(frame& f) {
    auto h = f.hdr();
    if (twin_.open() || !h.is_reply() || h.is_error() || h.command != uint16_t(command::version) || f.fds.empty()) return;
    auto m = decode(f, o_.q);
    if (!m) return;
    auto caps = parse_capabilities(std::get<version_reply>(*m).caps_json.value_or(""));
    if (!caps || !caps->twin_socket || !caps->twin_fd_index || *caps->twin_fd_index >= f.fds.size()) return;
    int sv[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {  // (the client's end as a server's would be)
      note(std::string("cannot follow the twin socket (socketpair: ") + std::strerror(errno) + "): it goes to the client untraced");
      return;
    }
    auto& fd = f.fds[*caps->twin_fd_index];
    twin_.s.fd = std::move(fd);
    int fl = ::fcntl(twin_.s.fd.get(), F_GETFL);
    if (fl >= 0) ::fcntl(twin_.s.fd.get(), F_SETFL, fl | O_NONBLOCK);
    twin_.c.fd = unique_fd(sv[0]);
    ::fcntl(sv[0], F_SETFL, ::fcntl(sv[0], F_GETFL) | O_NONBLOCK);
    fd = unique_fd(sv[1]);
    note("twin socket handed over (fd_index " + std::to_string(*caps->twin_fd_index) + "): following it");
  }

  // One read from `from`: its frames are printed and queued for `to`.
  bool pump(side& from, side& to) {
    uint8_t buf[65536];
    fd_list fds;
    bool truncated = false;
    ssize_t n = recv_with_fds(from.fd.get(), buf, sizeof buf, MSG_DONTWAIT, fds, truncated);
    if (n < 0) return errno == EAGAIN || errno == EINTR ? true : (end(std::string(from.dir) + " read failed"), false);
    if (truncated) return end(std::string(from.dir) + ": more fds than a message may carry"), false;
    if (n == 0) {
      if (from.in.mid_frame()) return end(std::string(from.dir) + ": closed in the middle of a frame"), false;
      from.eof = true;
      ::shutdown(to.fd.get(), SHUT_WR);
      return true;
    }
    std::vector<frame_assembler::event> evs;
    from.in.feed(buf, size_t(n), std::move(fds), evs);
    // The frames go on first and are printed after: the peers wait for the bytes, not for
    // the line.
    struct shown_frame {
      header hdr;
      size_t nfds;
      std::vector<uint8_t> bytes;
    };
    std::vector<shown_frame> shown;
    const frame_assembler::event* bad = nullptr;
    for (auto& e : evs) {
      if (e.kind != frame_assembler::event::frame_ready) {
        bad = &e;
        break;
      }
      if (&from == &main_.s) follow_twin(e.f);
      out_queue::item it;
      it.bytes.assign(e.f.bytes.begin(), e.f.bytes.end());
      it.fds = std::move(e.f.fds);
      shown.push_back({e.f.hdr(), it.fds.size(), {}});
      to.out.bytes += it.bytes.size();
      to.out.q.push_back(std::move(it));
      shown.back().bytes = to.out.q.back().bytes;
    }
    bool gone = !to.out.flush(to.fd.get());
    for (auto& f : shown) print(from, f.bytes, f.nfds);
    if (bad) {
      print_malformed(from, *bad);
      return end(std::string(from.dir) + " sent what cannot be a frame: " + bad->err.message()), false;
    }
    if (gone) return end(std::string(to.dir) + " side went away"), false;
    return true;
  }

  double now_s() const { return std::chrono::duration<double>(clk::now() - t0_).count(); }

  void print(const side& from, const std::vector<uint8_t>& bytes, size_t nfds) {
    frame f;
    f.bytes.assign(bytes.begin(), bytes.end());
    header h = f.hdr();
    bool reply = h.is_reply();
    double t = now_s();
    // A reply travels the other way from its request.
    std::string req_dir = std::string(from.twin ? "twin " : "") + (reply ? (from.dir[0] == 'C' ? "S>C" : "C>S") : from.dir);
    double latency = -1;
    if (reply) {
      auto it = pending_.find({req_dir, h.msg_id});
      if (it != pending_.end()) {
        latency = (t - it->second) * 1e6;
        pending_.erase(it);
      }
    } else if (!h.no_reply()) {
      pending_[{req_dir, h.msg_id}] = t;
    }
    harness::field_list fields;
    std::string undecoded;
    if (!h.is_error() || f.payload().size) {
      auto m = decode(h, f.payload(), nfds, o_.q);
      if (m) fields = harness::flatten(*m);
      else if (!h.is_error()) undecoded = m.err().message();
    }
    if (vec_) *vec_ << "s" << n_ << (from.twin ? "/twin" : "") << " " << from.dir << " fds=" << nfds << " " << to_hex(byte_view{f.bytes.data(), f.bytes.size()}) << "\n";
    if (o_.as_json) {
      json j = {{"t", t}, {"session", n_}, {"socket", from.twin ? "twin" : "main"}, {"dir", from.dir}, {"id", h.msg_id}, {"command", command_name(h.command)},
                {"reply", reply}, {"size", h.msg_size}, {"flags", h.flags}, {"fds", nfds}};
      if (h.is_error()) j["errno"] = errno_text(h.error_no);
      if (latency >= 0) j["latency_us"] = latency;
      json fj = json::object();
      for (auto& [k, v] : fields) fj[k] = shown(v);
      j["fields"] = fj;
      if (!undecoded.empty()) j["undecoded"] = undecoded;
      if (o_.hex) j["hex"] = to_hex(f.payload());
      std::printf("%s\n", j.dump().c_str());
    } else {
      std::string line;
      char head[160];
      std::snprintf(head, sizeof head, "%10.6f s%d%s %s #%04x %s %s size=%u flags=0x%x fds=%zu", t, n_,
                    from.twin ? " twin" : "", from.dir, h.msg_id,
                    command_name(h.command), reply ? "reply" : (h.no_reply() ? "command (no reply)" : "command"),
                    h.msg_size, h.flags, nfds);
      line = head;
      if (h.is_error()) line += " errno=" + errno_text(h.error_no);
      if (latency >= 0) {
        char l[32];
        std::snprintf(l, sizeof l, " +%.1fus", latency);
        line += l;
      }
      for (auto& [k, v] : fields) line += " " + k + "=" + shown(v);
      if (!undecoded.empty()) line += " [undecoded: " + undecoded + "]";
      if (o_.hex) line += "\n    " + to_hex(f.payload());
      std::printf("%s\n", line.c_str());
    }
    std::fflush(stdout);
  }

  void print_malformed(const side& from, const frame_assembler::event& e) {
    header h = e.hdr;
    if (o_.as_json)
      std::printf("%s\n", json({{"t", now_s()}, {"session", n_}, {"socket", from.twin ? "twin" : "main"}, {"dir", from.dir},
                                {"malformed", e.err.message()},
                                {"id", h.msg_id}, {"command", h.command}, {"size", h.msg_size}})
                              .dump()
                              .c_str());
    else
      std::printf("%10.6f s%d%s %s MALFORMED id=0x%04x command=%u size=%u: %s\n", now_s(), n_, from.twin ? " twin" : "",
                  from.dir, h.msg_id,
                  h.command, h.msg_size, e.err.message().c_str());
    std::fflush(stdout);
  }

  // A value as printed: long data is cut (all of it with --hex).
  std::string shown(const harness::field_value& v) const {
    if (v.kind == harness::field_kind::bytes && !o_.hex && v.bytes.size() > 16) {
      harness::field_value cut = v;
      cut.bytes.resize(16);
      return harness::to_string(cut) + "...(" + std::to_string(v.bytes.size()) + " bytes)";
    }
    return harness::to_string(v);
  }
  static std::string errno_text(uint32_t e) {
    const char* n = e < 4096 ? strerrorname_np(int(e)) : nullptr;
    return n ? n : std::to_string(e);
  }

  void note(const std::string& what) {
    if (o_.as_json) std::printf("%s\n", json({{"t", now_s()}, {"session", n_}, {"event", what}}).dump().c_str());
    else std::printf("%10.6f s%d -- %s\n", now_s(), n_, what.c_str());
    std::fflush(stdout);
  }
  void end(const std::string& why) {
    note("session " + std::to_string(n_) + " ends: " + why);
    if (vec_) vec_->flush();
  }

  const options& o_;
  int n_;
  std::ofstream* vec_;
  clk::time_point t0_;
  link main_, twin_;
  std::map<std::pair<std::string, uint16_t>, double> pending_;
};

unique_fd unix_socket() { return unique_fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)); }

bool fill_addr(const std::string& path, sockaddr_un& a) {
  std::memset(&a, 0, sizeof a);
  a.sun_family = AF_UNIX;
  if (path.size() >= sizeof a.sun_path) return false;
  std::memcpy(a.sun_path, path.c_str(), path.size());
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  options o;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto val = [&](const char* k, std::string& out) {
      std::string p = std::string(k) + "=";
      if (a.rfind(p, 0) != 0) return false;
      out = a.substr(p.size());
      return true;
    };
    std::string v;
    if (a == "-h" || a == "--help") return usage("");
    else if (val("--listen", o.listen) || val("--connect", o.connect) || val("--vec", o.vec)) continue;
    else if (a == "--hex") o.hex = true;
    else if (a == "--json") o.as_json = true;
    else if (a == "--once") o.once = true;
    else if (val("--quirks", v)) {
      if (v == "qemu") o.q = quirks::qemu();
      else if (v == "libvfio-user") o.q = quirks::libvfio_user();
      else if (v != "spec") return usage("unknown quirks '" + v + "'");
    } else {
      return usage("unknown argument '" + a + "'");
    }
  }
  if (o.listen.empty() || o.connect.empty()) return usage("--listen and --connect are required");
  sockaddr_un la{}, ca{};
  if (!fill_addr(o.listen, la) || !fill_addr(o.connect, ca)) return usage("a socket path is too long");
  std::ofstream vec;
  if (!o.vec.empty()) {
    vec.open(o.vec);
    if (!vec) return usage("cannot write " + o.vec);
    vec << "# vfu-trace capture: client at " << o.listen << ", server at " << o.connect << "\n";
    vec << "# <session> <direction> fds=<n> <hex of the whole frame>\n";
    // Readers decode by the peers a capture names (vec_file::peer_quirks).
    if (o.q.qemu_dma_layout) vec << "# peer: QEMU (its DMA message layout)\n";
    if (o.q.error_reply_payload) vec << "# peer: libvfio-user (its error replies)\n";
  }
  struct sigaction sa {};
  sa.sa_handler = [](int) { g_stop = 1; };
  ::sigaction(SIGINT, &sa, nullptr);
  ::sigaction(SIGTERM, &sa, nullptr);
  ::signal(SIGPIPE, SIG_IGN);

  unique_fd lst = unix_socket();
  ::unlink(o.listen.c_str());
  if (!lst || ::bind(lst.get(), reinterpret_cast<sockaddr*>(&la), sizeof la) != 0 || ::listen(lst.get(), 4) != 0) {
    std::fprintf(stderr, "vfu-trace: cannot listen on %s: %s\n", o.listen.c_str(), std::strerror(errno));
    return 1;
  }
  std::fprintf(stderr, "vfu-trace: listening on %s, passing to %s\n", o.listen.c_str(), o.connect.c_str());
  int n = 0;
  while (!g_stop) {
    pollfd p{lst.get(), POLLIN, 0};
    if (::poll(&p, 1, 200) <= 0) continue;
    unique_fd c(::accept4(lst.get(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK));
    if (!c) continue;
    unique_fd s = unix_socket();
    if (!s || ::connect(s.get(), reinterpret_cast<sockaddr*>(&ca), sizeof ca) != 0) {
      std::printf("vfu-trace: cannot connect to the server at %s: %s; the client is closed\n", o.connect.c_str(),
                  std::strerror(errno));
      std::fflush(stdout);
      if (o.once) break;
      continue;
    }
    session(o, ++n, std::move(c), std::move(s), vec.is_open() ? &vec : nullptr).run();
    if (o.once) break;
  }
  ::unlink(o.listen.c_str());
  return 0;
}
