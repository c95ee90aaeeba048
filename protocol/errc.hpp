// errc.hpp: the one error type of vfu-broker, and the one mapping from it to a wire errno.
//
// Design: every failure, from a short payload to a dead peer, is an `error` value carrying
// (code, errno, context). `code` says *what kind* of failure it was, so callers can branch on
// it; `errnum` is what goes into a reply's error_no (or what a peer sent us); `context` says
// where and why, for logs. No exceptions cross the protocol layer. The actors layer wraps the
// same enum as a caf::error (CAF_ERROR_CODE_ENUM), so a request's failure reads the same at
// every level.
#pragma once

#include <cerrno>
#include <cstdint>
#include <string>
#include <utility>
#include <variant>

namespace vfu::proto {

/// What went wrong. Values are pinned: they travel inside caf::error as a uint8_t.
enum class errc : uint8_t {
  none = 0,
  truncated = 1,        ///< Payload shorter than the command's fixed part (EINVAL).
  trailing_bytes = 2,   ///< Payload longer than the command allows (EINVAL).
  bad_argsz = 3,        ///< argsz below the fixed size or inconsistent with the payload (EINVAL).
  bad_flags = 4,        ///< Unknown, reserved or contradictory flag bits (EINVAL).
  bad_value = 5,        ///< An index, enum value or field out of its range (EINVAL).
  overflow = 6,         ///< offset + size wraps around 64 bits (EINVAL).
  too_large = 7,        ///< A size or count above a named limit (E2BIG).
  bad_json = 8,         ///< VERSION capabilities are not valid JSON or have wrong types (EINVAL).
  bad_fds = 9,          ///< Wrong number of file descriptors for this message (EINVAL).
  bad_cap_chain = 10,   ///< Region-info capability chain out of bounds or looping (EINVAL).
  bad_header = 11,      ///< Header unusable: the stream can no longer be trusted (EPROTO).
  unknown_command = 12, ///< Command number we do not implement (ENOSYS).
  unsupported = 13,     ///< Known command or feature we do not support here (ENOTSUP).
  unexpected = 14,      ///< A well-formed message that is wrong at this point (EINVAL).
  peer_gone = 20,       ///< The connection closed or failed (ECONNRESET / the cause).
  timeout = 21,         ///< No reply within the request's timeout (ETIMEDOUT).
  busy = 22,            ///< Too many outstanding requests (EAGAIN).
  io_error = 23,        ///< A system call failed; errnum is its errno.
  remote_error = 24,    ///< The peer answered with an error reply; errnum is its error_no.
  cancelled = 25,       ///< The request was withdrawn (ECANCELED).
  not_connected = 26,   ///< No connection is ready (ENOTCONN).
  protocol_violation = 27, ///< The peer broke a rule that is not a framing error (EPROTO).
};

/// Name of the enumerator, e.g. "truncated".
const char* to_string(errc code) noexcept;

/// The errno a reply carries for this code when no more specific errno is known.
int default_errno(errc code) noexcept;

/// An error: what kind, the errno it maps to (or that the peer sent), and where/why.
struct error {
  errc code = errc::none;
  int errnum = 0;
  std::string context;

  error() = default;
  error(errc c, std::string ctx) : code(c), errnum(default_errno(c)), context(std::move(ctx)) {}
  error(errc c, int e, std::string ctx) : code(c), errnum(e), context(std::move(ctx)) {}

  explicit operator bool() const noexcept { return code != errc::none; }
  /// "truncated (EINVAL): DMA_MAP payload 12 < 32"
  std::string message() const;
};

/// The single conversion point to a reply's error_no: always a positive errno.
int to_wire_errno(const error& e) noexcept;

/// A value or an error (C++17 has no std::expected).
template <class T>
class [[nodiscard]] result {
 public:
  result(T value) : v_(std::move(value)) {}            // NOLINT: implicit by design
  result(error err) : v_(std::move(err)) {}            // NOLINT
  bool ok() const noexcept { return v_.index() == 0; }
  explicit operator bool() const noexcept { return ok(); }
  T& value() & { return std::get<0>(v_); }
  const T& value() const& { return std::get<0>(v_); }
  T&& value() && { return std::get<0>(std::move(v_)); }
  T* operator->() { return &std::get<0>(v_); }
  const T* operator->() const { return &std::get<0>(v_); }
  T& operator*() & { return value(); }
  const error& err() const { return std::get<1>(v_); }

 private:
  std::variant<T, error> v_;
};

/// Success or an error.
class [[nodiscard]] status {
 public:
  status() = default;
  status(error e) : e_(std::move(e)) {}                // NOLINT
  bool ok() const noexcept { return !e_; }
  explicit operator bool() const noexcept { return ok(); }
  const error& err() const { return e_; }

 private:
  error e_;
};

}  // namespace vfu::proto
