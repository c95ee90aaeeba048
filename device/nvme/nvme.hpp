// nvme.hpp: an NVMe 1.4 controller on the device framework (docs/nvme.md), for Linux's own
// nvme driver in a QEMU guest: one namespace of 512-byte blocks backed by a file or by
// memory, admin and I/O queues in guest memory reached through DMA windows (mmapped or by
// message), PRP lists, MSI-X per completion queue. Storage I/O runs on the framework's
// worker threads (device_context::offload), never on the event loop.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "device/device.hpp"

namespace vfu::dev::nvme {

struct options {
  std::string backing;          ///< a file (created if missing); empty: memory
  uint64_t size = 64u << 20;    ///< bytes (a file's own size when it is larger and no size is given)
  bool size_given = false;
  uint16_t io_queues = 8;       ///< I/O queue pairs offered (MSI-X vectors: one more)
};

/// The controller, or nullptr with `err` saying why (the file cannot be opened, a bad size).
std::shared_ptr<device_model> make(const options& o, std::string& err);

// What a host (tests/device/nvme_test.cpp, docs/nvme.md) needs of the layout.
inline constexpr uint16_t vendor = 0x7675, device = 0x0003;  // "vu": not in Linux's quirk tables
inline constexpr uint32_t bar0_size = 0x4000;                 // registers, doorbells from 0x1000
inline constexpr uint8_t msix_bar = 4;
inline constexpr uint32_t lba_size = 512;
inline constexpr uint32_t mdts = 5;                           // 2^5 pages = 128 KiB per command
inline constexpr uint32_t max_transfer = 4096u << mdts;
inline constexpr uint32_t mqes = 1023;                        // queues of up to 1024 entries

namespace reg {
inline constexpr uint32_t cap = 0x00, vs = 0x08, intms = 0x0c, intmc = 0x10, cc = 0x14, csts = 0x1c, nssr = 0x20,
                          aqa = 0x24, asq = 0x28, acq = 0x30, cmbloc = 0x38, cmbsz = 0x3c, doorbells = 0x1000;
inline constexpr uint32_t cc_en = 1, csts_rdy = 1, csts_cfs = 2, csts_shst_done = 2u << 2;
}  // namespace reg

namespace opc {  // admin
inline constexpr uint8_t delete_sq = 0x00, create_sq = 0x01, get_log_page = 0x02, delete_cq = 0x04, create_cq = 0x05,
                         identify = 0x06, abort = 0x08, set_features = 0x09, get_features = 0x0a, aer = 0x0c;
}  // namespace opc
namespace io {
inline constexpr uint8_t flush = 0x00, write = 0x01, read = 0x02, write_zeroes = 0x08;
}  // namespace io

/// Completion status before the phase bit: SCT << 8 | SC, with DNR (QEMU's encoding; the
/// CQE's status word is status << 1 | phase).
namespace sc {
inline constexpr uint16_t success = 0x0000, invalid_opcode = 0x0001, invalid_field = 0x0002,
                          cmd_seq_error = 0x000c, data_transfer = 0x0004, internal = 0x0006, invalid_ns = 0x000b,
                          invalid_prp_offset = 0x0013, lba_range = 0x0080, cq_invalid = 0x0100,
                          invalid_qid = 0x0101, invalid_qsize = 0x0102, aer_limit = 0x0105, invalid_iv = 0x0108,
                          invalid_log_page = 0x0109, invalid_q_deletion = 0x010c, not_saveable = 0x010d,
                          dnr = 0x4000;
}  // namespace sc

}  // namespace vfu::dev::nvme
