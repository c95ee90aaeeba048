// frame.hpp: one whole message as it crossed the socket: header + payload bytes, plus the
// file descriptors that arrived with it (owned).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "protocol/header.hpp"
#include "protocol/unique_fd.hpp"

namespace vfu::proto {

/// A read-only view of bytes (C++17 has no std::span).
struct byte_view {
  const uint8_t* data = nullptr;
  size_t size = 0;
  const uint8_t* begin() const { return data; }
  const uint8_t* end() const { return data + size; }
};

struct frame {
  std::vector<uint8_t> bytes;  ///< header followed by payload; size() == msg_size
  fd_list fds;                 ///< received or to-send descriptors, in order

  header hdr() const noexcept { return read_header(bytes.data()); }
  void set_hdr(const header& h) noexcept { write_header(bytes.data(), h); }
  byte_view payload() const noexcept {
    return {bytes.data() + header_size, bytes.size() - header_size};
  }
  /// Sets msg_id in place (the correlation actor assigns ids at send time).
  void set_msg_id(uint16_t id) noexcept { std::memcpy(bytes.data(), &id, 2); }
};

/// "id=0x12 REGION_READ size=32 flags=0x0 (command) fds=0" for logs and tools.
std::string describe(const header& h, size_t nfds);

/// Lower-case hex of bytes, for vectors and diagnostics.
std::string to_hex(byte_view b);
/// Parses hex (no separators); false on odd length or a non-hex character.
bool from_hex(const std::string& s, std::vector<uint8_t>& out);

}  // namespace vfu::proto
