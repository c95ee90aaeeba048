#include "device/samples.hpp"

#include <algorithm>
#include <cstring>
#include <vector>

namespace vfu::dev {

namespace {

// A model's own state for migration: its members, copied as bytes in a fixed order.
struct state_writer {
  std::vector<uint8_t> out;
  template <class T>
  state_writer& operator()(const T& v) {
    auto* p = reinterpret_cast<const uint8_t*>(&v);
    out.insert(out.end(), p, p + sizeof v);
    return *this;
  }
};
struct state_reader {
  const std::vector<uint8_t>& in;
  size_t at = 0;
  bool ok = true;
  template <class T>
  state_reader& operator()(T& v) {
    if (in.size() - at < sizeof v) ok = false;
    if (ok) std::memcpy(&v, in.data() + at, sizeof v), at += sizeof v;
    return *this;
  }
  int done() const { return ok && at == in.size() ? 0 : EINVAL; }
};

// ---- gpio: libvfio-user samples/gpio-pci-idio-16.c semantics ------------------------------
class gpio_device : public device_model {
 public:
  gpio_device() {
    spec_.ids.vendor = 0x494f;
    spec_.ids.device = 0x0dc8;
    spec_.ids.interrupt_pin = 1;
    spec_.bars[2] = bar_spec{0x100, true, false, false};
    spec_.regions[2].size = 0x100;
    spec_.io_bit_on_unused_bars = true;
    spec_.pm_capability = false;
  }
  const device_spec& spec() const override { return spec_; }
  // Reads dispatch on the start offset: 1 returns pins 0-7, 5 pins 8-15, each bit set when
  // that pin's write count is a multiple of 3; every other byte reads 0.
  int region_read(uint32_t region, uint64_t off, uint8_t* buf, uint32_t n) override {
    if (region != 2) return EINVAL;
    std::memset(buf, 0, n);
    if (off == 1 || off == 5) {
      uint8_t v = 0;
      for (int i = 0; i < 8; ++i)
        if (pin_[(off == 5 ? 8 : 0) + i] % 3 == 0) v |= uint8_t(1u << i);
      buf[0] = v;
    }
    return 0;
  }
  // Writes at offset 0 count each set bit of the first byte against pins 0-7, at 4 against
  // pins 8-15; other offsets are accepted and ignored.
  int region_write(uint32_t region, uint64_t off, const uint8_t* buf, uint32_t n) override {
    if (region != 2) return EINVAL;
    if (n && (off == 0 || off == 4))
      for (int i = 0; i < 8; ++i)
        if (buf[0] & (1u << i)) ++pin_[(off == 4 ? 8 : 0) + i];
    return 0;
  }
  uint64_t migration_flags() const override { return proto::mig_flags::stop_copy; }
  std::vector<uint8_t> save_state() override { return state_writer{}(pin_).out; }
  int load_state(const std::vector<uint8_t>& d) override { return state_reader{d}(pin_).done(); }

 private:
  device_spec spec_;
  int pin_[16] = {};
};

// ---- dma-test ---------------------------------------------------------------------------
class dma_test_device : public device_model {
 public:
  dma_test_device() {
    using namespace dmatest;
    spec_.ids = pci_ids{vendor, device, vendor, 0x0100, 0x088000 /* system peripheral, other */, 1, 1};
    spec_.bars[0] = bar_spec{bar0_size, false, false, false};
    spec_.regions[0].size = bar0_size;
    spec_.bars[1] = bar_spec{0x1000, false, false, false};  // MSI-X table and PBA
    spec_.regions[1].size = 0x1000;
    spec_.bars[2] = bar_spec{0x10000, false, true, true};   // 64 KiB shared memory
    spec_.regions[2].size = 0x10000;
    spec_.regions[2].shared_memory = true;
    spec_.regions[2].sparse = {{0, 0x8000}, {0x8000, 0x8000}};
    spec_.msi_vectors = 1;
    spec_.msix = msix_spec{msix_vectors, 1, 0x0, 0x800};
    // Region 9: a device-specific scratch area (vendor-defined type), plain read/write.
    region_spec scratch;
    scratch.size = scratch_size;
    scratch.type = scratch_type;
    scratch.subtype = scratch_subtype;
    spec_.extra_regions.push_back(scratch);
  }
  const device_spec& spec() const override { return spec_; }

  int region_read(uint32_t region, uint64_t off, uint8_t* buf, uint32_t n) override {
    if (region == dmatest::scratch_region) {
      std::memcpy(buf, scratch_ + off, n);
      return 0;
    }
    if (region != 0) return EINVAL;
    uint8_t regs[dmatest::bar0_size];
    snapshot(regs);
    std::memcpy(buf, regs + off, n);
    return 0;
  }
  int region_write(uint32_t region, uint64_t off, const uint8_t* buf, uint32_t n) override {
    if (region == dmatest::scratch_region) {
      std::memcpy(scratch_ + off, buf, n);
      return 0;
    }
    if (region != 0) return EINVAL;
    uint8_t regs[dmatest::bar0_size];
    snapshot(regs);  // then only SRC, DST and LEN are taken back: the rest is read-only
    std::memcpy(regs + off, buf, n);
    std::memcpy(&src_, regs + dmatest::src, 8);
    std::memcpy(&dst_, regs + dmatest::dst, 8);
    std::memcpy(&len_, regs + dmatest::len, 4);
    if (off <= dmatest::doorbell && off + n > dmatest::doorbell) ring();
    return 0;
  }
  void reset() override { src_ = dst_ = 0; len_ = status_ = err_ = copies_ = 0; }
  // BAR2 (shared memory) and the MSI-X table are the framework's; the registers and the
  // scratch area are the model's.
  uint64_t migration_flags() const override { return proto::mig_flags::stop_copy | proto::mig_flags::pre_copy; }
  std::vector<uint8_t> save_state() override {
    return state_writer{}(src_)(dst_)(len_)(status_)(err_)(copies_)(scratch_).out;
  }
  int load_state(const std::vector<uint8_t>& d) override {
    return state_reader{d}(src_)(dst_)(len_)(status_)(err_)(copies_)(scratch_).done();
  }

 private:
  template <class T>
  static void put(uint8_t* regs, uint32_t off, T v) { std::memcpy(regs + off, &v, sizeof v); }
  /// The register file as the guest sees it.
  void snapshot(uint8_t (&regs)[dmatest::bar0_size]) const {
    std::memset(regs, 0, sizeof regs);
    put(regs, dmatest::src, src_);
    put(regs, dmatest::dst, dst_);
    put(regs, dmatest::len, len_);
    put(regs, dmatest::status, status_);
    put(regs, dmatest::error, err_);
    put(regs, dmatest::copies, copies_);
  }

  void finish(int err) {
    status_ = dmatest::status_done | (err ? dmatest::status_error : 0);
    err_ = uint32_t(err);
    if (!err) ++copies_;
    ctx->trigger(2 /* MSI-X */, 0);
  }
  void ring() {
    if (status_ & dmatest::status_busy) return;  // one copy at a time
    if (len_ == 0 || len_ > dmatest::max_len) return finish(EINVAL);
    status_ = dmatest::status_busy;
    uint64_t dst = dst_;
    ctx->dma_read(src_, len_, [this, dst](int err, std::vector<uint8_t> data) {
      if (err) return finish(err);
      ctx->dma_write(dst, std::move(data), [this](int err2) { finish(err2); });
    });
  }

  device_spec spec_;
  uint64_t src_ = 0, dst_ = 0;
  uint32_t len_ = 0, status_ = 0, err_ = 0, copies_ = 0;
  uint8_t scratch_[dmatest::scratch_size] = {};
};

// ---- ram: memory behind BAR0; its first half mmap-able, its second half not -------------
class ram_device : public device_model {
 public:
  explicit ram_device(uint64_t size) : size_(size) {
    spec_.ids = pci_ids{dmatest::vendor, ram::device, dmatest::vendor, 0x0200, 0x050000 /* memory controller, RAM */, 1, 1};
    spec_.bars[0] = bar_spec{size, false, size > 0xffffffffull / 2, false};
    spec_.regions[0].size = size;
    spec_.regions[0].shared_memory = true;
    spec_.regions[0].sparse = {{0, size / 2}};
    spec_.pm_capability = false;
  }
  const device_spec& spec() const override { return spec_; }
  // The framework serves every access from the shared memory and migrates it; only reset
  // is the model's.
  void reset() override {
    if (uint8_t* mem = ctx->region_memory(0)) std::memset(mem, 0, size_);
  }
  uint64_t migration_flags() const override { return proto::mig_flags::stop_copy | proto::mig_flags::pre_copy; }

 private:
  uint64_t size_;
  device_spec spec_;
};

}  // namespace

std::shared_ptr<device_model> make_gpio() { return std::make_shared<gpio_device>(); }
std::shared_ptr<device_model> make_dma_test() { return std::make_shared<dma_test_device>(); }
std::shared_ptr<device_model> make_ram(uint64_t size) {
  if (size < 4096 || (size & (size - 1)) || size > ram::max_size) return nullptr;
  return std::make_shared<ram_device>(size);
}
std::shared_ptr<device_model> make_sample(const std::string& name) {
  if (name == "gpio") return make_gpio();
  if (name == "dma-test") return make_dma_test();
  if (name == "ram") return make_ram(ram::size);
  return nullptr;
}

}  // namespace vfu::dev
