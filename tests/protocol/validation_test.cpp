// Every validation rule of decode() (messages.cpp) at its boundaries: one short, exact, one
// over, and wrap-around. Each rejection is checked for its errc AND the errno a reply would
// carry (to_wire_errno).
#include <gtest/gtest.h>

#include <cstring>
#include <limits>

#include "protocol/limits.hpp"
#include "protocol/messages.hpp"
#include "tests/protocol/test_util.hpp"

namespace {

using namespace vfu::proto;
constexpr uint64_t u64max = std::numeric_limits<uint64_t>::max();

/// Payload builder: little-endian fields appended in order.
struct pb {
  std::vector<uint8_t> b;
  template <class T>
  pb& put(T v) {
    size_t at = b.size();
    b.resize(at + sizeof v);
    std::memcpy(b.data() + at, &v, sizeof v);
    return *this;
  }
  pb& u8(uint8_t v) { return put(v); }
  pb& u16(uint16_t v) { return put(v); }
  pb& u32(uint32_t v) { return put(v); }
  pb& u64(uint64_t v) { return put(v); }
  pb& fill(size_t n, uint8_t v = 0) { b.insert(b.end(), n, v); return *this; }
  pb& str(const std::string& s) { b.insert(b.end(), s.begin(), s.end()); return *this; }
  pb& drop(size_t n) { b.resize(b.size() - n); return *this; }
  operator const std::vector<uint8_t>&() const { return b; }
};

constexpr uint32_t CMD = hflags::type_command;
constexpr uint32_t REP = hflags::type_reply;

struct opts {
  size_t nfds = 0;
  quirks q = {};
  decode_limits lim = {};
};

result<message> dec(command cmd, uint32_t flags, const std::vector<uint8_t>& p, opts o = {},
                    uint32_t error_no = 0) {
  header h;
  h.msg_id = 0x4242;
  h.command = uint16_t(cmd);
  h.msg_size = uint32_t(header_size + p.size());
  h.flags = flags;
  h.error_no = error_no;
  return decode(h, byte_view{p.data(), p.size()}, o.nfds, o.q, o.lim);
}

::testing::AssertionResult fails_with(const result<message>& r, errc code, int errnum) {
  if (r.ok()) return ::testing::AssertionFailure() << "decoded as " << message_name(r.value()) << ", expected " << to_string(code);
  if (r.err().code != code || to_wire_errno(r.err()) != errnum)
    return ::testing::AssertionFailure() << "got " << r.err().message() << " errno " << to_wire_errno(r.err())
                                         << ", expected " << to_string(code) << " errno " << errnum;
  return ::testing::AssertionSuccess();
}
::testing::AssertionResult ok(const result<message>& r) {
  if (r.ok()) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << r.err().message();
}

#define EXPECT_REJECT(expr, code, errnum) EXPECT_TRUE(fails_with((expr), errc::code, errnum))
#define EXPECT_ACCEPT(expr) EXPECT_TRUE(ok(expr))

// ---- header -------------------------------------------------------------------------------
TEST(Validation, HeaderMsgSizeMustMatchTheFrame) {
  std::vector<uint8_t> p(16, 0);
  header h;
  h.command = uint16_t(command::region_read);
  h.msg_size = 31;  // one short
  EXPECT_REJECT(decode(h, {p.data(), p.size()}, 0), bad_header, EPROTO);
  h.msg_size = 33;
  EXPECT_REJECT(decode(h, {p.data(), p.size()}, 0), bad_header, EPROTO);
  h.msg_size = 32;
  EXPECT_ACCEPT(decode(h, {p.data(), p.size()}, 0));
}

TEST(Validation, HeaderTypeBits) {
  for (uint32_t t = 2; t <= 15; ++t) EXPECT_REJECT(dec(command::device_reset, t, {}), bad_header, EPROTO) << t;
  EXPECT_ACCEPT(dec(command::device_reset, CMD, {}));
  EXPECT_ACCEPT(dec(command::device_reset, REP, {}));
}

TEST(Validation, HeaderReservedFlagBits) {
  for (uint32_t bit = 6; bit < 32; ++bit)
    EXPECT_REJECT(dec(command::device_reset, CMD | (1u << bit), {}), bad_flags, EINVAL) << bit;
}

TEST(Validation, HeaderUnknownCommandIsENOSYS) {
  for (uint16_t c : {0, 14, 19, 0xffff}) {
    header h;
    h.command = c;
    h.msg_size = 16;
    auto r = decode(h, byte_view{}, 0);
    EXPECT_REJECT(r, unknown_command, ENOSYS) << c;
    h.flags = REP;
    EXPECT_REJECT(decode(h, byte_view{}, 0), unknown_command, ENOSYS) << c;
  }
}

TEST(Validation, HeaderErrorAndNoReplyBitsBelongToOneDirection) {
  EXPECT_REJECT(dec(command::device_reset, CMD | hflags::error, {}), bad_flags, EINVAL);
  EXPECT_REJECT(dec(command::device_reset, CMD, {}, {}, EIO), bad_value, EINVAL);  // error_no on a command
  EXPECT_ACCEPT(dec(command::device_reset, CMD | hflags::no_reply, {}));
  EXPECT_REJECT(dec(command::device_reset, REP | hflags::no_reply, {}), bad_flags, EINVAL);
  EXPECT_REJECT(dec(command::device_reset, REP, {}, {}, EIO), bad_value, EINVAL);  // error_no without ERROR
}

TEST(Validation, ErrorReplies) {
  auto r = dec(command::region_read, REP | hflags::error, {}, {}, EFAULT);
  ASSERT_TRUE(ok(r));
  EXPECT_EQ(std::get<error_reply>(*r).error_no, uint32_t(EFAULT));
  // error_no 0 with ERROR is legal ("generic failure").
  EXPECT_ACCEPT(dec(command::region_read, REP | hflags::error, {}, {}, 0));
  // A payload only with libvfio-user's quirk.
  std::vector<uint8_t> echo(16, 0);
  EXPECT_REJECT(dec(command::region_read, REP | hflags::error, echo, {}, EINVAL), trailing_bytes, EINVAL);
  EXPECT_ACCEPT(dec(command::region_read, REP | hflags::error, echo, {0, quirks::libvfio_user()}, EINVAL));
  EXPECT_REJECT(dec(command::region_read, REP | hflags::error, {}, {1}, EINVAL), bad_fds, EINVAL);
}

// ---- VERSION ------------------------------------------------------------------------------
TEST(Validation, VersionSizes) {
  EXPECT_REJECT(dec(command::version, CMD, pb().u16(0).u8(2)), truncated, EINVAL);
  EXPECT_ACCEPT(dec(command::version, CMD, pb().u16(0).u16(2)));
  auto r = dec(command::version, CMD, pb().u16(0).u16(2).u8(0));  // just the NUL: empty JSON
  ASSERT_TRUE(ok(r));
  EXPECT_EQ(*std::get<version_request>(*r).caps_json, "");
}

TEST(Validation, VersionJsonMustBeNulTerminatedWithoutEmbeddedNul) {
  EXPECT_REJECT(dec(command::version, CMD, pb().u32(0).str("{}")), bad_json, EINVAL);
  EXPECT_REJECT(dec(command::version, CMD, pb().u32(0).str("{}").u8(0).str("{}").u8(0)), bad_json, EINVAL);
  EXPECT_REJECT(dec(command::version, CMD, pb().u32(0).u8(0).u8(0)), bad_json, EINVAL);
  EXPECT_ACCEPT(dec(command::version, CMD, pb().u32(0).str("{}").u8(0)));
}

TEST(Validation, VersionJsonAt4096Bytes) {
  std::string at(limits::max_caps_json, ' ');
  EXPECT_ACCEPT(dec(command::version, CMD, pb().u32(0).str(at).u8(0)));
  EXPECT_REJECT(dec(command::version, CMD, pb().u32(0).str(at + " ").u8(0)), too_large, E2BIG);
  // The frame limit used before VERSION completes admits the largest acceptable VERSION
  // (regression: it forgot the NUL).
  EXPECT_EQ(limits::max_version_frame, 16u + 4u + limits::max_caps_json + 1u);
}

TEST(Validation, VersionFds) {
  auto p = pb().u32(0);
  EXPECT_REJECT(dec(command::version, CMD, p, {1}), bad_fds, EINVAL);
  EXPECT_ACCEPT(dec(command::version, REP, p, {1}));  // twin socket
  EXPECT_REJECT(dec(command::version, REP, p, {2}), bad_fds, EINVAL);
}

// ---- DMA_MAP ------------------------------------------------------------------------------
pb dma_map(uint32_t argsz, uint32_t flags, uint64_t offset, uint64_t addr, uint64_t size) {
  return pb().u32(argsz).u32(flags).u64(offset).u64(addr).u64(size);
}

TEST(Validation, DmaMapSizes) {
  auto good = dma_map(32, 3, 0, 0x1000, 0x1000);
  EXPECT_ACCEPT(dec(command::dma_map, CMD, good));
  EXPECT_REJECT(dec(command::dma_map, CMD, pb(good).drop(1)), truncated, EINVAL);
  EXPECT_REJECT(dec(command::dma_map, CMD, pb(good).u8(0)), trailing_bytes, EINVAL);
  EXPECT_REJECT(dec(command::dma_map, CMD, dma_map(31, 3, 0, 0x1000, 0x1000)), bad_argsz, EINVAL);
  EXPECT_REJECT(dec(command::dma_map, CMD, dma_map(33, 3, 0, 0x1000, 0x1000)), bad_argsz, EINVAL);
  EXPECT_REJECT(dec(command::dma_map, CMD, dma_map(40, 3, 0, 0x1000, 0x1000)), bad_argsz, EINVAL);
}

TEST(Validation, DmaMapFlagsAndSize) {
  EXPECT_ACCEPT(dec(command::dma_map, CMD, dma_map(32, 0, 0, 0x1000, 0x1000)));
  EXPECT_REJECT(dec(command::dma_map, CMD, dma_map(32, 4, 0, 0x1000, 0x1000)), bad_flags, EINVAL);
  EXPECT_REJECT(dec(command::dma_map, CMD, dma_map(32, 0x80000000u, 0, 0x1000, 0x1000)), bad_flags, EINVAL);
  EXPECT_REJECT(dec(command::dma_map, CMD, dma_map(32, 3, 0, 0x1000, 0)), bad_value, EINVAL);
  EXPECT_ACCEPT(dec(command::dma_map, CMD, dma_map(32, 3, 0, 0, limits::max_dma_window)));
  EXPECT_REJECT(dec(command::dma_map, CMD, dma_map(32, 3, 0, 0, limits::max_dma_window + 1)), too_large, E2BIG);
}

TEST(Validation, DmaMapWrapAround) {
  // Last byte at 2^64 - 1: fine. One more: wraps.
  EXPECT_ACCEPT(dec(command::dma_map, CMD, dma_map(32, 3, 0, u64max - 0x1000, 0x1000)));
  EXPECT_REJECT(dec(command::dma_map, CMD, dma_map(32, 3, 0, u64max - 0xfff, 0x1000)), overflow, EINVAL);
  EXPECT_REJECT(dec(command::dma_map, CMD, dma_map(32, 3, u64max - 0xfff, 0, 0x1000)), overflow, EINVAL);
}

TEST(Validation, DmaMapFdsAndReply) {
  auto good = dma_map(32, 3, 0, 0x1000, 0x1000);
  EXPECT_ACCEPT(dec(command::dma_map, CMD, good, {1}));
  EXPECT_REJECT(dec(command::dma_map, CMD, good, {2}), bad_fds, EINVAL);
  EXPECT_ACCEPT(dec(command::dma_map, REP, {}));
  EXPECT_REJECT(dec(command::dma_map, REP, pb().u8(0)), trailing_bytes, EINVAL);
  EXPECT_REJECT(dec(command::dma_map, REP, {}, {1}), bad_fds, EINVAL);
}

// ---- DMA_UNMAP ----------------------------------------------------------------------------
pb unmap(uint32_t argsz, uint32_t flags, uint64_t addr, uint64_t size) {
  return pb().u32(argsz).u32(flags).u64(addr).u64(size);
}

TEST(Validation, DmaUnmapSizesFlagsValues) {
  for (uint32_t t : {CMD, REP}) {
    auto good = unmap(24, 0, 0x1000, 0x1000);
    EXPECT_ACCEPT(dec(command::dma_unmap, t, good));
    EXPECT_REJECT(dec(command::dma_unmap, t, pb(good).drop(1)), truncated, EINVAL);
    EXPECT_REJECT(dec(command::dma_unmap, t, pb(good).u8(0)), trailing_bytes, EINVAL);
    EXPECT_REJECT(dec(command::dma_unmap, t, unmap(23, 0, 0x1000, 0x1000)), bad_argsz, EINVAL);
    EXPECT_ACCEPT(dec(command::dma_unmap, t, unmap(4096, 0, 0x1000, 0x1000)));  // argsz = max reply
    EXPECT_REJECT(dec(command::dma_unmap, t, unmap(24, 4, 0x1000, 0x1000)), bad_flags, EINVAL);
    EXPECT_REJECT(dec(command::dma_unmap, t, unmap(24, 3, 0, 0)), bad_flags, EINVAL);  // ALL|BITMAP
    EXPECT_ACCEPT(dec(command::dma_unmap, t, unmap(24, 2, 0, 0)));
    EXPECT_REJECT(dec(command::dma_unmap, t, unmap(24, 2, 0x1000, 0)), bad_value, EINVAL);
    EXPECT_REJECT(dec(command::dma_unmap, t, unmap(24, 2, 0, 0x1000)), bad_value, EINVAL);
    EXPECT_ACCEPT(dec(command::dma_unmap, t, unmap(24, 0, u64max - 0x1000, 0x1000)));
    EXPECT_REJECT(dec(command::dma_unmap, t, unmap(24, 0, u64max - 0xfff, 0x1000)), overflow, EINVAL);
    EXPECT_REJECT(dec(command::dma_unmap, t, good, {1}), bad_fds, EINVAL);
  }
}

TEST(Validation, DmaUnmapDirtyBitmap) {
  auto req = [](uint32_t argsz, uint64_t pgsize, uint64_t bytes) {
    return unmap(argsz, 1, 0, 0x40000).u64(pgsize).u64(bytes);
  };
  EXPECT_ACCEPT(dec(command::dma_unmap, CMD, req(48, 4096, 8)));
  EXPECT_REJECT(dec(command::dma_unmap, CMD, req(48, 4096, 8).drop(1)), truncated, EINVAL);
  EXPECT_REJECT(dec(command::dma_unmap, CMD, req(48, 4096, 8).u8(0)), trailing_bytes, EINVAL);
  EXPECT_REJECT(dec(command::dma_unmap, CMD, req(47, 4096, 8)), bad_argsz, EINVAL);  // no room for the bitmap
  EXPECT_REJECT(dec(command::dma_unmap, CMD, req(48, 0, 8)), bad_value, EINVAL);
  EXPECT_REJECT(dec(command::dma_unmap, CMD, req(48, 4097, 8)), bad_value, EINVAL);
  opts small;
  small.lim.max_data_xfer = 64;
  EXPECT_ACCEPT(dec(command::dma_unmap, CMD, req(104, 4096, 64), small));
  EXPECT_REJECT(dec(command::dma_unmap, CMD, req(105, 4096, 65), small), too_large, E2BIG);
  EXPECT_REJECT(dec(command::dma_unmap, CMD, req(~0u, 4096, limits::max_dirty_bitmap + 1)), too_large, E2BIG);
  // Reply: the bitmap bytes follow, exactly bitmap.size of them.
  auto rep = req(48, 4096, 8).fill(8, 0xff);
  EXPECT_ACCEPT(dec(command::dma_unmap, REP, rep));
  EXPECT_REJECT(dec(command::dma_unmap, REP, pb(rep).drop(1)), truncated, EINVAL);
  EXPECT_REJECT(dec(command::dma_unmap, REP, pb(rep).u8(0)), trailing_bytes, EINVAL);
}

// ---- DEVICE_GET_INFO / DEVICE_GET_IRQ_INFO ------------------------------------------------
TEST(Validation, FourU32Messages) {
  for (command c : {command::device_get_info, command::device_get_irq_info}) {
    for (uint32_t t : {CMD, REP}) {
      auto good = pb().u32(16).u32(0).u32(0).u32(0);
      EXPECT_ACCEPT(dec(c, t, good));
      EXPECT_REJECT(dec(c, t, pb(good).drop(1)), truncated, EINVAL);
      EXPECT_REJECT(dec(c, t, pb(good).u8(0)), trailing_bytes, EINVAL);
      EXPECT_REJECT(dec(c, t, pb().u32(15).u32(0).u32(0).u32(0)), bad_argsz, EINVAL);
      EXPECT_REJECT(dec(c, t, good, {1}), bad_fds, EINVAL);
    }
  }
}

TEST(Validation, DeviceInfoReplyLimits) {
  auto info = [](uint32_t flags, uint32_t regions, uint32_t irqs) { return pb().u32(16).u32(flags).u32(regions).u32(irqs); };
  EXPECT_ACCEPT(dec(command::device_get_info, REP, info(3, limits::max_regions, limits::max_irq_types)));
  EXPECT_REJECT(dec(command::device_get_info, REP, info(3, limits::max_regions + 1, 5)), too_large, E2BIG);
  EXPECT_REJECT(dec(command::device_get_info, REP, info(3, 9, limits::max_irq_types + 1)), too_large, E2BIG);
  EXPECT_REJECT(dec(command::device_get_info, REP, info(4, 9, 5)), bad_flags, EINVAL);
}

TEST(Validation, IrqInfoReplyLimits) {
  auto info = [](uint32_t flags, uint32_t count) { return pb().u32(16).u32(flags).u32(2).u32(count); };
  EXPECT_ACCEPT(dec(command::device_get_irq_info, REP, info(0xf, limits::max_irq_vectors)));
  EXPECT_REJECT(dec(command::device_get_irq_info, REP, info(1, limits::max_irq_vectors + 1)), too_large, E2BIG);
  EXPECT_REJECT(dec(command::device_get_irq_info, REP, info(0x10, 1)), bad_flags, EINVAL);
}

// ---- DEVICE_GET_REGION_INFO ---------------------------------------------------------------
pb rinfo(uint32_t argsz, uint32_t flags, uint32_t cap_offset, uint64_t size = 0x4000, uint64_t offset = 0) {
  return pb().u32(argsz).u32(flags).u32(1).u32(cap_offset).u64(size).u64(offset);
}
pb& type_cap(pb& p, uint32_t next) { return p.u16(region_cap_id::type).u16(1).u32(next).u32(3).u32(1); }

TEST(Validation, RegionInfoRequest) {
  EXPECT_ACCEPT(dec(command::device_get_region_info, CMD, rinfo(32, 0, 0)));
  EXPECT_REJECT(dec(command::device_get_region_info, CMD, rinfo(32, 0, 0).drop(1)), truncated, EINVAL);
  EXPECT_REJECT(dec(command::device_get_region_info, CMD, rinfo(31, 0, 0)), bad_argsz, EINVAL);
  // Bytes past the struct are allowed up to argsz (libvfio-user sends argsz bytes).
  EXPECT_ACCEPT(dec(command::device_get_region_info, CMD, rinfo(40, 0, 0).fill(8)));
  EXPECT_REJECT(dec(command::device_get_region_info, CMD, rinfo(40, 0, 0).fill(9)), trailing_bytes, EINVAL);
  EXPECT_REJECT(dec(command::device_get_region_info, CMD, rinfo(32, 0, 0), {1}), bad_fds, EINVAL);
}

TEST(Validation, RegionInfoReplyStruct) {
  EXPECT_ACCEPT(dec(command::device_get_region_info, REP, rinfo(32, 7, 0), {1}));
  EXPECT_REJECT(dec(command::device_get_region_info, REP, rinfo(32, 7, 0), {2}), bad_fds, EINVAL);
  EXPECT_REJECT(dec(command::device_get_region_info, REP, rinfo(32, 0, 0).drop(1)), truncated, EINVAL);
  EXPECT_REJECT(dec(command::device_get_region_info, REP, rinfo(31, 0, 0)), bad_argsz, EINVAL);
  EXPECT_REJECT(dec(command::device_get_region_info, REP, rinfo(32, 0x10, 0)), bad_flags, EINVAL);
  EXPECT_ACCEPT(dec(command::device_get_region_info, REP, rinfo(32, 3, 0, 0x1000, u64max - 0x1000)));
  EXPECT_REJECT(dec(command::device_get_region_info, REP, rinfo(32, 3, 0, 0x1000, u64max - 0xfff)), overflow, EINVAL);
  // Bytes after the struct need the CAPS flag.
  EXPECT_REJECT(dec(command::device_get_region_info, REP, rinfo(48, 3, 0).fill(16)), trailing_bytes, EINVAL);
  // CAPS with nothing after the struct: argsz was too small, the client retries.
  EXPECT_ACCEPT(dec(command::device_get_region_info, REP, rinfo(96, 0xf, 0)));
  // The whole reply is bounded.
  auto big = rinfo(32 + 16384, 0xf, 32);
  big.u16(99).u16(1).u32(0).fill(limits::max_region_info_argsz - 32 - 8 + 1);
  EXPECT_REJECT(dec(command::device_get_region_info, REP, big), too_large, E2BIG);
}

TEST(Validation, RegionInfoCapChainBounds) {
  auto one = rinfo(48, 0xf, 32);
  type_cap(one, 0);
  EXPECT_ACCEPT(dec(command::device_get_region_info, REP, one));
  // cap_offset inside the 32-byte struct.
  auto inside = rinfo(48, 0xf, 16);
  type_cap(inside, 0);
  EXPECT_REJECT(dec(command::device_get_region_info, REP, inside), bad_cap_chain, EINVAL);
  // cap_offset past the payload: a cap header needs 8 bytes.
  auto past = rinfo(48, 0xf, 48);
  type_cap(past, 0);
  EXPECT_REJECT(dec(command::device_get_region_info, REP, past), bad_cap_chain, EINVAL);
  auto hdr_cut = rinfo(48, 0xf, 41);
  type_cap(hdr_cut, 0);
  EXPECT_REJECT(dec(command::device_get_region_info, REP, hdr_cut), bad_cap_chain, EINVAL);
  // Cap body cut short.
  auto cut = rinfo(48, 0xf, 32);
  type_cap(cut, 0).drop(1);
  EXPECT_REJECT(dec(command::device_get_region_info, REP, cut), bad_cap_chain, EINVAL);
  // next beyond the payload.
  auto far = rinfo(64, 0xf, 32);
  type_cap(far, 200);
  EXPECT_REJECT(dec(command::device_get_region_info, REP, far), bad_cap_chain, EINVAL);
  // Bytes after the last cap.
  auto trail = rinfo(56, 0xf, 32);
  type_cap(trail, 0).fill(8);
  EXPECT_REJECT(dec(command::device_get_region_info, REP, trail), trailing_bytes, EINVAL);
  // A gap before the first cap is allowed (offsets are explicit).
  auto gap = rinfo(56, 0xf, 40);
  gap.fill(8);
  type_cap(gap, 0);
  EXPECT_ACCEPT(dec(command::device_get_region_info, REP, gap));
}

TEST(Validation, RegionInfoCapChainLoops) {
  // next pointing to itself.
  auto self = rinfo(48, 0xf, 32);
  type_cap(self, 32);
  EXPECT_REJECT(dec(command::device_get_region_info, REP, self), bad_cap_chain, EINVAL);
  // next pointing backwards: 32 -> 48 -> 32.
  auto back = rinfo(64, 0xf, 32);
  type_cap(back, 48);
  type_cap(back, 32);
  EXPECT_REJECT(dec(command::device_get_region_info, REP, back), bad_cap_chain, EINVAL);
  // next pointing into the middle of the current cap (overlap).
  auto overlap = rinfo(64, 0xf, 32);
  type_cap(overlap, 40);
  type_cap(overlap, 0);
  EXPECT_REJECT(dec(command::device_get_region_info, REP, overlap), bad_cap_chain, EINVAL);
  // Unknown cap id whose next points at itself (raw body of negative length).
  auto raw = rinfo(48, 0xf, 32);
  raw.u16(99).u16(1).u32(32).fill(8);
  EXPECT_REJECT(dec(command::device_get_region_info, REP, raw), bad_cap_chain, EINVAL);
  // Unknown cap id with a well-formed next: kept verbatim.
  auto raw_ok = rinfo(64, 0xf, 32);
  raw_ok.u16(99).u16(1).u32(48).fill(8, 0xab);
  type_cap(raw_ok, 0);
  auto r = dec(command::device_get_region_info, REP, raw_ok);
  ASSERT_TRUE(ok(r));
  auto& m = std::get<region_info_reply>(*r);
  ASSERT_EQ(m.caps.size(), 2u);
  EXPECT_EQ(m.caps[0].raw, std::vector<uint8_t>(8, 0xab));
}

TEST(Validation, RegionInfoAtMost16Caps) {
  auto chain = [](uint32_t n) {
    auto p = rinfo(32 + 16 * n, 0xf, 32);
    for (uint32_t i = 0; i < n; ++i) type_cap(p, i + 1 < n ? 32 + 16 * (i + 1) : 0);
    return p;
  };
  auto r = dec(command::device_get_region_info, REP, chain(limits::max_region_caps));
  ASSERT_TRUE(ok(r));
  EXPECT_EQ(std::get<region_info_reply>(*r).caps.size(), 16u);
  EXPECT_REJECT(dec(command::device_get_region_info, REP, chain(limits::max_region_caps + 1)), bad_cap_chain, EINVAL);
}

TEST(Validation, RegionInfoSparseAreas) {
  auto sparse = [](uint64_t region_size, uint32_t nr, std::vector<std::pair<uint64_t, uint64_t>> areas) {
    auto p = rinfo(uint32_t(48 + 16 * areas.size()), 0xf, 32, region_size);
    p.u16(region_cap_id::sparse_mmap).u16(1).u32(0).u32(nr).u32(0);
    for (auto& [o, s] : areas) p.u64(o).u64(s);
    return p;
  };
  EXPECT_ACCEPT(dec(command::device_get_region_info, REP, sparse(0x4000, 1, {{0x3000, 0x1000}})));
  EXPECT_REJECT(dec(command::device_get_region_info, REP, sparse(0x4000, 1, {{0x3000, 0x1001}})), bad_value, EINVAL);
  EXPECT_REJECT(dec(command::device_get_region_info, REP, sparse(u64max, 1, {{u64max, 2}})), overflow, EINVAL);
  EXPECT_REJECT(dec(command::device_get_region_info, REP, sparse(0x4000, 2, {{0, 0x1000}})), bad_cap_chain, EINVAL);
  EXPECT_REJECT(dec(command::device_get_region_info, REP, sparse(0x4000, limits::max_sparse_areas + 1, {})), too_large, E2BIG);
  auto cut = rinfo(44, 0xf, 32);
  cut.u16(region_cap_id::sparse_mmap).u16(1).u32(0).u32(0);  // no reserved word
  EXPECT_REJECT(dec(command::device_get_region_info, REP, cut), bad_cap_chain, EINVAL);
}

// ---- DEVICE_GET_REGION_IO_FDS -------------------------------------------------------------
pb iofds_head(uint32_t argsz, uint32_t count, uint32_t flags = 0) { return pb().u32(argsz).u32(flags).u32(0).u32(count); }
pb& entry40(pb& p, uint32_t fd_index, uint32_t type = 0, uint64_t offset = 0, uint64_t size = 4) {
  return p.u64(offset).u64(size).u32(fd_index).u32(type).u32(0).u32(0).u64(0);
}
pb& entry48(pb& p, uint32_t fd_index, uint32_t type, uint32_t shadow_index) {
  return p.u64(0).u64(4).u32(fd_index).u32(type).u32(0).u32(shadow_index).u64(0).u64(0);
}

TEST(Validation, IoFdsRequest) {
  EXPECT_ACCEPT(dec(command::device_get_region_io_fds, CMD, iofds_head(16, 0)));
  EXPECT_REJECT(dec(command::device_get_region_io_fds, CMD, iofds_head(16, 0).drop(1)), truncated, EINVAL);
  EXPECT_REJECT(dec(command::device_get_region_io_fds, CMD, iofds_head(16, 0).u8(0)), trailing_bytes, EINVAL);
  EXPECT_REJECT(dec(command::device_get_region_io_fds, CMD, iofds_head(15, 0)), bad_argsz, EINVAL);
  EXPECT_REJECT(dec(command::device_get_region_io_fds, CMD, iofds_head(16, 0, 1)), bad_flags, EINVAL);
  EXPECT_REJECT(dec(command::device_get_region_io_fds, CMD, iofds_head(16, 0), {1}), bad_fds, EINVAL);
}

TEST(Validation, IoFdsReplyEntrySize) {
  auto one40 = iofds_head(56, 1);
  entry40(one40, 0);
  EXPECT_ACCEPT(dec(command::device_get_region_io_fds, REP, one40, {1}));
  EXPECT_REJECT(dec(command::device_get_region_io_fds, REP, pb(one40).drop(1), {1}), bad_argsz, EINVAL);
  EXPECT_REJECT(dec(command::device_get_region_io_fds, REP, pb(one40).u8(0), {1}), bad_argsz, EINVAL);
  auto one48 = iofds_head(64, 1);
  entry48(one48, 0, 0, 0);
  EXPECT_ACCEPT(dec(command::device_get_region_io_fds, REP, one48, {1}));
  // count says 2 but one 40-byte entry follows (not 80 or 96 bytes).
  auto lying = iofds_head(96, 2);
  entry40(lying, 0);
  EXPECT_REJECT(dec(command::device_get_region_io_fds, REP, lying, {1}), bad_argsz, EINVAL);
  // Entries with count 0.
  auto zero = iofds_head(56, 0);
  entry40(zero, 0);
  EXPECT_REJECT(dec(command::device_get_region_io_fds, REP, zero, {1}), trailing_bytes, EINVAL);
  EXPECT_REJECT(dec(command::device_get_region_io_fds, REP, iofds_head(16, limits::max_io_fd_entries + 1)), too_large, E2BIG);
  EXPECT_ACCEPT(dec(command::device_get_region_io_fds, REP, iofds_head(16, limits::max_io_fd_entries)));
  EXPECT_REJECT(dec(command::device_get_region_io_fds, REP, iofds_head(15, 0)), bad_argsz, EINVAL);
  EXPECT_REJECT(dec(command::device_get_region_io_fds, REP, iofds_head(16, 0).drop(1)), truncated, EINVAL);
}

TEST(Validation, IoFdsReplyFds) {
  auto two = iofds_head(96, 2);
  entry40(two, 0);
  entry40(two, 1, 1);
  EXPECT_ACCEPT(dec(command::device_get_region_io_fds, REP, two, {2}));
  EXPECT_REJECT(dec(command::device_get_region_io_fds, REP, two, {1}), bad_fds, EINVAL);  // fd_index 1 >= nfds 1
  EXPECT_REJECT(dec(command::device_get_region_io_fds, REP, two, {3}), bad_fds, EINVAL);  // more fds than entries
  auto shared = iofds_head(96, 2);
  entry40(shared, 0);
  entry40(shared, 0);
  EXPECT_ACCEPT(dec(command::device_get_region_io_fds, REP, shared, {1}));  // fds may be shared
  // Head only (argsz too small): no fds.
  EXPECT_ACCEPT(dec(command::device_get_region_io_fds, REP, iofds_head(96, 2)));
  EXPECT_REJECT(dec(command::device_get_region_io_fds, REP, iofds_head(96, 2), {1}), bad_fds, EINVAL);
  auto bad_type = iofds_head(56, 1);
  entry40(bad_type, 0, 3);
  EXPECT_REJECT(dec(command::device_get_region_io_fds, REP, bad_type, {1}), bad_value, EINVAL);
  auto wraps = iofds_head(56, 1);
  entry40(wraps, 0, 0, u64max - 3, 4);
  EXPECT_REJECT(dec(command::device_get_region_io_fds, REP, wraps, {1}), overflow, EINVAL);
}

// Regression: libvfio-user's shadow ioeventfd entry carries two fds (ioeventfd + shadow
// memory); a one-entry reply with 2 fds used to be rejected, and the shadow index was not
// checked.
TEST(Validation, IoFdsShadowEntryHasTwoFds) {
  auto shadow = iofds_head(64, 1);
  entry48(shadow, 0, 2, 1);
  EXPECT_ACCEPT(dec(command::device_get_region_io_fds, REP, shadow, {2}));
  EXPECT_REJECT(dec(command::device_get_region_io_fds, REP, shadow, {1}), bad_fds, EINVAL);
  EXPECT_REJECT(dec(command::device_get_region_io_fds, REP, shadow, {3}), bad_fds, EINVAL);
}

// ---- DEVICE_SET_IRQS ----------------------------------------------------------------------
pb set_irqs(uint32_t argsz, uint32_t flags, uint32_t start, uint32_t count) {
  return pb().u32(argsz).u32(flags).u32(2).u32(start).u32(count);
}

TEST(Validation, SetIrqsSizesAndFlags) {
  using namespace irq_set_flags;
  const uint32_t ef = data_eventfd | action_trigger;
  EXPECT_ACCEPT(dec(command::device_set_irqs, CMD, set_irqs(20, ef, 0, 2), {2}));
  EXPECT_REJECT(dec(command::device_set_irqs, CMD, set_irqs(20, ef, 0, 2).drop(1)), truncated, EINVAL);
  EXPECT_REJECT(dec(command::device_set_irqs, CMD, set_irqs(20, ef, 0, 2).u8(0)), trailing_bytes, EINVAL);
  EXPECT_REJECT(dec(command::device_set_irqs, CMD, set_irqs(19, ef, 0, 2)), bad_argsz, EINVAL);
  EXPECT_REJECT(dec(command::device_set_irqs, CMD, set_irqs(20, ef | 0x40, 0, 2)), bad_flags, EINVAL);
  EXPECT_REJECT(dec(command::device_set_irqs, CMD, set_irqs(20, data_none | data_bool | action_trigger, 0, 0)), bad_flags, EINVAL);
  EXPECT_REJECT(dec(command::device_set_irqs, CMD, set_irqs(20, data_none | data_eventfd | action_trigger, 0, 0)), bad_flags, EINVAL);
  EXPECT_REJECT(dec(command::device_set_irqs, CMD, set_irqs(20, action_trigger, 0, 0)), bad_flags, EINVAL);
  EXPECT_REJECT(dec(command::device_set_irqs, CMD, set_irqs(20, data_none, 0, 0)), bad_flags, EINVAL);
  EXPECT_REJECT(dec(command::device_set_irqs, CMD, set_irqs(20, data_none | action_mask | action_unmask, 0, 0)), bad_flags, EINVAL);
  EXPECT_ACCEPT(dec(command::device_set_irqs, CMD, set_irqs(20, data_none | action_unmask, 0, 1)));
}

TEST(Validation, SetIrqsCounts) {
  using namespace irq_set_flags;
  const uint32_t none = data_none | action_trigger;
  EXPECT_ACCEPT(dec(command::device_set_irqs, CMD, set_irqs(20, none, 0, limits::max_irq_vectors)));
  EXPECT_REJECT(dec(command::device_set_irqs, CMD, set_irqs(20, none, 0, limits::max_irq_vectors + 1)), too_large, E2BIG);
  EXPECT_ACCEPT(dec(command::device_set_irqs, CMD, set_irqs(20, none, 0xfffffffe, 1)));
  EXPECT_REJECT(dec(command::device_set_irqs, CMD, set_irqs(20, none, 0xffffffff, 1)), overflow, EINVAL);
}

TEST(Validation, SetIrqsBoolArrayLength) {
  using namespace irq_set_flags;
  const uint32_t bl = data_bool | action_mask;
  EXPECT_ACCEPT(dec(command::device_set_irqs, CMD, set_irqs(23, bl, 0, 3).fill(3, 1)));
  EXPECT_REJECT(dec(command::device_set_irqs, CMD, set_irqs(23, bl, 0, 3).fill(2, 1)), truncated, EINVAL);
  EXPECT_REJECT(dec(command::device_set_irqs, CMD, set_irqs(23, bl, 0, 3).fill(4, 1)), trailing_bytes, EINVAL);
  EXPECT_REJECT(dec(command::device_set_irqs, CMD, set_irqs(23, bl, 0, 3).fill(3, 1), {1}), bad_fds, EINVAL);
}

TEST(Validation, SetIrqsFdCount) {
  using namespace irq_set_flags;
  const uint32_t ef = data_eventfd | action_trigger;
  EXPECT_ACCEPT(dec(command::device_set_irqs, CMD, set_irqs(20, ef, 0, 3), {3}));
  EXPECT_ACCEPT(dec(command::device_set_irqs, CMD, set_irqs(20, ef, 0, 3), {0}));  // de-assign
  EXPECT_REJECT(dec(command::device_set_irqs, CMD, set_irqs(20, ef, 0, 3), {2}), bad_fds, EINVAL);
  EXPECT_REJECT(dec(command::device_set_irqs, CMD, set_irqs(20, ef, 0, 3), {4}), bad_fds, EINVAL);
  EXPECT_REJECT(dec(command::device_set_irqs, CMD, set_irqs(20, data_none | action_trigger, 0, 1), {1}), bad_fds, EINVAL);
  // eventfd data is out of band: no bytes after the 20-byte head.
  EXPECT_REJECT(dec(command::device_set_irqs, CMD, set_irqs(24, ef, 0, 1).u32(5), {1}), trailing_bytes, EINVAL);
}

TEST(Validation, SetIrqsReplyIsEmpty) {
  EXPECT_ACCEPT(dec(command::device_set_irqs, REP, {}));
  EXPECT_REJECT(dec(command::device_set_irqs, REP, pb().u8(0)), trailing_bytes, EINVAL);
  EXPECT_REJECT(dec(command::device_set_irqs, REP, {}, {1}), bad_fds, EINVAL);
}

// ---- REGION_READ / REGION_WRITE -----------------------------------------------------------
pb access(uint64_t offset, uint32_t count) { return pb().u64(offset).u32(7).u32(count); }

TEST(Validation, RegionReadWriteSizes) {
  EXPECT_ACCEPT(dec(command::region_read, CMD, access(0, 4)));
  EXPECT_REJECT(dec(command::region_read, CMD, access(0, 4).drop(1)), truncated, EINVAL);
  EXPECT_REJECT(dec(command::region_read, CMD, access(0, 4).u8(0)), trailing_bytes, EINVAL);
  EXPECT_ACCEPT(dec(command::region_read, REP, access(0, 4).fill(4)));
  EXPECT_REJECT(dec(command::region_read, REP, access(0, 4).fill(3)), truncated, EINVAL);
  EXPECT_REJECT(dec(command::region_read, REP, access(0, 4).fill(5)), trailing_bytes, EINVAL);
  EXPECT_ACCEPT(dec(command::region_write, CMD, access(0, 4).fill(4)));
  EXPECT_REJECT(dec(command::region_write, CMD, access(0, 4).fill(3)), truncated, EINVAL);
  EXPECT_REJECT(dec(command::region_write, CMD, access(0, 4).fill(5)), trailing_bytes, EINVAL);
  EXPECT_ACCEPT(dec(command::region_write, REP, access(0, 4)));
  EXPECT_REJECT(dec(command::region_write, REP, access(0, 4).fill(4)), trailing_bytes, EINVAL);
  EXPECT_REJECT(dec(command::region_read, CMD, access(0, 4), {1}), bad_fds, EINVAL);
  EXPECT_REJECT(dec(command::region_write, CMD, access(0, 4).fill(4), {1}), bad_fds, EINVAL);
}

TEST(Validation, RegionAccessCountLimit) {
  opts o;
  o.lim.max_data_xfer = 1024;
  EXPECT_ACCEPT(dec(command::region_read, CMD, access(0, 1024), o));
  EXPECT_REJECT(dec(command::region_read, CMD, access(0, 1025), o), too_large, E2BIG);
  EXPECT_ACCEPT(dec(command::region_write, CMD, access(0, 1024).fill(1024), o));
  EXPECT_REJECT(dec(command::region_write, CMD, access(0, 1025).fill(1025), o), too_large, E2BIG);
  EXPECT_REJECT(dec(command::region_read, REP, access(0, 1025).fill(1025), o), too_large, E2BIG);
  // The default limit is the 64 MiB ceiling; a count above it is refused before any copy.
  EXPECT_REJECT(dec(command::region_write, CMD, access(0, 0xffffffffu)), too_large, E2BIG);
}

TEST(Validation, RegionAccessWrapAround) {
  EXPECT_ACCEPT(dec(command::region_read, CMD, access(u64max - 4, 4)));
  EXPECT_REJECT(dec(command::region_read, CMD, access(u64max - 3, 4)), overflow, EINVAL);
  EXPECT_REJECT(dec(command::region_write, CMD, access(u64max, 1).fill(1)), overflow, EINVAL);
}

// ---- DMA_READ / DMA_WRITE -----------------------------------------------------------------
pb dma(uint64_t addr, uint64_t count) { return pb().u64(addr).u64(count); }

TEST(Validation, DmaReadWriteSpec) {
  EXPECT_ACCEPT(dec(command::dma_read, CMD, dma(0, 8)));
  EXPECT_REJECT(dec(command::dma_read, CMD, dma(0, 8).drop(1)), truncated, EINVAL);
  EXPECT_REJECT(dec(command::dma_read, CMD, dma(0, 8).u8(0)), trailing_bytes, EINVAL);
  EXPECT_ACCEPT(dec(command::dma_read, REP, dma(0, 8).fill(8)));
  EXPECT_REJECT(dec(command::dma_read, REP, dma(0, 8).fill(7)), truncated, EINVAL);
  EXPECT_REJECT(dec(command::dma_read, REP, dma(0, 8).fill(9)), trailing_bytes, EINVAL);
  EXPECT_ACCEPT(dec(command::dma_write, CMD, dma(0, 8).fill(8)));
  EXPECT_REJECT(dec(command::dma_write, CMD, dma(0, 8).fill(7)), truncated, EINVAL);
  EXPECT_REJECT(dec(command::dma_write, CMD, dma(0, 8).fill(9)), trailing_bytes, EINVAL);
  EXPECT_ACCEPT(dec(command::dma_write, REP, dma(0, 8)));
  EXPECT_REJECT(dec(command::dma_write, REP, dma(0, 8).u8(0)), trailing_bytes, EINVAL);
  EXPECT_REJECT(dec(command::dma_write, REP, {}), truncated, EINVAL);  // header-only: QEMU quirk only
  EXPECT_REJECT(dec(command::dma_read, CMD, dma(0, 8), {1}), bad_fds, EINVAL);
}

TEST(Validation, DmaCountLimitAndWrap) {
  opts o;
  o.lim.max_data_xfer = 64;
  EXPECT_ACCEPT(dec(command::dma_read, CMD, dma(0, 64), o));
  EXPECT_REJECT(dec(command::dma_read, CMD, dma(0, 65), o), too_large, E2BIG);
  EXPECT_REJECT(dec(command::dma_write, CMD, dma(0, 65).fill(65), o), too_large, E2BIG);
  EXPECT_REJECT(dec(command::dma_write, CMD, dma(0, u64max).fill(8)), too_large, E2BIG);
  EXPECT_ACCEPT(dec(command::dma_read, CMD, dma(u64max - 8, 8)));
  EXPECT_REJECT(dec(command::dma_read, CMD, dma(u64max - 7, 8)), overflow, EINVAL);
  EXPECT_REJECT(dec(command::dma_write, CMD, dma(u64max, 1).fill(1)), overflow, EINVAL);
}

TEST(Validation, DmaQemuLayout) {
  opts q;
  q.q = quirks::qemu();
  // {offset u64, count u32, data@12, 4 pad}
  auto qemu_write = pb().u64(0x1000).u32(4).u32(0x44434241).u32(0);
  auto r = dec(command::dma_write, CMD, qemu_write, q);
  ASSERT_TRUE(ok(r));
  EXPECT_EQ(std::get<dma_write_request>(*r).layout, dma_layout::qemu);
  EXPECT_EQ(std::get<dma_write_request>(*r).data, (std::vector<uint8_t>{0x41, 0x42, 0x43, 0x44}));
  EXPECT_REJECT(dec(command::dma_write, CMD, qemu_write), too_large, E2BIG);  // spec mode: count u64 is huge
  EXPECT_REJECT(dec(command::dma_write, CMD, pb(qemu_write).drop(1), q), too_large, E2BIG);
  EXPECT_REJECT(dec(command::dma_write, CMD, pb().u64(0).u16(0), q), truncated, EINVAL);  // < 12
  EXPECT_REJECT(dec(command::dma_write, CMD, pb().u64(0).u32(0), q), truncated, EINVAL);  // 12: no pad
  opts small = q;
  small.lim.max_data_xfer = 3;
  EXPECT_REJECT(dec(command::dma_write, CMD, qemu_write, small), too_large, E2BIG);
  auto empty = dec(command::dma_write, REP, {}, q);
  ASSERT_TRUE(ok(empty));
  EXPECT_EQ(std::get<dma_write_reply>(*empty).layout, dma_layout::empty);
}

// Regression: a QEMU DMA_READ reply whose data starts with 4 zero bytes (zeroed guest memory)
// is also a well-formed spec frame; it was read as spec, shifting the data by 4 bytes and
// appending QEMU's pad. With the QEMU quirk the reply is now read in QEMU's layout first.
TEST(Validation, DmaReadReplyQemuLayoutWithLeadingZeroData) {
  opts q;
  q.q = quirks::qemu();
  // {offset u64 0x1000, count u32 8, data 00 00 00 00 01 02 03 04, pad 4}
  auto qemu_reply = pb().u64(0x1000).u32(8).u32(0).u32(0x04030201).u32(0);
  auto r = dec(command::dma_read, REP, qemu_reply, q);
  ASSERT_TRUE(ok(r));
  auto& m = std::get<dma_read_reply>(*r);
  EXPECT_EQ(m.layout, dma_layout::qemu);
  EXPECT_EQ(m.count, 8u);
  EXPECT_EQ(m.data, (std::vector<uint8_t>{0, 0, 0, 0, 1, 2, 3, 4}));
  // Spec mode reads the same bytes as {address, count u64 8, data@16}.
  auto s = dec(command::dma_read, REP, qemu_reply);
  ASSERT_TRUE(ok(s));
  EXPECT_EQ(std::get<dma_read_reply>(*s).layout, dma_layout::spec);
  // A spec DMA_WRITE request keeps its spec reading under the quirk (libvfio-user -> QEMU).
  auto spec_write = pb().u64(0).u64(8).u32(0x41414141).u32(0x41414141);
  auto w = dec(command::dma_write, CMD, spec_write, q);
  ASSERT_TRUE(ok(w));
  EXPECT_EQ(std::get<dma_write_request>(*w).layout, dma_layout::spec);
  EXPECT_EQ(std::get<dma_write_request>(*w).data, std::vector<uint8_t>(8, 0x41));
}

// ---- DEVICE_RESET -------------------------------------------------------------------------
TEST(Validation, DeviceResetHasNoPayload) {
  EXPECT_REJECT(dec(command::device_reset, CMD, pb().u8(0)), trailing_bytes, EINVAL);
  EXPECT_REJECT(dec(command::device_reset, REP, pb().u8(0)), trailing_bytes, EINVAL);
  EXPECT_REJECT(dec(command::device_reset, CMD, {}, {1}), bad_fds, EINVAL);
}

// ---- REGION_WRITE_MULTI -------------------------------------------------------------------
pb multi(uint64_t wr_cnt, std::vector<uint32_t> counts, uint64_t offset = 0) {
  pb p;
  p.u64(wr_cnt);
  for (uint32_t c : counts) p.u64(offset).u32(2).u32(c).fill(8, 0x5a);
  return p;
}

TEST(Validation, WriteMultiEntries) {
  EXPECT_ACCEPT(dec(command::region_write_multi, CMD, multi(1, {8})));
  EXPECT_ACCEPT(dec(command::region_write_multi, CMD, multi(2, {1, 8})));
  EXPECT_REJECT(dec(command::region_write_multi, CMD, multi(1, {9})), bad_value, EINVAL);
  EXPECT_REJECT(dec(command::region_write_multi, CMD, multi(1, {0})), bad_value, EINVAL);
  EXPECT_REJECT(dec(command::region_write_multi, CMD, multi(0, {})), bad_value, EINVAL);
  EXPECT_REJECT(dec(command::region_write_multi, CMD, multi(2, {4})), truncated, EINVAL);
  EXPECT_REJECT(dec(command::region_write_multi, CMD, multi(1, {4, 4})), trailing_bytes, EINVAL);
  EXPECT_REJECT(dec(command::region_write_multi, CMD, multi(1, {4}).drop(1)), truncated, EINVAL);
  EXPECT_REJECT(dec(command::region_write_multi, CMD, pb().u32(1)), truncated, EINVAL);
  EXPECT_REJECT(dec(command::region_write_multi, CMD, multi(limits::max_write_multi_entries + 1, {4})), too_large, E2BIG);
  // wr_cnt * 24 would wrap: refused by the count limit first.
  EXPECT_REJECT(dec(command::region_write_multi, CMD, multi(u64max / 24 + 2, {4})), too_large, E2BIG);
  EXPECT_ACCEPT(dec(command::region_write_multi, CMD, multi(1, {8}, u64max - 8)));
  EXPECT_REJECT(dec(command::region_write_multi, CMD, multi(1, {8}, u64max - 7)), overflow, EINVAL);
  EXPECT_REJECT(dec(command::region_write_multi, CMD, multi(1, {4}), {1}), bad_fds, EINVAL);
}

TEST(Validation, WriteMultiReply) {
  EXPECT_ACCEPT(dec(command::region_write_multi, REP, pb().u64(3)));
  EXPECT_REJECT(dec(command::region_write_multi, REP, pb().u64(3).drop(1)), truncated, EINVAL);
  EXPECT_REJECT(dec(command::region_write_multi, REP, pb().u64(3).u8(0)), trailing_bytes, EINVAL);
}

// ---- DEVICE_FEATURE -----------------------------------------------------------------------
pb feat(uint32_t argsz, uint32_t flags) { return pb().u32(argsz).u32(flags); }

TEST(Validation, FeatureFlags) {
  using namespace feature_flags;
  EXPECT_ACCEPT(dec(command::device_feature, CMD, feat(8, probe | feature::migration)));
  EXPECT_REJECT(dec(command::device_feature, CMD, feat(8, probe | 1).drop(1)), truncated, EINVAL);
  EXPECT_REJECT(dec(command::device_feature, CMD, feat(7, probe | 1)), bad_argsz, EINVAL);
  EXPECT_REJECT(dec(command::device_feature, CMD, feat(8, (1u << 19) | probe | 1)), bad_flags, EINVAL);
  EXPECT_REJECT(dec(command::device_feature, CMD, feat(8, feature::migration)), bad_flags, EINVAL);
  EXPECT_REJECT(dec(command::device_feature, CMD, feat(8, get | set | feature::mig_device_state)), bad_flags, EINVAL);
  EXPECT_ACCEPT(dec(command::device_feature, CMD, feat(8, get | set | probe | feature::mig_device_state)));
  EXPECT_REJECT(dec(command::device_feature, CMD, feat(8, probe | 1), {1}), bad_fds, EINVAL);
}

TEST(Validation, FeatureUnknownIndexIsUnsupported) {
  for (uint32_t idx : {0u, 3u, 4u, 5u, 9u, 0xffffu})
    EXPECT_REJECT(dec(command::device_feature, CMD, feat(8, feature_flags::probe | idx)), unsupported, ENOTSUP) << idx;
}

TEST(Validation, FeatureMigrationAndDeviceStateSizes) {
  using namespace feature_flags;
  EXPECT_ACCEPT(dec(command::device_feature, REP, feat(16, get | feature::migration).u64(1)));
  EXPECT_REJECT(dec(command::device_feature, REP, feat(16, get | feature::migration).u64(1).drop(1)), truncated, EINVAL);
  EXPECT_REJECT(dec(command::device_feature, REP, feat(16, get | feature::migration).u64(1).u8(0)), trailing_bytes, EINVAL);
  auto st = [](uint32_t s) { return feat(16, set | feature::mig_device_state).u32(s).u32(~0u); };
  EXPECT_ACCEPT(dec(command::device_feature, CMD, st(uint32_t(mig_state::pre_copy_p2p))));
  EXPECT_REJECT(dec(command::device_feature, CMD, st(uint32_t(mig_state::pre_copy_p2p) + 1)), bad_value, EINVAL);
  EXPECT_REJECT(dec(command::device_feature, CMD, st(1).drop(1)), truncated, EINVAL);
  EXPECT_REJECT(dec(command::device_feature, CMD, st(1).u8(0)), trailing_bytes, EINVAL);
}

TEST(Validation, FeatureDmaLoggingStart) {
  using namespace feature_flags;
  auto start = [](uint32_t nr, size_t have, uint64_t iova = 0) {
    auto p = feat(8, set | feature::dma_logging_start).u64(4096).u32(nr).u32(0);
    for (size_t i = 0; i < have; ++i) p.u64(iova).u64(0x1000);
    return p;
  };
  EXPECT_ACCEPT(dec(command::device_feature, CMD, start(0, 0)));
  EXPECT_ACCEPT(dec(command::device_feature, CMD, start(2, 2)));
  EXPECT_REJECT(dec(command::device_feature, CMD, start(2, 1)), truncated, EINVAL);
  EXPECT_REJECT(dec(command::device_feature, CMD, start(1, 2)), trailing_bytes, EINVAL);
  EXPECT_REJECT(dec(command::device_feature, CMD, start(0, 0).drop(1)), truncated, EINVAL);
  EXPECT_REJECT(dec(command::device_feature, CMD, start(limits::max_dma_logging_ranges + 1, 0)), too_large, E2BIG);
  EXPECT_REJECT(dec(command::device_feature, CMD, start(1, 1, u64max - 0xfff)), overflow, EINVAL);
}

TEST(Validation, FeatureDmaLoggingReport) {
  using namespace feature_flags;
  auto rep = [](uint64_t iova, uint64_t length, uint64_t pgsz) {
    return feat(8, get | feature::dma_logging_report).u64(iova).u64(length).u64(pgsz);
  };
  EXPECT_ACCEPT(dec(command::device_feature, CMD, rep(0, 0x40000, 4096)));
  EXPECT_REJECT(dec(command::device_feature, CMD, rep(0, 0x40000, 4096).drop(1)), truncated, EINVAL);
  EXPECT_REJECT(dec(command::device_feature, CMD, rep(0, 0x40000, 4096).u8(0)), trailing_bytes, EINVAL);
  EXPECT_REJECT(dec(command::device_feature, CMD, rep(0, 0x40000, 0)), bad_value, EINVAL);
  EXPECT_REJECT(dec(command::device_feature, CMD, rep(0, 0x40000, 3000)), bad_value, EINVAL);
  EXPECT_REJECT(dec(command::device_feature, CMD, rep(u64max, 2, 4096)), overflow, EINVAL);
  // 64 pages -> 8 bitmap bytes in the reply, exactly.
  EXPECT_ACCEPT(dec(command::device_feature, REP, rep(0, 0x40000, 4096).fill(8)));
  EXPECT_REJECT(dec(command::device_feature, REP, rep(0, 0x40000, 4096).fill(7)), truncated, EINVAL);
  EXPECT_REJECT(dec(command::device_feature, REP, rep(0, 0x40000, 4096).fill(9)), trailing_bytes, EINVAL);
  // 65 pages -> 16 bytes.
  EXPECT_ACCEPT(dec(command::device_feature, REP, rep(0, 0x41000, 4096).fill(16)));
  // The bitmap is a data transfer: bounded by max_data_xfer.
  opts o;
  o.lim.max_data_xfer = 8;
  EXPECT_ACCEPT(dec(command::device_feature, CMD, rep(0, 0x40000, 4096), o));
  EXPECT_REJECT(dec(command::device_feature, CMD, rep(0, 0x41000, 4096), o), too_large, E2BIG);
}

// Regression: the bitmap size was computed as (pages + 63) / 64 * 8, which wraps to 0 for
// length 2^64 - 1 with page_size 1, so a report of the whole address space passed the size
// limit with an empty bitmap.
TEST(Validation, FeatureDmaLoggingReportHugeLengthDoesNotWrap) {
  using namespace feature_flags;
  auto p = feat(8, get | feature::dma_logging_report).u64(0).u64(u64max).u64(1);
  EXPECT_REJECT(dec(command::device_feature, CMD, p), too_large, E2BIG);
  EXPECT_REJECT(dec(command::device_feature, REP, p), too_large, E2BIG);
  auto q = feat(8, get | feature::dma_logging_report).u64(0).u64(u64max - 62).u64(1);
  EXPECT_REJECT(dec(command::device_feature, REP, q), too_large, E2BIG);
}

// ---- MIG_DATA_READ / MIG_DATA_WRITE -------------------------------------------------------
TEST(Validation, MigData) {
  EXPECT_ACCEPT(dec(command::mig_data_read, CMD, pb().u32(24).u32(16)));
  EXPECT_REJECT(dec(command::mig_data_read, CMD, pb().u32(24).u32(16).drop(1)), truncated, EINVAL);
  EXPECT_REJECT(dec(command::mig_data_read, CMD, pb().u32(24).u32(16).u8(0)), trailing_bytes, EINVAL);
  EXPECT_REJECT(dec(command::mig_data_read, CMD, pb().u32(7).u32(16)), bad_argsz, EINVAL);
  EXPECT_ACCEPT(dec(command::mig_data_read, REP, pb().u32(24).u32(4).fill(4)));
  EXPECT_REJECT(dec(command::mig_data_read, REP, pb().u32(24).u32(4).fill(3)), truncated, EINVAL);
  EXPECT_REJECT(dec(command::mig_data_read, REP, pb().u32(24).u32(4).fill(5)), trailing_bytes, EINVAL);
  EXPECT_ACCEPT(dec(command::mig_data_read, REP, pb().u32(24).u32(4).fill(5), {0, quirks::libvfio_user()}));
  EXPECT_ACCEPT(dec(command::mig_data_write, CMD, pb().u32(12).u32(4).fill(4)));
  EXPECT_REJECT(dec(command::mig_data_write, CMD, pb().u32(12).u32(4).fill(3)), truncated, EINVAL);
  EXPECT_REJECT(dec(command::mig_data_write, CMD, pb().u32(12).u32(4).fill(5)), trailing_bytes, EINVAL);
  EXPECT_ACCEPT(dec(command::mig_data_write, REP, {}));
  EXPECT_REJECT(dec(command::mig_data_write, REP, pb().u8(0)), trailing_bytes, EINVAL);
  EXPECT_REJECT(dec(command::mig_data_read, CMD, pb().u32(24).u32(16), {1}), bad_fds, EINVAL);
}

TEST(Validation, MigDataSizeLimit) {
  opts o;
  o.lim.max_data_xfer = 16;
  EXPECT_ACCEPT(dec(command::mig_data_read, CMD, pb().u32(24).u32(16), o));
  EXPECT_REJECT(dec(command::mig_data_read, CMD, pb().u32(24).u32(17), o), too_large, E2BIG);
  EXPECT_REJECT(dec(command::mig_data_write, CMD, pb().u32(25).u32(17).fill(17), o), too_large, E2BIG);
  opts lvu = o;
  lvu.q = quirks::libvfio_user();
  EXPECT_ACCEPT(dec(command::mig_data_read, REP, pb().u32(24).u32(2).fill(16), lvu));
  EXPECT_REJECT(dec(command::mig_data_read, REP, pb().u32(24).u32(2).fill(17), lvu), too_large, E2BIG);
}

// ---- errno mapping ------------------------------------------------------------------------
TEST(Validation, WireErrnoIsAlwaysPositiveAndBelow4096) {
  EXPECT_EQ(to_wire_errno(error(errc::none, "")), EINVAL);
  EXPECT_EQ(to_wire_errno(error(errc::io_error, 0, "")), EIO);
  EXPECT_EQ(to_wire_errno(error(errc::io_error, -5, "")), EIO);
  EXPECT_EQ(to_wire_errno(error(errc::remote_error, 5000, "")), EIO);
  EXPECT_EQ(to_wire_errno(error(errc::remote_error, ENOENT, "")), ENOENT);
  EXPECT_EQ(to_wire_errno(error(errc::too_large, "")), E2BIG);
  EXPECT_EQ(to_wire_errno(error(errc::timeout, "")), ETIMEDOUT);
}

}  // namespace
