// samples.hpp: the sample devices served by vfu-serve.
//
//  gpio:     libvfio-user's gpio-pci-idio-16 sample, bit for bit where a client can see it
//            (IDs 494f:0dc8, BAR2 = 256 bytes of I/O, same read/write semantics), so a
//            client written for that sample works unchanged.
//  dma-test: a copy engine. BAR0 holds registers; ringing the doorbell copies LEN bytes of
//            guest memory from SRC to DST (through mmapped windows or DMA messages) and
//            raises MSI-X vector 0. BAR2 is 64 KiB of shared memory (mmap-able).
//  ram:      1 MiB (or --ram-size) of memory behind BAR0 (framework shared memory). A client may mmap its
//            first half (a sparse area); the second half is reached only by REGION_READ and
//            REGION_WRITE messages (so are accesses that span both halves, such as
//            vfu-bench's 1 MiB bandwidth rows). DEVICE_RESET zeroes it.
//
// All three are migratable (docs/migration.md): gpio saves its pin counters (STOP_COPY
// only); dma-test its registers and scratch area, ram nothing of its own (the framework
// moves their shared memory, config space, MSI-X table and IRQ state), and both offer
// PRE_COPY.
#pragma once

#include <memory>
#include <string>

#include "device/device.hpp"

namespace vfu::dev {

/// dma-test register map (BAR0, little-endian).
namespace dmatest {
inline constexpr uint16_t vendor = 0x7675, device = 0x0001;   // "vu", not a registered vendor
inline constexpr uint32_t src = 0x00;       ///< u64 guest address to read
inline constexpr uint32_t dst = 0x08;       ///< u64 guest address to write
inline constexpr uint32_t len = 0x10;       ///< u32 bytes to copy (at most max_len)
inline constexpr uint32_t status = 0x14;    ///< u32: bit0 busy, bit1 done, bit2 error (read-only)
inline constexpr uint32_t doorbell = 0x18;  ///< u32: write anything to start
inline constexpr uint32_t error = 0x1c;     ///< u32 errno of the last failed copy
inline constexpr uint32_t copies = 0x20;    ///< u32 completed copies
inline constexpr uint32_t bar0_size = 0x1000;
inline constexpr uint32_t max_len = 1u << 20;
inline constexpr uint32_t status_busy = 1, status_done = 2, status_error = 4;
inline constexpr uint16_t msix_vectors = 4;
/// Region 9: device-specific scratch memory with a TYPE capability.
inline constexpr uint32_t scratch_region = 9, scratch_size = 4096;
inline constexpr uint32_t scratch_type = 0x80007675, scratch_subtype = 1;  // vendor-defined type
}  // namespace dmatest

/// ram sample.
namespace ram {
inline constexpr uint16_t device = 0x0002;
inline constexpr uint32_t size = 1u << 20;       ///< unless vfu-serve --ram-size says otherwise
inline constexpr uint32_t mmap_size = size / 2;  ///< the sparse-mmap area [0, mmap_size)
inline constexpr uint64_t max_size = 64ull << 30;
}  // namespace ram

std::shared_ptr<device_model> make_gpio();
std::shared_ptr<device_model> make_dma_test();
/// A ram device of `size` bytes (a power of two, 4 KiB to 64 GiB); nullptr otherwise.
std::shared_ptr<device_model> make_ram(uint64_t size);
/// "gpio", "dma-test" or "ram"; nullptr for anything else.
std::shared_ptr<device_model> make_sample(const std::string& name);

}  // namespace vfu::dev
