// vec_file.hpp: reads the wire captures in shared/vectors (*.vec).
// Format: '#' comment lines, then `<session> <C>S|S>C> fds=<n> <hex of the whole frame>`.
#pragma once

#include <string>
#include <vector>

#include "protocol/errc.hpp"
#include "protocol/messages.hpp"

namespace vfu::proto {

struct vec_record {
  std::string session;        ///< e.g. "src#1"
  bool client_to_server = true;
  size_t nfds = 0;
  std::vector<uint8_t> bytes; ///< the whole frame
  size_t line = 0;
};

struct vec_file {
  std::string path;
  std::vector<std::string> comments;  ///< header lines, without '#'
  std::vector<vec_record> records;
  /// The quirks a capture needs: QEMU's layouts when QEMU is a peer, libvfio-user's error
  /// payloads when it is one.
  quirks peer_quirks() const;
};

result<vec_file> read_vec_file(const std::string& path);

}  // namespace vfu::proto
