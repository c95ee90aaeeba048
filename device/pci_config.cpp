#include "device/pci_config.hpp"

#include <cstring>

namespace vfu::dev {

namespace {
void put16(uint8_t* p, uint16_t v) { std::memcpy(p, &v, 2); }
void put32(uint8_t* p, uint32_t v) { std::memcpy(p, &v, 4); }
}  // namespace

pci_config::pci_config(const pci_ids& ids, const std::array<bar_spec, 6>& bars, uint16_t msi_vectors,
                       const msix_spec& msix, bool io_bit_on_unused_bars, bool pm_capability, bool pcie_capability)
    : bars_(bars) {
  auto* c = cfg_.data();
  put16(c + 0x00, ids.vendor);
  put16(c + 0x02, ids.device);
  c[0x08] = ids.revision;
  c[0x09] = uint8_t(ids.class_code);
  c[0x0a] = uint8_t(ids.class_code >> 8);
  c[0x0b] = uint8_t(ids.class_code >> 16);
  c[0x0e] = 0;  // header type 0
  put16(c + 0x2c, ids.subsys_vendor);
  put16(c + 0x2e, ids.subsys_id);
  c[0x3d] = ids.interrupt_pin;
  // Command: I/O, memory, bus master, memory-write-and-invalidate, SERR# and INTx disable
  // are writable (libvfio-user keeps the same bits; QEMU sets SERR#).
  wmask_[0x04] = pci_reg::cmd_io | pci_reg::cmd_mem | pci_reg::cmd_master | 0x10;
  wmask_[0x05] = uint8_t((pci_reg::cmd_intx_disable | 0x100) >> 8);
  wmask_[pci_reg::interrupt_line] = 0xff;
  // BARs: low type bits fixed, address bits above the size writable (size probing).
  for (int i = 0; i < 6; ++i) {
    const auto& b = bars[size_t(i)];
    uint32_t off = pci_reg::bar0 + uint32_t(i) * 4;
    uint32_t type = b.io ? 1u : ((b.mem64 ? 4u : 0u) | (b.prefetchable ? 8u : 0u));
    if (b.size == 0 && io_bit_on_unused_bars) type = 1;  // libvfio-user marks unused BARs as I/O
    put32(c + off, type);
    if (b.size) {
      uint64_t mask = ~(b.size - 1);
      uint32_t lo = uint32_t(mask) & (b.io ? ~3u : ~15u);
      put32(wmask_.data() + off, lo);
      if (b.mem64 && i < 5) put32(wmask_.data() + off + 4, uint32_t(mask >> 32));
    }
  }
  // Capability list: PM at 0x40, MSI at 0x48, MSI-X at 0x60.
  uint8_t* last_next = c + pci_reg::cap_ptr;
  auto add_cap = [&](uint32_t at, uint8_t id) {
    *last_next = uint8_t(at);
    c[at] = id;
    c[at + 1] = 0;
    last_next = c + at + 1;
    put16(c + pci_reg::status, uint16_t(c[pci_reg::status] | pci_reg::status_caps));
  };
  if (pm_capability) {
    add_cap(0x40, pci_reg::cap_pm);
    put16(c + 0x42, 0x0003);  // PM version 3
    wmask_[0x44] = 0x03;      // power state D0-D3
  }
  if (msi_vectors) {
    msi_cap_ = 0x48;
    add_cap(0x48, pci_reg::cap_msi);
    uint16_t mmc = 0;
    while ((1u << mmc) < msi_vectors && mmc < 5) ++mmc;
    put16(c + 0x4a, uint16_t(0x80 | (mmc << 1)));  // 64-bit capable
    wmask_[0x4a] = 0x71;                           // enable + multiple message enable
    for (uint32_t k = 0x4c; k < 0x56; ++k) wmask_[k] = 0xff;  // address + data
  }
  if (msix.vectors) {
    msix_cap_ = 0x60;
    add_cap(0x60, pci_reg::cap_msix);
    put16(c + 0x62, uint16_t(msix.vectors - 1));
    wmask_[0x63] = 0xc0;  // enable, function mask
    put32(c + 0x64, msix.table_offset | msix.bar);
    put32(c + 0x68, msix.pba_offset | msix.bar);
  }
  if (pcie_capability) {  // endpoint, version 2: 60 bytes at 0x80
    add_cap(0x80, pci_reg::cap_pcie);
    put16(c + 0x82, 0x0002);        // version 2, device/port type 0: PCI Express endpoint
    put32(c + 0x84, 0x00008000);    // device capabilities: role-based error reporting, 128-byte payload
    wmask_[0x88] = 0xff;            // device control: error reporting, payload and read request sizes
    wmask_[0x89] = 0x7f;
    put32(c + 0x8c, 0x00000011);    // link capabilities: 2.5 GT/s, x1
    put16(c + 0x92, 0x0011);        // link status: 2.5 GT/s, x1
  }
  initial_ = cfg_;
}

void pci_config::read(uint32_t off, uint8_t* buf, uint32_t n) const { std::memcpy(buf, cfg_.data() + off, n); }

void pci_config::write_byte(uint32_t off, uint8_t v) {
  uint8_t m = wmask_[off];
  cfg_[off] = uint8_t((cfg_[off] & ~m) | (v & m));
}

void pci_config::write(uint32_t off, const uint8_t* buf, uint32_t n) {
  for (uint32_t i = 0; i < n; ++i) write_byte(off + i, buf[i]);
}

uint16_t pci_config::command() const {
  uint16_t v;
  std::memcpy(&v, cfg_.data() + pci_reg::command, 2);
  return v;
}

bool pci_config::msix_enabled() const { return msix_cap_ && (cfg_[msix_cap_ + 3] & 0x80); }
bool pci_config::msix_function_masked() const { return msix_cap_ && (cfg_[msix_cap_ + 3] & 0x40); }

void pci_config::reset() { cfg_ = initial_; }

}  // namespace vfu::dev
