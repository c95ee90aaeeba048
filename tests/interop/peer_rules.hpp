// What the real peers accept in a VERSION exchange, transcribed from their source
// (docs/interop.md has the table and the line references). Each function returns the
// message the peer would fail with, or "" when it accepts.
//
//   qemu_refuses_reply:       QEMU 10.2 vfio-user-pci, hw/vfio-user/proxy.c
//                             vfio_user_validate_version, caps_check, check_*
//   lvu_client_refuses_reply: libvfio-user efd091b samples/client.c recv_version
//   lvu_server_refuses:       libvfio-user efd091b lib/tran.c recv_version (QEMU's x-remote
//                             server embeds 0b28d20, which rejects nothing more)
#pragma once

#include <unistd.h>

#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "protocol/frame.hpp"
#include "protocol/header.hpp"

namespace vfu::test::peer {

using json = nlohmann::json;

namespace detail {
inline bool is_uint(const json& v) { return v.is_number_unsigned() || (v.is_number_integer() && v.get<int64_t>() >= 0); }
inline bool is_int(const json& v) { return v.is_number_integer() || v.is_number_unsigned(); }
inline uint16_t u16_at(const proto::frame& f, size_t off) {
  return uint16_t(f.bytes[proto::header_size + off] | (f.bytes[proto::header_size + off + 1] << 8));
}
/// The JSON text of a VERSION payload whose last byte must be its NUL; nullopt if it is not.
inline std::optional<std::string> caps_text(const proto::frame& f) {
  auto p = f.payload();
  if (p.size <= 4) return std::string();
  if (p.data[p.size - 1] != 0) return std::nullopt;
  return std::string(reinterpret_cast<const char*>(p.data) + 4);
}
}  // namespace detail

/// QEMU's checks of a server's VERSION reply to a request of `request_size` bytes. QEMU
/// reads the reply into the request's own buffer, so it may not be larger.
inline std::string qemu_refuses_reply(size_t request_size, const proto::frame& reply) {
  using namespace detail;
  auto h = reply.hdr();
  if (h.msg_size > request_size) return "reply larger than recv buffer";
  if (!reply.fds.empty()) return "unexpected FDs in reply";
  if (h.is_error()) return "version reply: error " + std::to_string(h.error_no);
  if (reply.payload().size < 4) return "version reply too short";
  if (u16_at(reply, 0) != 0 || u16_at(reply, 2) > 0) return "incompatible server version";
  auto text = caps_text(reply);
  if (!text) return "corrupt version reply";
  json doc = json::parse(*text, nullptr, false);
  if (doc.is_discarded()) return "malformed capabilities " + *text;
  if (!doc.is_object()) return "capabilities " + *text + " not an object";
  auto c = doc.find("capabilities");
  if (c == doc.end()) return "";
  if (!c->is_object()) return "malformed capabilities";
  auto uint_at_most = [&](const char* key, uint64_t max) -> std::string {
    auto it = c->find(key);
    if (it == c->end()) return "";
    if (!is_uint(*it) || it->get<uint64_t>() > max) return std::string("malformed ") + key;
    return "";
  };
  if (auto e = uint_at_most("max_msg_fds", 16); !e.empty()) return e;
  if (auto e = uint_at_most("max_data_xfer_size", 64u << 20); !e.empty()) return e;
  // Below the config space's 4 KiB, realize fails reading it (hw/vfio/pci.c).
  if (auto it = c->find("max_data_xfer_size"); it != c->end() && it->get<uint64_t>() < 4096)
    return "failed to read device config space";
  if (auto it = c->find("pgsizes"); it != c->end()) {
    if (!is_uint(*it)) return "malformed pgsizes";
    if (it->get<uint64_t>() & 4095) return "pgsize too small";
    if (it->get<uint64_t>() == 0) return "pgsizes 0 (an assertion in QEMU's container set-up)";
  }
  if (auto it = c->find("max_dma_maps"); it != c->end()) {
    if (!is_uint(*it)) return "malformed max_dma_maps";
    if (it->get<uint64_t>() > 65535) return "max_dma_maps too large";
  }
  if (auto it = c->find("migration"); it != c->end()) {
    if (!it->is_object()) return "malformed migration";
    if (auto p = it->find("pgsize"); p != it->end() && (!is_uint(*p) || (p->get<uint64_t>() & 4095)))
      return "migration pgsize too small";
    if (auto b = it->find("max_bitmap_size"); b != it->end() && (!is_uint(*b) || b->get<uint64_t>() > (256u << 20)))
      return "max_bitmap_size too large";
  }
  if (auto it = c->find("write_multiple"); it != c->end() && !it->is_boolean()) return "malformed write_multiple";
  return "";
}

/// libvfio-user's sample client's checks of a server's VERSION reply.
inline std::string lvu_client_refuses_reply(const proto::frame& reply) {
  using namespace detail;
  auto h = reply.hdr();
  if (!reply.fds.empty()) return "failed to receive version (EFAULT: no room for fds)";
  if (h.is_error()) return "server rejected version";
  if (h.msg_size > (1u << 20) + 32) return "failed to receive version (too large)";
  if (reply.payload().size < 4) return "bad version reply size";
  if (u16_at(reply, 0) != 0) return "bad major";
  if (u16_at(reply, 2) > 2) return "bad minor";
  auto text = caps_text(reply);
  if (!text) return "ignoring invalid JSON";
  if (text->empty()) return "";
  json doc = json::parse(*text, nullptr, false);
  if (doc.is_discarded()) return "failed to parse capabilities";
  auto c = doc.find("capabilities");
  if (!doc.is_object() || c == doc.end()) return "";
  if (!c->is_object()) return "capabilities is not an object";
  for (const char* key : {"max_msg_fds", "max_data_xfer_size"})
    if (auto it = c->find(key); it != c->end() && !is_int(*it)) return std::string(key) + " is not an int";
  // The sample maps 2 x max_msg_fds DMA regions; with 0 it has none to work with.
  if (auto it = c->find("max_msg_fds"); it != c->end() && it->get<int64_t>() <= 0) return "max_msg_fds <= 0";
  if (auto it = c->find("migration"); it != c->end()) {
    if (!it->is_object()) return "migration is not an object";
    if (auto p = it->find("pgsize"); p != it->end() && !is_int(*p)) return "migration.pgsize is not an int";
  }
  // It parses with no room for the answer: twin_socket.supported is a NULL write.
  if (auto it = c->find("twin_socket"); it != c->end()) {
    if (!it->is_object()) return "twin_socket is not an object";
    if (it->contains("supported")) return "SIGSEGV (twin_socket.supported in the reply)";
  }
  return "";
}

/// libvfio-user's server's checks of a client's VERSION request.
inline std::string lvu_server_refuses(const proto::frame& req) {
  using namespace detail;
  auto h = req.hdr();
  if (!req.fds.empty()) return "EFAULT: fds on VERSION (connection closed)";
  if (!h.is_command()) return "EINVAL: not a command";
  if (h.msg_size > (1u << 20) + 32) return "EINVAL: too large";
  if (req.payload().size < 4) return "EINVAL: short VERSION";
  if (u16_at(req, 0) != 0) return "EINVAL: unsupported client major";
  auto text = caps_text(req);
  if (!text) return "EINVAL: ignoring invalid JSON";
  if (text->empty()) return "";
  json doc = json::parse(*text, nullptr, false);
  if (doc.is_discarded()) return "EINVAL: failed to parse";
  auto c = doc.find("capabilities");
  if (!doc.is_object() || c == doc.end()) return "";
  if (!c->is_object()) return "EINVAL: capabilities is not an object";
  if (auto it = c->find("max_msg_fds"); it != c->end()) {
    if (!is_int(*it)) return "EINVAL: max_msg_fds is not an int";
    auto v = int(it->get<int64_t>());
    if (v < 0 || v > 1024) return "EINVAL: refusing client max_msg_fds";
  }
  if (auto it = c->find("max_data_xfer_size"); it != c->end()) {
    if (!is_int(*it)) return "EINVAL: max_data_xfer_size is not an int";
    // Accepted, but it sizes the server's DMA chunks: 0 never ends, above 1 MiB its
    // replies exceed what the server reads (SERVER_MAX_MSG_SIZE).
    auto v = it->get<int64_t>();
    if (v <= 0 || v > (1 << 20)) return "max_data_xfer_size " + std::to_string(v) + " breaks the server's DMA";
  }
  if (auto it = c->find("migration"); it != c->end()) {
    if (!it->is_object()) return "EINVAL: migration is not an object";
    if (auto p = it->find("pgsize"); p != it->end()) {
      if (!is_int(*p)) return "EINVAL: migration.pgsize is not an int";
      if (p->get<int64_t>() != 0 && p->get<int64_t>() != ::sysconf(_SC_PAGESIZE)) return "EINVAL: refusing client page size";
    }
  }
  if (auto it = c->find("twin_socket"); it != c->end()) {
    if (!it->is_object()) return "EINVAL: twin_socket is not an object";
    if (auto s = it->find("supported"); s != it->end() && !s->is_boolean()) return "EINVAL: twin_socket.supported";
  }
  return "";
}

}  // namespace vfu::test::peer
