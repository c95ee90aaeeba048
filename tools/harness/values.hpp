// values.hpp: how scenario values are written and printed.
//
// Numbers are decimal or 0x hex; flag sets are names (or numbers) joined by '|'; enums are a
// name or a number; errnos are names (EINVAL) or numbers; byte strings are hex, optionally
// with a repeat count (`00*256`, `41*1024`); durations are `250ms`, `5s`, `100us` (bare = ms).
// Every parser returns false with a message instead of throwing.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "protocol/frame.hpp"

namespace vfu::harness {

struct flag_name {
  const char* name;
  uint64_t value;
};

/// Names for a flag word. `enum_mask` bits (if any) hold an enumerated value rather than
/// independent bits (DEVICE_FEATURE's index in bits 0-15); `enums` name those values.
struct flag_table {
  std::vector<flag_name> bits;
  uint64_t enum_mask = 0;
  std::vector<flag_name> enums;
};

/// "123" or "0x7b" (no sign, no suffix); fails above `max`.
bool parse_number(const std::string& s, uint64_t& out, std::string& err, uint64_t max = UINT64_MAX);
/// "read|write", "get|probe|migration", "0x3", "read|0x10".
bool parse_flags(const std::string& s, const flag_table& t, uint64_t& out, std::string& err);
/// A single name from `names`, or a number.
bool parse_enum(const std::string& s, const std::vector<flag_name>& names, uint64_t& out, std::string& err);
/// "EINVAL" or a number (0..4095).
bool parse_errno(const std::string& s, int& out, std::string& err);
/// "1500ms", "5s", "100us", "250" (ms).
bool parse_duration(const std::string& s, std::chrono::microseconds& out, std::string& err);
/// Hex bytes, an optional "*N" repeat ("00*16"); "" is empty.
bool parse_bytes(const std::string& s, std::vector<uint8_t>& out, std::string& err);
inline bool parse_bytes(const std::string& s, proto::frame_bytes& out, std::string& err) {
  std::vector<uint8_t> v;
  if (!parse_bytes(s, v, err)) return false;
  out.assign(v.begin(), v.end());
  return true;
}
/// "yes/no/true/false/1/0".
bool parse_bool(const std::string& s, bool& out, std::string& err);

/// "EINVAL", or "errno 123".
std::string errno_text(int e);
/// "read|write (0x3)"; just "0x0" for zero.
std::string format_flags(uint64_t v, const flag_table& t);
/// "256 (0x100)" for larger numbers, "7" for small ones.
std::string format_number(uint64_t v);
/// Hex, cut after `max` bytes with "... (N bytes)".
std::string format_bytes(proto::byte_view b, size_t max = 48);
/// Of any contiguous bytes (std::vector<uint8_t>, a frame's bytes).
template <class Bytes>
std::string format_bytes(const Bytes& b, size_t max = 48) {
  return format_bytes(proto::byte_view{b.data(), b.size()}, max);
}
/// "1.23 ms", "45 us".
std::string format_duration(std::chrono::nanoseconds d);

}  // namespace vfu::harness
