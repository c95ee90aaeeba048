// wire.hpp: bounds-checked little-endian readers and writers for message payloads.
// Internal to protocol/: every read is checked, so a short payload becomes an error value,
// never an out-of-bounds access.
#pragma once

#include <cstdint>
#include <cstring>
#include <vector>

#include "protocol/frame.hpp"

namespace vfu::proto::wire {

class reader {
 public:
  explicit reader(byte_view v) : p_(v.data), n_(v.size) {}
  size_t remaining() const noexcept { return n_ - off_; }
  size_t offset() const noexcept { return off_; }
  template <class T>
  bool get(T& out) noexcept {
    static_assert(std::is_trivially_copyable_v<T>);
    if (remaining() < sizeof(T)) return false;
    std::memcpy(&out, p_ + off_, sizeof(T));
    off_ += sizeof(T);
    return true;
  }
  /// Copies n bytes; the caller has validated n against a limit.
  bool bytes(size_t n, std::vector<uint8_t>& out) {
    if (remaining() < n) return false;
    out.assign(p_ + off_, p_ + off_ + n);
    off_ += n;
    return true;
  }
  bool skip(size_t n) noexcept {
    if (remaining() < n) return false;
    off_ += n;
    return true;
  }
  const uint8_t* here() const noexcept { return p_ + off_; }

 private:
  const uint8_t* p_;
  size_t n_;
  size_t off_ = 0;
};

class writer {
 public:
  explicit writer(frame_bytes& out) : out_(out) {}
  template <class T>
  void put(T v) {
    static_assert(std::is_trivially_copyable_v<T>);
    size_t at = out_.size();
    out_.resize(at + sizeof(T));
    std::memcpy(out_.data() + at, &v, sizeof(T));
  }
  void bytes(const uint8_t* p, size_t n) { out_.insert(out_.end(), p, p + n); }
  void bytes(const std::vector<uint8_t>& v) { out_.insert(out_.end(), v.begin(), v.end()); }
  void zeros(size_t n) { out_.resize(out_.size() + n, 0); }
  /// n more bytes, uninitialised (frame_bytes): for a caller that writes all of them.
  void grow(size_t n) { out_.resize(out_.size() + n); }
  size_t size() const noexcept { return out_.size(); }
  frame_bytes& buffer() noexcept { return out_; }

 private:
  frame_bytes& out_;
};

/// a + b, or false when it wraps (libvfio-user's satadd idea, as a checked add).
inline bool add_overflows(uint64_t a, uint64_t b, uint64_t& sum) noexcept {
  return __builtin_add_overflow(a, b, &sum);
}

}  // namespace vfu::proto::wire
