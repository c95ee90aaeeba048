// Golden bytes for every message type: each expected frame below is written by hand from
// the spec layout (shared/notes/vfio-user-protocol.md, little-endian), never computed with the
// codec. make_frame() must produce exactly these bytes, and decode() of them must give back
// the same field values.
//
// Header reminder: msg_id u16 | command u16 | msg_size u32 | flags u32 | error_no u32.
#include <unistd.h>

#include <gtest/gtest.h>

#include <tuple>

#include "protocol/bulk_frames.hpp"
#include "protocol/messages.hpp"
#include "tests/protocol/test_util.hpp"

// Field-wise equality for the typed messages (test-only; the codec does not need it).
namespace vfu::proto {
#define VFU_EQ(T, ...)                                                              \
  [[maybe_unused]] static bool operator==(const T& a, const T& b) {                 \
    auto f = [](const T& x) { (void)x; return std::tie(__VA_ARGS__); };             \
    return f(a) == f(b);                                                            \
  }
VFU_EQ(dirty_bitmap_head, x.pgsize, x.size)
VFU_EQ(sparse_area, x.offset, x.size)
VFU_EQ(region_cap, x.id, x.version, x.offset, x.sparse_reserved, x.areas, x.type, x.subtype, x.raw)
VFU_EQ(io_fd_entry, x.offset, x.size, x.fd_index, x.type, x.flags, x.word28, x.qword32, x.qword40)
VFU_EQ(write_multi_entry, x.offset, x.region, x.count, x.data)
VFU_EQ(feature_migration, x.flags)
VFU_EQ(feature_device_state, x.device_state, x.data_fd)
VFU_EQ(dma_range, x.iova, x.length)
VFU_EQ(feature_logging_ctl, x.page_size, x.reserved, x.ranges)
VFU_EQ(feature_logging_report, x.iova, x.length, x.page_size, x.bitmap)
VFU_EQ(version_request, x.major, x.minor, x.caps_json)
VFU_EQ(version_reply, x.major, x.minor, x.caps_json)
VFU_EQ(dma_map_request, x.argsz, x.flags, x.offset, x.addr, x.size)
VFU_EQ(dma_map_reply)
VFU_EQ(dma_unmap_request, x.argsz, x.flags, x.addr, x.size, x.bitmap)
VFU_EQ(dma_unmap_reply, x.argsz, x.flags, x.addr, x.size, x.bitmap, x.bitmap_data)
VFU_EQ(device_info_request, x.argsz, x.flags, x.num_regions, x.num_irqs)
VFU_EQ(device_info_reply, x.argsz, x.flags, x.num_regions, x.num_irqs)
VFU_EQ(region_info_request, x.argsz, x.flags, x.index, x.cap_offset, x.size, x.offset, x.pad)
VFU_EQ(region_info_reply, x.argsz, x.flags, x.index, x.cap_offset, x.size, x.offset, x.caps)
VFU_EQ(io_fds_request, x.argsz, x.flags, x.index, x.count)
VFU_EQ(io_fds_reply, x.argsz, x.flags, x.index, x.count, x.entry_size, x.entries)
VFU_EQ(irq_info_request, x.argsz, x.flags, x.index, x.count)
VFU_EQ(irq_info_reply, x.argsz, x.flags, x.index, x.count)
VFU_EQ(set_irqs_request, x.argsz, x.flags, x.index, x.start, x.count, x.bools)
VFU_EQ(set_irqs_reply)
VFU_EQ(region_read_request, x.offset, x.region, x.count)
VFU_EQ(region_read_reply, x.offset, x.region, x.count, x.data)
VFU_EQ(region_write_request, x.offset, x.region, x.count, x.data)
VFU_EQ(region_write_reply, x.offset, x.region, x.count)
VFU_EQ(dma_read_request, x.addr, x.count, x.layout)
VFU_EQ(dma_read_reply, x.addr, x.count, x.layout, x.data)
VFU_EQ(dma_write_request, x.addr, x.count, x.layout, x.data)
VFU_EQ(dma_write_reply, x.addr, x.count, x.layout)
VFU_EQ(reset_request)
VFU_EQ(reset_reply)
VFU_EQ(write_multi_request, x.writes)
VFU_EQ(write_multi_reply, x.wr_cnt)
VFU_EQ(device_feature_request, x.argsz, x.flags, x.data)
VFU_EQ(device_feature_reply, x.argsz, x.flags, x.data)
VFU_EQ(mig_data_read_request, x.argsz, x.size)
VFU_EQ(mig_data_read_reply, x.argsz, x.size, x.data)
VFU_EQ(mig_data_write_request, x.argsz, x.size, x.data)
VFU_EQ(mig_data_write_reply)
VFU_EQ(error_reply, x.command, x.error_no, x.echoed)
#undef VFU_EQ
}  // namespace vfu::proto

namespace {

using namespace vfu::proto;
using vfu::test::hex;

/// Encodes `msg`, compares with the hand-written `expected` hex, decodes `expected` (with
/// `nfds` fds and quirks `q`) and compares the decoded fields with `msg`. Returns the
/// decoded message for further checks.
template <class T>
T golden(const T& msg, uint16_t id, uint32_t extra_flags, const std::string& expected,
         size_t nfds = 0, const quirks& q = {}) {
  auto want = hex(expected);
  frame f = make_frame(id, message{msg}, extra_flags);
  EXPECT_EQ(to_hex({f.bytes.data(), f.bytes.size()}), to_hex({want.data(), want.size()}));
  if (want.size() < header_size) {
    ADD_FAILURE() << "golden frame shorter than a header";
    return T{};
  }
  header h = read_header(want.data());
  EXPECT_EQ(h.msg_size, want.size()) << "hand-written msg_size is wrong";
  auto m = decode(h, byte_view{want.data() + header_size, want.size() - header_size}, nfds, q);
  if (!m.ok()) {
    ADD_FAILURE() << "decode: " << m.err().message();
    return T{};
  }
  if (!std::holds_alternative<T>(*m)) {
    ADD_FAILURE() << "decoded as " << message_name(*m);
    return T{};
  }
  T out = std::get<T>(*m);
  EXPECT_TRUE(out == msg) << "decoded fields differ from the encoded ones";
  EXPECT_EQ(command_of(*m), h.command);
  EXPECT_EQ(is_reply(*m), h.is_reply());
  return out;
}

// ---- 1 VERSION ------------------------------------------------------------------------
TEST(Codec, VersionRequestWithJson) {
  version_request m;
  m.major = 0;
  m.minor = 2;
  m.caps_json = R"({"capabilities":{}})";
  auto d = golden(m, 0x0001, 0,
                  "0100 0100 28000000 00000000 00000000"  // id 1, VERSION, size 40, command
                  "0000 0200"                             // major 0, minor 2
                  "7b226361706162696c6974696573223a7b7d7d 00");  // {"capabilities":{}} NUL
  EXPECT_EQ(*d.caps_json, R"({"capabilities":{}})");
}

TEST(Codec, VersionRequestWithoutJson) {
  version_request m;
  m.minor = 1;
  auto d = golden(m, 0xbeef, 0,
                  "efbe 0100 14000000 00000000 00000000"  // size 20
                  "0000 0100");                           // major 0, minor 1, no JSON
  EXPECT_FALSE(d.caps_json.has_value());
}

TEST(Codec, VersionReply) {
  version_reply m;
  m.caps_json = "{}";
  golden(m, 0x0001, 0,
         "0100 0100 17000000 01000000 00000000"  // size 23, REPLY
         "0000 0000"                             // 0.0
         "7b7d 00",                              // {} NUL
         1);                                     // the reply may carry the twin socket
}

// ---- 2 DMA_MAP ------------------------------------------------------------------------
TEST(Codec, DmaMapRequest) {
  dma_map_request m;
  m.flags = dma_flags::read | dma_flags::write;
  m.offset = 0x1000;
  m.addr = 0x100000000;
  m.size = 0x200000;
  golden(m, 0x0002, 0,
         "0200 0200 30000000 00000000 00000000"  // DMA_MAP, size 48
         "20000000"                              // argsz 32
         "03000000"                              // flags READ|WRITE
         "0010000000000000"                      // offset 0x1000
         "0000000001000000"                      // addr 0x1_0000_0000
         "0000200000000000",                     // size 0x20_0000
         1);                                     // with its memory fd
}

TEST(Codec, DmaMapReply) {
  golden(dma_map_reply{}, 0x0002, 0, "0200 0200 10000000 01000000 00000000");
}

// ---- 3 DMA_UNMAP ----------------------------------------------------------------------
TEST(Codec, DmaUnmapRequestAndReply) {
  dma_unmap_request m;
  m.addr = 0x100000000;
  m.size = 0x200000;
  golden(m, 0x0003, 0,
         "0300 0300 28000000 00000000 00000000"  // DMA_UNMAP, size 40
         "18000000 00000000"                     // argsz 24, flags 0
         "0000000001000000 0000200000000000");   // addr, size
  dma_unmap_reply r;
  r.addr = 0x100000000;
  r.size = 0x200000;
  golden(r, 0x0003, 0,
         "0300 0300 28000000 01000000 00000000"  // reply: the request echoed
         "18000000 00000000"
         "0000000001000000 0000200000000000");
}

TEST(Codec, DmaUnmapAll) {  // QEMU: VFIO_DMA_UNMAP_FLAG_ALL with addr = size = 0
  dma_unmap_request m;
  m.flags = dma_flags::unmap_all;
  golden(m, 0x0030, 0,
         "3000 0300 28000000 00000000 00000000"
         "18000000 02000000"                     // argsz 24, flags ALL
         "0000000000000000 0000000000000000");
}

TEST(Codec, DmaUnmapWithDirtyBitmap) {
  // libvfio-user legacy GET_DIRTY_BITMAP: 64 pages of 4 KiB -> 8 bitmap bytes.
  dma_unmap_request m;
  m.argsz = 48;
  m.flags = dma_flags::unmap_get_dirty_bitmap;
  m.addr = 0x100000;
  m.size = 0x40000;
  m.bitmap = dirty_bitmap_head{0x1000, 8};
  golden(m, 0x0031, 0,
         "3100 0300 38000000 00000000 00000000"  // size 56
         "30000000 01000000"                     // argsz 48 (= 40 + bitmap), GET_DIRTY_BITMAP
         "0000100000000000 0000040000000000"     // addr 0x10_0000, size 0x4_0000
         "0010000000000000 0800000000000000");   // bitmap pgsize 4096, size 8
  dma_unmap_reply r;
  r.argsz = 48;
  r.flags = dma_flags::unmap_get_dirty_bitmap;
  r.addr = 0x100000;
  r.size = 0x40000;
  r.bitmap = dirty_bitmap_head{0x1000, 8};
  r.bitmap_data = {0xff, 0, 0, 0, 0, 0, 0, 0x80};
  auto d = golden(r, 0x0031, 0,
                  "3100 0300 40000000 01000000 00000000"  // size 64
                  "30000000 01000000"
                  "0000100000000000 0000040000000000"
                  "0010000000000000 0800000000000000"
                  "ff00000000000080");                   // the bitmap
  EXPECT_EQ(d.bitmap_data.size(), 8u);
}

// ---- 4 DEVICE_GET_INFO -----------------------------------------------------------------
TEST(Codec, DeviceGetInfo) {
  golden(device_info_request{}, 0x0004, 0,
         "0400 0400 20000000 00000000 00000000"
         "10000000 00000000 00000000 00000000");  // argsz 16, rest 0
  device_info_reply r;
  r.flags = device_info_flags::reset | device_info_flags::pci;
  r.num_regions = 9;
  r.num_irqs = 5;
  golden(r, 0x0004, 0,
         "0400 0400 20000000 01000000 00000000"
         "10000000 03000000 09000000 05000000");  // argsz 16, RESET|PCI, 9 regions, 5 irqs
}

// ---- 5 DEVICE_GET_REGION_INFO ----------------------------------------------------------
TEST(Codec, RegionInfoRequest) {
  region_info_request m;
  m.index = 2;
  golden(m, 0x0005, 0,
         "0500 0500 30000000 00000000 00000000"
         "20000000 00000000 02000000 00000000"    // argsz 32, flags, index 2, cap_offset
         "0000000000000000 0000000000000000");    // size, offset
}

TEST(Codec, RegionInfoRequestWithArgszBuffer) {  // libvfio-user sends argsz bytes
  region_info_request m;
  m.argsz = 40;
  m.index = 1;
  m.pad = std::vector<uint8_t>(8, 0);
  golden(m, 0x0050, 0,
         "5000 0500 38000000 00000000 00000000"   // size 56
         "28000000 00000000 01000000 00000000"    // argsz 40, index 1
         "0000000000000000 0000000000000000"
         "0000000000000000");                     // 8 bytes of buffer
}

TEST(Codec, RegionInfoReplyPlain) {
  region_info_reply r;
  r.flags = region_flags::read | region_flags::write;
  r.index = region_index::config;
  r.size = 0x100;
  golden(r, 0x0005, 0,
         "0500 0500 30000000 01000000 00000000"
         "20000000 03000000 07000000 00000000"    // argsz 32, R|W, index 7, no caps
         "0001000000000000 0000000000000000");    // size 256, offset 0
}

TEST(Codec, RegionInfoReplySparseMmapAndTypeCaps) {
  region_info_reply r;
  r.argsz = 96;
  r.flags = region_flags::known;  // READ|WRITE|MMAP|CAPS
  r.index = 1;
  r.cap_offset = 32;
  r.size = 0x4000;
  r.offset = 0x10000000;
  region_cap sp;
  sp.id = region_cap_id::sparse_mmap;
  sp.offset = 32;
  sp.areas = {{0, 0x1000}, {0x3000, 0x1000}};
  region_cap ty;
  ty.id = region_cap_id::type;
  ty.offset = 80;
  ty.type = 3;
  ty.subtype = 1;
  r.caps = {sp, ty};
  auto d = golden(r, 0x0051, 0,
                  "5100 0500 70000000 01000000 00000000"  // size 112
                  "60000000 0f000000 01000000 20000000"   // argsz 96, R|W|MMAP|CAPS, index 1, caps@32
                  "0040000000000000 0000001000000000"     // size 0x4000, offset 0x1000_0000
                  // @32 SPARSE_MMAP: id 1, version 1, next 80; nr_areas 2, reserved
                  "0100 0100 50000000 02000000 00000000"
                  "0000000000000000 0010000000000000"     // area {0, 0x1000}
                  "0030000000000000 0010000000000000"     // area {0x3000, 0x1000}
                  // @80 TYPE: id 2, version 1, next 0; type 3, subtype 1
                  "0200 0100 00000000 03000000 01000000",
                  1);  // the mmap fd
  ASSERT_NE(d.sparse(), nullptr);
  EXPECT_EQ(d.sparse()->areas.size(), 2u);
}

TEST(Codec, RegionInfoCapOffsetZeroMeansRightAfterThePrevious) {
  region_info_reply r;
  r.argsz = 48;
  r.flags = region_flags::read | region_flags::caps;
  r.size = 0x1000;
  region_cap ty;
  ty.id = region_cap_id::type;
  ty.type = 0x80000000u;
  ty.subtype = 7;
  r.caps = {ty};  // offset 0: placed at 32, cap_offset patched
  frame f = make_frame(7, r);
  EXPECT_EQ(to_hex(f.payload()),
            "30000000" "09000000" "00000000" "20000000"   // argsz 48, R|CAPS, caps@32
            "0010000000000000" "0000000000000000"
            "0200" "0100" "00000000" "00000080" "07000000");  // TYPE cap @32
}

// ---- 6 DEVICE_GET_REGION_IO_FDS --------------------------------------------------------
TEST(Codec, IoFdsRequest) {
  io_fds_request m;
  m.argsz = 96;
  m.index = 2;
  golden(m, 0x0006, 0,
         "0600 0600 20000000 00000000 00000000"
         "60000000 00000000 02000000 00000000");  // argsz 96, flags 0, index 2, count 0
}

TEST(Codec, IoFdsReplySpec40ByteEntries) {
  io_fds_reply r;
  r.argsz = 96;
  r.index = 2;
  r.count = 2;
  r.entry_size = 40;
  io_fd_entry a;
  a.size = 4;
  a.flags = 1;  // KVM_IOEVENTFD_FLAG_DATAMATCH
  a.qword32 = 0x1234;
  io_fd_entry b;
  b.offset = 8;
  b.size = 8;
  b.fd_index = 1;
  b.type = 1;  // ioregionfd
  b.qword32 = 0xdeadbeef;
  r.entries = {a, b};
  golden(r, 0x0006, 0,
         "0600 0600 70000000 01000000 00000000"   // size 112
         "60000000 00000000 02000000 02000000"    // argsz 96, flags, index 2, count 2
         // offset, size, fd_index, type, flags, padding, datamatch
         "0000000000000000 0400000000000000 00000000 00000000 01000000 00000000 3412000000000000"
         "0800000000000000 0800000000000000 01000000 01000000 00000000 00000000 efbeadde00000000",
         2);
}

TEST(Codec, IoFdsReplyLibvfioUser48ByteEntries) {
  io_fds_reply r;
  r.argsz = 64;
  r.count = 1;
  r.entry_size = 48;
  io_fd_entry e;
  e.offset = 0x10;
  e.size = 4;
  e.fd_index = 0;
  e.type = 2;        // shadow ioeventfd
  e.flags = 1;
  e.word28 = 1;      // shadow_mem_fd_index
  e.qword32 = 0x1000;  // shadow_offset
  e.qword40 = 7;       // datamatch
  r.entries = {e};
  golden(r, 0x0060, 0,
         "6000 0600 50000000 01000000 00000000"   // size 80
         "40000000 00000000 00000000 01000000"    // argsz 64, index 0, count 1
         // gpa_offset, size, fd_index, type, flags, shadow_mem_fd_index, shadow_offset, datamatch
         "1000000000000000 0400000000000000 00000000 02000000 01000000 01000000"
         "0010000000000000 0700000000000000",
         2);
}

TEST(Codec, IoFdsReplyHeadOnly) {  // argsz too small: head with the needed size, no entries
  io_fds_reply r;
  r.argsz = 96;
  r.count = 2;
  golden(r, 0x0061, 0,
         "6100 0600 20000000 01000000 00000000"
         "60000000 00000000 00000000 02000000");
}

// ---- 7 DEVICE_GET_IRQ_INFO -------------------------------------------------------------
TEST(Codec, IrqInfo) {
  irq_info_request m;
  m.index = irq_index::msix;
  golden(m, 0x0007, 0,
         "0700 0700 20000000 00000000 00000000"
         "10000000 00000000 02000000 00000000");  // argsz 16, index 2
  irq_info_reply r;
  r.flags = irq_info_flags::eventfd | irq_info_flags::noresize;
  r.index = irq_index::msix;
  r.count = 32;
  golden(r, 0x0007, 0,
         "0700 0700 20000000 01000000 00000000"
         "10000000 09000000 02000000 20000000");  // EVENTFD|NORESIZE, 32 vectors
}

// ---- 8 DEVICE_SET_IRQS -----------------------------------------------------------------
TEST(Codec, SetIrqsEventfds) {
  set_irqs_request m;
  m.flags = irq_set_flags::data_eventfd | irq_set_flags::action_trigger;
  m.index = irq_index::msix;
  m.count = 2;
  golden(m, 0x0008, 0,
         "0800 0800 24000000 00000000 00000000"   // size 36
         "14000000 24000000 02000000 00000000 02000000",  // argsz 20, EVENTFD|TRIGGER, 2, 0, 2
         2);
}

TEST(Codec, SetIrqsBool) {
  set_irqs_request m;
  m.argsz = 23;
  m.flags = irq_set_flags::data_bool | irq_set_flags::action_mask;
  m.index = irq_index::intx;
  m.count = 3;
  m.bools = {1, 0, 1};
  golden(m, 0x0080, 0,
         "8000 0800 27000000 00000000 00000000"   // size 39
         "17000000 0a000000 00000000 00000000 03000000"  // argsz 23, BOOL|MASK, intx, 0, 3
         "010001");
}

TEST(Codec, SetIrqsDisableAllAndReply) {
  set_irqs_request m;
  m.flags = irq_set_flags::data_none | irq_set_flags::action_trigger;
  m.index = irq_index::msi;
  golden(m, 0x0081, 0,
         "8100 0800 24000000 00000000 00000000"
         "14000000 21000000 01000000 00000000 00000000");  // NONE|TRIGGER, count 0
  golden(set_irqs_reply{}, 0x0081, 0, "8100 0800 10000000 01000000 00000000");
}

// ---- 9 REGION_READ / 10 REGION_WRITE --------------------------------------------------
TEST(Codec, RegionRead) {
  region_read_request m;
  m.offset = 0x10;
  m.region = region_index::config;
  m.count = 4;
  golden(m, 0x0009, 0,
         "0900 0900 20000000 00000000 00000000"
         "1000000000000000 07000000 04000000");   // offset 0x10, region 7, count 4
  region_read_reply r;
  static_cast<region_access&>(r) = m;
  r.data = {0x86, 0x80, 0x1a, 0x10};
  golden(r, 0x0009, 0,
         "0900 0900 24000000 01000000 00000000"   // size 36
         "1000000000000000 07000000 04000000"
         "86801a10");
}

TEST(Codec, RegionWritePosted) {
  region_write_request m;
  m.offset = 4;
  m.region = region_index::config;
  m.count = 2;
  m.data = {0x06, 0x00};
  golden(m, 0x000a, hflags::no_reply,
         "0a00 0a00 22000000 10000000 00000000"   // size 34, NO_REPLY
         "0400000000000000 07000000 02000000"
         "0600");
  region_write_reply r;
  static_cast<region_access&>(r) = m;
  golden(r, 0x000a, 0,
         "0a00 0a00 20000000 01000000 00000000"
         "0400000000000000 07000000 02000000");
}

// Decoded from a shared frame, a REGION_WRITE's data is not copied: the message shares the
// frame's bytes, a copy of the message keeps them alive after the frame's last other
// holder lets go, and it encodes back to the same bytes. From a plain frame, data is a copy.
TEST(Codec, RegionWriteSharesItsDataWithTheFrame) {
  region_write_request m;
  m.offset = 0x100;
  m.region = 2;
  m.count = 5;
  m.data = {1, 2, 3, 4, 5};
  auto f = std::make_shared<frame>(make_frame(0x21, m));
  auto want = f->bytes;
  auto d = decode(std::shared_ptr<const frame>(f));
  ASSERT_TRUE(d.ok()) << d.err().message();
  auto kept = std::get<region_write_request>(*d);  // a copy of the message
  EXPECT_TRUE(kept.data.shared());
  ASSERT_EQ(kept.data.data(), f->bytes.data() + header_size + region_access_size);
  EXPECT_EQ(kept.data, m.data);
  f.reset();
  d = error(errc::bad_value, "gone");  // no other holder of the frame is left
  EXPECT_EQ(kept.data, m.data) << "the bytes went with the frame";
  EXPECT_EQ(make_frame(0x21, kept).bytes, want);
  auto copied = decode(make_frame(0x21, m));
  ASSERT_TRUE(copied.ok());
  EXPECT_FALSE(std::get<region_write_request>(*copied).data.shared());
  EXPECT_EQ(std::get<region_write_request>(*copied).data, m.data);
}

// A REGION_READ reply built in the frame of an earlier, larger one (a device's spare reply
// frame) is exactly its own bytes (those of RegionRead above), without the old frame's
// tail or fds.
TEST(Codec, ARegionFrameBuiltInAnEarlierFrameIsExactlyTheNewOne) {
  region_read_reply big;
  static_cast<region_access&>(big) = region_access{0x40, 2, 64};
  big.data.assign(64, 0xee);
  frame f = make_frame(0x31, big);
  f.fds.emplace_back(::dup(0));
  region_read_reply small;
  static_cast<region_access&>(small) = region_access{0x10, 7, 4};
  small.data = {0x86, 0x80, 0x1a, 0x10};
  build_region_frame(f, 0x0009, command::region_read, true, small, small.data.data());
  EXPECT_EQ(f.bytes, hex("0900 0900 24000000 01000000 00000000"
                         "1000000000000000 07000000 04000000"
                         "86801a10"));
  EXPECT_TRUE(f.fds.empty());
  auto d = decode(f);
  ASSERT_TRUE(d.ok()) << d.err().message();
  EXPECT_EQ(std::get<region_read_reply>(*d).data, small.data);
}

// ---- 11 DMA_READ / 12 DMA_WRITE --------------------------------------------------------
TEST(Codec, DmaReadSpec) {
  dma_read_request m;
  m.addr = 0x1000;
  m.count = 8;
  golden(m, 0x000b, 0,
         "0b00 0b00 20000000 00000000 00000000"
         "0010000000000000 0800000000000000");    // address, count u64
  dma_read_reply r;
  r.addr = 0x1000;
  r.count = 8;
  r.data = {0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18};
  golden(r, 0x000b, 0,
         "0b00 0b00 28000000 01000000 00000000"   // size 40
         "0010000000000000 0800000000000000"
         "1112131415161718");                     // data @16
}

TEST(Codec, DmaReadReplyQemuLayout) {
  dma_read_reply r;
  r.addr = 0x1000;
  r.count = 8;
  r.layout = dma_layout::qemu;
  r.data = {0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18};
  golden(r, 0x00b0, 0,
         "b000 0b00 28000000 01000000 00000000"   // size 40
         "0010000000000000 08000000"              // offset u64, count u32
         "1112131415161718"                       // data @12
         "00000000",                              // tail padding of QEMU's struct
         0, quirks::qemu());
  // Spec mode reads count as u64 (0x14131211_00000008) and rejects the frame.
  auto want = hex("b000 0b00 28000000 01000000 00000000 0010000000000000 08000000 1112131415161718 00000000");
  EXPECT_FALSE(decode(read_header(want.data()), {want.data() + 16, want.size() - 16}, 0).ok());
}

TEST(Codec, DmaWriteSpec) {
  dma_write_request m;
  m.addr = 0x2000;
  m.count = 4;
  m.data = {0xaa, 0xbb, 0xcc, 0xdd};
  golden(m, 0x000c, 0,
         "0c00 0c00 24000000 00000000 00000000"   // size 36
         "0020000000000000 0400000000000000"
         "aabbccdd");                             // data @16
  dma_write_reply r;
  r.addr = 0x2000;
  r.count = 4;
  golden(r, 0x000c, 0,
         "0c00 0c00 20000000 01000000 00000000"
         "0020000000000000 0400000000000000");    // address, count u64 (libvfio-user)
}

TEST(Codec, DmaWriteRequestQemuLayout) {
  dma_write_request m;
  m.addr = 0x2000;
  m.count = 4;
  m.layout = dma_layout::qemu;
  m.data = {0xaa, 0xbb, 0xcc, 0xdd};
  golden(m, 0x00c0, 0,
         "c000 0c00 24000000 00000000 00000000"   // size 36
         "0020000000000000 04000000"              // offset u64, count u32
         "aabbccdd"                               // data @12, where QEMU reads it
         "00000000",                              // pad
         0, quirks::qemu());
}

TEST(Codec, DmaWriteReplyEmptyQemu) {
  dma_write_reply r;
  r.layout = dma_layout::empty;
  golden(r, 0x00c1, 0, "c100 0c00 10000000 01000000 00000000", 0, quirks::qemu());
  auto want = hex("c100 0c00 10000000 01000000 00000000");
  auto spec = decode(read_header(want.data()), {want.data() + 16, 0}, 0, quirks::spec());
  ASSERT_FALSE(spec.ok());
  EXPECT_EQ(spec.err().code, errc::truncated);
}

// ---- 13 DEVICE_RESET -------------------------------------------------------------------
TEST(Codec, DeviceReset) {
  golden(reset_request{}, 0x000d, 0, "0d00 0d00 10000000 00000000 00000000");
  golden(reset_reply{}, 0x000d, 0, "0d00 0d00 10000000 01000000 00000000");
}

// ---- 15 REGION_WRITE_MULTI -------------------------------------------------------------
TEST(Codec, RegionWriteMulti) {
  write_multi_request m;
  write_multi_entry a;
  a.offset = 0x10;
  a.region = 2;
  a.count = 4;
  a.data = {1, 2, 3, 4, 0, 0, 0, 0};
  write_multi_entry b;
  b.offset = 0x20;
  b.region = 2;
  b.count = 1;
  b.data = {0xff, 0, 0, 0, 0, 0, 0, 0};
  m.writes = {a, b};
  golden(m, 0x000f, hflags::no_reply,
         "0f00 0f00 48000000 10000000 00000000"   // size 72, NO_REPLY
         "0200000000000000"                       // wr_cnt 2
         "1000000000000000 02000000 04000000 0102030400000000"
         "2000000000000000 02000000 01000000 ff00000000000000");
  golden(write_multi_reply{2}, 0x000f, 0,
         "0f00 0f00 18000000 01000000 00000000"
         "0200000000000000");
}

// ---- 16 DEVICE_FEATURE -----------------------------------------------------------------
TEST(Codec, FeatureProbeNoData) {
  device_feature_request m;
  m.flags = feature_flags::probe | feature::migration;
  auto d = golden(m, 0x0010, 0,
                  "1000 1000 18000000 00000000 00000000"
                  "08000000 01000400");                   // argsz 8, PROBE | index 1
  EXPECT_TRUE(std::holds_alternative<std::monostate>(d.data));
  EXPECT_EQ(d.index(), feature::migration);
}

TEST(Codec, FeatureMigrationGet) {
  device_feature_request m;
  m.argsz = 16;
  m.flags = feature_flags::get | feature::migration;
  golden(m, 0x0011, 0,
         "1100 1000 18000000 00000000 00000000"
         "10000000 01000100");                    // argsz 16, GET | 1
  device_feature_reply r;
  r.argsz = 16;
  r.flags = feature_flags::get | feature::migration;
  r.data = feature_migration{mig_flags::stop_copy | mig_flags::pre_copy};
  auto d = golden(r, 0x0011, 0,
                  "1100 1000 20000000 01000000 00000000"
                  "10000000 01000100"
                  "0500000000000000");            // STOP_COPY | PRE_COPY
  EXPECT_EQ(std::get<feature_migration>(d.data).flags, 5u);
}

TEST(Codec, FeatureDeviceStateSet) {
  device_feature_request m;
  m.argsz = 16;
  m.flags = feature_flags::set | feature::mig_device_state;
  m.data = feature_device_state{uint32_t(mig_state::stop_copy), 0xffffffff};
  golden(m, 0x0012, 0,
         "1200 1000 20000000 00000000 00000000"
         "10000000 02000200"                      // argsz 16, SET | 2
         "03000000 ffffffff");                    // STOP_COPY, data_fd unused
  device_feature_reply r;
  r.argsz = 16;
  r.flags = feature_flags::get | feature::mig_device_state;
  r.data = feature_device_state{uint32_t(mig_state::running), 0xffffffff};
  golden(r, 0x0013, 0,
         "1300 1000 20000000 01000000 00000000"
         "10000000 02000100"
         "02000000 ffffffff");
}

TEST(Codec, FeatureDmaLoggingStartAndStop) {
  device_feature_request m;
  m.argsz = 56;
  m.flags = feature_flags::set | feature::dma_logging_start;
  feature_logging_ctl ctl;
  ctl.page_size = 0x1000;
  ctl.ranges = {{0, 0x100000}, {0x100000000, 0x200000}};
  m.data = ctl;
  golden(m, 0x0014, 0,
         "1400 1000 48000000 00000000 00000000"   // size 72
         "38000000 06000200"                      // argsz 56, SET | 6
         "0010000000000000 02000000 00000000"     // page_size, num_ranges 2, reserved
         "0000000000000000 0000100000000000"      // {0, 0x10_0000}
         "0000000001000000 0000200000000000");    // {0x1_0000_0000, 0x20_0000}
  device_feature_request stop;
  stop.flags = feature_flags::set | feature::dma_logging_stop;
  golden(stop, 0x0015, 0,
         "1500 1000 18000000 00000000 00000000"
         "08000000 07000200");
}

TEST(Codec, FeatureDmaLoggingReport) {
  device_feature_request m;
  m.argsz = 40;
  m.flags = feature_flags::get | feature::dma_logging_report;
  m.data = feature_logging_report{0, 0x40000, 0x1000, {}};  // 64 pages -> 8 bitmap bytes
  golden(m, 0x0016, 0,
         "1600 1000 30000000 00000000 00000000"   // size 48
         "28000000 08000100"                      // argsz 40, GET | 8
         "0000000000000000 0000040000000000 0010000000000000");  // iova, length, page_size
  device_feature_reply r;
  r.argsz = 40;
  r.flags = feature_flags::get | feature::dma_logging_report;
  r.data = feature_logging_report{0, 0x40000, 0x1000, {0x01, 0, 0, 0, 0, 0, 0, 0x80}};
  golden(r, 0x0016, 0,
         "1600 1000 38000000 01000000 00000000"   // size 56
         "28000000 08000100"
         "0000000000000000 0000040000000000 0010000000000000"
         "0100000000000080");                     // bitmap
}

// ---- 17 MIG_DATA_READ / 18 MIG_DATA_WRITE ----------------------------------------------
TEST(Codec, MigDataRead) {
  golden(mig_data_read_request{24, 16}, 0x0017, 0,
         "1700 1100 18000000 00000000 00000000"
         "18000000 10000000");                    // argsz 24, size 16
  golden(mig_data_read_reply{24, 4, {0xde, 0xad, 0xbe, 0xef}}, 0x0017, 0,
         "1700 1100 1c000000 01000000 00000000"   // size 28: a short read = end of stream
         "18000000 04000000 deadbeef");
}

TEST(Codec, MigDataReadReplyPaddedLibvfioUser) {
  auto d = golden(mig_data_read_reply{24, 2, {0xde, 0xad, 0, 0}}, 0x0070, 0,
                  "7000 1100 1c000000 01000000 00000000"
                  "18000000 02000000 dead0000",   // size 2, padded to 4
                  0, quirks::libvfio_user());
  EXPECT_EQ(d.size, 2u);
}

TEST(Codec, MigDataWrite) {
  golden(mig_data_write_request{12, 4, {0xde, 0xad, 0xbe, 0xef}}, 0x0018, 0,
         "1800 1200 1c000000 00000000 00000000"
         "0c000000 04000000 deadbeef");           // argsz 12, size 4, data
  golden(mig_data_write_reply{}, 0x0018, 0, "1800 1200 10000000 01000000 00000000");
}

// ---- error replies ----------------------------------------------------------------------
TEST(Codec, ErrorReply) {
  golden(error_reply{uint16_t(command::region_read), EINVAL, {}}, 0x0009, 0,
         "0900 0900 10000000 21000000 16000000");  // REPLY|ERROR, error_no 22
  auto req = hex("0900 0900 20000000 00000000 00000000 1000000000000000 07000000 04000000");
  frame f = make_error_reply(read_header(req.data()), ENOSYS);
  EXPECT_EQ(to_hex({f.bytes.data(), f.bytes.size()}), "09000900" "10000000" "21000000" "26000000");
}

TEST(Codec, ErrorReplyEchoingThePayloadLibvfioUser) {
  golden(error_reply{uint16_t(command::dma_unmap), ENOENT, hex("18000000 00000000")}, 0x0033, 0,
         "3300 0300 18000000 21000000 02000000"   // size 24, ERROR, ENOENT
         "18000000 00000000",                     // echoed request bytes
         0, quirks::libvfio_user());
}

TEST(Codec, MakeErrorReplyNeverSendsZero) {
  header h;
  h.msg_id = 0x1234;
  h.command = uint16_t(command::device_reset);
  EXPECT_EQ(to_hex({make_error_reply(h, 0).bytes.data(), 16}), "34120d00100000002100000016000000");
}

// ---- every alternative of the variant is covered above ---------------------------------
TEST(Codec, MessageNamesAndDirections) {
  EXPECT_EQ(message_name(message{region_read_request{}}), "REGION_READ request");
  EXPECT_EQ(message_name(message{region_read_reply{}}), "REGION_READ reply");
  EXPECT_EQ(message_name(message{error_reply{uint16_t(command::dma_map), 1, {}}}), "DMA_MAP error reply");
  EXPECT_EQ(std::variant_size_v<message>, 35u);  // 17 commands x 2 + error_reply
}

// What each message type is does not depend on its place in the variant (message_traits):
// every type states its command and direction, and make_frame writes them.
TEST(Codec, EveryMessageTypeStatesItsCommandAndDirection) {
  struct row { message m; command cmd; bool reply; };
  const row rows[] = {
      {version_request{}, command::version, false}, {version_reply{}, command::version, true},
      {dma_map_request{}, command::dma_map, false}, {dma_map_reply{}, command::dma_map, true},
      {dma_unmap_request{}, command::dma_unmap, false}, {dma_unmap_reply{}, command::dma_unmap, true},
      {device_info_request{}, command::device_get_info, false}, {device_info_reply{}, command::device_get_info, true},
      {region_info_request{}, command::device_get_region_info, false},
      {region_info_reply{}, command::device_get_region_info, true},
      {io_fds_request{}, command::device_get_region_io_fds, false},
      {io_fds_reply{}, command::device_get_region_io_fds, true},
      {irq_info_request{}, command::device_get_irq_info, false}, {irq_info_reply{}, command::device_get_irq_info, true},
      {set_irqs_request{}, command::device_set_irqs, false}, {set_irqs_reply{}, command::device_set_irqs, true},
      {region_read_request{}, command::region_read, false}, {region_read_reply{}, command::region_read, true},
      {region_write_request{}, command::region_write, false}, {region_write_reply{}, command::region_write, true},
      {dma_read_request{}, command::dma_read, false}, {dma_read_reply{}, command::dma_read, true},
      {dma_write_request{}, command::dma_write, false}, {dma_write_reply{}, command::dma_write, true},
      {reset_request{}, command::device_reset, false}, {reset_reply{}, command::device_reset, true},
      {write_multi_request{}, command::region_write_multi, false}, {write_multi_reply{}, command::region_write_multi, true},
      {device_feature_request{}, command::device_feature, false}, {device_feature_reply{}, command::device_feature, true},
      {mig_data_read_request{}, command::mig_data_read, false}, {mig_data_read_reply{}, command::mig_data_read, true},
      {mig_data_write_request{}, command::mig_data_write, false}, {mig_data_write_reply{}, command::mig_data_write, true},
      {error_reply{uint16_t(command::region_read), EIO, {}}, command::region_read, true},
  };
  EXPECT_EQ(std::size(rows), std::variant_size_v<message>);
  for (auto& r : rows) {
    EXPECT_EQ(command_of(r.m), uint16_t(r.cmd)) << message_name(r.m);
    EXPECT_EQ(is_reply(r.m), r.reply) << message_name(r.m);
    auto h = make_frame(1, r.m).hdr();
    EXPECT_EQ(h.command, uint16_t(r.cmd));
    EXPECT_EQ(h.is_reply(), r.reply);
  }
}

}  // namespace
