// capabilities.hpp: the VERSION capabilities JSON, parsed and emitted with nlohmann-json,
// and the negotiation rules of the spec ("Version" section).
//
// Parsing is table-driven (one validator per key, as QEMU's cap_entry tables): absent keys
// take their spec defaults, wrong types and out-of-range values are errors, unknown keys are
// ignored (and listed, for a warning). The legacy `migration` object (pgsize,
// max_bitmap_size) that QEMU and libvfio-user still send is accepted and kept.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "protocol/errc.hpp"
#include "protocol/limits.hpp"

namespace vfu::proto {

struct legacy_migration_caps {
  std::optional<uint64_t> pgsize;
  std::optional<uint64_t> max_bitmap_size;
};

struct capabilities {
  uint64_t max_msg_fds = limits::default_max_msg_fds;
  uint64_t max_data_xfer_size = limits::default_max_data_xfer;
  uint64_t max_dma_maps = limits::default_max_dma_maps;
  uint64_t pgsizes = limits::default_pgsizes;
  bool twin_socket = false;                 ///< twin_socket.supported
  std::optional<uint32_t> twin_fd_index;    ///< twin_socket.fd_index (server reply only)
  bool write_multiple = false;
  std::optional<legacy_migration_caps> migration;
  /// Keys present in the JSON (so emitting can reproduce what was sent) and unknown ones.
  std::vector<std::string> present;
  std::vector<std::string> unknown;

  /// Whether the JSON carried this key (top-level key of "capabilities").
  bool has(const std::string& key) const;
};

/// Parses `{"capabilities": {...}}`. An empty string or absent object gives the defaults.
result<capabilities> parse_capabilities(const std::string& json);

/// Emits the JSON for VERSION. Every field is written (defaults included) unless
/// `only_present` is set, in which case only keys recorded in `present` are written.
std::string to_json(const capabilities& c, bool only_present = false);

/// The version we speak. Nobody defines what a minor bump adds yet, so we accept any 0.x
/// and gate features on capabilities.
inline constexpr uint16_t our_major = 0;
inline constexpr uint16_t our_minor = 2;

/// Server side: what to answer to a client's proposal. Minor = min(theirs, ours); numeric
/// limits and write_multiple state what *we* accept (each side states its own receive
/// limits); twin_socket is only claimed if the client offered it and we support it.
struct server_offer {
  uint64_t max_msg_fds = limits::our_max_msg_fds;
  uint64_t max_data_xfer_size = limits::our_max_data_xfer;
  uint64_t max_dma_maps = limits::default_max_dma_maps;
  uint64_t pgsizes = limits::default_pgsizes;
  bool write_multiple = true;
  bool twin_socket = true;  ///< a twin socket for a client that offers it
};
struct negotiated {
  uint16_t major = 0, minor = 0;
  capabilities ours;    ///< what we sent
  capabilities theirs;  ///< what the peer sent
  /// Most fds we may send the peer in one message (its max_msg_fds, clamped to SCM_MAX_FD).
  uint32_t send_max_fds() const;
  /// Largest data count we may send the peer in one message.
  uint64_t send_max_data() const { return theirs.max_data_xfer_size; }
  /// Largest data count we accept from the peer.
  uint64_t recv_max_data() const { return ours.max_data_xfer_size; }
};
result<negotiated> server_negotiate(uint16_t major, uint16_t minor, const capabilities& client,
                                    const server_offer& offer);

/// Client side: checks the server's reply against what we proposed (major equal, minor not
/// above ours, values in range, twin socket only if offered, fd_index valid for `nfds`).
result<negotiated> client_check_reply(uint16_t our_major_v, uint16_t our_minor_v,
                                      const capabilities& proposed, uint16_t major,
                                      uint16_t minor, const capabilities& server, size_t nfds);

}  // namespace vfu::proto
