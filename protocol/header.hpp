// header.hpp: the 16-byte vfio-user message header, its flags and the command numbers.
// Spec: QEMU docs/interop/vfio-user.rst, "Header". Byte order is the host's; every real
// deployment is little-endian, and we check that once here.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

namespace vfu::proto {

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "vfio-user uses host byte order; vfu-broker's codec assumes little-endian");

/// Command numbers (spec "Commands" table). 14 (DIRTY_PAGES) was removed and stays reserved.
enum class command : uint16_t {
  version = 1,
  dma_map = 2,
  dma_unmap = 3,
  device_get_info = 4,
  device_get_region_info = 5,
  device_get_region_io_fds = 6,
  device_get_irq_info = 7,
  device_set_irqs = 8,
  region_read = 9,
  region_write = 10,
  dma_read = 11,
  dma_write = 12,
  device_reset = 13,
  region_write_multi = 15,
  device_feature = 16,
  mig_data_read = 17,
  mig_data_write = 18,
};

/// The highest command number we know.
inline constexpr uint16_t max_command = 18;

/// True for the numbers in the table above (not for 0, 14 or > 18).
constexpr bool is_known_command(uint16_t c) noexcept {
  return c >= 1 && c <= max_command && c != 14;
}

/// "REGION_READ", or "CMD_<n>" for unknown numbers (static storage for the known ones).
const char* command_name(uint16_t c) noexcept;
inline const char* command_name(command c) noexcept { return command_name(uint16_t(c)); }

/// Header flag bits.
namespace hflags {
inline constexpr uint32_t type_mask = 0x0f;   ///< bits 0-3: message type
inline constexpr uint32_t type_command = 0x0;
inline constexpr uint32_t type_reply = 0x1;
inline constexpr uint32_t no_reply = 0x10;    ///< bit 4: command wants no reply
inline constexpr uint32_t error = 0x20;       ///< bit 5: reply is an error (error_no valid)
inline constexpr uint32_t known_mask = type_mask | no_reply | error;
static_assert((type_mask & no_reply) == 0 && (no_reply & error) == 0 && (type_mask & error) == 0,
              "header flag masks overlap");
}  // namespace hflags

/// The wire header, exactly as laid out on the socket.
struct header {
  uint16_t msg_id = 0;     ///< chosen by the command's sender, echoed in the reply
  uint16_t command = 0;    ///< command number, also set in the reply
  uint32_t msg_size = 0;   ///< whole message length including this header
  uint32_t flags = 0;      ///< hflags
  uint32_t error_no = 0;   ///< errno of an error reply, 0 otherwise

  bool is_reply() const noexcept { return (flags & hflags::type_mask) == hflags::type_reply; }
  bool is_command() const noexcept { return (flags & hflags::type_mask) == hflags::type_command; }
  bool no_reply() const noexcept { return (flags & hflags::no_reply) != 0; }
  bool is_error() const noexcept { return (flags & hflags::error) != 0; }
};

inline constexpr size_t header_size = 16;
static_assert(sizeof(header) == header_size);
static_assert(std::is_trivially_copyable_v<header>);
static_assert(offsetof(header, msg_id) == 0 && offsetof(header, command) == 2 &&
              offsetof(header, msg_size) == 4 && offsetof(header, flags) == 8 &&
              offsetof(header, error_no) == 12);

inline header read_header(const uint8_t* p) noexcept {
  header h;
  std::memcpy(&h, p, sizeof h);
  return h;
}
inline void write_header(uint8_t* p, const header& h) noexcept { std::memcpy(p, &h, sizeof h); }

}  // namespace vfu::proto
