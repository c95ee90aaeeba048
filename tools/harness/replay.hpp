// replay.hpp: replays one session of a `.vec` capture against a live server and compares
// every reply with the captured one, field by field.
//
// The session's client->server requests are sent in capture order, byte for byte (msg_id
// included), one at a time: each waits for its reply (NO_REPLY requests wait for nothing).
// Requests that carried fds get stand-ins: a memfd as large as the DMA window for DMA_MAP,
// eventfds for SET_IRQS, a small memfd otherwise. Requests the server sends meanwhile
// (DMA_READ/DMA_WRITE) are answered with the client's captured answer to the same request.
//
// A reply is compared as the header's command, msg_id, type/error bits and fd count, plus
// every decoded field (fields.hpp). Each difference is keyed `<command>.<field>`
// (`version.caps_json`, `region_read.data`, `get_region_info.fds`); keys matching an ignore
// pattern (`*` matches any text) are counted but do not fail the replay.
#pragma once

#include <chrono>
#include <functional>
#include <string>
#include <vector>

#include "protocol/vec_file.hpp"
#include "tools/harness/io.hpp"

namespace vfu::harness {

struct replay_options {
  std::string session;                 ///< empty: the capture's only session
  std::vector<std::string> ignore;     ///< key patterns
  std::chrono::microseconds timeout{std::chrono::seconds(5)};
  proto::quirks quirks;                ///< added to the capture's own peer quirks
  std::function<void(const char* dir, const proto::frame&)> log;
};

struct replay_report {
  size_t requests = 0;
  size_t compared = 0;
  size_t differing = 0;                ///< replies with at least one counted difference
  std::vector<std::string> diffs;      ///< counted differences
  std::vector<std::string> ignored;    ///< differences matched by an ignore pattern
  std::string error;                   ///< why the replay stopped early, if it did
};

replay_report replay_capture(io::connection& c, const proto::vec_file& vf, const replay_options& o);

/// `*`-glob match of a difference key.
bool key_matches(const std::string& pattern, const std::string& key);

}  // namespace vfu::harness
