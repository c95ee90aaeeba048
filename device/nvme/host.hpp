// host.hpp: a minimal NVMe host driver over remote_device, doing what Linux's nvme driver
// does to bring a controller up and run commands (docs/nvme.md): for tests, vfu-bench and
// hosts that embed the client. Queues live in guest memory the caller owns, mapped for the
// server's DMA at `iova` (with or without an fd); `ram` is that memory in this process.
#pragma once

#include <array>
#include <chrono>
#include <optional>
#include <vector>

#include "device/nvme/nvme.hpp"
#include "device/remote_device.hpp"

namespace vfu::dev::nvme {

struct cqe {
  uint32_t dw0 = 0;
  uint16_t sqhd = 0, sqid = 0, cid = 0;
  uint16_t status = 0;  ///< without the phase bit (sc::*)
};

class host {
 public:
  host(remote_device& d, uint8_t* ram, uint64_t iova) : d_(d), ram_(ram), iova_(iova) {}
  /// Doorbells as posted writes (no reply awaited), as a CPU's MMIO write is.
  bool posted_doorbells = false;

  uint32_t r32(uint32_t off);
  void w32(uint32_t off, uint32_t v);
  /// Bus mastering on, CC.EN=0, the admin queues at these offsets of guest memory, CC.EN=1,
  /// and a wait for RDY.
  bool enable(uint64_t asq, uint64_t acq, uint32_t depth = 32);
  /// MSI-X on and vectors 0.. wired to `efds`, unmasked.
  proto::status wire_msix(const std::vector<int>& efds);
  /// Set Features (number of queues) once, then an I/O CQ (vector `qid`) and SQ.
  bool io_queue(uint16_t qid, uint64_t sq, uint64_t cq, uint32_t depth);
  /// Puts a command on queue `qid` and rings its doorbell; returns its CID.
  uint16_t submit(uint16_t qid, std::array<uint32_t, 16> cmd);
  /// The next completion on `qid`'s CQ within `within` (its head doorbell rung).
  std::optional<cqe> reap(uint16_t qid, std::chrono::microseconds within = std::chrono::seconds(5));
  /// submit + reap, checking the CID.
  std::optional<cqe> run(uint16_t qid, std::array<uint32_t, 16> cmd);
  /// A command's 16 dwords: opcode, NSID, PRP1, PRP2, CDW10-12.
  static std::array<uint32_t, 16> cmd(uint8_t opc, uint32_t nsid = 0, uint64_t prp1 = 0, uint64_t prp2 = 0,
                                      uint32_t c10 = 0, uint32_t c11 = 0, uint32_t c12 = 0);

  struct queue {
    uint64_t sq = 0, cq = 0;  ///< offsets in guest memory
    uint32_t size = 0, tail = 0, head = 0;
    bool phase = true;
  };
  std::array<queue, 9> q{};

 private:
  void doorbell(uint32_t off, uint32_t v);
  remote_device& d_;
  uint8_t* ram_;
  uint64_t iova_;
  uint16_t cid_ = 0;
  bool queues_set_ = false;
};

}  // namespace vfu::dev::nvme
