// vfu-probe: connects to any vfio-user server and prints what an engineer wants to see,
// like `lspci -vv` for a vfio-user device. `--json` prints the same for scripts.
// `--read=REGION:OFFSET:LENGTH` (repeatable) also dumps region bytes, in hex.
//   vfu-probe [--json] [--quirks=spec|qemu|libvfio-user] [--one-socket] [--read=R:OFF:LEN...] SOCKET
// --one-socket: do not offer the twin socket (the server's requests come on the one socket).
// Exit 0 on success; otherwise non-zero with a one-line reason on stderr.
#include <cctype>
#include <cerrno>
#include <cinttypes>
#include <cstdlib>
#include <cstdio>
#include <cstring>
#include <nlohmann/json.hpp>
#include <optional>

#include "device/pci_config.hpp"
#include "device/remote_device.hpp"

using namespace vfu;
using namespace vfu::proto;
using json = nlohmann::json;

namespace {
const char* region_names[] = {"BAR0", "BAR1", "BAR2", "BAR3", "BAR4", "BAR5", "ROM", "CONFIG", "VGA"};
const char* irq_names[] = {"INTx", "MSI", "MSI-X", "ERR", "REQ"};
const char* cap_name(uint8_t id) {
  switch (id) {
    case 0x01: return "Power Management";
    case 0x05: return "MSI";
    case 0x09: return "Vendor Specific";
    case 0x10: return "PCI Express";
    case 0x11: return "MSI-X";
    default: return "unknown";
  }
}
template <class T>
T get(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
int die(const std::string& why) {
  std::fprintf(stderr, "vfu-probe: %s\n", why.c_str());
  return 1;
}
const char* usage =
    "usage: vfu-probe [--json] [--quirks=spec|qemu|libvfio-user] [--one-socket] [--read=REGION:OFFSET:LENGTH ...] SOCKET";

struct region_dump {
  uint32_t region = 0;
  uint64_t offset = 0;
  uint32_t length = 0;
};
/// "R:OFF:LEN", each a number in C notation (0x...), LEN at most 1 MiB.
std::optional<region_dump> parse_dump(const std::string& v) {
  uint64_t n[3];
  const char* p = v.c_str();
  for (int i = 0; i < 3; ++i) {
    char* end = nullptr;
    if (!std::isdigit(static_cast<unsigned char>(*p))) return std::nullopt;
    errno = 0;
    n[i] = std::strtoull(p, &end, 0);
    if (errno || end == p || *end != (i < 2 ? ':' : '\0')) return std::nullopt;
    p = end + (i < 2);
  }
  if (n[0] > UINT32_MAX || n[2] == 0 || n[2] > (1u << 20)) return std::nullopt;
  return region_dump{uint32_t(n[0]), n[1], uint32_t(n[2])};
}
}  // namespace

int main(int argc, char** argv) {
  bool as_json = false;
  std::string path;
  endpoint_config cfg;
  cfg.reconnect = false;
  std::vector<std::string> rest;
  auto caf_args = runtime::filter_caf_args(argc, argv, rest);
  std::vector<region_dump> dumps;
  for (auto& a : rest) {
    if (a == "--json") as_json = true;
    else if (a.rfind("--read=", 0) == 0) {
      auto d = parse_dump(a.substr(7));
      if (!d) return die("--read needs REGION:OFFSET:LENGTH with LENGTH from 1 to 1048576, got '" + a.substr(7) + "'");
      dumps.push_back(*d);
    }
    else if (a == "--quirks=qemu") cfg.quirks = quirks::qemu();
    else if (a == "--quirks=libvfio-user") cfg.quirks = quirks::libvfio_user();
    else if (a == "--quirks=spec") cfg.quirks = quirks::spec();
    else if (a == "--one-socket") cfg.client_caps.twin_socket = false;
    else if (a == "-h" || a == "--help") {
      std::printf("%s\n", usage);
      return 0;
    } else if (a.rfind("-", 0) == 0) return die("unknown option " + a);
    else if (path.empty()) path = a;
    else return die("only one socket path, please");
  }
  if (path.empty()) return die(usage);
  runtime rt(caf_args);
  auto d = dev::remote_device::open(rt, path, nullptr, cfg);
  if (!d) return die("cannot connect to " + path + ": " + d.err().message());
  auto& dv = **d;
  if (auto s = dv.probe(); !s) {
    // A device in the middle of a migration (STOP, STOP_COPY) refuses enumeration with an
    // errno: say so. (Any other failure ends the connection or is the server's fault.)
    auto st = s.err().code == errc::remote_error ? dv.migration_state() : result<mig_state>(s.err());
    if (st && *st != mig_state::running)
      return die(std::string("the device is in migration state ") + to_string(*st) + ", which refuses enumeration (" +
                 s.err().message() + ")");
    return die("enumeration failed: " + s.err().message());
  }
  auto n = dv.ep().negotiated();
  json j;
  j["version"] = {{"major", n.major}, {"minor", n.minor}};
  j["server_capabilities"] = json::parse(to_json(n.theirs));
  j["device"] = {{"flags", dv.info().flags}, {"pci", bool(dv.info().flags & device_info_flags::pci)},
                 {"reset", bool(dv.info().flags & device_info_flags::reset)},
                 {"num_regions", dv.info().num_regions}, {"num_irqs", dv.info().num_irqs}};
  json regions = json::array();
  for (uint32_t i = 0; i < dv.regions().size(); ++i) {
    auto& r = dv.regions()[i].info;
    json jr = {{"index", i}, {"name", i < 9 ? region_names[i] : "device-specific"}, {"size", r.size},
               {"flags", r.flags}, {"read", bool(r.flags & region_flags::read)},
               {"write", bool(r.flags & region_flags::write)}, {"mmap", bool(r.flags & region_flags::mmap)}};
    json areas = json::array();
    if (auto* sp = r.sparse())
      for (auto& a : sp->areas) areas.push_back({{"offset", a.offset}, {"size", a.size}});
    jr["sparse_mmap"] = areas;
    for (auto& c : r.caps)
      if (c.id == region_cap_id::type) jr["type"] = {{"type", c.type}, {"subtype", c.subtype}};
    jr["fd"] = bool(dv.regions()[i].fd);
    regions.push_back(jr);
  }
  j["regions"] = regions;
  json irqs = json::array();
  for (uint32_t i = 0; i < dv.irqs().size(); ++i) {
    auto& q = dv.irqs()[i];
    irqs.push_back({{"index", i}, {"name", i < 5 ? irq_names[i] : "?"}, {"count", q.count}, {"flags", q.flags},
                    {"eventfd", bool(q.flags & irq_info_flags::eventfd)},
                    {"maskable", bool(q.flags & irq_info_flags::maskable)}});
  }
  j["irqs"] = irqs;
  uint8_t cfgsp[256] = {};
  bool have_cfg = dv.regions().size() > region_index::config && dv.regions()[region_index::config].info.size >= 64;
  if (have_cfg) {
    uint32_t n_cfg = uint32_t(std::min<uint64_t>(256, dv.regions()[region_index::config].info.size));
    if (auto s = dv.read(region_index::config, 0, cfgsp, n_cfg); !s) return die("config read: " + s.err().message());
    json c = {{"vendor", get<uint16_t>(cfgsp)}, {"device", get<uint16_t>(cfgsp + 2)},
              {"command", get<uint16_t>(cfgsp + 4)}, {"status", get<uint16_t>(cfgsp + 6)},
              {"revision", cfgsp[8]}, {"class", get<uint32_t>(cfgsp + 8) >> 8},
              {"subsystem_vendor", get<uint16_t>(cfgsp + 0x2c)}, {"subsystem", get<uint16_t>(cfgsp + 0x2e)},
              {"interrupt_pin", cfgsp[0x3d]}};
    json bars = json::array();
    for (int b = 0; b < 6; ++b) bars.push_back(get<uint32_t>(cfgsp + 0x10 + 4 * b));
    c["bars"] = bars;
    json caps = json::array();
    if (cfgsp[6] & 0x10) {
      int guard = 0;
      for (uint8_t p = cfgsp[0x34] & 0xfc; p >= 0x40 && guard < 48; p = cfgsp[p + 1] & 0xfc, ++guard)
        caps.push_back({{"offset", p}, {"id", cfgsp[p]}, {"name", cap_name(cfgsp[p])}});
    }
    c["capabilities"] = caps;
    j["config"] = c;
  }
  json reads = json::array();
  std::vector<std::string> dump_lines;
  for (auto& d : dumps) {
    std::vector<uint8_t> buf(d.length);
    if (auto s = dv.read(d.region, d.offset, buf.data(), buf.size()); !s)
      return die("read of region " + std::to_string(d.region) + " failed: " + s.err().message());
    std::string hex;
    char b[8];
    for (uint32_t i = 0; i < d.length; ++i) {
      if (i % 16 == 0) {
        if (i) dump_lines.push_back(hex);
        std::snprintf(b, sizeof b, "%u", d.region);
        hex = std::string("  region ") + b + " 0x";
        char o[24];
        std::snprintf(o, sizeof o, "%" PRIx64 ":", d.offset + i);
        hex += o;
      }
      std::snprintf(b, sizeof b, " %02x", buf[i]);
      hex += b;
    }
    dump_lines.push_back(hex);
    std::string plain;
    for (auto c : buf) {
      std::snprintf(b, sizeof b, "%02x", c);
      plain += b;
    }
    reads.push_back({{"region", d.region}, {"offset", d.offset}, {"length", d.length}, {"hex", plain}});
  }
  if (!dumps.empty()) j["reads"] = reads;
  // Migration v2: a server without it answers the feature with an error (ENOTSUP, EINVAL).
  std::string no_migration;
  if (auto mf = dv.migration_flags()) {
    json jm = {{"flags", *mf}, {"stop_copy", bool(*mf & mig_flags::stop_copy)},
               {"pre_copy", bool(*mf & mig_flags::pre_copy)}, {"p2p", bool(*mf & mig_flags::p2p)}};
    if (auto st = dv.migration_state()) jm["state"] = to_string(*st);
    j["migration"] = jm;
  } else {
    j["migration"] = nullptr;
    no_migration = mf.err().message();
  }
  if (as_json) {
    std::printf("%s\n", j.dump(2).c_str());
    return 0;
  }
  std::printf("vfio-user device at %s\n", path.c_str());
  std::printf("  protocol %u.%u; server: max_msg_fds=%" PRIu64 " max_data_xfer_size=%" PRIu64 " max_dma_maps=%" PRIu64
              " pgsizes=0x%" PRIx64 "%s%s\n",
              n.major, n.minor, n.theirs.max_msg_fds, n.theirs.max_data_xfer_size, n.theirs.max_dma_maps, n.theirs.pgsizes,
              n.theirs.write_multiple ? " write_multiple" : "", n.theirs.migration ? " migration(legacy key)" : "");
  std::printf("  device flags 0x%x:%s%s, %u regions, %u IRQ types\n", dv.info().flags,
              dv.info().flags & device_info_flags::pci ? " PCI" : "", dv.info().flags & device_info_flags::reset ? " reset" : "",
              dv.info().num_regions, dv.info().num_irqs);
  if (have_cfg) {
    auto& c = j["config"];
    std::printf("  %04x:%04x (rev %02x) class %06x subsystem %04x:%04x, command 0x%04x status 0x%04x, INTx pin %u\n",
                c["vendor"].get<unsigned>(), c["device"].get<unsigned>(), c["revision"].get<unsigned>(),
                c["class"].get<unsigned>(), c["subsystem_vendor"].get<unsigned>(), c["subsystem"].get<unsigned>(),
                c["command"].get<unsigned>(), c["status"].get<unsigned>(), c["interrupt_pin"].get<unsigned>());
    for (auto& cap : c["capabilities"])
      std::printf("  Capabilities: [%02x] %s\n", cap["offset"].get<unsigned>(), cap["name"].get<std::string>().c_str());
  }
  for (auto& r : j["regions"]) {
    if (r["size"].get<uint64_t>() == 0) continue;
    unsigned idx = r["index"].get<unsigned>();
    std::printf("  Region %u %-7s size 0x%-8" PRIx64 " %s%s%s", idx, r["name"].get<std::string>().c_str(),
                r["size"].get<uint64_t>(), r["read"].get<bool>() ? "R" : "-", r["write"].get<bool>() ? "W" : "-",
                r["mmap"].get<bool>() ? " mmap" : "");
    if (idx < 6 && have_cfg) {
      uint32_t bar = j["config"]["bars"][idx].get<uint32_t>();
      std::printf(" (%s BAR 0x%08x)", bar & 1 ? "I/O" : "memory", bar);
    }
    for (auto& a : r["sparse_mmap"]) std::printf(" [area 0x%" PRIx64 "+0x%" PRIx64 "]", a["offset"].get<uint64_t>(), a["size"].get<uint64_t>());
    if (r.contains("type"))
      std::printf(" [type 0x%x subtype 0x%x]", r["type"]["type"].get<unsigned>(), r["type"]["subtype"].get<unsigned>());
    std::printf("\n");
  }
  for (auto& q : j["irqs"])
    std::printf("  IRQ %-5s count %u%s%s\n", q["name"].get<std::string>().c_str(), q["count"].get<unsigned>(),
                q["eventfd"].get<bool>() ? " eventfd" : "", q["maskable"].get<bool>() ? " maskable" : "");
  if (j["migration"].is_null()) {
    std::printf("  Migration: not offered (%s)\n", no_migration.c_str());
  } else {
    auto& m = j["migration"];
    std::printf("  Migration: v2, flags 0x%" PRIx64 ":%s%s%s, state %s\n", m["flags"].get<uint64_t>(),
                m["stop_copy"].get<bool>() ? " STOP_COPY" : "", m["pre_copy"].get<bool>() ? " PRE_COPY" : "",
                m["p2p"].get<bool>() ? " P2P" : "", m.contains("state") ? m["state"].get<std::string>().c_str() : "?");
  }
  for (auto& l : dump_lines) std::printf("%s\n", l.c_str());
  return 0;
}
