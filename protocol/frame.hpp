// frame.hpp: one whole message as it crossed the socket: header + payload bytes, plus the
// file descriptors that arrived with it (owned).
#pragma once

#include <cstdint>
#include <cstring>
#include <memory>
#include <new>
#include <type_traits>
#include <utility>
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

/// Allocates bytes without zeroing them: a frame's bytes are always written (encoded, or
/// received) before they are read, and zeroing a 1 MiB region transfer's frame cost 9% of
/// the serving process's CPU. Otherwise std::allocator<uint8_t>.
template <class T>
struct uninit_allocator : std::allocator<T> {
  template <class U>
  struct rebind {
    using other = uninit_allocator<U>;
  };
  uninit_allocator() noexcept = default;
  template <class U>
  uninit_allocator(const uninit_allocator<U>&) noexcept {}
  template <class U>
  void construct(U* p) noexcept(std::is_nothrow_default_constructible<U>::value) {
    ::new (static_cast<void*>(p)) U;  // default-initialisation: no zeroing
  }
  template <class U, class... Args>
  void construct(U* p, Args&&... args) {
    ::new (static_cast<void*>(p)) U(std::forward<Args>(args)...);
  }
};

/// A frame's byte buffer: a std::vector whose resize() leaves new bytes uninitialised.
using frame_bytes = std::vector<uint8_t, uninit_allocator<uint8_t>>;
// Found by ADL (the allocator's namespace): golden-bytes comparisons in tests and tools.
inline bool operator==(const frame_bytes& a, const std::vector<uint8_t>& b) noexcept {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size()) == 0);
}
inline bool operator==(const std::vector<uint8_t>& a, const frame_bytes& b) noexcept { return b == a; }
inline bool operator!=(const frame_bytes& a, const std::vector<uint8_t>& b) noexcept { return !(a == b); }
inline bool operator!=(const std::vector<uint8_t>& a, const frame_bytes& b) noexcept { return !(b == a); }

struct frame {
  frame_bytes bytes;  ///< header followed by payload; size() == msg_size
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
