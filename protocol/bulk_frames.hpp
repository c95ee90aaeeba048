// bulk_frames.hpp: REGION_READ/REGION_WRITE frames for the bulk data paths, built and read
// in place rather than through the codec's message types: one allocation for a request or
// reply with its data, a head for data gathered from elsewhere, and a reply's data read
// where it lies. The codec (messages.hpp) encodes and decodes the same bytes.
#pragma once

#include <cstddef>
#include <cstdint>

#include "protocol/frame.hpp"
#include "protocol/header.hpp"
#include "protocol/messages.hpp"

namespace vfu::proto {

/// REGION_READ/REGION_WRITE frames built in one allocation, for bulk data paths: a request
/// or reply with `a` and, when `data` is given, a.count bytes copied from it. A REGION_READ
/// reply without `data` gets a.count bytes to fill in place (region_frame_data), left
/// uninitialised: the caller must write every one of them before the frame is sent (the
/// device does; it zeroes first where a model callback might write fewer), so that no
/// stale heap bytes ever reach the peer (zeroing it first costs: docs/performance.md).
inline constexpr size_t region_access_size = 16;
frame make_region_frame(uint16_t msg_id, command cmd, bool reply, const region_access& a,
                        const uint8_t* data = nullptr, uint32_t extra_flags = 0);
/// The same frame built in `f`, in the buffer it has where that is large enough (a reply
/// built for each request, without an allocation each); its fds go.
void build_region_frame(frame& f, uint16_t msg_id, command cmd, bool reply, const region_access& a,
                        const uint8_t* data = nullptr, uint32_t extra_flags = 0);
/// Where the data of a frame from make_region_frame starts.
uint8_t* region_frame_data(frame& f) noexcept;
/// The head of a REGION_READ reply or REGION_WRITE request for `a` (header and access
/// fields only), for a sender that gathers the a.count data bytes from elsewhere
/// (a transport's gathered write): the header's msg_size counts them.
frame make_region_head(uint16_t msg_id, command cmd, bool reply, const region_access& a);
/// The data of a REGION_READ reply, read in place: nullptr unless it is a successful reply
/// for exactly `want` (same offset, region and count, and the frame's size agrees).
const uint8_t* region_read_reply_data(const frame& f, const region_access& want) noexcept;

}  // namespace vfu::proto
