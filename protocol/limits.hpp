// limits.hpp: every bound vfu-broker puts on a peer-controlled quantity, with its reason.
//
// Rule: a size, count or offset that arrives from the peer is checked against one of these
// before anything is allocated or indexed with it. Negotiation may only *lower* a limit.
#pragma once

#include <cstddef>
#include <cstdint>

namespace vfu::proto::limits {

/// Spec default for max_data_xfer_size when the peer does not send the key.
inline constexpr uint64_t default_max_data_xfer = 1u << 20;
/// Largest max_data_xfer_size we accept from a peer or configure: QEMU's own ceiling
/// (64 MiB). A data message is allocated whole, so this bounds one frame's memory.
inline constexpr uint64_t max_data_xfer_ceiling = 64u << 20;
/// What we advertise by default: the spec default, which every known peer uses.
inline constexpr uint64_t our_max_data_xfer = 1u << 20;

/// Largest DMA_READ a server asks of a client that uses QEMU's DMA layout. QEMU (10.1-10.2,
/// hw/vfio-user/proxy.c vfio_user_send_one) takes a partial sendmsg() of its reply for a
/// whole one and drops the rest, so a reply must fit in its socket's send buffer (208 KiB
/// by default): 64 KiB replies always did (docs/interop.md).
inline constexpr uint64_t qemu_dma_read_chunk = 64u << 10;

/// A frame that declares a size over the limit is answered E2BIG at once. Up to this much
/// over, its body is then read and dropped, so the stream stays in sync (about a
/// millisecond of reading); further over, the connection is closed after the answer:
/// reading gigabytes a peer may never send keeps nothing in sync. (QEMU closes on any.)
inline constexpr uint64_t oversize_drain_max = 1u << 20;

/// Room for the fixed part of any message on top of its data bytes (the largest fixed
/// head is DMA_UNMAP with a bitmap, 40 bytes; region-info caps are bounded separately).
inline constexpr uint32_t frame_overhead = 4096;

/// Spec default for max_msg_fds when the key is absent.
inline constexpr uint64_t default_max_msg_fds = 1;
/// Linux refuses more than SCM_MAX_FD (253) fds in one sendmsg; a larger advertised value
/// is accepted but clamped to this.
inline constexpr uint32_t scm_max_fd = 253;
/// fds we say we can receive in one message (max_msg_fds, both roles). QEMU refuses a
/// server that offers more than 16 ("malformed max_msg_fds"), and splits its SET_IRQS
/// eventfds into chunks of this size. We still take up to scm_max_fd in one message.
inline constexpr uint32_t our_max_msg_fds = 16;
/// Largest max_msg_fds value accepted in a peer's JSON (libvfio-user's own bound).
inline constexpr uint64_t max_msg_fds_ceiling = 1024;

/// Spec default for max_dma_maps; also the most windows a server keeps per client.
inline constexpr uint64_t default_max_dma_maps = 65535;
/// Spec default for pgsizes.
inline constexpr uint64_t default_pgsizes = 4096;

/// VERSION JSON: the real ones are about 200 bytes. 4 KiB leaves room for future keys and
/// bounds the parser's work on hostile input.
inline constexpr uint32_t max_caps_json = 4096;
/// Frames accepted before VERSION completes: header + major/minor + JSON + its NUL.
inline constexpr uint32_t max_version_frame = 16 + 4 + max_caps_json + 1;

/// Region-info reply (with caps) we accept: covers 1000 sparse areas; QEMU-like clients ask
/// with a small argsz and retry with what the server says it needs.
inline constexpr uint32_t max_region_info_argsz = 16 << 10;
/// Capabilities in one region-info chain (loop guard; real chains have 1-2).
inline constexpr uint32_t max_region_caps = 16;
/// Sparse-mmap areas per region.
inline constexpr uint32_t max_sparse_areas = 1024;
/// Regions and IRQ types a client accepts from a server ("defend against a malicious
/// server": QEMU refuses more than 100 regions and 50 IRQ types).
inline constexpr uint32_t max_regions = 100;
inline constexpr uint32_t max_irq_types = 50;
/// IRQ vectors per type (PCI MSI-X allows 2048).
inline constexpr uint32_t max_irq_vectors = 2048;
/// DEVICE_GET_REGION_IO_FDS entries per reply.
inline constexpr uint32_t max_io_fd_entries = 1024;
/// REGION_WRITE_MULTI entries per message (QEMU sends at most 200).
inline constexpr uint64_t max_write_multi_entries = 1024;
/// Data bytes per REGION_WRITE_MULTI entry (spec: at most 8).
inline constexpr uint32_t write_multi_data = 8;
/// Ranges in one DMA_LOGGING_START.
inline constexpr uint32_t max_dma_logging_ranges = 1024;
/// Dirty bitmaps (DMA_UNMAP legacy form, DMA_LOGGING_REPORT) are data transfers: they are
/// bounded by the negotiated max_data_xfer_size, and never above this.
inline constexpr uint64_t max_dirty_bitmap = max_data_xfer_ceiling;
/// One DMA window: libvfio-user's ceiling (8 TiB); larger maps get ENOSPC there.
inline constexpr uint64_t max_dma_window = 8ull << 40;

/// Outstanding requests per connection (back-pressure bound; ids are 16 bits).
inline constexpr uint32_t default_max_outstanding = 1024;

}  // namespace vfu::proto::limits
