// fields.hpp: the typed messages of protocol/messages.hpp as named fields.
//
// Every request and reply struct is described once (fields.cpp, one `walk` per struct) and
// that description drives three things: the schema a scenario is checked against at parse
// time (unknown field -> file:line error), building a message from `name=value` pairs, and
// flattening a decoded message into `name -> value` for expectations and replay diffs.
//
// Field names follow shared/notes/vfio-user-protocol.md (`argsz`, `flags`, `region`,
// `offset`, `count`, `address`, ...). Array elements are `caps[0].areas[1].size`; the schema
// spells them `caps[].areas[].size`. Commands are named by their lower-case spec name with
// `device_` dropped (`get_region_info`, `set_irqs`); the full name is accepted too.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "protocol/messages.hpp"
#include "tools/harness/values.hpp"

namespace vfu::harness {

enum class field_kind : uint8_t { number, flags, enumeration, bytes, text, errnum };

struct field_info {
  std::string name;
  field_kind kind = field_kind::number;
  uint64_t max = UINT64_MAX;                     ///< number: the field's width
  const flag_table* flags = nullptr;             ///< flags
  const std::vector<flag_name>* enums = nullptr; ///< enumeration
};

struct field_value {
  field_kind kind = field_kind::number;
  uint64_t num = 0;                   ///< number, flags, enumeration, errnum
  std::vector<uint8_t> bytes;         ///< bytes
  std::string text;                   ///< text
  const flag_table* flags = nullptr;
  const std::vector<flag_name>* enums = nullptr;

  bool operator==(const field_value& o) const {
    return kind == o.kind && num == o.num && bytes == o.bytes && text == o.text;
  }
  bool operator!=(const field_value& o) const { return !(*this == o); }
};
/// Human-readable: numbers with hex, flags by name, bytes as hex, text quoted.
std::string to_string(const field_value& v);

using field_list = std::vector<std::pair<std::string, field_value>>;
using arg_list = std::vector<std::pair<std::string, std::string>>;

/// Equality as a check sees it: `caps_json` texts compare as JSON (key order and spacing do
/// not matter), everything else exactly.
bool same_value(const std::string& name, const field_value& a, const field_value& b);

/// Parses a scenario value for field `f`.
bool parse_field_value(const field_info& f, const std::string& s, field_value& out, std::string& err);

/// A message type: its command and direction.
struct msg_kind {
  uint16_t command = 0;
  bool reply = false;
};

/// "region_read", "device_set_irqs", "set_irqs" -> command number.
std::optional<uint16_t> command_by_name(const std::string& name);
/// The scenario name of a command ("get_region_info"), or "cmd_<n>" for unknown numbers.
std::string command_key(uint16_t command);

/// All field names of a message type (array elements as `[]`), in wire order.
const std::vector<field_info>& schema(msg_kind k);
/// The schema entry for a concrete name (`caps[1].id`), or nullptr.
const field_info* find_field(msg_kind k, const std::string& name);

/// A default message of that type (the struct's own defaults).
proto::message make_message(msg_kind k);
/// Builds a message from `name=value` pairs. Fields derived from others (a write's `count`
/// from its `data`, SET_IRQS `argsz` from its bools, ...) are filled in when not given.
bool build_message(msg_kind k, const arg_list& fields, proto::message& out, std::string& err);
/// Every field of a decoded message, in wire order (an error reply has just `errno`).
field_list flatten(const proto::message& m);

/// Header fields (`hdr.flags` etc.) and their names.
const flag_table& header_flag_names();

}  // namespace vfu::harness
