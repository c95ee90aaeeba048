#include "device/nvme/host.hpp"

#include <cstring>
#include <thread>

namespace vfu::dev::nvme {

uint32_t host::r32(uint32_t off) {
  uint32_t v = 0;
  return d_.read(0, off, &v, 4) ? v : 0xffffffff;  // what a read of a gone device gives
}

void host::w32(uint32_t off, uint32_t v) { (void)d_.write(0, off, &v, 4); }

void host::doorbell(uint32_t off, uint32_t v) {
  if (posted_doorbells) (void)d_.write_posted(0, off, &v, 4);
  else w32(off, v);
}

bool host::enable(uint64_t asq, uint64_t acq, uint32_t depth) {
  uint16_t cmd = 0x6;  // memory space and bus master, as pci_enable_device + pci_set_master
  if (!d_.write(proto::region_index::config, 4, &cmd, 2)) return false;
  w32(reg::cc, 0);
  if (r32(reg::csts) & reg::csts_rdy) return false;
  w32(reg::aqa, (depth - 1) << 16 | (depth - 1));
  w32(reg::asq, uint32_t(iova_ + asq)), w32(reg::asq + 4, uint32_t((iova_ + asq) >> 32));
  w32(reg::acq, uint32_t(iova_ + acq)), w32(reg::acq + 4, uint32_t((iova_ + acq) >> 32));
  q = {};
  q[0] = queue{asq, acq, depth, 0, 0, true};
  std::memset(ram_ + acq, 0, depth * 16);  // a host clears its CQs: phase 0 reads as empty
  queues_set_ = false;
  w32(reg::cc, 0x00460000);  // Linux: IOSQES 6, IOCQES 4, then EN
  w32(reg::cc, 0x00460001);
  for (int i = 0; i < 100; ++i)
    if (r32(reg::csts) & reg::csts_rdy) return true;
  return false;
}

proto::status host::wire_msix(const std::vector<int>& efds) {
  uint16_t cmd = 0x6;  // memory space, bus master
  if (auto s = d_.write(proto::region_index::config, 4, &cmd, 2); !s) return s;
  uint8_t cfg[256];
  if (auto s = d_.read(proto::region_index::config, 0, cfg, 256); !s) return s;
  uint8_t p = cfg[0x34];
  for (int hops = 0; p && cfg[p] != 0x11 && hops < 16; ++hops) p = cfg[p + 1];
  if (!p || cfg[p] != 0x11) return proto::error(proto::errc::bad_value, "no MSI-X capability");
  uint8_t ctl = 0x80;
  if (auto s = d_.write(proto::region_index::config, p + 3u, &ctl, 1); !s) return s;
  if (auto s = d_.set_irq_eventfds(proto::irq_index::msix, 0, efds); !s) return s;
  for (uint32_t v = 0; v < efds.size(); ++v) {
    uint32_t zero = 0;
    if (auto s = d_.write(msix_bar, v * 16 + 12, &zero, 4); !s) return s;
  }
  return {};
}

bool host::io_queue(uint16_t qid, uint64_t sq, uint64_t cq, uint32_t depth) {
  if (!queues_set_) {
    auto nq = run(0, cmd(opc::set_features, 0, 0, 0, 0x07, 7 | 7 << 16));
    if (!nq || nq->status) return false;
    queues_set_ = true;
  }
  std::memset(ram_ + cq, 0, depth * 16);
  auto c = run(0, cmd(opc::create_cq, 0, iova_ + cq, 0, qid | (depth - 1) << 16, 1 | 2 | uint32_t(qid) << 16));
  auto s = run(0, cmd(opc::create_sq, 0, iova_ + sq, 0, qid | (depth - 1) << 16, 1 | uint32_t(qid) << 16));
  q[qid] = queue{sq, cq, depth, 0, 0, true};
  return c && s && c->status == 0 && s->status == 0;
}

uint16_t host::submit(uint16_t qid, std::array<uint32_t, 16> c) {
  auto& x = q[qid];
  c[0] = (c[0] & 0xffff) | uint32_t(++cid_) << 16;
  std::memcpy(ram_ + x.sq + uint64_t(x.tail) * 64, c.data(), 64);
  x.tail = (x.tail + 1) % x.size;
  doorbell(reg::doorbells + qid * 8u, x.tail);
  return cid_;
}

std::optional<cqe> host::reap(uint16_t qid, std::chrono::microseconds within) {
  auto& x = q[qid];
  auto end = std::chrono::steady_clock::now() + within;
  volatile uint8_t* e = ram_ + x.cq + uint64_t(x.head) * 16;
  for (int spin = 0;; ++spin) {
    uint16_t st = uint16_t(e[14] | e[15] << 8);
    if ((st & 1) == (x.phase ? 1 : 0)) break;
    if (std::chrono::steady_clock::now() > end) return std::nullopt;
    if (spin > 1000) std::this_thread::sleep_for(std::chrono::microseconds(50));
  }
  cqe c;
  std::memcpy(&c.dw0, const_cast<uint8_t*>(e), 4);
  std::memcpy(&c.sqhd, const_cast<uint8_t*>(e) + 8, 2);
  std::memcpy(&c.sqid, const_cast<uint8_t*>(e) + 10, 2);
  std::memcpy(&c.cid, const_cast<uint8_t*>(e) + 12, 2);
  std::memcpy(&c.status, const_cast<uint8_t*>(e) + 14, 2);
  c.status >>= 1;
  if (++x.head == x.size) x.head = 0, x.phase = !x.phase;
  doorbell(reg::doorbells + qid * 8u + 4, x.head);
  return c;
}

std::optional<cqe> host::run(uint16_t qid, std::array<uint32_t, 16> c) {
  uint16_t id = submit(qid, c);
  auto r = reap(qid);
  if (r && r->cid != id) return std::nullopt;  // another command's completion: a bug somewhere
  return r;
}

std::array<uint32_t, 16> host::cmd(uint8_t opc, uint32_t nsid, uint64_t prp1, uint64_t prp2, uint32_t c10, uint32_t c11,
                                   uint32_t c12) {
  std::array<uint32_t, 16> d{};
  d[0] = opc, d[1] = nsid;
  d[6] = uint32_t(prp1), d[7] = uint32_t(prp1 >> 32), d[8] = uint32_t(prp2), d[9] = uint32_t(prp2 >> 32);
  d[10] = c10, d[11] = c11, d[12] = c12;
  return d;
}

}  // namespace vfu::dev::nvme
