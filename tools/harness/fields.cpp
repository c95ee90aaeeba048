#include "tools/harness/fields.hpp"

#include "tools/harness/field_visitors.hpp"

#include <algorithm>
#include <cstring>
#include <limits>
#include <map>
#include <set>
#include <type_traits>

#include <nlohmann/json.hpp>

namespace vfu::harness {

using namespace proto;

using namespace detail;

namespace {

flag_table bits_only(std::vector<flag_name> b) {
  flag_table t;
  t.bits = std::move(b);
  return t;
}

// ---- names --------------------------------------------------------------------------------
const flag_table dma_map_flag_names = bits_only({{"read", dma_flags::read}, {"write", dma_flags::write}});
const flag_table dma_unmap_flag_names =
    bits_only({{"get_dirty_bitmap", dma_flags::unmap_get_dirty_bitmap}, {"all", dma_flags::unmap_all}});
const flag_table device_flag_names = bits_only({{"reset", device_info_flags::reset}, {"pci", device_info_flags::pci}});
const flag_table region_flag_names = bits_only({{"read", region_flags::read}, {"write", region_flags::write},
                                    {"mmap", region_flags::mmap}, {"caps", region_flags::caps}});
const flag_table irq_info_flag_names = bits_only({{"eventfd", irq_info_flags::eventfd}, {"maskable", irq_info_flags::maskable},
                                      {"automasked", irq_info_flags::automasked}, {"noresize", irq_info_flags::noresize}});
const flag_table set_irqs_flag_names = bits_only({{"data_none", irq_set_flags::data_none}, {"data_bool", irq_set_flags::data_bool},
                                      {"data_eventfd", irq_set_flags::data_eventfd},
                                      {"action_mask", irq_set_flags::action_mask},
                                      {"action_unmask", irq_set_flags::action_unmask},
                                      {"action_trigger", irq_set_flags::action_trigger}});
const flag_table feature_flag_names{{{"get", feature_flags::get}, {"set", feature_flags::set}, {"probe", feature_flags::probe}},
                                    feature_flags::index_mask,
                                    {{"migration", feature::migration},
                                     {"mig_device_state", feature::mig_device_state},
                                     {"dma_logging_start", feature::dma_logging_start},
                                     {"dma_logging_stop", feature::dma_logging_stop},
                                     {"dma_logging_report", feature::dma_logging_report}}};
const flag_table mig_flag_names = bits_only({{"stop_copy", mig_flags::stop_copy}, {"p2p", mig_flags::p2p}, {"pre_copy", mig_flags::pre_copy}});
const flag_table hdr_flag_names{{{"no_reply", hflags::no_reply}, {"error", hflags::error}},
                                hflags::type_mask,
                                {{"command", hflags::type_command}, {"reply", hflags::type_reply}}};
const std::vector<flag_name> mig_state_names{{"error", 0}, {"stop", 1}, {"running", 2}, {"stop_copy", 3},
                                             {"resuming", 4}, {"running_p2p", 5}, {"pre_copy", 6}, {"pre_copy_p2p", 7}};
const std::vector<flag_name> cap_id_names{{"sparse_mmap", region_cap_id::sparse_mmap}, {"type", region_cap_id::type}};
const std::vector<flag_name> layout_names{{"spec", 0}, {"qemu", 1}, {"empty", 2}};
const std::vector<flag_name> io_fd_type_names{{"ioeventfd", 0}, {"ioregionfd", 1}, {"shadow_ioeventfd", 2}};

struct command_name_entry {
  uint16_t cmd;
  const char* key;
  const char* full;
};
const command_name_entry command_names[] = {
    {1, "version", "version"},
    {2, "dma_map", "dma_map"},
    {3, "dma_unmap", "dma_unmap"},
    {4, "get_info", "device_get_info"},
    {5, "get_region_info", "device_get_region_info"},
    {6, "get_region_io_fds", "device_get_region_io_fds"},
    {7, "get_irq_info", "device_get_irq_info"},
    {8, "set_irqs", "device_set_irqs"},
    {9, "region_read", "region_read"},
    {10, "region_write", "region_write"},
    {11, "dma_read", "dma_read"},
    {12, "dma_write", "dma_write"},
    {13, "reset", "device_reset"},
    {15, "region_write_multi", "region_write_multi"},
    {16, "feature", "device_feature"},
    {17, "mig_data_read", "mig_data_read"},
    {18, "mig_data_write", "mig_data_write"},
};

// ---- one description per struct -------------------------------------------------------
template <class V> void walk(V& v, version_body& m) {
  v.num("major", m.major);
  v.num("minor", m.minor);
  v.text("caps_json", m.caps_json);
}
template <class V> void walk(V& v, dma_map_request& m) {
  v.num("argsz", m.argsz);
  v.flags("flags", m.flags, dma_map_flag_names);
  v.num("offset", m.offset);
  v.num("addr", m.addr);
  v.num("size", m.size);
}
template <class V> void walk(V&, dma_map_reply&) {}
template <class V> void walk_bitmap(V& v, std::optional<dirty_bitmap_head>& b) {
  v.opt("bitmap", b, [](auto& s, dirty_bitmap_head& h) {
    s.num("pgsize", h.pgsize);
    s.num("size", h.size);
  });
}
template <class V> void walk(V& v, dma_unmap_request& m) {
  v.num("argsz", m.argsz);
  v.flags("flags", m.flags, dma_unmap_flag_names);
  v.num("addr", m.addr);
  v.num("size", m.size);
  walk_bitmap(v, m.bitmap);
}
template <class V> void walk(V& v, dma_unmap_reply& m) {
  v.num("argsz", m.argsz);
  v.flags("flags", m.flags, dma_unmap_flag_names);
  v.num("addr", m.addr);
  v.num("size", m.size);
  walk_bitmap(v, m.bitmap);
  if (v.all() || m.bitmap) v.bytes("bitmap_data", m.bitmap_data);
}
template <class V> void walk(V& v, device_info_body& m) {
  v.num("argsz", m.argsz);
  v.flags("flags", m.flags, device_flag_names);
  v.num("num_regions", m.num_regions);
  v.num("num_irqs", m.num_irqs);
}
template <class V> void walk_region_head(V& v, region_info_body& m) {
  v.num("argsz", m.argsz);
  v.flags("flags", m.flags, region_flag_names);
  v.num("index", m.index);
  v.num("cap_offset", m.cap_offset);
  v.num("size", m.size);
  v.num("offset", m.offset);
}
template <class V> void walk(V& v, region_info_request& m) {
  walk_region_head(v, m);
  if (v.all() || !m.pad.empty()) v.bytes("pad", m.pad);
}
template <class V> void walk(V& v, region_info_reply& m) {
  walk_region_head(v, m);
  v.list("caps", m.caps, [](auto& s, region_cap& c) {
    s.enumeration("id", c.id, cap_id_names);
    s.num("version", c.version);
    s.num("offset", c.offset);
    if (s.all() || c.id == region_cap_id::sparse_mmap) {
      s.num("reserved", c.sparse_reserved);
      s.list("areas", c.areas, [](auto& a, sparse_area& x) {
        a.num("offset", x.offset);
        a.num("size", x.size);
      });
    }
    if (s.all() || c.id == region_cap_id::type) {
      s.num("type", c.type);
      s.num("subtype", c.subtype);
    }
    if (s.all() || (c.id != region_cap_id::sparse_mmap && c.id != region_cap_id::type)) s.bytes("raw", c.raw);
  });
}
template <class V> void walk(V& v, io_fds_request& m) {
  v.num("argsz", m.argsz);
  v.num("flags", m.flags);
  v.num("index", m.index);
  v.num("count", m.count);
}
template <class V> void walk(V& v, io_fds_reply& m) {
  v.num("argsz", m.argsz);
  v.num("flags", m.flags);
  v.num("index", m.index);
  v.num("count", m.count);
  if (v.all() || !m.entries.empty()) v.num("entry_size", m.entry_size);
  v.list("entries", m.entries, [](auto& s, io_fd_entry& e) {
    s.num("offset", e.offset);
    s.num("size", e.size);
    s.num("fd_index", e.fd_index);
    s.enumeration("type", e.type, io_fd_type_names);
    s.num("flags", e.flags);
    s.num("word28", e.word28);
    s.num("qword32", e.qword32);
    s.num("qword40", e.qword40);
  });
}
template <class V> void walk(V& v, irq_info_body& m) {
  v.num("argsz", m.argsz);
  v.flags("flags", m.flags, irq_info_flag_names);
  v.num("index", m.index);
  v.num("count", m.count);
}
template <class V> void walk(V& v, set_irqs_request& m) {
  v.num("argsz", m.argsz);
  v.flags("flags", m.flags, set_irqs_flag_names);
  v.num("index", m.index);
  v.num("start", m.start);
  v.num("count", m.count);
  if (v.all() || !m.bools.empty()) v.bytes("data", m.bools);
}
template <class V> void walk(V&, set_irqs_reply&) {}
template <class V> void walk_access(V& v, region_access& a) {
  v.num("offset", a.offset);
  v.num("region", a.region);
  v.num("count", a.count);
}
template <class V> void walk(V& v, region_read_request& m) { walk_access(v, m); }
template <class V> void walk(V& v, region_read_reply& m) {
  walk_access(v, m);
  v.bytes("data", m.data);
}
template <class V> void walk(V& v, region_write_request& m) {
  walk_access(v, m);
  v.bytes("data", m.data.own());
}
template <class V> void walk(V& v, region_write_reply& m) { walk_access(v, m); }
template <class V> void walk_dma(V& v, dma_access& a) {
  v.num("address", a.addr);
  v.num("count", a.count);
  v.enumeration("layout", a.layout, layout_names);
}
template <class V> void walk(V& v, dma_read_request& m) { walk_dma(v, m); }
template <class V> void walk(V& v, dma_read_reply& m) {
  walk_dma(v, m);
  v.bytes("data", m.data);
}
template <class V> void walk(V& v, dma_write_request& m) {
  walk_dma(v, m);
  v.bytes("data", m.data);
}
template <class V> void walk(V& v, dma_write_reply& m) { walk_dma(v, m); }
template <class V> void walk(V&, reset_request&) {}
template <class V> void walk(V&, reset_reply&) {}
template <class V> void walk(V& v, write_multi_request& m) {
  v.list("writes", m.writes, [](auto& s, write_multi_entry& e) {
    s.num("offset", e.offset);
    s.num("region", e.region);
    s.num("count", e.count);
    s.fixed("data", e.data);
  });
}
template <class V> void walk(V& v, write_multi_reply& m) { v.num("wr_cnt", m.wr_cnt); }
template <class V> void walk(V& v, device_feature_body& m) {
  v.num("argsz", m.argsz);
  v.flags("flags", m.flags, feature_flag_names);
  v.template alt<feature_migration>(m.data, [](auto& s, feature_migration& f) {
    s.flags("migration_flags", f.flags, mig_flag_names);
  });
  v.template alt<feature_device_state>(m.data, [](auto& s, feature_device_state& f) {
    s.enumeration("device_state", f.device_state, mig_state_names);
    s.num("data_fd", f.data_fd);
  });
  v.template alt<feature_logging_ctl>(m.data, [](auto& s, feature_logging_ctl& f) {
    s.num("page_size", f.page_size);
    s.num("reserved", f.reserved);
    s.list("ranges", f.ranges, [](auto& r, dma_range& x) {
      r.num("iova", x.iova);
      r.num("length", x.length);
    });
  });
  v.template alt<feature_logging_report>(m.data, [](auto& s, feature_logging_report& f) {
    s.num("iova", f.iova);
    s.num("length", f.length);
    s.num("page_size", f.page_size);
    s.bytes("bitmap", f.bitmap);
  });
}
template <class V> void walk(V& v, mig_data_read_request& m) {
  v.num("argsz", m.argsz);
  v.num("size", m.size);
}
template <class V> void walk(V& v, mig_data_read_reply& m) {
  v.num("argsz", m.argsz);
  v.num("size", m.size);
  v.bytes("data", m.data);
}
template <class V> void walk(V& v, mig_data_write_request& m) {
  v.num("argsz", m.argsz);
  v.num("size", m.size);
  v.bytes("data", m.data);
}
template <class V> void walk(V&, mig_data_write_reply&) {}
template <class V> void walk(V& v, error_reply& m) { v.errnum("errno", m.error_no); }

template <class V>
void walk_message(V& v, message& m) {
  std::visit([&](auto& x) { walk(v, x); }, m);
}

// ---- message kinds -------------------------------------------------------------------------
/// Position of a command in the `message` variant (requests at 2k, replies at 2k+1).
int pair_index(uint16_t cmd) {
  if (!is_known_command(cmd)) return -1;
  return cmd <= 13 ? cmd - 1 : cmd - 2;
}

template <size_t... I>
message by_index(size_t i, std::index_sequence<I...>) {
  using factory = message (*)();
  static constexpr factory table[] = {[]() -> message { return std::variant_alternative_t<I, message>{}; }...};
  return table[i]();
}

}  // namespace

// ---- public ---------------------------------------------------------------------------------
std::string to_string(const field_value& v) {
  switch (v.kind) {
    case field_kind::number: return format_number(v.num);
    case field_kind::flags: return v.flags ? format_flags(v.num, *v.flags) : format_number(v.num);
    case field_kind::enumeration:
      if (v.enums)
        for (auto& n : *v.enums)
          if (n.value == v.num) return std::string(n.name) + (v.num >= 10 ? " (" + format_number(v.num) + ")" : " (" + std::to_string(v.num) + ")");
      return format_number(v.num);
    case field_kind::bytes: return format_bytes(v.bytes);
    case field_kind::text: return "'" + v.text + "'";
    case field_kind::errnum: return errno_text(int(v.num));
  }
  return "?";
}

bool same_value(const std::string& name, const field_value& a, const field_value& b) {
  if (a.kind == field_kind::text && b.kind == field_kind::text && name.size() >= 9 &&
      name.compare(name.size() - 9, 9, "caps_json") == 0) {
    auto ja = nlohmann::json::parse(a.text, nullptr, false), jb = nlohmann::json::parse(b.text, nullptr, false);
    if (!ja.is_discarded() && !jb.is_discarded()) return ja == jb;
  }
  return a == b;
}

bool parse_field_value(const field_info& f, const std::string& s, field_value& out, std::string& err) {
  out = field_value{};
  out.kind = f.kind;
  out.flags = f.flags;
  out.enums = f.enums;
  switch (f.kind) {
    case field_kind::number: return parse_number(s, out.num, err, f.max);
    case field_kind::flags:
      if (!parse_flags(s, *f.flags, out.num, err)) return false;
      if (out.num > f.max) {
        err = "flags " + s + " do not fit in the field";
        return false;
      }
      return true;
    case field_kind::enumeration:
      if (!parse_enum(s, *f.enums, out.num, err)) return false;
      if (out.num > f.max) {
        err = "value " + s + " does not fit in the field";
        return false;
      }
      return true;
    case field_kind::bytes:
      if (!parse_bytes(s, out.bytes, err)) return false;
      if (f.max && out.bytes.size() > f.max) {
        err = "at most " + std::to_string(f.max) + " bytes";
        return false;
      }
      return true;
    case field_kind::text: out.text = s; return true;
    case field_kind::errnum: {
      int e = 0;
      if (!parse_errno(s, e, err)) return false;
      out.num = uint64_t(e);
      return true;
    }
  }
  return false;
}

std::optional<uint16_t> command_by_name(const std::string& name) {
  for (auto& c : command_names)
    if (name == c.key || name == c.full) return c.cmd;
  return std::nullopt;
}

std::string command_key(uint16_t command) {
  for (auto& c : command_names)
    if (c.cmd == command) return c.key;
  return "cmd_" + std::to_string(command);
}

proto::message make_message(msg_kind k) {
  int p = pair_index(k.command);
  if (p < 0) return error_reply{k.command, 0, {}};
  return by_index(size_t(2 * p + (k.reply ? 1 : 0)), std::make_index_sequence<std::variant_size_v<message>>{});
}

const std::vector<field_info>& schema(msg_kind k) {
  static std::map<std::pair<uint16_t, bool>, std::vector<field_info>> cache;
  auto key = std::make_pair(k.command, k.reply);
  auto it = cache.find(key);
  if (it != cache.end()) return it->second;
  std::vector<field_info> out;
  std::set<std::string> seen;
  if (pair_index(k.command) >= 0) {
    message m = make_message(k);
    schema_visitor v{"", &out, &seen};
    walk_message(v, m);
  }
  return cache.emplace(key, std::move(out)).first->second;
}

const field_info* find_field(msg_kind k, const std::string& name) {
  // "caps[12].areas[0].size" -> "caps[].areas[].size"
  std::string generic;
  for (size_t i = 0; i < name.size(); ++i) {
    generic.push_back(name[i]);
    if (name[i] == '[') {
      size_t close = name.find(']', i);
      if (close == std::string::npos || close == i + 1) return nullptr;
      uint64_t idx;
      std::string err;
      for (size_t j = i + 1; j < close; ++j)
        if (name[j] < '0' || name[j] > '9') return nullptr;
      if (!parse_number(name.substr(i + 1, close - i - 1), idx, err, 4095)) return nullptr;  // as set_visitor
      i = close - 1;
    }
  }
  for (auto& f : schema(k))
    if (f.name == generic) return &f;
  return nullptr;
}

bool build_message(msg_kind k, const arg_list& fields, proto::message& out, std::string& err) {
  out = make_message(k);
  if (pair_index(k.command) < 0) {
    err = "unknown command " + std::to_string(k.command);
    return false;
  }
  // `flags` first: the DEVICE_FEATURE index in it decides which data fields apply.
  arg_list ordered;
  for (auto& f : fields)
    if (f.first == "flags") ordered.push_back(f);
  for (auto& f : fields)
    if (f.first != "flags") ordered.push_back(f);
  std::set<std::string> given;
  for (auto& [key, value] : ordered) {
    bool matched = false;
    std::string e;
    set_visitor v{"", &key, &value, &matched, &e, 0};
    if (auto* f = std::get_if<device_feature_request>(&out)) v.feature_index = f->index();
    if (auto* f = std::get_if<device_feature_reply>(&out)) v.feature_index = f->index();
    walk_message(v, out);
    if (!e.empty()) {
      err = key + ": " + e;
      return false;
    }
    if (!matched) {
      err = "unknown field '" + key + "' for " + command_key(k.command) + (k.reply ? " reply" : " request");
      if (v.feature_index && find_field(k, key)) err = "field '" + key + "' does not belong to feature index " + std::to_string(v.feature_index);
      return false;
    }
    given.insert(key);
  }
  // Fields derived from others when the scenario leaves them out.
  auto unset = [&](const char* n) { return !given.count(n); };
  std::visit(
      [&](auto& m) {
        using T = std::decay_t<decltype(m)>;
        if constexpr (std::is_same_v<T, region_write_request> || std::is_same_v<T, region_read_reply>) {
          if (unset("count")) m.count = uint32_t(m.data.size());
        } else if constexpr (std::is_same_v<T, dma_write_request> || std::is_same_v<T, dma_read_reply>) {
          if (unset("count")) m.count = m.data.size();
        } else if constexpr (std::is_same_v<T, set_irqs_request>) {
          if (unset("argsz")) m.argsz = uint32_t(20 + m.bools.size());
        } else if constexpr (std::is_same_v<T, mig_data_write_request>) {
          if (unset("size")) m.size = uint32_t(m.data.size());
          if (unset("argsz")) m.argsz = uint32_t(8 + m.data.size());
        } else if constexpr (std::is_same_v<T, mig_data_read_reply>) {
          if (unset("size")) m.size = uint32_t(m.data.size());
          if (unset("argsz")) m.argsz = uint32_t(8 + m.data.size());
        } else if constexpr (std::is_same_v<T, region_info_reply>) {
          if (unset("argsz")) m.argsz = uint32_t(std::max<size_t>(32, encode_payload(m).size()));
          if (unset("cap_offset") && !m.caps.empty()) m.cap_offset = 32;
        } else if constexpr (std::is_same_v<T, io_fds_reply>) {
          if (unset("count") && !m.entries.empty()) m.count = uint32_t(m.entries.size());
          if (unset("argsz")) m.argsz = uint32_t(16 + m.entries.size() * m.entry_size);
        } else if constexpr (std::is_same_v<T, device_feature_request> || std::is_same_v<T, device_feature_reply>) {
          if (unset("argsz")) m.argsz = uint32_t(encode_payload(m).size());
        }
      },
      out);
  return true;
}

field_list flatten(const proto::message& m) {
  field_list out;
  message copy = m;
  flatten_visitor v{"", &out};
  walk_message(v, copy);
  return out;
}

const flag_table& header_flag_names() { return hdr_flag_names; }

}  // namespace vfu::harness
