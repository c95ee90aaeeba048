// libFuzzer target: the receive path of a connection, end to end.
//
// The input is a byte stream as it would arrive on the socket. It is fed to frame_assembler
// in pieces whose sizes come from the input itself (the byte at the start of each piece), so
// a raw captured frame is a meaningful input as it is (seed corpus: make_seeds.sh). Some
// pieces carry real fds (dups of /dev/null), so fd attribution and closing run too.
// Every complete frame is decoded with the spec and with qemu|libvfio_user quirks; whenever
// decode succeeds, the message is re-encoded, decoded again and re-encoded again, and the
// two encodings must be the same bytes (abort otherwise).
#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "protocol/assembler.hpp"
#include "protocol/limits.hpp"
#include "protocol/messages.hpp"

using namespace vfu::proto;

namespace {

int devnull() {
  static int fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  return fd;
}

[[noreturn]] void die(const char* what, const frame& f, const frame_bytes& a, const frame_bytes& b) {
  std::fprintf(stderr, "fuzz_frame_decoder: %s\n  frame %s\n  enc1  %s\n  enc2  %s\n", what,
               to_hex({f.bytes.data(), f.bytes.size()}).c_str(), to_hex({a.data(), a.size()}).c_str(),
               to_hex({b.data(), b.size()}).c_str());
  std::abort();
}

void check_frame(const frame& f, const quirks& q, const decode_limits& lim) {
  auto m = decode(f, q, lim);
  if (!m.ok()) {
    // Every error maps to a positive errno below 4096.
    int e = to_wire_errno(m.err());
    if (e <= 0 || e >= 4096) die("bad errno", f, {}, {});
    return;
  }
  header h = f.hdr();
  if (command_of(*m) != h.command) die("command_of differs from the header", f, {}, {});
  if (is_reply(*m) != h.is_reply()) die("is_reply differs from the header", f, {}, {});
  frame f1 = make_frame(h.msg_id, *m, h.flags & hflags::no_reply);
  auto m2 = decode(f1.hdr(), f1.payload(), f.fds.size(), q, lim);
  if (!m2.ok()) {
    std::fprintf(stderr, "re-decode: %s\n", m2.err().message().c_str());
    die("re-encoded frame does not decode", f, f1.bytes, {});
  }
  frame f2 = make_frame(h.msg_id, *m2, h.flags & hflags::no_reply);
  if (f1.bytes != f2.bytes) die("encode(decode(encode(x))) != encode(x)", f, f1.bytes, f2.bytes);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  // Small frame limit on some inputs so the oversized-frame drain path runs too.
  const uint32_t max_frame = (data[size - 1] & 0x80) ? 256 : uint32_t(limits::our_max_data_xfer) + limits::frame_overhead;
  frame_assembler a(max_frame);
  std::vector<frame_assembler::event> events;
  size_t i = 0;
  bool gave_fds = false;
  while (i < size && !a.failed()) {
    uint8_t b = data[i];
    size_t piece = size_t(b % 23) + 1;
    if (piece > size - i) piece = size - i;
    fd_list fds;
    if ((b & 0xe0) == 0xe0)  // about one piece in eight carries 1-3 fds
      for (int k = 0; k < (b & 3); ++k) fds.emplace_back(::fcntl(devnull(), F_DUPFD_CLOEXEC, 0));
    gave_fds = gave_fds || !fds.empty();
    a.feed(data + i, piece, std::move(fds), events);
    i += piece;
  }
  // The same bytes through the transport's large-body path: whenever a body of at least 32
  // bytes is under way, a "read" goes straight into the frame (at most the piece, at most
  // the window). The events and frames must be exactly those of plain feed() (compared for
  // inputs without fds: too many fds on a frame is a fatal event of its own).
  if (!gave_fds) {
    frame_assembler b(max_frame);
    std::vector<frame_assembler::event> bev;
    size_t j = 0;
    while (j < size && !b.failed()) {
      size_t piece = std::min(size_t(data[j] % 23) + 1, size - j);
      auto win = b.body_window(32);
      if (win.first) {
        size_t n = std::min(piece, win.second);
        std::memcpy(win.first, data + j, n);
        b.body_filled(n, {}, bev);
        j += n;
      } else {
        b.feed(data + j, piece, {}, bev);
        j += piece;
      }
    }
    size_t fa = 0, fb = 0;
    for (auto& ev : events) fa += ev.kind == frame_assembler::event::frame_ready;
    for (auto& ev : bev) fb += ev.kind == frame_assembler::event::frame_ready;
    if (fa != fb) std::abort();
    for (size_t k = 0, m = 0; k < events.size() && m < bev.size(); ++k, ++m) {
      if (events[k].kind != bev[m].kind) std::abort();
      if (events[k].kind == frame_assembler::event::frame_ready && events[k].f.bytes != bev[m].f.bytes) std::abort();
    }
  }
  static const quirks modes[] = {quirks::spec(), quirks::qemu() | quirks::libvfio_user()};
  decode_limits lim;
  for (auto& ev : events) {
    if (ev.kind != frame_assembler::event::frame_ready) continue;
    if (ev.f.bytes.size() < header_size || ev.f.hdr().msg_size != ev.f.bytes.size()) std::abort();
    for (auto& q : modes) check_frame(ev.f, q, lim);
  }
  return 0;
}
