// assembler.hpp: turns a byte stream (read in any pieces) plus the fds that arrived with it
// into whole frames. No I/O here: the socket code feeds it what recvmsg returned.
//
// Three outcomes, kept distinct (architecture.md):
//  - frame:    a complete message with its fds;
//  - rejected: the header was readable but the frame is not acceptable (too large). The
//              event comes with the header, so the layer above answers (E2BIG, if it was a
//              command) without waiting for the body. The body is then drained without
//              being stored, so the stream stays in sync, if it is at most
//              limits::oversize_drain_max over the limit; otherwise a fatal event (code
//              too_large) follows: the layer above answers, then closes;
//  - fatal:    the stream can no longer be trusted (size < 16, bad type bits, too many fds).
// Body bytes are never parsed as a header. Nothing is allocated before the header's size
// has been checked against `max_frame`.
//
// fd attribution (checked on Linux 6.x, caf-0.17.md section 6): one recvmsg returns queued
// data up to and including an fd-carrying sendmsg's bytes, so the fds of a read belong to
// the frame that contains the read's LAST byte.
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

#include "protocol/errc.hpp"
#include "protocol/frame.hpp"

namespace vfu::proto {

class frame_assembler {
 public:
  struct event {
    enum kind_t { frame_ready, rejected, fatal } kind;
    frame f;         ///< frame_ready: the frame
    header hdr{};    ///< rejected: the header of the drained frame
    error err;       ///< rejected / fatal: why
  };

  explicit frame_assembler(uint32_t max_frame) : max_frame_(max_frame) {}

  /// Largest msg_size accepted; takes effect from the next header.
  void set_max_frame(uint32_t n) noexcept { max_frame_ = n; }
  uint32_t max_frame() const noexcept { return max_frame_; }

  /// Feeds one read's bytes and fds. Events are appended to `out`. After a fatal event the
  /// assembler stays failed and ignores (closes) everything fed to it.
  void feed(const uint8_t* data, size_t n, fd_list fds, std::vector<event>& out);

  /// Large frames, one copy less: where the rest of the current frame's body goes, for a
  /// read straight into it. Empty unless a body is under way with at least `min` bytes
  /// still missing (and the frame is not being drained).
  std::pair<uint8_t*, size_t> body_window(size_t min) noexcept;
  /// The frame whose body is under way and where body_window() starts in it (only while
  /// body_window() is not empty).
  std::pair<header, size_t> body_position() const noexcept { return {cur_.hdr(), body_have_}; }
  /// Reports `n` bytes (at most the window's size) read into body_window(), with that
  /// read's fds (they belong to this frame: it holds the read's last byte).
  void body_filled(size_t n, fd_list fds, std::vector<event>& out);
  /// True when some bytes of a frame have been consumed: EOF now is "EOF mid-frame".
  bool mid_frame() const noexcept { return hdr_have_ > 0 || in_body_ || draining_; }
  /// Bytes of the current frame received so far (header included; 0 between frames).
  size_t frame_have() const noexcept { return in_body_ ? body_have_ : hdr_have_; }
  bool failed() const noexcept { return failed_; }
  /// A buffer of a frame this assembler made, done with: the next frame that fits in it is
  /// read into it, without an allocation. One is kept, and only a small one.
  void give_back(frame_bytes&& b) noexcept {
    if (b.capacity() <= spare_max && b.capacity() > spare_.capacity()) spare_ = std::move(b);
  }

 private:
  static constexpr size_t spare_max = 4096;
  void fail(std::vector<event>& out, error e);

  uint32_t max_frame_;
  frame_bytes spare_;  ///< give_back()
  uint8_t hdr_buf_[header_size]{};
  size_t hdr_have_ = 0;
  bool in_body_ = false;
  bool draining_ = false;
  uint64_t drain_left_ = 0;
  frame cur_;
  size_t body_have_ = 0;
  bool failed_ = false;
};

}  // namespace vfu::proto
