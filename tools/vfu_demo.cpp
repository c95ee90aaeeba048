// vfu-demo: the main job. Starts `vfu-serve --device=dma-test` on a private socket and
// drives it with vfu-broker's client, printing each step: negotiate, enumerate, map guest
// memory, program a copy, ring the doorbell, wait for the MSI-X interrupt, verify. It does
// this twice: once with guest memory passed as an fd (the server mmaps it) and once without
// (the server reaches guest memory with DMA_READ/DMA_WRITE messages, served by our client).
#include <poll.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <string>

#include "device/remote_device.hpp"
#include "device/samples.hpp"

using namespace vfu;
using namespace vfu::proto;
namespace dt = vfu::dev::dmatest;

namespace {

pid_t g_server = -1;

// A step that must succeed: on failure, stop the server and exit.
void must(const status& s, const char* what) {
  if (s) return;
  std::printf("FAILED: %s: %s\n", what, s.err().message().c_str());
  if (g_server > 0) ::kill(g_server, SIGTERM);
  std::exit(1);
}

int fail(const std::string& what) {
  std::printf("FAILED: %s\n", what.c_str());
  return 1;
}

const char* region_name(uint32_t i) {
  static const char* names[] = {"BAR0", "BAR1", "BAR2", "BAR3", "BAR4", "BAR5", "ROM", "CONFIG", "VGA"};
  return i < 9 ? names[i] : "device-specific";
}

template <class T>
T get(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

int run_copy(dev::remote_device& d, uint64_t src, uint64_t dst, uint32_t len, int efd) {
  uint64_t v64 = src;
  if (auto s = d.write(0, dt::src, &v64, 8); !s) return fail("write SRC: " + s.err().message());
  v64 = dst;
  if (auto s = d.write(0, dt::dst, &v64, 8); !s) return fail("write DST: " + s.err().message());
  if (auto s = d.write(0, dt::len, &len, 4); !s) return fail("write LEN: " + s.err().message());
  uint32_t one = 1;
  if (auto s = d.write(0, dt::doorbell, &one, 4); !s) return fail("ring doorbell: " + s.err().message());
  std::printf("  rang the doorbell: copy %u bytes from 0x%" PRIx64 " to 0x%" PRIx64 "\n", len, src, dst);
  pollfd p{efd, POLLIN, 0};
  if (::poll(&p, 1, 5000) != 1) return fail("no MSI-X interrupt within 5 s");
  uint64_t count = 0;
  if (::read(efd, &count, 8) != 8) return fail("reading the interrupt eventfd");
  uint32_t status = 0, err = 0, copies = 0;
  must(d.read(0, dt::status, &status, 4), "read STATUS");
  must(d.read(0, dt::error, &err, 4), "read ERROR");
  must(d.read(0, dt::copies, &copies, 4), "read COPIES");
  std::printf("  MSI-X vector 0 fired (eventfd count %" PRIu64 "); STATUS=0x%x ERROR=%u COPIES=%u\n", count, status, err,
              copies);
  if (status & dt::status_error) return fail("device reported error " + std::to_string(err));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  std::string self = argv[0];
  std::string dir = self.find('/') == std::string::npos ? "." : self.substr(0, self.rfind('/'));
  std::string serve = dir + "/vfu-serve";
  char tmp[] = "/tmp/vfu-demo-XXXXXX";
  if (!::mkdtemp(tmp)) return fail("mkdtemp");
  std::string sock = std::string(tmp) + "/dma-test.sock";
  bool verbose = argc > 1 && std::string(argv[1]) == "--verbose";

  std::printf("== vfu-broker demo: %s --device=dma-test --socket-path=%s\n", serve.c_str(), sock.c_str());
  std::string a1 = "--device=dma-test", a2 = "--socket-path=" + sock;  // (not in the child: no allocation there)
  pid_t pid = ::fork();
  g_server = pid;
  if (pid == 0) {
    ::execl(serve.c_str(), serve.c_str(), a1.c_str(), a2.c_str(), (char*)nullptr);
    std::perror("exec vfu-serve");
    _exit(127);
  }
  auto cleanup = [&](int rc) {
    ::kill(pid, SIGTERM);
    int st = 0;
    ::waitpid(pid, &st, 0);
    ::unlink(sock.c_str());
    ::rmdir(tmp);
    std::printf("== server stopped (%s); demo %s\n",
                WIFEXITED(st) ? ("exit " + std::to_string(WEXITSTATUS(st))).c_str() : "signal",
                rc ? "FAILED" : "passed");
    return rc;
  };

  runtime rt;
  auto mem = std::make_shared<dev::guest_memory>();
  proto::result<std::unique_ptr<dev::remote_device>> d = proto::error(proto::errc::not_connected, "");
  for (int i = 0; i < 100; ++i) {  // the server needs a moment to create its socket
    endpoint_config cfg;
    cfg.reconnect = false;
    d = dev::remote_device::open(rt, sock, mem, cfg);
    if (d) break;
    ::usleep(20000);
  }
  if (!d) return cleanup(fail("connect: " + d.err().message()));
  auto& dv = **d;
  auto n = dv.ep().negotiated();
  std::printf("[1] connected, VERSION %u.%u; server caps: max_msg_fds=%" PRIu64 " max_data_xfer_size=%" PRIu64
              " max_dma_maps=%" PRIu64 " pgsizes=0x%" PRIx64 " write_multiple=%d\n",
              n.major, n.minor, n.theirs.max_msg_fds, n.theirs.max_data_xfer_size, n.theirs.max_dma_maps,
              n.theirs.pgsizes, n.theirs.write_multiple);
  if (auto s = dv.probe(); !s) return cleanup(fail("probe: " + s.err().message()));
  std::printf("[2] device: flags=0x%x (%s%s) regions=%u irq types=%u\n", dv.info().flags,
              dv.info().flags & device_info_flags::pci ? "PCI" : "", dv.info().flags & device_info_flags::reset ? ", reset" : "",
              dv.info().num_regions, dv.info().num_irqs);
  for (uint32_t i = 0; i < dv.regions().size(); ++i) {
    auto& r = dv.regions()[i];
    if (!r.info.size) continue;
    std::printf("    region %u %-6s size 0x%" PRIx64 " flags=%s%s%s%s", i, region_name(i), r.info.size,
                r.info.flags & region_flags::read ? "R" : "-", r.info.flags & region_flags::write ? "W" : "-",
                r.info.flags & region_flags::mmap ? " mmap" : "", r.info.flags & region_flags::caps ? " caps" : "");
    for (auto& [a, p] : r.areas) std::printf(" [mapped 0x%" PRIx64 "+0x%" PRIx64 "]", a.offset, a.size);
    std::printf("\n");
  }
  static const char* irq_names[] = {"INTx", "MSI", "MSI-X", "ERR", "REQ"};
  for (uint32_t i = 0; i < dv.irqs().size() && i < 5; ++i)
    std::printf("    irq %-5s count %u flags 0x%x\n", irq_names[i], dv.irqs()[i].count, dv.irqs()[i].flags);

  uint8_t cfgsp[64];
  if (auto s = dv.read(region_index::config, 0, cfgsp, 64); !s) return cleanup(fail("config read: " + s.err().message()));
  std::printf("[3] config space: vendor %04x device %04x class %06x, BAR0=0x%08x BAR2=0x%08x, cap ptr 0x%02x\n",
              get<uint16_t>(cfgsp), get<uint16_t>(cfgsp + 2), get<uint32_t>(cfgsp + 8) >> 8, get<uint32_t>(cfgsp + 0x10),
              get<uint32_t>(cfgsp + 0x18), cfgsp[0x34]);
  if (get<uint16_t>(cfgsp) != dt::vendor || get<uint16_t>(cfgsp + 2) != dt::device) return cleanup(fail("wrong device IDs"));
  uint16_t cmd = dev::pci_reg::cmd_mem | dev::pci_reg::cmd_master;
  must(dv.write(region_index::config, dev::pci_reg::command, &cmd, 2), "enable bus mastering");
  uint8_t msix_ctl = 0x80;  // MSI-X enable
  must(dv.write(region_index::config, 0x63, &msix_ctl, 1), "enable MSI-X");
  unique_fd efd(::eventfd(0, EFD_CLOEXEC));
  if (auto s = dv.set_irq_eventfds(irq_index::msix, 0, {efd.get()}); !s)
    return cleanup(fail("SET_IRQS: " + s.err().message()));
  uint32_t unmask = 0;
  must(dv.write(1, 12, &unmask, 4), "unmask MSI-X vector 0");  // MSI-X table entry 0: vector control = unmasked
  std::printf("[4] bus mastering and MSI-X enabled; vector 0 wired to an eventfd and unmasked\n");

  // Guest memory: 2 MiB of memfd. The first MiB is mapped with its fd, the second without.
  constexpr uint64_t mib = 1u << 20;
  unique_fd guest(::memfd_create("guest-ram", MFD_CLOEXEC));
  if (::ftruncate(guest.get(), off_t(2 * mib)) != 0) return cleanup(fail("ftruncate"));
  auto* ram = static_cast<uint8_t*>(::mmap(nullptr, 2 * mib, PROT_READ | PROT_WRITE, MAP_SHARED, guest.get(), 0));
  if (ram == MAP_FAILED) return cleanup(fail("mmap guest RAM"));
  const uint32_t rw = dma_flags::read | dma_flags::write;
  mem->add(0x100000, mib, ram, rw);
  mem->add(0x200000, mib, ram + mib, rw);
  if (auto s = dv.dma_map(0x100000, mib, rw, &guest, 0); !s) return cleanup(fail("DMA_MAP with fd: " + s.err().message()));
  if (auto s = dv.dma_map(0x200000, mib, rw, nullptr); !s) return cleanup(fail("DMA_MAP without fd: " + s.err().message()));
  std::printf("[5] DMA windows: IOVA 0x100000+1MiB with a memfd (server mmaps it), 0x200000+1MiB without an fd\n");

  int rc = 0;
  struct pass { const char* what; uint64_t src, dst; uint32_t len; } passes[] = {
      {"through the mmapped window", 0x100000, 0x100000 + 0x80000, 64 * 1024},
      {"through DMA_READ/DMA_WRITE messages", 0x200000, 0x200000 + 0x80000, 64 * 1024},
  };
  int step = 6;
  for (auto& ps : passes) {
    uint8_t* s = ram + (ps.src - 0x100000);
    uint8_t* t = ram + (ps.dst - 0x100000);
    for (uint32_t i = 0; i < ps.len; ++i) s[i] = uint8_t(i * 7 + step);
    std::memset(t, 0, ps.len);
    std::printf("[%d] copy %s\n", step++, ps.what);
    if ((rc = run_copy(dv, ps.src, ps.dst, ps.len, efd.get()))) break;
    bool same = std::memcmp(s, t, ps.len) == 0;
    std::printf("  verify: destination %s the source (%u bytes)\n", same ? "matches" : "DIFFERS from", ps.len);
    if (!same) { rc = 1; break; }
  }
  if (!rc) {
    if (auto s = dv.dma_unmap(0x200000, mib); !s) rc = fail("DMA_UNMAP: " + s.err().message());
    else if (auto s2 = dv.reset(); !s2) rc = fail("DEVICE_RESET: " + s2.err().message());
    else {
      uint32_t copies = 1;
      must(dv.read(0, dt::copies, &copies, 4), "read COPIES");
      std::printf("[%d] unmapped the message window, reset the device (COPIES now %u)\n", step, copies);
    }
  }
  if (verbose) std::printf("    connection counters: %s\n", dv.ep().stats().c_str());
  ::munmap(ram, 2 * mib);
  d.value().reset();
  return cleanup(rc);
}
