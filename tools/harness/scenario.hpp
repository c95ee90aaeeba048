// scenario.hpp: the scenario language (docs/harness.md) and its parser.
//
// A scenario is plain text, one step per line:
//
//   # comment
//   start-server device=gpio
//   connect
//   negotiate
//   region_read region=7 offset=0 count=4
//   expect-reply region_read data=4f49c80d
//   repeat 100
//     region_read region=2 offset=1 count=1
//     expect-reply region_read latency=rd
//   end
//
// A line is a step name, then positional words and `key=value` options. Values may be quoted
// ('...' or "...", for spaces and JSON); a trailing backslash continues the line. Steps named
// after a command (`region_read`, `set_irqs`, ...) send that request with its fields. The
// parser checks everything it can before anything runs: step names, option names and value
// syntax, message field names against fields.hpp's schema, fd names, `$variables`, regexes
// and repeat/end nesting. Each problem is reported as `file:line: message`.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "tools/harness/fields.hpp"

namespace vfu::harness {

enum class step_type : uint8_t {
  start_server, stop_server, connect, disconnect, listen, spawn_client, accept, expect_exit,
  memfd, eventfd, file, mem_write, mem_expect, wait_eventfd, eventfd_quiet,
  negotiate, send, raw, expect_reply, expect_request, reply, expect_close, expect_silence,
  pause, repeat, latency, replay, set,
};

struct step {
  std::string file;
  int line = 0;
  std::string text;                  ///< the source line, for output
  step_type type = step_type::pause;
  std::string name;                  ///< as written
  std::vector<std::string> words;    ///< positional words
  arg_list opts;                     ///< step options (`timeout=`, `fds=`, ...)
  arg_list fields;                   ///< message fields (typed steps)
  arg_list hdr;                      ///< `hdr.*` header overrides or checks (without "hdr.")
  arg_list saves;                    ///< `save.VAR=field`: VAR -> field
  std::optional<uint16_t> command;   ///< the command of a typed step, if known
  std::vector<step> body;            ///< `repeat` blocks

  /// The value of option `key`, or nullptr.
  const std::string* opt(const std::string& key) const;
  bool has_word(const std::string& w) const;
};

struct scenario {
  std::string path;
  std::string dir;   ///< directory of the file, for relative paths
  std::vector<step> steps;
};

struct parse_error {
  std::string file;
  int line = 0;
  std::string message;
  std::string text() const { return file + ":" + std::to_string(line) + ": " + message; }
};

/// Parses scenario text. Returns every error found (empty = OK).
std::vector<parse_error> parse_scenario(const std::string& text, const std::string& file, scenario& out);
/// Reads and parses a file.
std::vector<parse_error> load_scenario(const std::string& path, scenario& out);

/// The header flag word `hdr.flags` / header fields (`hdr.msg_id` ...): parses one value.
bool parse_hdr_value(const std::string& key, const std::string& value, uint64_t& out, std::string& err);

/// Splits "a,b*3,c" into names with repeat counts (fd lists).
bool parse_fd_list(const std::string& s, std::vector<std::pair<std::string, uint32_t>>& out, std::string& err);
/// "1,15,4" -> sizes.
bool parse_pieces(const std::string& s, std::vector<size_t>& out, std::string& err);
/// "a,b,c" -> items (no empty items).
std::vector<std::string> split_list(const std::string& s);

}  // namespace vfu::harness
