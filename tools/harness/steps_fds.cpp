// Steps that create and use scenario fds: memfd, eventfd, file, mem-write, mem-expect,
// wait-eventfd, eventfd-quiet; and the `fds=` list of a send.
#include <cstring>

#include "tools/harness/runner_state.hpp"

namespace vfu::harness {

outcome runner::make_fd(const step& s) {
  const std::string& name = s.words[0];
  io::owned_fd f;
  std::string err, v;
  switch (s.type) {
    case step_type::memfd: {
      uint64_t size = 0;
      if (!resolve(*s.opt("size"), v, err) || !parse_number(v, size, err, 1ull << 40)) return outcome::failure(err);
      if (!io::make_memfd(size_t(size), f, err)) return outcome::failure(err);
      if (auto* d = s.opt("data")) {
        std::vector<uint8_t> bytes;
        if (!resolve(*d, v, err) || !parse_bytes(v, bytes, err)) return outcome::failure(err);
        if (bytes.size() > size) return outcome::failure("data is larger than the memfd");
        if (!bytes.empty()) std::memcpy(f.map, bytes.data(), bytes.size());
      }
      break;
    }
    case step_type::eventfd:
      if (!io::make_eventfd(f, err)) return outcome::failure(err);
      break;
    default: {
      std::string path;
      bool write = false;
      if (!resolve(*s.opt("path"), path, err)) return outcome::failure(err);
      if (auto* w = s.opt("write"); w && (!resolve(*w, v, err) || !parse_bool(v, write, err))) return outcome::failure(err);
      if (!io::open_file(where(path), write, f, err)) return outcome::failure(err);
      break;
    }
  }
  fds_[name] = std::move(f);
  return outcome::pass();
}

outcome runner::mem_access(const step& s) {
  auto it = fds_.find(s.words[0]);
  if (it == fds_.end() || it->second.kind != io::owned_fd::kind_t::memfd)
    return outcome::failure("'" + s.words[0] + "' is not a memfd of this run");
  auto& m = it->second;
  std::string v, err;
  uint64_t off = 0;
  std::vector<uint8_t> data;
  if (auto* o = s.opt("offset"); o && (!resolve(*o, v, err) || !parse_number(v, off, err))) return outcome::failure(err);
  if (!resolve(*s.opt("data"), v, err) || !parse_bytes(v, data, err)) return outcome::failure(err);
  if (off > m.size || data.size() > m.size - off)
    return outcome::failure("range " + std::to_string(off) + "+" + std::to_string(data.size()) +
                            " is outside the memfd (" + std::to_string(m.size) + " bytes)");
  if (s.type == step_type::mem_write) {
    std::memcpy(m.map + off, data.data(), data.size());
    return outcome::pass();
  }
  if (std::memcmp(m.map + off, data.data(), data.size()) == 0) return outcome::pass();
  size_t at = 0;
  while (m.map[off + at] == data[at]) ++at;
  size_t from = at >= 8 ? at - 8 : 0, n = std::min<size_t>(data.size() - from, 32);
  std::vector<uint8_t> got(m.map + off + from, m.map + off + from + n), want(data.begin() + long(from), data.begin() + long(from + n));
  return outcome::failure("first difference at offset " + std::to_string(off + at) + ": from " + std::to_string(off + from) +
                          " expected " + format_bytes(want) + ", got " + format_bytes(got));
}

outcome runner::wait_eventfd(const step& s, bool quiet) {
  auto it = fds_.find(s.words[0]);
  if (it == fds_.end() || it->second.kind != io::owned_fd::kind_t::eventfd)
    return outcome::failure("'" + s.words[0] + "' is not an eventfd of this run");
  std::chrono::microseconds d = step_timeout(s);
  std::string v, err;
  if (quiet) {
    d = std::chrono::milliseconds(100);
    if (auto* f = s.opt("for"); f && (!resolve(*f, v, err) || !parse_duration(v, d, err))) return outcome::failure(err);
  }
  auto got = io::wait_eventfd(it->second.fd.get(), io::after(d));
  if (quiet) {
    if (got) return outcome::failure("signalled (counter " + std::to_string(*got) + ")");
    return outcome::pass();
  }
  if (!got) return outcome::failure("not signalled within " + format_duration(d));
  if (auto* c = s.opt("count")) {
    uint64_t want = 0;
    if (!resolve(*c, v, err) || !parse_number(v, want, err)) return outcome::failure(err);
    if (*got != want) return outcome::failure("counter " + std::to_string(*got) + ", expected " + std::to_string(want));
  }
  return outcome::pass("counter " + std::to_string(*got));
}

bool runner::collect_fds(const std::string& spec, proto::fd_list& out, std::string& err) {
  std::string v;
  if (!resolve(spec, v, err)) return false;
  std::vector<std::pair<std::string, uint32_t>> items;
  if (!parse_fd_list(v, items, err)) return false;
  for (auto& [name, n] : items) {
    auto it = fds_.find(name);
    if (it == fds_.end()) {
      err = "no fd named '" + name + "' in this run";
      return false;
    }
    for (uint32_t i = 0; i < n; ++i) {
      auto d = it->second.fd.dup();
      if (!d) {
        err = "cannot duplicate fd '" + name + "'";
        return false;
      }
      out.push_back(std::move(d));
    }
  }
  return true;
}

}  // namespace vfu::harness
