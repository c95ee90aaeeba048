#include "protocol/frame.hpp"

#include <fcntl.h>

#include <cstdio>

namespace vfu::proto {

unique_fd unique_fd::dup() const noexcept {
  if (fd_ < 0) return unique_fd();
  return unique_fd(::fcntl(fd_, F_DUPFD_CLOEXEC, 0));
}

const char* command_name(uint16_t c) noexcept {
  static const char* names[] = {nullptr, "VERSION", "DMA_MAP", "DMA_UNMAP", "DEVICE_GET_INFO",
                                "DEVICE_GET_REGION_INFO", "DEVICE_GET_REGION_IO_FDS",
                                "DEVICE_GET_IRQ_INFO", "DEVICE_SET_IRQS", "REGION_READ",
                                "REGION_WRITE", "DMA_READ", "DMA_WRITE", "DEVICE_RESET",
                                nullptr, "REGION_WRITE_MULTI", "DEVICE_FEATURE", "MIG_DATA_READ",
                                "MIG_DATA_WRITE"};
  if (is_known_command(c)) return names[c];
  thread_local char buf[16];
  std::snprintf(buf, sizeof buf, "CMD_%u", unsigned(c));
  return buf;
}

std::string describe(const header& h, size_t nfds) {
  char buf[160];
  const char* type = h.is_reply() ? (h.is_error() ? "error reply" : "reply")
                                  : (h.is_command() ? (h.no_reply() ? "command, no reply" : "command") : "bad type");
  std::snprintf(buf, sizeof buf, "id=0x%04x %s size=%u flags=0x%x (%s) errno=%u fds=%zu", h.msg_id,
                command_name(h.command), h.msg_size, h.flags, type, h.error_no, nfds);
  return buf;
}

std::string to_hex(byte_view b) {
  static const char* digits = "0123456789abcdef";
  std::string s;
  s.reserve(b.size * 2);
  for (uint8_t x : b) {
    s.push_back(digits[x >> 4]);
    s.push_back(digits[x & 15]);
  }
  return s;
}

bool from_hex(const std::string& s, std::vector<uint8_t>& out) {
  if (s.size() % 2) return false;
  out.clear();
  out.reserve(s.size() / 2);
  auto nib = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  for (size_t i = 0; i < s.size(); i += 2) {
    int hi = nib(s[i]), lo = nib(s[i + 1]);
    if (hi < 0 || lo < 0) return false;
    out.push_back(uint8_t(hi << 4 | lo));
  }
  return true;
}

}  // namespace vfu::proto
