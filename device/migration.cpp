#include "device/migration.hpp"

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "protocol/limits.hpp"

namespace vfu::dev {

using proto::mig_flags::p2p;
using proto::mig_flags::pre_copy;

bool mig_state_supported(mig_state s, uint64_t flags) {
  switch (s) {
    case mig_state::error:
    case mig_state::stop:
    case mig_state::running:
    case mig_state::stop_copy:
    case mig_state::resuming: return true;
    case mig_state::running_p2p: return flags & p2p;
    case mig_state::pre_copy: return flags & pre_copy;
    case mig_state::pre_copy_p2p: return (flags & p2p) && (flags & pre_copy);
  }
  return false;
}

namespace {

// The direct arcs (linux/vfio.h, "The device_state FSM"), for a device with these flags.
std::vector<mig_state> next_states(mig_state s, uint64_t flags) {
  using S = mig_state;
  bool has_p2p = flags & p2p, has_pre = flags & pre_copy;
  std::vector<S> out;
  switch (s) {
    case S::running:
      out.push_back(has_p2p ? S::running_p2p : S::stop);
      if (has_pre) out.push_back(S::pre_copy);
      break;
    case S::stop:
      out = {has_p2p ? S::running_p2p : S::running, S::stop_copy, S::resuming};
      break;
    case S::stop_copy: out = {S::stop}; break;
    case S::resuming: out = {S::stop}; break;
    case S::running_p2p:
      out = {S::running, S::stop};
      if (has_pre) out.push_back(S::pre_copy_p2p);
      break;
    case S::pre_copy:
      out = {S::running, has_p2p ? S::pre_copy_p2p : S::stop_copy};
      break;
    case S::pre_copy_p2p: out = {S::pre_copy, S::running_p2p, S::stop_copy}; break;
    case S::error: break;
  }
  return out;
}

}  // namespace

std::optional<std::vector<mig_state>> mig_path(mig_state from, mig_state to, uint64_t flags) {
  if (!mig_state_supported(from, flags) || !mig_state_supported(to, flags)) return std::nullopt;
  if (from == to) return std::vector<mig_state>{};
  if (from == mig_state::error || to == mig_state::error) return std::nullopt;
  bool to_pre = to == mig_state::pre_copy || to == mig_state::pre_copy_p2p;
  if (to_pre && (from == mig_state::stop_copy || from == mig_state::resuming)) return std::nullopt;
  // Breadth first over 8 states: the first path found is a shortest one.
  constexpr int n = 8;
  int prev[n];
  std::fill(prev, prev + n, -1);
  std::deque<mig_state> q{from};
  prev[int(from)] = int(from);
  while (!q.empty()) {
    mig_state s = q.front();
    q.pop_front();
    if (s == to) break;
    if (s != from && mig_saving(s)) continue;  // a saving state is never passed through
    for (mig_state t : next_states(s, flags))
      if (prev[int(t)] < 0) {
        prev[int(t)] = int(s);
        q.push_back(t);
      }
  }
  if (prev[int(to)] < 0) return std::nullopt;
  std::vector<mig_state> path;
  for (mig_state s = to; s != from; s = mig_state(prev[int(s)])) path.push_back(s);
  std::reverse(path.begin(), path.end());
  return path;
}

// ---- mig_source -----------------------------------------------------------------------------
namespace {
void put_head(std::vector<uint8_t>& b, uint32_t type, uint32_t index, uint64_t offset, uint64_t len) {
  uint8_t h[mig_record::head_size];
  std::memcpy(h, &type, 4);
  std::memcpy(h + 4, &index, 4);
  std::memcpy(h + 8, &offset, 8);
  std::memcpy(h + 16, &len, 8);
  b.insert(b.end(), h, h + sizeof h);
}
}  // namespace

void mig_source::add_record(uint32_t type, uint32_t index, uint64_t offset, std::vector<uint8_t> data) {
  chunk c;
  c.own.reserve(mig_record::head_size + data.size());
  put_head(c.own, type, index, offset, data.size());
  c.own.insert(c.own.end(), data.begin(), data.end());
  c.len = c.own.size();
  q_.push_back(std::move(c));
}

void mig_source::add_borrowed_pages(uint32_t region, uint64_t offset, const uint8_t* mem, uint64_t len) {
  chunk h;
  put_head(h.own, mig_record::pages, region, offset, len);
  h.len = h.own.size();
  q_.push_back(std::move(h));
  if (!len) return;
  chunk d;
  d.mem = mem;
  d.len = len;
  q_.push_back(std::move(d));
}

std::vector<mig_source::piece> mig_source::take(size_t n) {
  done_.clear();
  std::vector<piece> out;
  size_t got = 0;
  while (got < n) {
    if (q_.empty() && (!more || !more(*this) || q_.empty())) break;
    auto& c = q_.front();
    size_t k = size_t(std::min<uint64_t>(n - got, c.len - c.pos));
    const uint8_t* base = c.mem ? c.mem : c.own.data();
    out.push_back({base + c.pos, k, c.mem != nullptr});
    c.pos += k;
    got += k;
    if (c.pos == c.len) {
      done_.push_back(std::move(c));  // (a vector's buffer survives the move)
      q_.pop_front();
    }
  }
  served_ += got;
  return out;
}

// ---- mig_parser -----------------------------------------------------------------------------
int mig_parser::feed(const uint8_t* p, size_t n, mig_sink& sink) {
  if (err_) return err_;
  auto finish = [&]() -> int {
    in_body_ = false;
    if (type_ == mig_record::pages) return 0;
    if (type_ == mig_record::end) {
      ended_ = true;
      return 0;
    }
    return sink.record(type_, index_, std::move(body_));
  };
  while (n) {
    if (ended_) return fail(EINVAL);  // nothing may follow END
    if (!in_body_) {
      size_t k = std::min(n, size_t(mig_record::head_size) - got_);
      std::memcpy(head_ + got_, p, k);
      got_ += k, p += k, n -= k;
      if (got_ < mig_record::head_size) break;
      got_ = 0;
      std::memcpy(&type_, head_, 4);
      std::memcpy(&index_, head_ + 4, 4);
      std::memcpy(&offset_, head_ + 8, 8);
      std::memcpy(&left_, head_ + 16, 8);
      if (records_++ == 0 && type_ != mig_record::header) return fail(EINVAL);
      switch (type_) {
        case mig_record::pages:
          dst_ = left_ ? sink.pages(index_, offset_, left_) : nullptr;
          if (left_ && !dst_) return fail(EINVAL);
          break;
        case mig_record::end:
          if (left_) return fail(EINVAL);
          break;
        case mig_record::header:
        case mig_record::config:
        case mig_record::irqs:
        case mig_record::msix:
        case mig_record::model:
          if (left_ > max_mig_record) return fail(E2BIG);
          body_.clear();
          body_.reserve(size_t(left_));
          break;
        default: return fail(EINVAL);
      }
      in_body_ = true;
    } else {
      size_t k = size_t(std::min<uint64_t>(n, left_));
      if (type_ == mig_record::pages) {
        std::memcpy(dst_, p, k);
        dst_ += k;
      } else {
        body_.insert(body_.end(), p, p + k);
      }
      left_ -= k, p += k, n -= k;
    }
    if (in_body_ && left_ == 0)
      if (int e = finish()) return fail(e);
  }
  // A record of no bytes whose head was the last of this piece.
  if (in_body_ && left_ == 0)
    if (int e = finish()) return fail(e);
  return 0;
}

// ---- dirty_log ------------------------------------------------------------------------------
namespace {
void set_bits(std::vector<uint64_t>& b, uint64_t first, uint64_t count, bool on) {
  while (count) {
    uint64_t w = first / 64, sh = first % 64, k = std::min<uint64_t>(64 - sh, count);
    uint64_t mask = (k == 64 ? ~0ull : ((1ull << k) - 1)) << sh;
    if (on) b[w] |= mask;
    else b[w] &= ~mask;
    first += k, count -= k;
  }
}
}  // namespace

int dirty_log::start(uint64_t page_size, std::vector<proto::dma_range> ranges) {
  if (page_size < 4096 || (page_size & (page_size - 1)) || page_size > (1ull << 30)) return EINVAL;
  std::sort(ranges.begin(), ranges.end(), [](auto& a, auto& b) { return a.iova < b.iova; });
  uint64_t bytes = 0;
  for (size_t i = 0; i < ranges.size(); ++i) {
    auto& r = ranges[i];
    if (!r.length || r.iova % page_size || r.length % page_size) return EINVAL;
    if (i && ranges[i - 1].iova + ranges[i - 1].length > r.iova) return EINVAL;  // overlap
    bytes += bitmap_bytes(r.length, page_size);
    if (bytes > proto::limits::max_dirty_bitmap) return ENOMEM;
  }
  ranges_.clear();
  for (auto& r : ranges) ranges_.push_back({r.iova, r.length, std::vector<uint64_t>(bitmap_bytes(r.length, page_size) / 8)});
  page_ = page_size;
  return 0;
}

void dirty_log::mark(uint64_t iova, uint64_t len) {
  if (!page_ || !len) return;
  uint64_t end = iova + len;
  for (auto& r : ranges_) {
    uint64_t lo = std::max(iova, r.iova), hi = std::min(end, r.iova + r.len);
    if (lo >= hi) continue;
    uint64_t first = (lo - r.iova) / page_, last = (hi - 1 - r.iova) / page_;
    set_bits(r.bits, first, last - first + 1, true);
  }
}

int dirty_log::report(uint64_t iova, uint64_t len, uint64_t page_size, uint8_t* out) {
  if (!page_ || page_size != page_ || !len || iova % page_ || len % page_) return EINVAL;
  for (auto& r : ranges_) {
    if (iova < r.iova || iova - r.iova + len > r.len) continue;
    uint64_t s = (iova - r.iova) / page_, count = len / page_, words = (count + 63) / 64;
    for (uint64_t w = 0; w < words; ++w) {
      uint64_t bit = s + w * 64, idx = bit / 64, sh = bit % 64;
      uint64_t v = r.bits[idx] >> sh;
      if (sh && idx + 1 < r.bits.size()) v |= r.bits[idx + 1] << (64 - sh);
      uint64_t left = count - w * 64;
      if (left < 64) v &= (1ull << left) - 1;
      std::memcpy(out + w * 8, &v, 8);
    }
    set_bits(r.bits, s, count, false);
    return 0;
  }
  return EINVAL;
}

}  // namespace vfu::dev
