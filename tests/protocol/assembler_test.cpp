// frame_assembler: byte stream + fds in, whole frames out. Real fds (eventfds) are used, and
// every test checks that /proc/self/fd holds as many entries at the end as at the start.
#include <dirent.h>
#include <fcntl.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <cstring>

#include "protocol/assembler.hpp"
#include "protocol/limits.hpp"

namespace {

using namespace vfu::proto;
using ev = frame_assembler::event;

size_t open_fd_count() {
  size_t n = 0;
  if (DIR* d = ::opendir("/proc/self/fd")) {
    while (auto* e = ::readdir(d))
      if (e->d_name[0] != '.') ++n;
    ::closedir(d);
  }
  return n;
}

bool is_open(int fd) { return ::fcntl(fd, F_GETFD) != -1; }

class Assembler : public ::testing::Test {
 protected:
  void SetUp() override { fds_at_start_ = open_fd_count(); }
  void TearDown() override { EXPECT_EQ(open_fd_count(), fds_at_start_) << "fd leak"; }
  size_t fds_at_start_ = 0;
};

/// A frame of `size` bytes: header (msg_id, command 9, size, flags) + a payload pattern.
std::vector<uint8_t> raw_frame(uint16_t id, uint32_t size, uint32_t flags = 0) {
  std::vector<uint8_t> b(size < header_size ? header_size : size);
  header h;
  h.msg_id = id;
  h.command = 9;
  h.msg_size = size;
  h.flags = flags;
  write_header(b.data(), h);
  for (size_t i = header_size; i < b.size(); ++i) b[i] = uint8_t(id * 31 + i);
  return b;
}

std::vector<uint8_t> cat(std::initializer_list<std::vector<uint8_t>> parts) {
  std::vector<uint8_t> out;
  for (auto& p : parts) out.insert(out.end(), p.begin(), p.end());
  return out;
}

/// n new eventfds; their numbers are recorded in `raw` (ownership goes to the list).
fd_list eventfds(size_t n, std::vector<int>* raw = nullptr) {
  fd_list l;
  for (size_t i = 0; i < n; ++i) {
    int fd = ::eventfd(0, EFD_CLOEXEC);
    if (fd < 0) std::abort();
    if (raw) raw->push_back(fd);
    l.emplace_back(fd);
  }
  return l;
}

void feed(frame_assembler& a, const std::vector<uint8_t>& b, size_t from, size_t to, std::vector<ev>& out,
          fd_list fds = {}) {
  a.feed(b.data() + from, to - from, std::move(fds), out);
}

// ---- splitting --------------------------------------------------------------------------------
TEST_F(Assembler, SplitAtEveryOffset) {
  auto f1 = raw_frame(1, 40);
  auto f2 = raw_frame(2, 16, 1);  // header only
  auto f3 = raw_frame(3, 23);
  auto stream = cat({f1, f2, f3});
  for (size_t k = 0; k <= stream.size(); ++k) {
    frame_assembler a(4096);
    std::vector<ev> out;
    feed(a, stream, 0, k, out);
    feed(a, stream, k, stream.size(), out);
    ASSERT_EQ(out.size(), 3u) << "split at " << k;
    EXPECT_EQ(out[0].f.bytes, f1);
    EXPECT_EQ(out[1].f.bytes, f2);
    EXPECT_EQ(out[2].f.bytes, f3);
    EXPECT_FALSE(a.mid_frame());
  }
}

TEST_F(Assembler, SplitAtEveryPairOfOffsets) {
  auto f1 = raw_frame(1, 40);
  auto f2 = raw_frame(2, 16, 1);
  auto stream = cat({f1, f2});
  for (size_t i = 0; i <= stream.size(); ++i) {
    for (size_t j = i; j <= stream.size(); ++j) {
      frame_assembler a(4096);
      std::vector<ev> out;
      feed(a, stream, 0, i, out);
      feed(a, stream, i, j, out);
      EXPECT_EQ(a.mid_frame(), j != 0 && j != f1.size() && j != stream.size()) << i << " " << j;
      feed(a, stream, j, stream.size(), out);
      ASSERT_EQ(out.size(), 2u) << i << " " << j;
      EXPECT_EQ(out[0].f.bytes, f1);
      EXPECT_EQ(out[1].f.bytes, f2);
    }
  }
}

TEST_F(Assembler, ByteByByte) {
  auto f = raw_frame(7, 100);
  frame_assembler a(4096);
  std::vector<ev> out;
  for (size_t i = 0; i < f.size(); ++i) {
    feed(a, f, i, i + 1, out);
    EXPECT_EQ(out.size(), i + 1 == f.size() ? 1u : 0u);
  }
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].kind, ev::frame_ready);
  EXPECT_EQ(out[0].f.bytes, f);
  EXPECT_EQ(out[0].f.hdr().msg_id, 7);
}

// A buffer given back is read into again: the frames that follow are exactly their own
// bytes (none of the old frame's), whatever their size and wherever the reads split them,
// and the fds still go with the frame holding a read's last byte.
TEST_F(Assembler, FramesReadIntoAGivenBackBufferHoldOnlyTheirOwnBytes) {
  frame_assembler a(1 << 20);
  std::vector<ev> out;
  auto big = raw_frame(1, 200);
  feed(a, big, 0, big.size(), out);
  ASSERT_EQ(out.size(), 1u);
  for (auto& b : out[0].f.bytes) b = 0xee;  // what a stale byte would look like
  a.give_back(std::move(out[0].f.bytes));
  out.clear();
  auto small = raw_frame(2, 40), header_only = raw_frame(3, 16, 1), larger = raw_frame(4, 300);
  auto stream = cat({small, header_only, larger});
  std::vector<int> raw;
  feed(a, stream, 0, 7, out);
  feed(a, stream, 7, small.size() + 3, out, eventfds(1, &raw));  // ends inside the second frame
  feed(a, stream, small.size() + 3, stream.size(), out);
  ASSERT_EQ(out.size(), 3u);
  EXPECT_EQ(out[0].f.bytes, small);
  EXPECT_EQ(out[1].f.bytes, header_only);
  EXPECT_EQ(out[2].f.bytes, larger);
  EXPECT_TRUE(out[0].f.fds.empty());
  ASSERT_EQ(out[1].f.fds.size(), 1u);
  EXPECT_EQ(out[1].f.fds[0].get(), raw[0]);
  // A buffer over the size kept, or none at all, changes nothing either.
  frame_bytes huge(64 << 10);
  a.give_back(std::move(huge));
  a.give_back(frame_bytes{});
  out.clear();
  feed(a, small, 0, small.size(), out);
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].f.bytes, small);
}

TEST_F(Assembler, ManyFramesInOneFeed) {
  std::vector<uint8_t> stream;
  std::vector<std::vector<uint8_t>> frames;
  for (uint16_t i = 0; i < 200; ++i) {
    frames.push_back(raw_frame(i, 16 + i % 37, i % 2));
    stream.insert(stream.end(), frames.back().begin(), frames.back().end());
  }
  frame_assembler a(4096);
  std::vector<ev> out;
  feed(a, stream, 0, stream.size(), out);
  ASSERT_EQ(out.size(), frames.size());
  for (size_t i = 0; i < frames.size(); ++i) {
    EXPECT_EQ(out[i].kind, ev::frame_ready);
    EXPECT_EQ(out[i].f.bytes, frames[i]);
    EXPECT_TRUE(out[i].f.fds.empty());
  }
}

// ---- fd attribution ---------------------------------------------------------------------------
TEST_F(Assembler, FdsGoToTheFrameHoldingTheChunksLastByte) {
  auto p1 = raw_frame(1, 32), p2 = raw_frame(2, 16), withfd = raw_frame(3, 36);
  auto stream = cat({p1, p2, withfd});
  std::vector<int> raw;
  frame_assembler a(4096);
  std::vector<ev> out;
  feed(a, stream, 0, stream.size(), out, eventfds(2, &raw));
  ASSERT_EQ(out.size(), 3u);
  EXPECT_TRUE(out[0].f.fds.empty());
  EXPECT_TRUE(out[1].f.fds.empty());
  ASSERT_EQ(out[2].f.fds.size(), 2u);
  EXPECT_EQ(out[2].f.fds[0].get(), raw[0]);  // order kept
  EXPECT_EQ(out[2].f.fds[1].get(), raw[1]);
}

TEST_F(Assembler, FdsArrivingMidFrameTravelWithThatFrame) {
  auto fa = raw_frame(1, 32), fb = raw_frame(2, 48);
  auto stream = cat({fa, fb});
  // Chunk 1 = A + half of B's header, with an fd: the fd belongs to B.
  std::vector<int> raw;
  frame_assembler a(4096);
  std::vector<ev> out;
  feed(a, stream, 0, fa.size() + 8, out, eventfds(1, &raw));
  ASSERT_EQ(out.size(), 1u);
  EXPECT_TRUE(out[0].f.fds.empty());
  EXPECT_TRUE(a.mid_frame());
  // Chunk 2 = rest of B's header and part of its body, with another fd.
  feed(a, stream, fa.size() + 8, fa.size() + 30, out, eventfds(1, &raw));
  EXPECT_EQ(out.size(), 1u);
  // Chunk 3 = the rest, without fds.
  feed(a, stream, fa.size() + 30, stream.size(), out);
  ASSERT_EQ(out.size(), 2u);
  ASSERT_EQ(out[1].f.fds.size(), 2u);
  EXPECT_EQ(out[1].f.fds[0].get(), raw[0]);
  EXPECT_EQ(out[1].f.fds[1].get(), raw[1]);
}

TEST_F(Assembler, FdsWithAChunkEndingExactlyAtAFrameEnd) {
  auto fa = raw_frame(1, 32), fb = raw_frame(2, 16);
  auto stream = cat({fa, fb});
  frame_assembler a(4096);
  std::vector<ev> out;
  feed(a, stream, 0, fa.size(), out, eventfds(1));
  feed(a, stream, fa.size(), stream.size(), out);
  ASSERT_EQ(out.size(), 2u);
  EXPECT_EQ(out[0].f.fds.size(), 1u);
  EXPECT_TRUE(out[1].f.fds.empty());
  // A chunk that ends exactly at the end of a header that has a body: the fd waits for it.
  frame_assembler b(4096);
  std::vector<ev> out2;
  feed(b, fa, 0, header_size, out2, eventfds(1));
  EXPECT_TRUE(out2.empty());
  feed(b, fa, header_size, fa.size(), out2);
  ASSERT_EQ(out2.size(), 1u);
  EXPECT_EQ(out2[0].f.fds.size(), 1u);
}

TEST_F(Assembler, FdsWithoutBytesAreClosed) {
  std::vector<int> raw;
  frame_assembler a(4096);
  std::vector<ev> out;
  a.feed(nullptr, 0, eventfds(2, &raw), out);
  EXPECT_TRUE(out.empty());
  EXPECT_FALSE(is_open(raw[0]));
  EXPECT_FALSE(is_open(raw[1]));
}

TEST_F(Assembler, TooManyFdsForOneFrameIsFatal) {
  auto f = raw_frame(1, 64);
  frame_assembler a(4096);
  std::vector<ev> out;
  feed(a, f, 0, 20, out, eventfds(limits::scm_max_fd));
  EXPECT_FALSE(a.failed());
  feed(a, f, 20, 40, out, eventfds(1));
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].kind, ev::fatal);
  EXPECT_EQ(out[0].err.code, errc::bad_fds);
  EXPECT_TRUE(a.failed());
}

// ---- oversized frames --------------------------------------------------------------------------
TEST_F(Assembler, OversizedFrameIsDrainedAndTheNextOneIsIntact) {
  auto big = raw_frame(1, 100), next = raw_frame(2, 24);
  auto stream = cat({big, next});
  std::vector<int> raw;
  frame_assembler a(64);
  std::vector<ev> out;
  // fd with a chunk ending inside the oversized frame: it is that frame's and is closed.
  // The frame is rejected as soon as its header is in, before its body.
  feed(a, stream, 0, 50, out, eventfds(1, &raw));
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].kind, ev::rejected);
  EXPECT_TRUE(a.mid_frame());
  EXPECT_FALSE(is_open(raw[0]));
  feed(a, stream, 50, stream.size(), out);
  ASSERT_EQ(out.size(), 2u);
  EXPECT_EQ(out[0].kind, ev::rejected);
  EXPECT_EQ(out[0].hdr.msg_id, 1);
  EXPECT_EQ(out[0].hdr.msg_size, 100u);
  EXPECT_EQ(out[0].err.code, errc::too_large);
  EXPECT_EQ(to_wire_errno(out[0].err), E2BIG);
  EXPECT_EQ(out[1].kind, ev::frame_ready);
  EXPECT_EQ(out[1].f.bytes, next);
  EXPECT_FALSE(a.failed());
}

// More than limits::oversize_drain_max over the limit: rejected (to be answered), then
// fatal with too_large (the layer above closes after the answer), not drained.
TEST_F(Assembler, AFrameFarOverTheLimitIsRejectedThenFatal) {
  header h{};
  h.msg_id = 9;
  h.command = uint16_t(command::region_write);
  h.msg_size = uint32_t(64 + limits::oversize_drain_max + 1);
  std::vector<uint8_t> b(header_size);
  write_header(b.data(), h);
  frame_assembler a(64);
  std::vector<ev> out;
  a.feed(b.data(), b.size(), {}, out);
  ASSERT_EQ(out.size(), 2u);
  EXPECT_EQ(out[0].kind, ev::rejected);
  EXPECT_EQ(out[0].hdr.msg_id, 9);
  EXPECT_EQ(out[1].kind, ev::fatal);
  EXPECT_EQ(out[1].err.code, errc::too_large);
  EXPECT_TRUE(a.failed());
  // Exactly at the bound it is drained.
  h.msg_size = uint32_t(64 + limits::oversize_drain_max);
  write_header(b.data(), h);
  frame_assembler d(64);
  out.clear();
  d.feed(b.data(), b.size(), {}, out);
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].kind, ev::rejected);
  EXPECT_FALSE(d.failed());
}

TEST_F(Assembler, FdsThatArrivedWithTheOversizedHeaderAreClosed) {
  auto big = raw_frame(1, 100);
  std::vector<int> raw;
  frame_assembler a(64);
  std::vector<ev> out;
  feed(a, big, 0, 8, out, eventfds(1, &raw));  // mid-header: held for the frame
  EXPECT_TRUE(is_open(raw[0]));
  feed(a, big, 8, 20, out);  // header complete: too large, drain starts
  EXPECT_FALSE(is_open(raw[0]));
  feed(a, big, 20, big.size(), out, eventfds(1, &raw));  // chunk ends the drained frame
  EXPECT_FALSE(is_open(raw[1]));
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].kind, ev::rejected);
}

TEST_F(Assembler, OversizedFrameInOneChunkBetweenGoodOnes) {
  auto f1 = raw_frame(1, 20), big = raw_frame(2, 65), f3 = raw_frame(3, 64);
  auto stream = cat({f1, big, f3});
  for (size_t k = 0; k <= stream.size(); ++k) {
    frame_assembler a(64);
    std::vector<ev> out;
    feed(a, stream, 0, k, out);
    feed(a, stream, k, stream.size(), out);
    ASSERT_EQ(out.size(), 3u) << k;
    EXPECT_EQ(out[0].kind, ev::frame_ready);
    EXPECT_EQ(out[1].kind, ev::rejected);
    EXPECT_EQ(out[1].hdr.msg_size, 65u);
    EXPECT_EQ(out[2].kind, ev::frame_ready);  // exactly max_frame: accepted
    EXPECT_EQ(out[2].f.bytes, f3);
  }
}

TEST_F(Assembler, SetMaxFrameTakesEffectAtTheNextHeader) {
  auto f = raw_frame(1, 100);
  frame_assembler a(64);
  EXPECT_EQ(a.max_frame(), 64u);
  std::vector<ev> out;
  feed(a, f, 0, f.size(), out);
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].kind, ev::rejected);
  a.set_max_frame(100);
  feed(a, f, 0, f.size(), out);
  ASSERT_EQ(out.size(), 2u);
  EXPECT_EQ(out[1].kind, ev::frame_ready);
  // Lowered mid-frame: the frame in progress is still accepted, the next one is not.
  feed(a, f, 0, 30, out);
  a.set_max_frame(32);
  feed(a, f, 30, f.size(), out);
  ASSERT_EQ(out.size(), 3u);
  EXPECT_EQ(out[2].kind, ev::frame_ready);
  feed(a, f, 0, f.size(), out);
  ASSERT_EQ(out.size(), 4u);
  EXPECT_EQ(out[3].kind, ev::rejected);
}

// ---- fatal headers -----------------------------------------------------------------------------
TEST_F(Assembler, MsgSizeBelow16IsFatalAndLaterInputIgnored) {
  for (uint32_t size : {0u, 1u, 15u}) {
    auto good = raw_frame(1, 20);
    auto bad = raw_frame(2, size);  // 16 bytes long, claims `size`
    auto stream = cat({good, bad, good});
    std::vector<int> raw;
    frame_assembler a(4096);
    std::vector<ev> out;
    feed(a, stream, 0, stream.size(), out, eventfds(1, &raw));
    ASSERT_EQ(out.size(), 2u) << size;
    EXPECT_EQ(out[0].kind, ev::frame_ready);  // the frame before the bad header is delivered
    EXPECT_EQ(out[1].kind, ev::fatal);
    EXPECT_EQ(out[1].err.code, errc::bad_header);
    EXPECT_EQ(to_wire_errno(out[1].err), EPROTO);
    EXPECT_TRUE(a.failed());
    EXPECT_FALSE(is_open(raw[0]));
    feed(a, good, 0, good.size(), out, eventfds(1, &raw));
    EXPECT_EQ(out.size(), 2u);
    EXPECT_FALSE(is_open(raw[1]));
  }
}

TEST_F(Assembler, BadTypeBitsAreFatal) {
  for (uint32_t flags : {2u, 3u, 0xfu, 0x12u}) {
    auto bad = raw_frame(1, 32, flags);
    frame_assembler a(4096);
    std::vector<ev> out;
    feed(a, bad, 0, 16, out);
    ASSERT_EQ(out.size(), 1u);
    EXPECT_EQ(out[0].kind, ev::fatal);
    EXPECT_EQ(out[0].err.code, errc::bad_header);
    feed(a, bad, 16, bad.size(), out);
    feed(a, raw_frame(2, 16), 0, 16, out);
    EXPECT_EQ(out.size(), 1u);
  }
  // Only the type bits matter to the assembler: NO_REPLY/ERROR/reserved bits are the codec's.
  frame_assembler a(4096);
  std::vector<ev> out;
  feed(a, raw_frame(1, 16, 0x31), 0, 16, out);
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].kind, ev::frame_ready);
}

TEST_F(Assembler, FatalClosesTheFdsOfTheFrameInProgress) {
  auto f = raw_frame(1, 64);
  auto bad = raw_frame(2, 8);
  std::vector<int> raw;
  frame_assembler a(4096);
  std::vector<ev> out;
  feed(a, f, 0, 20, out, eventfds(1, &raw));
  EXPECT_TRUE(is_open(raw[0]));
  auto rest = cat({std::vector<uint8_t>(f.begin() + 20, f.end()), bad});
  feed(a, rest, 0, rest.size(), out);
  ASSERT_EQ(out.size(), 2u);
  EXPECT_EQ(out[1].kind, ev::fatal);
  EXPECT_EQ(out[0].f.fds.size(), 1u);  // f completed before the bad header: it keeps its fd
  out.clear();
  EXPECT_FALSE(is_open(raw[0]));
  // And an fd held for a frame that never completes is closed when the assembler goes away.
  {
    frame_assembler b(4096);
    feed(b, f, 0, 20, out, eventfds(1, &raw));
    EXPECT_TRUE(is_open(raw[1]));
  }
  EXPECT_FALSE(is_open(raw[1]));
}

TEST_F(Assembler, MidFrameReportsPartialInput) {
  auto f = raw_frame(1, 32);
  frame_assembler a(4096);
  std::vector<ev> out;
  EXPECT_FALSE(a.mid_frame());
  feed(a, f, 0, 1, out);
  EXPECT_TRUE(a.mid_frame());
  feed(a, f, 1, 16, out);
  EXPECT_TRUE(a.mid_frame());
  feed(a, f, 16, 32, out);
  EXPECT_FALSE(a.mid_frame());
  frame_assembler small(16);
  feed(small, f, 0, 16, out);
  EXPECT_TRUE(small.mid_frame());  // draining
  feed(small, f, 16, 32, out);
  EXPECT_FALSE(small.mid_frame());
}

}  // namespace
