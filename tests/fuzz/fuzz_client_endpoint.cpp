// libFuzzer target: our client endpoint against a hostile server.
//
// The input is a sequence of frames (each taken as its header's msg_size, clamped to what is
// left) that a fake server sends: every time the client sends a request, the next input
// frame goes back with the request's msg_id patched in (so replies of any shape reach the
// decoder); input frames whose type is "command" (server->client DMA_READ/DMA_WRITE, or
// garbage) are sent unprompted. Byte 0 bit 0: answer the client's VERSION properly first.
// The client meanwhile enumerates and accesses the device. The client must never crash,
// hang, or leak an fd, whatever the server says.
#include <dirent.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>

#include "actors/endpoint.hpp"
#include "tests/fuzz/fuzz_support.hpp"
#include "device/remote_device.hpp"
#include "protocol/assembler.hpp"

using namespace vfu;
using namespace std::chrono_literals;

namespace {

runtime* rt = nullptr;

// The fake server: answers each request with the next input frame.
void fake_server(int fd, const uint8_t* data, size_t size, bool good_version) {
  proto::frame_assembler in(64u << 20);
  size_t off = 0;
  auto next_frame = [&](std::vector<uint8_t>& out) {
    if (off >= size) return false;
    uint32_t len = 16;
    if (size - off >= 8) std::memcpy(&len, data + off + 4, 4);
    len = std::max<uint32_t>(16, len);
    size_t n = std::min<size_t>(len, size - off);
    out.assign(data + off, data + off + n);
    off += n;
    return true;
  };
  uint8_t buf[65536];
  for (;;) {
    if (fuzz::wait_readable(fd, 2000) != 1) break;
    ssize_t n = fuzz::recv_some(fd, buf, sizeof buf);
    if (n <= 0) break;
    std::vector<proto::frame_assembler::event> evs;
    in.feed(buf, size_t(n), {}, evs);
    for (auto& ev : evs) {
      if (ev.kind != proto::frame_assembler::event::frame_ready) return;
      auto h = ev.f.hdr();
      if (!h.is_command() || h.no_reply()) continue;
      std::vector<uint8_t> out;
      if (h.command == uint16_t(proto::command::version) && good_version) {
        auto v = proto::make_frame(h.msg_id, proto::version_reply{{0, 2, std::string("{\"capabilities\":{}}")}});
        out.assign(v.bytes.begin(), v.bytes.end());
      } else {
        // Unprompted commands from the input first, then the reply.
        while (next_frame(out)) {
          if (out.size() >= 16 && (out[8] & 0xf) == 0) {
            ::send(fd, out.data(), out.size(), MSG_NOSIGNAL);
            continue;
          }
          break;
        }
        if (out.size() >= 16) std::memcpy(out.data(), &h.msg_id, 2);
      }
      if (!out.empty() && ::send(fd, out.data(), out.size(), MSG_NOSIGNAL) < 0) return;
      if (off >= size && !(h.command == uint16_t(proto::command::version) && good_version)) return;
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  rt = new runtime();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const int baseline = fuzz::open_fds();  // per input: libFuzzer itself opens fds as it goes
  bool good_version = data[0] & 1;
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) std::abort();
  std::thread server([fd = sv[1], data, size, good_version] {
    fake_server(fd, data + 1, size - 1, good_version);
    ::close(fd);
  });
  {
    endpoint_config cfg;
    cfg.reconnect = false;
    cfg.correlation.short_timeout = 200ms;
    auto mem = std::make_shared<dev::guest_memory>();
    static uint8_t ram[4096];
    mem->add(0x1000, sizeof ram, ram, proto::dma_flags::read | proto::dma_flags::write);
    auto h = dev::spawn_guest_memory_server(rt->system(), mem, {});
    auto ep = endpoint::connect_fd(*rt, proto::unique_fd(sv[0]), cfg, h, 500ms);
    if (ep) {
      auto& e = **ep;
      proto::fd_list fds;
      (void)e.call_decoded(proto::device_info_request{}, {}, fds);
      for (uint32_t i = 0; i < 3; ++i) {
        proto::region_info_request q;
        q.index = i;
        q.argsz = 512;
        (void)e.call_decoded(q, {}, fds);
      }
      proto::irq_info_request iq;
      iq.index = 2;
      (void)e.call_decoded(iq);
      proto::region_read_request rr;
      rr.region = 7;
      rr.count = 64;
      (void)e.call_decoded(rr);
      proto::io_fds_request io;
      io.argsz = 4096;
      (void)e.call_decoded(io, {}, fds);
      e.close();
    }
    caf::anon_send_exit(h, caf::exit_reason::user_shutdown);
  }
  server.join();
  fuzz::check_no_fd_leak(baseline);
  return 0;
}
