// Shared helpers for protocol tests.
#pragma once

#include <cstdlib>
#include <string>
#include <vector>

#include "protocol/frame.hpp"

namespace vfu::test {

/// Bytes from a hex string; the string is a test literal, so a typo aborts the test binary.
inline std::vector<uint8_t> hex(const std::string& s) {
  std::string clean;
  for (char c : s)
    if (c != ' ' && c != '\n' && c != '_') clean.push_back(c);
  std::vector<uint8_t> out;
  if (!proto::from_hex(clean, out)) std::abort();
  return out;
}

/// The folder holding the *.vec captures: $VFU_VECTORS_DIR, else ../shared/vectors next to
/// the source tree. Empty if neither exists.
std::string vectors_dir();

}  // namespace vfu::test
