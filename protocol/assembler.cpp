#include "protocol/assembler.hpp"

#include <algorithm>
#include <cstring>

#include "protocol/limits.hpp"

namespace vfu::proto {

void frame_assembler::fail(std::vector<event>& out, error e) {
  failed_ = true;
  cur_ = frame{};
  event ev{event::fatal, {}, {}, std::move(e)};
  out.push_back(std::move(ev));
}

void frame_assembler::feed(const uint8_t* data, size_t n, fd_list fds, std::vector<event>& out) {
  if (failed_) return;  // fds close as `fds` goes out of scope
  const size_t first_event = out.size();
  size_t i = 0;
  while (i < n) {
    if (draining_) {  // (its rejected event went out with its header)
      size_t k = size_t(std::min<uint64_t>(drain_left_, n - i));
      drain_left_ -= k;
      i += k;
      if (drain_left_ == 0) draining_ = false;
      continue;
    }
    if (!in_body_) {
      size_t k = std::min(header_size - hdr_have_, n - i);
      std::memcpy(hdr_buf_ + hdr_have_, data + i, k);
      hdr_have_ += k;
      i += k;
      if (hdr_have_ < header_size) break;
      hdr_have_ = 0;
      header h = read_header(hdr_buf_);
      uint32_t type = h.flags & hflags::type_mask;
      if (h.msg_size < header_size) {
        fail(out, error(errc::bad_header, "msg_size " + std::to_string(h.msg_size) + " < 16"));
        return;
      }
      if (type != hflags::type_command && type != hflags::type_reply) {
        fail(out, error(errc::bad_header, "message type " + std::to_string(type)));
        return;
      }
      if (h.msg_size > max_frame_) {
        // Answered now, not when (if ever) its body has come.
        std::string what = "msg_size " + std::to_string(h.msg_size) + " > limit " + std::to_string(max_frame_);
        out.push_back(event{event::rejected, {}, h, error(errc::too_large, what)});
        cur_.fds.clear();  // fds that came with its header go with it
        if (h.msg_size - max_frame_ > limits::oversize_drain_max) {
          fail(out, error(errc::too_large, what + ": too far over it to read and drop"));
          return;
        }
        draining_ = true;
        drain_left_ = h.msg_size - header_size;
        continue;
      }
      if (spare_.capacity() >= h.msg_size) cur_.bytes = std::move(spare_);
      cur_.bytes.resize(h.msg_size);  // checked against max_frame_ above
      std::memcpy(cur_.bytes.data(), hdr_buf_, header_size);
      body_have_ = header_size;
      in_body_ = true;
    }
    size_t k = std::min(cur_.bytes.size() - body_have_, n - i);
    std::memcpy(cur_.bytes.data() + body_have_, data + i, k);
    body_have_ += k;
    i += k;
    if (body_have_ == cur_.bytes.size()) {
      in_body_ = false;
      out.push_back(event{event::frame_ready, std::move(cur_), {}, {}});
      cur_ = frame{};
    }
  }
  if (fds.empty()) return;
  // Attribute this read's fds to the frame holding its last byte.
  if (n == 0) return;  // fds without bytes: cannot be attributed, close them
  if (mid_frame()) {
    if (draining_) return;  // fds of a frame being drained close here
    // Mid-header or mid-body: the fds travel with the frame being read.
    for (auto& fd : fds) cur_.fds.push_back(std::move(fd));
    if (cur_.fds.size() > limits::scm_max_fd) fail(out, error(errc::bad_fds, "too many fds for one frame"));
    return;
  }
  if (out.size() > first_event && out.back().kind == event::frame_ready) {
    auto& f = out.back().f;
    for (auto& fd : fds) f.fds.push_back(std::move(fd));
    if (f.fds.size() > limits::scm_max_fd) fail(out, error(errc::bad_fds, "too many fds for one frame"));
  }
  // Otherwise the last byte ended a rejected frame: its fds close here.
}

std::pair<uint8_t*, size_t> frame_assembler::body_window(size_t min) noexcept {
  if (failed_ || !in_body_ || draining_) return {nullptr, 0};
  size_t left = cur_.bytes.size() - body_have_;
  if (left < min) return {nullptr, 0};
  return {cur_.bytes.data() + body_have_, left};
}

void frame_assembler::body_filled(size_t n, fd_list fds, std::vector<event>& out) {
  if (failed_ || !in_body_ || n > cur_.bytes.size() - body_have_) return;
  body_have_ += n;
  for (auto& fd : fds) cur_.fds.push_back(std::move(fd));
  if (cur_.fds.size() > limits::scm_max_fd) return fail(out, error(errc::bad_fds, "too many fds for one frame"));
  if (body_have_ == cur_.bytes.size()) {
    in_body_ = false;
    out.push_back(event{event::frame_ready, std::move(cur_), {}, {}});
    cur_ = frame{};
  }
}

}  // namespace vfu::proto
