// Conformance against real implementations: every frame of every capture in
// shared/vectors decodes into the right typed message and re-encodes to the same bytes.
#include <dirent.h>
#include <sys/stat.h>

#include <algorithm>
#include <gtest/gtest.h>
#include <map>

#include "protocol/assembler.hpp"
#include "protocol/messages.hpp"
#include "protocol/vec_file.hpp"
#include "tests/protocol/test_util.hpp"

namespace vfu::test {

std::string vectors_dir() {
  auto is_dir = [](const std::string& p) {
    struct stat st;
    return ::stat(p.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
  };
  if (const char* env = std::getenv("VFU_VECTORS_DIR")) return is_dir(env) ? env : "";
  std::string p = std::string(VFU_SOURCE_DIR) + "/../shared/vectors";
  return is_dir(p) ? p : "";
}

}  // namespace vfu::test

namespace {

using namespace vfu::proto;

std::vector<std::string> vec_files() {
  std::vector<std::string> out;
  auto dir = vfu::test::vectors_dir();
  if (dir.empty()) return out;
  if (DIR* d = ::opendir(dir.c_str())) {
    while (auto* e = ::readdir(d)) {
      std::string n = e->d_name;
      if (n.size() > 4 && n.compare(n.size() - 4, 4, ".vec") == 0) out.push_back(dir + "/" + n);
    }
    ::closedir(d);
  }
  std::sort(out.begin(), out.end());
  return out;
}

void require_vectors() {
  if (!vec_files().empty()) return;
  if (const char* ci = std::getenv("CI"); ci && std::string(ci) == "true")
    FAIL() << "no *.vec captures found (set VFU_VECTORS_DIR or put shared/ beside the clone); "
              "CI must run the conformance tests";
  GTEST_SKIP() << "no *.vec captures found: set VFU_VECTORS_DIR or place shared/vectors "
                  "beside the source tree to run the conformance tests";
}

TEST(Vectors, EveryFrameDecodesAndReencodesByteExact) {
  require_vectors();
  if (testing::Test::IsSkipped() || testing::Test::HasFatalFailure()) return;
  size_t total = 0;
  for (auto& path : vec_files()) {
    auto vf = read_vec_file(path);
    ASSERT_TRUE(vf.ok()) << vf.err().message();
    quirks q = vf->peer_quirks();
    ASSERT_FALSE(vf->records.empty()) << path;
    for (auto& r : vf->records) {
      SCOPED_TRACE(path + ":" + std::to_string(r.line));
      header h = read_header(r.bytes.data());
      ASSERT_EQ(h.msg_size, r.bytes.size());
      byte_view payload{r.bytes.data() + header_size, r.bytes.size() - header_size};
      auto m = decode(h, payload, r.nfds, q);
      ASSERT_TRUE(m.ok()) << describe(h, r.nfds) << ": " << m.err().message();
      EXPECT_EQ(command_of(*m), h.command);
      EXPECT_EQ(is_reply(*m), h.is_reply());
      EXPECT_EQ(std::holds_alternative<error_reply>(*m), h.is_error());
      frame f = make_frame(h.msg_id, *m, h.flags & hflags::no_reply);
      ASSERT_EQ(to_hex(f.payload()), to_hex(payload)) << message_name(*m);
      EXPECT_EQ(f.bytes, r.bytes) << message_name(*m);
      ++total;
    }
  }
  EXPECT_GE(total, 298u);  // the libvfio-user capture alone has 298 frames
}

// The libvfio-user capture holds exactly the 298 frames its header announces, and covers
// every command family libvfio-user implements.
TEST(Vectors, LibvfioUserCaptureCoversTheProtocol) {
  require_vectors();
  if (testing::Test::IsSkipped() || testing::Test::HasFatalFailure()) return;
  auto path = vfu::test::vectors_dir() + "/libvfio-user-client-server.vec";
  auto vf = read_vec_file(path);
  ASSERT_TRUE(vf.ok()) << vf.err().message();
  EXPECT_EQ(vf->records.size(), 298u);
  std::map<uint16_t, int> seen;
  for (auto& r : vf->records) seen[read_header(r.bytes.data()).command]++;
  for (command c : {command::version, command::dma_map, command::dma_unmap, command::device_get_info,
                    command::device_get_region_info, command::device_get_irq_info,
                    command::device_set_irqs, command::region_read, command::region_write,
                    command::dma_read, command::dma_write, command::device_reset,
                    command::device_feature, command::mig_data_read, command::mig_data_write})
    EXPECT_GT(seen[uint16_t(c)], 0) << command_name(c);
}

// Spec mode must *reject* QEMU's header-only DMA_WRITE reply: the quirk is what accepts it.
TEST(Vectors, QemuDmaWriteReplyNeedsTheQuirk) {
  require_vectors();
  if (testing::Test::IsSkipped() || testing::Test::HasFatalFailure()) return;
  auto vf = read_vec_file(vfu::test::vectors_dir() + "/qemu-client-server-memfd.vec");
  if (!vf.ok()) GTEST_SKIP() << "capture qemu-client-server-memfd.vec not present";
  bool found = false;
  for (auto& r : vf->records) {
    header h = read_header(r.bytes.data());
    if (h.command != uint16_t(command::dma_write) || !h.is_reply()) continue;
    found = true;
    byte_view p{r.bytes.data() + 16, r.bytes.size() - 16};
    EXPECT_FALSE(decode(h, p, 0, quirks::spec()).ok());
    auto m = decode(h, p, 0, quirks::qemu());
    ASSERT_TRUE(m.ok());
    EXPECT_EQ(std::get<dma_write_reply>(*m).layout, dma_layout::empty);
  }
  EXPECT_TRUE(found);
}

// Each direction of each session, replayed through the stream assembler one byte at a
// time, yields exactly the captured frames, with fds attributed to the right frame.
TEST(Vectors, AssemblerRebuildsEveryCaptureByteByByte) {
  require_vectors();
  if (testing::Test::IsSkipped() || testing::Test::HasFatalFailure()) return;
  for (auto& path : vec_files()) {
    auto vf = read_vec_file(path);
    ASSERT_TRUE(vf.ok());
    std::map<std::pair<std::string, bool>, std::vector<const vec_record*>> streams;
    for (auto& r : vf->records) streams[{r.session, r.client_to_server}].push_back(&r);
    for (auto& [key, recs] : streams) {
      frame_assembler a(64u << 20);
      std::vector<frame_assembler::event> out;
      for (auto* r : recs) {
        for (size_t i = 0; i < r->bytes.size(); ++i) {
          fd_list fds;
          if (i + 1 == r->bytes.size())  // fds arrive with the frame's last byte
            for (size_t k = 0; k < r->nfds; ++k) fds.emplace_back(::dup(0));
          a.feed(&r->bytes[i], 1, std::move(fds), out);
        }
      }
      ASSERT_EQ(out.size(), recs.size()) << path << " " << key.first;
      for (size_t i = 0; i < recs.size(); ++i) {
        ASSERT_EQ(out[i].kind, frame_assembler::event::frame_ready);
        EXPECT_EQ(out[i].f.bytes, recs[i]->bytes);
        EXPECT_EQ(out[i].f.fds.size(), recs[i]->nfds);
      }
    }
  }
}

}  // namespace
