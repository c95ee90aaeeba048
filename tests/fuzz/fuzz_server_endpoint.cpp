// libFuzzer target: a live server endpoint under arbitrary client input.
//
// Each input is a byte stream that a client writes to a sample device served by the real
// broker (socket, correlation, dispatcher, supervisor and device actors) over a socketpair
// inside this process. Byte 0 picks the device (bit 0: dma-test, else gpio), whether a
// valid VERSION goes first so that post-negotiation paths are reached (bit 1), whether
// pieces carry an eventfd as SCM_RIGHTS (bit 2), and whether the client answers the
// server's DMA_READ/DMA_WRITE between pieces (bit 3; bit 4: in QEMU's layout), so that
// DMA_MAP and DMA_UNMAP race message DMA in flight; byte 1 sets the piece size. Handlers
// have 100 ms deadlines, so timed-out requests and unmaps that outlive them are reached.
// Then the client half-closes and reads until the server closes. A crash, a sanitizer
// report, a hang (libFuzzer -timeout) or a leaked fd (checked every input) is a finding.
#include <dirent.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "actors/endpoint.hpp"
#include "tests/fuzz/fuzz_support.hpp"
#include "device/samples.hpp"

using namespace vfu;

namespace {

runtime* rt = nullptr;

void send_piece(int fd, const uint8_t* p, size_t n, bool with_fd) {
  iovec iov{const_cast<uint8_t*>(p), n};
  msghdr mh{};
  mh.msg_iov = &iov;
  mh.msg_iovlen = 1;
  alignas(cmsghdr) char cbuf[CMSG_SPACE(sizeof(int))];
  proto::unique_fd efd;
  if (with_fd) {
    efd.reset(::eventfd(0, EFD_CLOEXEC));
    mh.msg_control = cbuf;
    mh.msg_controllen = sizeof cbuf;
    cmsghdr* c = CMSG_FIRSTHDR(&mh);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    int v = efd.get();
    std::memcpy(CMSG_DATA(c), &v, sizeof v);
  }
  ::sendmsg(fd, &mh, MSG_NOSIGNAL);  // the server may have closed already: fine
}

// The client's side of the server's requests: DMA_READ is answered with zeros, DMA_WRITE
// with an echo (spec) or a bare header (QEMU). Reads whatever is there without waiting.
struct dma_answerer {
  proto::frame_assembler in{64u << 20};
  bool qemu = false;
  void pump(int fd) {
    uint8_t buf[65536];
    for (;;) {
      ssize_t n = ::recv(fd, buf, sizeof buf, MSG_DONTWAIT);
      if (n <= 0) return;
      std::vector<proto::frame_assembler::event> evs;
      in.feed(buf, size_t(n), {}, evs);
      for (auto& ev : evs) {
        if (ev.kind != proto::frame_assembler::event::frame_ready || !ev.f.hdr().is_command()) continue;
        auto q = qemu ? proto::quirks::qemu() : proto::quirks::spec();
        auto m = proto::decode(ev.f, q);
        if (!m) continue;
        proto::frame out;
        if (auto* r = std::get_if<proto::dma_read_request>(&*m)) {
          if (r->count > (1u << 20)) continue;
          proto::dma_read_reply rep{*r, std::vector<uint8_t>(r->count, 0)};
          rep.layout = qemu ? proto::dma_layout::qemu : proto::dma_layout::spec;
          out = proto::make_frame(ev.f.hdr().msg_id, rep);
        } else if (auto* w = std::get_if<proto::dma_write_request>(&*m)) {
          proto::dma_write_reply rep{{w->addr, w->count, qemu ? proto::dma_layout::empty : proto::dma_layout::spec}};
          out = proto::make_frame(ev.f.hdr().msg_id, rep);
        } else {
          continue;
        }
        send_piece(fd, out.bytes.data(), out.bytes.size(), false);
      }
    }
  }
};

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  rt = new runtime();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  const int baseline = fuzz::open_fds();  // per input: libFuzzer itself opens fds as it goes
  const long t0 = fuzz::now_usec();
  uint8_t mode = data[0];
  size_t piece = 1 + data[1] % 97;
  data += 2;
  size -= 2;
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) std::abort();
  proto::unique_fd client(sv[1]);
  auto dev = dev::spawn_device(rt->system(), dev::make_sample(mode & 1 ? "dma-test" : "gpio"));
  endpoint_config cfg;
  cfg.correlation.short_timeout = std::chrono::milliseconds(50);  // DMA nobody answers
  cfg.handler_timeout = cfg.handler_timeout_long = std::chrono::milliseconds(100);
  const int server_fd = sv[0];
  struct stat sb {};
  const unsigned long server_ino = ::fstat(sv[0], &sb) == 0 ? (unsigned long)sb.st_ino : 0;
  auto ep = endpoint::serve_fd(*rt, proto::unique_fd(sv[0]), cfg, dev);
  if (!ep) std::abort();
  if (mode & 2) {
    auto v = proto::make_frame(0, proto::version_request{{0, 2, std::string("{\"capabilities\":{\"max_msg_fds\":8}}")}});
    send_piece(client.get(), v.bytes.data(), v.bytes.size(), false);
  }
  dma_answerer dma;
  dma.qemu = mode & 16;
  for (size_t off = 0, i = 0; off < size; off += piece, ++i) {
    send_piece(client.get(), data + off, std::min(piece, size - off), (mode & 4) && i % 3 == 0);
    if (mode & 8) dma.pump(client.get());
  }
  for (int i = 0; (mode & 8) && i < 5 && fuzz::wait_readable(client.get(), 10) == 1; ++i) dma.pump(client.get());
  ::shutdown(client.get(), SHUT_WR);
  // Read until the server closes (it must, after our EOF); 30 s means it hung (a loaded
  // 2-core machine running two fuzzers and a build took over 5 s once).
  uint8_t buf[65536];
  for (;;) {
    if (fuzz::wait_readable(client.get(), 30000) != 1) {
      // What the server thinks, to tell "never saw the EOF" from "ended but did not close".
      std::fprintf(stderr, "server did not close the connection within 30 s: state %s, generation %llu, %s\n",
                   to_string((*ep)->state()), (unsigned long long)(*ep)->generation(), (*ep)->stats().c_str());
      std::fprintf(stderr, "server socket was fd %d (inode %lu), client fd %d; input began %.3f s ago on thread %d\n",
                   server_fd, server_ino, client.get(), double(fuzz::now_usec() - t0) / 1e6, int(::syscall(SYS_gettid)));
      {  // is the supervisor alive? (it answers anything unexpected with an error at once)
        caf::scoped_actor self{rt->system()};
        self->request((*ep)->supervisor(), std::chrono::seconds(1), stats_atom::value)
            .receive([](std::string&) {},
                     [](caf::error& e) { std::fprintf(stderr, "supervisor: %s\n", render(e).c_str()); });
        self->request((*ep)->dispatcher(), std::chrono::seconds(1), stats_atom::value)
            .receive([](std::string&) {},
                     [](caf::error& e) { std::fprintf(stderr, "dispatcher: %s\n", render(e).c_str()); });
      }
      {  // does the kernel still have the server socket (/proc/net/unix: RefCount, State)?
        char want[32];
        std::snprintf(want, sizeof want, " %lu", server_ino);
        if (FILE* f = std::fopen("/proc/net/unix", "r")) {
          char line[512];
          while (std::fgets(line, sizeof line, f))
            if (std::strstr(line, want) || std::strncmp(line, "Num", 3) == 0) std::fprintf(stderr, "unix: %s", line);
          std::fclose(f);
        }
        uint8_t b;
        ssize_t n = ::recv(client.get(), &b, 1, MSG_DONTWAIT);
        std::fprintf(stderr, "client recv: %zd (%s)\n", n, n < 0 ? std::strerror(errno) : "data or EOF");
      }
      fuzz::dump_fds();
      fuzz::print_closes_of(server_fd, server_ino);
      std::abort();
    }
    ssize_t n = fuzz::recv_some(client.get(), buf, sizeof buf);
    if (n <= 0) break;
  }
  client.reset();
  (*ep)->close();
  ep.value().reset();
  caf::anon_send_exit(dev, caf::exit_reason::user_shutdown);  // the host owns its device actor
  fuzz::check_no_fd_leak(baseline);
  return 0;
}
