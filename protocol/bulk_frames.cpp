#include "protocol/bulk_frames.hpp"

#include "protocol/wire.hpp"

#include <cstddef>
#include <cstring>
#include <type_traits>

namespace vfu::proto {

namespace {
using wire::reader;
void read_access(reader& r, region_access& a) { r.get(a.offset); r.get(a.region); r.get(a.count); }
// region_access is its wire layout, as header is (header.hpp): one copy writes it.
static_assert(sizeof(region_access) == region_access_size && std::is_trivially_copyable_v<region_access> &&
              offsetof(region_access, offset) == 0 && offsetof(region_access, region) == 8 &&
              offsetof(region_access, count) == 12);
void write_access(uint8_t* p, const region_access& a) noexcept { std::memcpy(p, &a, sizeof a); }
}  // namespace

frame make_region_frame(uint16_t msg_id, command cmd, bool reply, const region_access& a, const uint8_t* data,
                        uint32_t extra_flags) {
  frame f;
  build_region_frame(f, msg_id, cmd, reply, a, data, extra_flags);
  return f;
}

void build_region_frame(frame& f, uint16_t msg_id, command cmd, bool reply, const region_access& a, const uint8_t* data,
                        uint32_t extra_flags) {
  // One resize, then the fields in place: this builds every REGION_READ reply.
  f.fds.clear();
  size_t with = (data || reply) ? size_t(a.count) : 0;  // (a reply without data: the caller fills it in place)
  f.bytes.resize(header_size + region_access_size + with);
  write_access(f.bytes.data() + header_size, a);
  if (data) std::memcpy(region_frame_data(f), data, a.count);
  header h;
  h.msg_id = msg_id;
  h.command = uint16_t(cmd);
  h.msg_size = uint32_t(f.bytes.size());
  h.flags = (reply ? hflags::type_reply : hflags::type_command) | extra_flags;
  f.set_hdr(h);
}

uint8_t* region_frame_data(frame& f) noexcept { return f.bytes.data() + header_size + region_access_size; }

frame make_region_head(uint16_t msg_id, command cmd, bool reply, const region_access& a) {
  frame f = make_region_frame(msg_id, cmd, false, a);  // header and access fields only
  header h = f.hdr();
  h.msg_size = uint32_t(f.bytes.size() + a.count);
  h.flags = reply ? hflags::type_reply : hflags::type_command;
  f.set_hdr(h);
  return f;
}

const uint8_t* region_read_reply_data(const frame& f, const region_access& want) noexcept {
  auto h = f.hdr();
  if (!h.is_reply() || h.is_error() || h.command != uint16_t(command::region_read)) return nullptr;
  if (f.bytes.size() != header_size + region_access_size + size_t(want.count)) return nullptr;
  reader r(f.payload());
  region_access got;
  read_access(r, got);
  if (got.offset != want.offset || got.region != want.region || got.count != want.count) return nullptr;
  return r.here();
}

}  // namespace vfu::proto
