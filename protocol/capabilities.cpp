#include "protocol/capabilities.hpp"

#include <algorithm>
#include <functional>
#include <nlohmann/json.hpp>

namespace vfu::proto {

using json = nlohmann::json;

namespace {

error bad(const std::string& what) { return error(errc::bad_json, "capabilities: " + what); }

std::optional<error> get_u64(const json& v, const char* key, uint64_t lo, uint64_t hi, uint64_t& out) {
  if (!v.is_number_unsigned() && !(v.is_number_integer() && v.get<int64_t>() >= 0))
    return bad(std::string(key) + " is not a non-negative integer");
  uint64_t x = v.get<uint64_t>();
  if (x < lo || x > hi)
    return error(errc::bad_value, "capabilities: " + std::string(key) + " = " + std::to_string(x) +
                                      " outside [" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
  out = x;
  return std::nullopt;
}

using validator = std::function<std::optional<error>(const json&, capabilities&)>;
struct cap_entry {
  const char* name;
  validator check;
};

// One row per key; the spec table in docs/protocol.md mirrors this.
const std::vector<cap_entry>& cap_table() {
  static const std::vector<cap_entry> table = {
      {"max_msg_fds", [](const json& v, capabilities& c) {
         return get_u64(v, "max_msg_fds", 0, limits::max_msg_fds_ceiling, c.max_msg_fds); }},
      {"max_data_xfer_size", [](const json& v, capabilities& c) {
         return get_u64(v, "max_data_xfer_size", 1, limits::max_data_xfer_ceiling, c.max_data_xfer_size); }},
      {"max_dma_maps", [](const json& v, capabilities& c) {
         return get_u64(v, "max_dma_maps", 1, 1u << 30, c.max_dma_maps); }},
      {"pgsizes", [](const json& v, capabilities& c) -> std::optional<error> {
         if (auto e = get_u64(v, "pgsizes", 1, UINT64_MAX, c.pgsizes)) return e;
         if (c.pgsizes & 0xfff) return error(errc::bad_value, "capabilities: pgsizes has bits below 4 KiB");
         return std::nullopt; }},
      {"write_multiple", [](const json& v, capabilities& c) -> std::optional<error> {
         if (!v.is_boolean()) return bad("write_multiple is not a boolean");
         c.write_multiple = v.get<bool>();
         return std::nullopt; }},
      {"twin_socket", [](const json& v, capabilities& c) -> std::optional<error> {
         if (!v.is_object()) return bad("twin_socket is not an object");
         if (auto it = v.find("supported"); it != v.end()) {
           if (!it->is_boolean()) return bad("twin_socket.supported is not a boolean");
           c.twin_socket = it->get<bool>();
         }
         if (auto it = v.find("fd_index"); it != v.end()) {
           uint64_t idx;
           if (auto e = get_u64(*it, "twin_socket.fd_index", 0, limits::scm_max_fd, idx)) return e;
           c.twin_fd_index = uint32_t(idx);
         }
         return std::nullopt; }},
      {"migration", [](const json& v, capabilities& c) -> std::optional<error> {
         if (!v.is_object()) return bad("migration is not an object");
         legacy_migration_caps m;
         uint64_t x;
         if (auto it = v.find("pgsize"); it != v.end()) {
           if (auto e = get_u64(*it, "migration.pgsize", 1, UINT64_MAX, x)) return e;
           m.pgsize = x;
         }
         if (auto it = v.find("max_bitmap_size"); it != v.end()) {
           if (auto e = get_u64(*it, "migration.max_bitmap_size", 1, UINT64_MAX, x)) return e;
           m.max_bitmap_size = x;
         }
         c.migration = m;
         return std::nullopt; }},
  };
  return table;
}

}  // namespace

bool capabilities::has(const std::string& key) const {
  return std::find(present.begin(), present.end(), key) != present.end();
}

result<capabilities> parse_capabilities(const std::string& text) {
  capabilities c;
  if (text.empty()) return c;
  if (text.size() > limits::max_caps_json) return error(errc::too_large, "capabilities JSON too long");
  // nlohmann's lexer takes a NUL byte for the end of input, so "{...}\0junk" would parse.
  if (text.find('\0') != std::string::npos) return bad("NUL byte inside the JSON");
  json doc = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded()) return bad("not valid JSON");
  if (!doc.is_object()) return bad("top level is not an object");
  auto it = doc.find("capabilities");
  if (it == doc.end()) return c;
  if (!it->is_object()) return bad("\"capabilities\" is not an object");
  for (auto& item : it->items()) {
    // Not a structured binding: clang 14 (the fuzz build) cannot capture one in a lambda.
    const std::string& key = item.key();
    const json& value = item.value();
    auto& table = cap_table();
    auto row = std::find_if(table.begin(), table.end(), [&](const cap_entry& e) { return key == e.name; });
    if (row == table.end()) {
      c.unknown.push_back(key);
      continue;
    }
    if (auto e = row->check(value, c)) return *e;
    c.present.push_back(key);
  }
  return c;
}

std::string to_json(const capabilities& c, bool only_present) {
  json caps = json::object();
  auto want = [&](const char* k) { return !only_present || c.has(k); };
  if (want("max_msg_fds")) caps["max_msg_fds"] = c.max_msg_fds;
  if (want("max_data_xfer_size")) caps["max_data_xfer_size"] = c.max_data_xfer_size;
  if (want("max_dma_maps")) caps["max_dma_maps"] = c.max_dma_maps;
  if (want("pgsizes")) caps["pgsizes"] = c.pgsizes;
  if (want("write_multiple") && (only_present || c.write_multiple)) caps["write_multiple"] = c.write_multiple;
  if (want("twin_socket") && (only_present || c.twin_socket)) {
    json t = {{"supported", c.twin_socket}};
    if (c.twin_fd_index) t["fd_index"] = *c.twin_fd_index;
    caps["twin_socket"] = t;
  }
  if (c.migration && want("migration")) {
    json m = json::object();
    if (c.migration->pgsize) m["pgsize"] = *c.migration->pgsize;
    if (c.migration->max_bitmap_size) m["max_bitmap_size"] = *c.migration->max_bitmap_size;
    caps["migration"] = m;
  }
  return json{{"capabilities", caps}}.dump();
}

uint32_t negotiated::send_max_fds() const {
  return uint32_t(std::min<uint64_t>(theirs.max_msg_fds, limits::scm_max_fd));
}

result<negotiated> server_negotiate(uint16_t major, uint16_t minor, const capabilities& client,
                                    const server_offer& offer) {
  if (major != our_major)
    return error(errc::unsupported, "client proposes major version " + std::to_string(major));
  negotiated n;
  n.major = our_major;
  n.minor = std::min(minor, our_minor);
  n.theirs = client;
  capabilities& o = n.ours;
  o.max_msg_fds = offer.max_msg_fds;
  o.max_data_xfer_size = offer.max_data_xfer_size;
  o.max_dma_maps = offer.max_dma_maps;
  o.pgsizes = offer.pgsizes;
  o.write_multiple = offer.write_multiple;  // "I accept REGION_WRITE_MULTI"
  o.twin_socket = offer.twin_socket && client.twin_socket;
  o.present = {"max_msg_fds", "max_data_xfer_size", "max_dma_maps", "pgsizes"};
  if (o.write_multiple) o.present.push_back("write_multiple");
  if (o.twin_socket) {  // the socket is the reply's only fd
    o.twin_fd_index = 0;
    o.present.push_back("twin_socket");
  }
  if (client.migration) {  // answer the legacy key in kind, as libvfio-user does
    o.migration = legacy_migration_caps{4096, std::nullopt};
    o.present.push_back("migration");
  }
  return n;
}

result<negotiated> client_check_reply(uint16_t our_major_v, uint16_t our_minor_v,
                                      const capabilities& proposed, uint16_t major,
                                      uint16_t minor, const capabilities& server, size_t nfds) {
  if (major != our_major_v)
    return error(errc::protocol_violation, "server answered major " + std::to_string(major) +
                                               ", we proposed " + std::to_string(our_major_v));
  if (minor > our_minor_v)
    return error(errc::protocol_violation, "server answered minor " + std::to_string(minor) +
                                               " above our " + std::to_string(our_minor_v));
  if (server.twin_socket && !proposed.twin_socket)
    return error(errc::protocol_violation, "server claims twin_socket that we did not offer");
  if (server.twin_socket && (!server.twin_fd_index || *server.twin_fd_index >= nfds))
    return error(errc::protocol_violation, "twin_socket without a valid fd_index");
  if (!server.twin_socket && nfds != 0)
    return error(errc::bad_fds, "VERSION reply carries fds without twin_socket");
  if (server.pgsizes & 0xfff) return error(errc::bad_value, "server pgsizes below 4 KiB");
  if (server.max_msg_fds == 0) return error(errc::bad_value, "server max_msg_fds is 0");
  negotiated n;
  n.major = major;
  n.minor = minor;
  n.ours = proposed;
  n.theirs = server;
  return n;
}

}  // namespace vfu::proto
