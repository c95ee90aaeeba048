#include "tools/harness/values.hpp"

#include <cerrno>
#include <cstdio>
#include <cstdlib>

#include "protocol/frame.hpp"

namespace vfu::harness {

namespace {

struct errno_name {
  const char* name;
  int value;
};
// The errnos a vfio-user peer sends or a scenario checks. ENOTSUP comes before EOPNOTSUPP
// (the same number on Linux) so that it is the name printed.
const errno_name errnos[] = {
    {"EPERM", EPERM},       {"ENOENT", ENOENT},         {"EINTR", EINTR},         {"EIO", EIO},
    {"ENXIO", ENXIO},       {"E2BIG", E2BIG},           {"EBADF", EBADF},         {"EAGAIN", EAGAIN},
    {"ENOMEM", ENOMEM},     {"EACCES", EACCES},         {"EFAULT", EFAULT},       {"EBUSY", EBUSY},
    {"EEXIST", EEXIST},     {"ENODEV", ENODEV},         {"EINVAL", EINVAL},       {"ENOSPC", ENOSPC},
    {"ERANGE", ERANGE},     {"ENOSYS", ENOSYS},         {"ENOTSUP", ENOTSUP},     {"EOPNOTSUPP", EOPNOTSUPP},
    {"EPROTO", EPROTO},     {"EMSGSIZE", EMSGSIZE},     {"EOVERFLOW", EOVERFLOW}, {"ENOMSG", ENOMSG},
    {"EBADMSG", EBADMSG},   {"ECONNRESET", ECONNRESET}, {"ENOTCONN", ENOTCONN},   {"ETIMEDOUT", ETIMEDOUT},
    {"ECANCELED", ECANCELED}, {"EPIPE", EPIPE},         {"ENOBUFS", ENOBUFS},     {"EALREADY", EALREADY},
};

bool is_digit(char c) { return c >= '0' && c <= '9'; }

int hexval(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

}  // namespace

bool parse_number(const std::string& s, uint64_t& out, std::string& err, uint64_t max) {
  if (s.empty()) {
    err = "empty number";
    return false;
  }
  uint64_t v = 0;
  bool hex = s.size() > 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'X');
  if (hex) {
    for (size_t i = 2; i < s.size(); ++i) {
      int d = hexval(s[i]);
      if (d < 0) {
        err = "bad hex number '" + s + "'";
        return false;
      }
      if (v >> 60) {
        err = "number '" + s + "' does not fit in 64 bits";
        return false;
      }
      v = v << 4 | uint64_t(d);
    }
  } else {
    for (char c : s) {
      if (!is_digit(c)) {
        err = "bad number '" + s + "'";
        return false;
      }
      if (__builtin_mul_overflow(v, 10, &v) || __builtin_add_overflow(v, uint64_t(c - '0'), &v)) {
        err = "number '" + s + "' does not fit in 64 bits";
        return false;
      }
    }
  }
  if (v > max) {
    err = "number " + s + " is larger than " + std::to_string(max);
    return false;
  }
  out = v;
  return true;
}

bool parse_enum(const std::string& s, const std::vector<flag_name>& names, uint64_t& out, std::string& err) {
  for (auto& n : names)
    if (s == n.name) {
      out = n.value;
      return true;
    }
  if (!s.empty() && is_digit(s[0])) return parse_number(s, out, err);
  err = "unknown name '" + s + "' (one of:";
  for (auto& n : names) err += std::string(" ") + n.name;
  err += ", or a number)";
  return false;
}

bool parse_flags(const std::string& s, const flag_table& t, uint64_t& out, std::string& err) {
  uint64_t v = 0;
  size_t at = 0;
  while (true) {
    size_t bar = s.find('|', at);
    std::string part = s.substr(at, bar == std::string::npos ? std::string::npos : bar - at);
    if (part.empty()) {
      err = "empty flag name in '" + s + "'";
      return false;
    }
    bool found = false;
    for (auto& n : t.bits)
      if (part == n.name) {
        v |= n.value;
        found = true;
      }
    for (auto& n : t.enums)
      if (!found && part == n.name) {
        v |= n.value;
        found = true;
      }
    if (!found) {
      uint64_t x;
      if (is_digit(part[0])) {
        if (!parse_number(part, x, err)) return false;
        v |= x;
      } else {
        err = "unknown flag '" + part + "' (known:";
        for (auto& n : t.bits) err += std::string(" ") + n.name;
        for (auto& n : t.enums) err += std::string(" ") + n.name;
        err += ")";
        return false;
      }
    }
    if (bar == std::string::npos) break;
    at = bar + 1;
  }
  out = v;
  return true;
}

bool parse_errno(const std::string& s, int& out, std::string& err) {
  for (auto& e : errnos)
    if (s == e.name) {
      out = e.value;
      return true;
    }
  uint64_t v;
  if (!s.empty() && is_digit(s[0])) {
    if (!parse_number(s, v, err, 4095)) return false;
    out = int(v);
    return true;
  }
  err = "unknown errno '" + s + "' (use a name such as EINVAL, or a number)";
  return false;
}

bool parse_duration(const std::string& s, std::chrono::microseconds& out, std::string& err) {
  size_t i = 0;
  while (i < s.size() && (is_digit(s[i]) || s[i] == '.')) ++i;
  std::string num = s.substr(0, i), unit = s.substr(i);
  if (num.empty() || num.find('.') != num.rfind('.')) {
    err = "bad duration '" + s + "' (e.g. 250ms, 5s)";
    return false;
  }
  double mult;
  if (unit == "ms" || unit.empty()) mult = 1000;
  else if (unit == "s") mult = 1e6;
  else if (unit == "us") mult = 1;
  else {
    err = "bad duration unit '" + unit + "' (us, ms or s)";
    return false;
  }
  double v = std::strtod(num.c_str(), nullptr) * mult;
  if (v > 3600e6) {
    err = "duration '" + s + "' is longer than an hour";
    return false;
  }
  out = std::chrono::microseconds(int64_t(v));
  return true;
}

bool parse_bytes(const std::string& s, std::vector<uint8_t>& out, std::string& err) {
  std::string hex = s;
  uint64_t repeat = 1;
  if (auto star = s.find('*'); star != std::string::npos) {
    hex = s.substr(0, star);
    if (!parse_number(s.substr(star + 1), repeat, err, 64u << 20)) return false;
  }
  std::vector<uint8_t> one;
  if (!proto::from_hex(hex, one)) {
    err = "bad hex bytes '" + (s.size() > 40 ? s.substr(0, 40) + "..." : s) + "' (an even number of hex digits)";
    return false;
  }
  if (one.size() * repeat > (64u << 20)) {
    err = "byte string longer than 64 MiB";
    return false;
  }
  out.clear();
  out.reserve(one.size() * repeat);
  for (uint64_t i = 0; i < repeat; ++i) out.insert(out.end(), one.begin(), one.end());
  return true;
}

bool parse_bool(const std::string& s, bool& out, std::string& err) {
  if (s == "yes" || s == "true" || s == "1") out = true;
  else if (s == "no" || s == "false" || s == "0") out = false;
  else {
    err = "expected yes or no, got '" + s + "'";
    return false;
  }
  return true;
}

std::string errno_text(int e) {
  for (auto& n : errnos)
    if (n.value == e) return n.name;
  return "errno " + std::to_string(e);
}

std::string format_number(uint64_t v) {
  if (v < 10) return std::to_string(v);
  char buf[48];
  std::snprintf(buf, sizeof buf, "%llu (0x%llx)", static_cast<unsigned long long>(v), static_cast<unsigned long long>(v));
  return buf;
}

std::string format_flags(uint64_t v, const flag_table& t) {
  std::string names;
  uint64_t rest = v;
  if (t.enum_mask) {
    uint64_t e = v & t.enum_mask;
    for (auto& n : t.enums)
      if (n.value == e) {
        names = n.name;
        rest &= ~t.enum_mask;
        break;
      }
  }
  for (auto& n : t.bits)
    if (n.value && (rest & n.value) == n.value) {
      if (!names.empty()) names += "|";
      names += n.name;
      rest &= ~n.value;
    }
  char buf[24];
  std::snprintf(buf, sizeof buf, "0x%llx", static_cast<unsigned long long>(v));
  if (names.empty()) return buf;
  if (rest) {
    char r[24];
    std::snprintf(r, sizeof r, "|0x%llx", static_cast<unsigned long long>(rest));
    names += r;
  }
  return names + " (" + buf + ")";
}

std::string format_bytes(proto::byte_view b, size_t max) {
  if (b.size == 0) return "(empty)";
  if (b.size <= max) return proto::to_hex(b);
  return proto::to_hex({b.data, max}) + "... (" + std::to_string(b.size) + " bytes)";
}

std::string format_duration(std::chrono::nanoseconds d) {
  char buf[32];
  double us = double(d.count()) / 1000.0;
  if (us < 1000) std::snprintf(buf, sizeof buf, "%.1f us", us);
  else if (us < 1e6) std::snprintf(buf, sizeof buf, "%.2f ms", us / 1000);
  else std::snprintf(buf, sizeof buf, "%.2f s", us / 1e6);
  return buf;
}

}  // namespace vfu::harness
