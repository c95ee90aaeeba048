// lvu-server-dma [--one-socket] SOCKET: our client against libvfio-user's samples/server (built by hand,
// docs/interop.md). It wires an eventfd to INTx, maps two windows of guest memory, each
// with an fd, and arms the sample's timer through BAR0; when it fires the sample raises
// INTx, writes 4 x 1 KiB ('A'..'D') into the first window by DMA_WRITE messages and reads
// them back by DMA_READ, and does the same to the second window through its mmap. Passes
// when the interrupt came, both windows hold the bytes and the server still answers. Our
// client offers the twin socket and the sample takes it: its DMA comes on the twin;
// --one-socket does not offer it, and the DMA shares the one socket with our requests.
// With --migrate it moves the sample between two instances instead (see migrate()).
// Exit 0 on success, 1 with a reason otherwise.
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <string>
#include <thread>
#include <vector>

#include "device/migrate.hpp"

using namespace vfu;
using namespace std::chrono_literals;

namespace {
int fail(const std::string& why) {
  std::fprintf(stderr, "lvu-server-dma: %s\n", why.c_str());
  return 1;
}
bool holds_pattern(const uint8_t* p) {
  for (int i = 0; i < 4096; ++i)
    if (p[i] != uint8_t('A' + i / 1024)) return false;
  return true;
}
}  // namespace

// --migrate SRC DST: dev::migrate (what vfu-migrate runs) moves the sample from one
// instance to another. The sample serves one client per process and takes RUNNING only with
// a future time in BAR0 (it re-arms its timer from it), so this one connection sets BAR0 and
// a BAR1 pattern on the source, migrates, and checks the destination's BAR1 and both states.
int migrate(runtime& rt, const char* from, const char* to) {
  endpoint_config cfg;
  cfg.reconnect = false;
  auto src = dev::remote_device::open(rt, from, nullptr, cfg);
  auto dst = dev::remote_device::open(rt, to, nullptr, cfg);
  if (!src || !dst) return fail("connect: " + (src ? dst.err() : src.err()).message());
  auto& s = **src;
  auto& d = **dst;
  if (auto st = s.probe(); !st) return fail("probe: " + st.err().message());
  std::vector<uint8_t> want(0x4000);
  for (size_t i = 0; i < want.size(); ++i) want[i] = uint8_t((i * 31) ^ (i >> 8));
  int64_t when = int64_t(std::time(nullptr)) + 300;
  if (auto st = s.write(0, 0, &when, sizeof when); !st) return fail("BAR0 write: " + st.err().message());
  if (auto st = s.write(1, 0, want.data(), want.size()); !st) return fail("BAR1 write: " + st.err().message());
  dev::migrate_report rep;
  if (auto st = dev::migrate(s, d, {}, rep); !st)
    return fail("migration: " + st.err().message() + "; source " + rep.source_state + ", destination " + rep.destination_state);
  std::printf("migrated: stop-copy %llu bytes in %.2f ms, downtime %.2f ms\n",
              static_cast<unsigned long long>(rep.stopcopy_bytes), rep.stopcopy_ms, rep.downtime_ms);
  // One message for all of BAR1 (the sample's BAR1 reads ignore the offset).
  auto r = d.ep().call_decoded(proto::region_read_request{{0, 1, uint32_t(want.size())}});
  if (!r) return fail("BAR1 read: " + r.err().message());
  if (std::get<proto::region_read_reply>(*r).data != want) return fail("the destination's BAR1 differs from the source's");
  auto ss = s.migration_state(), ds = d.migration_state();
  if (!ss || !ds) return fail("migration state: " + (ss ? ds.err() : ss.err()).message());
  std::printf("destination BAR1 = the source's 16 KiB; source %s, destination %s\n", to_string(*ss), to_string(*ds));
  return *ss == proto::mig_state::stop && *ds == proto::mig_state::running ? 0 : fail("states differ");
}

int main(int argc, char** argv) {
  if (argc == 4 && std::string(argv[1]) == "--migrate") {
    runtime rt;
    return migrate(rt, argv[2], argv[3]);
  }
  bool one_socket = argc == 3 && std::string(argv[1]) == "--one-socket";
  if (argc != 2 && !one_socket) return fail("usage: lvu-server-dma [--one-socket] SOCKET | --migrate SRC DST");
  runtime rt;
  auto mem = std::make_shared<dev::guest_memory>();
  endpoint_config cfg;
  cfg.reconnect = false;
  cfg.client_caps.twin_socket = !one_socket;
  auto d = dev::remote_device::open(rt, argv[argc - 1], mem, cfg);
  if (!d) return fail(std::string("connect: ") + d.err().message());
  auto& dv = **d;
  if (auto s = dv.probe(); !s) return fail("probe: " + s.err().message());
  // Offered, the sample hands over its twin socket and sends all its DMA there; our first
  // socket would refuse a DMA request (EINVAL), which the sample treats as fatal.
  bool twin = dv.ep().negotiated().theirs.twin_socket;
  std::printf("twin socket: %s\n", twin ? "handed over with the VERSION reply" : "none, one socket");
  if (twin == one_socket) return fail(one_socket ? "a twin socket we did not offer" : "no twin socket although offered");
  uint32_t id = 0;
  if (auto s = dv.read(proto::region_index::config, 0, &id, 4); !s || id != 0xbeefdead)
    return fail("not libvfio-user's server sample (IDs dead:beef expected)");
  proto::unique_fd irq(::eventfd(0, EFD_CLOEXEC));
  if (auto s = dv.set_irq_eventfds(proto::irq_index::intx, 0, {irq.get()}); !s)
    return fail("SET_IRQS: " + s.err().message());
  const uint64_t page = uint64_t(::sysconf(_SC_PAGESIZE));
  const uint64_t iova[2] = {0x10000, 0x20000};
  uint8_t* host[2];
  for (int w = 0; w < 2; ++w) {
    proto::unique_fd fd(::memfd_create("guest", MFD_CLOEXEC));
    if (!fd || ::ftruncate(fd.get(), off_t(page)) != 0) return fail("memfd");
    void* p = ::mmap(nullptr, page, PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(), 0);
    if (p == MAP_FAILED) return fail("mmap");
    host[w] = static_cast<uint8_t*>(p);
    mem->add(iova[w], page, host[w], proto::dma_flags::read | proto::dma_flags::write);
    if (auto s = dv.dma_map(iova[w], page, proto::dma_flags::read | proto::dma_flags::write, &fd); !s)
      return fail("DMA_MAP: " + s.err().message());
  }
  // Dirty logging on (libvfio-user logs every window with an fd, whatever the ranges).
  if (auto s = dv.start_dirty_logging(page); !s) return fail("DMA_LOGGING_START: " + s.err().message());
  // BAR0 holds a time: the sample arms a timer for it, then does its DMA.
  int64_t when = int64_t(std::time(nullptr)) + 1;
  if (auto s = dv.write(0, 0, &when, sizeof when); !s) return fail("BAR0 write: " + s.err().message());
  auto deadline = std::chrono::steady_clock::now() + 10s;
  while (!(holds_pattern(host[0]) && holds_pattern(host[1])) && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(50ms);
  pollfd pf{irq.get(), POLLIN, 0};
  bool interrupt = ::poll(&pf, 1, 0) == 1;
  std::printf("INTx eventfd: %s\n", interrupt ? "signalled" : "silent");
  bool by_messages = holds_pattern(host[0]), by_mmap = holds_pattern(host[1]);
  std::printf("window 0 (DMA_WRITE/DMA_READ messages): %s\n", by_messages ? "ABCD x 1 KiB" : "not written");
  std::printf("window 1 (the server's mmap): %s\n", by_mmap ? "ABCD x 1 KiB" : "not written");
  if (!by_messages || !by_mmap) return fail("the server's DMA did not arrive");
  if (!interrupt) return fail("the server's interrupt did not arrive");
  std::this_thread::sleep_for(200ms);  // its read-back by DMA_READ follows the writes
  // What it wrote through its mmap is dirty; what it wrote by DMA_WRITE messages is not
  // (the client saw those itself). A report clears what it reported. libvfio-user takes a
  // report only for a whole window.
  for (int w = 0; w < 2; ++w) {
    auto bm = dv.dirty_bitmap(iova[w], page, page);
    if (!bm) return fail("DMA_LOGGING_REPORT: " + bm.err().message());
    auto again = dv.dirty_bitmap(iova[w], page, page);
    if (!again) return fail("DMA_LOGGING_REPORT: " + again.err().message());
    std::printf("window %d dirty bitmap: %02x, then %02x\n", w, (*bm)[0], (*again)[0]);
    if ((*bm)[0] != (w == 1 ? 1 : 0) || (*again)[0] != 0) return fail("the dirty bitmaps are not what the sample wrote");
  }
  if (auto s = dv.stop_dirty_logging(); !s) return fail("DMA_LOGGING_STOP: " + s.err().message());
  int64_t bar0 = 0;
  if (auto s = dv.read(0, 0, &bar0, sizeof bar0); !s) return fail("the server stopped answering: " + s.err().message());
  std::printf("server still answers (BAR0 %lld)\n", static_cast<long long>(bar0));
  auto stats = dv.ep().stats();
  std::printf("first socket: %s\n", stats.c_str());
  if (stats.find(" misrouted=0") == std::string::npos || (twin && stats.find(" twin=1") == std::string::npos))
    return fail("frames on the wrong socket, or no twin socket running");
  for (int w = 0; w < 2; ++w) ::munmap(host[w], page);
  return 0;
}
