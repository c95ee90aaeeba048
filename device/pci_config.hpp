// pci_config.hpp: a type-0 PCI configuration space with BAR size probing and a capability
// list (PM, MSI, MSI-X), as a device server presents it through region 7.
//
// Only the registers a guest driver may change are writable: command, BARs (with the
// size-probing mask), the interrupt line, and the capability control words. Everything else
// keeps its value, as real hardware does.
#pragma once

#include <array>
#include <cstdint>

namespace vfu::dev {

struct bar_spec {
  uint64_t size = 0;        ///< power of two, or 0 for an unused BAR
  bool io = false;          ///< I/O space (bit 0) instead of memory
  bool mem64 = false;       ///< 64-bit memory BAR (takes the next BAR slot)
  bool prefetchable = false;
};

struct msix_spec {
  uint16_t vectors = 0;     ///< 0 = no MSI-X capability
  uint8_t bar = 0;          ///< table and PBA live in this BAR
  uint32_t table_offset = 0;
  uint32_t pba_offset = 0;
};

struct pci_ids {
  uint16_t vendor = 0, device = 0, subsys_vendor = 0, subsys_id = 0;
  uint32_t class_code = 0;  ///< 24-bit base/sub/prog-if
  uint8_t revision = 0;
  uint8_t interrupt_pin = 1;  ///< INTA#
};

namespace pci_reg {
inline constexpr uint32_t command = 0x04, status = 0x06, bar0 = 0x10, cap_ptr = 0x34, interrupt_line = 0x3c;
inline constexpr uint16_t cmd_io = 1, cmd_mem = 2, cmd_master = 4, cmd_intx_disable = 0x400;
inline constexpr uint16_t status_caps = 0x10;
inline constexpr uint8_t cap_pm = 0x01, cap_msi = 0x05, cap_msix = 0x11, cap_pcie = 0x10;
}  // namespace pci_reg

class pci_config {
 public:
  static constexpr uint32_t size = 256;

  pci_config(const pci_ids& ids, const std::array<bar_spec, 6>& bars, uint16_t msi_vectors, const msix_spec& msix,
             bool io_bit_on_unused_bars = false, bool pm_capability = true, bool pcie_capability = false);

  /// Region-7 access: any offset/size inside the 256 bytes (checked by the caller).
  void read(uint32_t off, uint8_t* buf, uint32_t n) const;
  void write(uint32_t off, const uint8_t* buf, uint32_t n);

  uint16_t command() const;
  bool bus_master() const { return command() & pci_reg::cmd_master; }
  bool msix_enabled() const;
  bool msix_function_masked() const;
  uint32_t msix_cap() const { return msix_cap_; }
  /// Restores the power-on values (DEVICE_RESET).
  void reset();
  /// Every byte, for migration: a destination of the same device takes them as they are.
  const std::array<uint8_t, size>& raw() const { return cfg_; }
  void load(const std::array<uint8_t, size>& raw) { cfg_ = raw; }

 private:
  void write_byte(uint32_t off, uint8_t v);
  std::array<uint8_t, size> cfg_{}, initial_{}, wmask_{};
  std::array<bar_spec, 6> bars_;
  uint32_t msix_cap_ = 0, msi_cap_ = 0;
};

}  // namespace vfu::dev
