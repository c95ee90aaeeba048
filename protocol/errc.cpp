#include "protocol/errc.hpp"

#include <cstring>

namespace vfu::proto {

const char* to_string(errc code) noexcept {
  switch (code) {
    case errc::none: return "none";
    case errc::truncated: return "truncated";
    case errc::trailing_bytes: return "trailing_bytes";
    case errc::bad_argsz: return "bad_argsz";
    case errc::bad_flags: return "bad_flags";
    case errc::bad_value: return "bad_value";
    case errc::overflow: return "overflow";
    case errc::too_large: return "too_large";
    case errc::bad_json: return "bad_json";
    case errc::bad_fds: return "bad_fds";
    case errc::bad_cap_chain: return "bad_cap_chain";
    case errc::bad_header: return "bad_header";
    case errc::unknown_command: return "unknown_command";
    case errc::unsupported: return "unsupported";
    case errc::unexpected: return "unexpected";
    case errc::peer_gone: return "peer_gone";
    case errc::timeout: return "timeout";
    case errc::busy: return "busy";
    case errc::io_error: return "io_error";
    case errc::remote_error: return "remote_error";
    case errc::cancelled: return "cancelled";
    case errc::not_connected: return "not_connected";
    case errc::protocol_violation: return "protocol_violation";
  }
  return "unknown";
}

int default_errno(errc code) noexcept {
  switch (code) {
    case errc::none: return 0;
    case errc::too_large: return E2BIG;
    case errc::bad_header: return EPROTO;
    case errc::protocol_violation: return EPROTO;
    // ENOSYS, as QEMU answers unknown server->client commands: "no such operation", which
    // lets a peer probing for an optional command tell it apart from a malformed one.
    case errc::unknown_command: return ENOSYS;
    case errc::unsupported: return ENOTSUP;
    case errc::peer_gone: return ECONNRESET;
    case errc::timeout: return ETIMEDOUT;
    case errc::busy: return EAGAIN;
    case errc::io_error: return EIO;
    case errc::remote_error: return EIO;
    case errc::cancelled: return ECANCELED;
    case errc::not_connected: return ENOTCONN;
    default: return EINVAL;
  }
}

int to_wire_errno(const error& e) noexcept {
  // A reply's error_no must be a positive errno; libvfio-user coerces 0 and > 4096 to
  // EINVAL on receipt, so never send those.
  int n = e.errnum > 0 && e.errnum < 4096 ? e.errnum : default_errno(e.code);
  return n > 0 ? n : EINVAL;
}

std::string error::message() const {
  std::string s = to_string(code);
  if (errnum > 0) {
    s += " (";
    const char* name = strerrorname_np(errnum);
    s += name ? name : std::to_string(errnum);
    s += ")";
  }
  if (!context.empty()) {
    s += ": ";
    s += context;
  }
  return s;
}

}  // namespace vfu::proto
