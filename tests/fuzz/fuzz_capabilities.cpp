// libFuzzer target: the VERSION capabilities JSON.
// parse_capabilities(input); when it succeeds, to_json (full and only_present) must reparse,
// and a second to_json of the reparsed value must give the same text (abort otherwise).
#include <cstdio>
#include <cstdlib>
#include <string>

#include "protocol/capabilities.hpp"

using namespace vfu::proto;

namespace {

[[noreturn]] void die(const char* what, const std::string& in, const std::string& a, const std::string& b) {
  std::fprintf(stderr, "fuzz_capabilities: %s\n  input %s\n  json1 %s\n  json2 %s\n", what, in.c_str(),
               a.c_str(), b.c_str());
  std::abort();
}

void round_trip(const std::string& in, const capabilities& c, bool only_present) {
  std::string j1 = to_json(c, only_present);
  auto c2 = parse_capabilities(j1);
  if (!c2.ok()) die(("reparse failed: " + c2.err().message()).c_str(), in, j1, "");
  if (c2->max_msg_fds != c.max_msg_fds && (!only_present || c.has("max_msg_fds")))
    die("max_msg_fds changed", in, j1, "");
  if (c2->max_data_xfer_size != c.max_data_xfer_size && (!only_present || c.has("max_data_xfer_size")))
    die("max_data_xfer_size changed", in, j1, "");
  if (c2->pgsizes != c.pgsizes && (!only_present || c.has("pgsizes"))) die("pgsizes changed", in, j1, "");
  if (c2->write_multiple != c.write_multiple) die("write_multiple changed", in, j1, "");
  std::string j2 = to_json(*c2, only_present);
  if (j1 != j2) die("to_json(parse(to_json(x))) != to_json(x)", in, j1, j2);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string in(reinterpret_cast<const char*>(data), size);
  auto c = parse_capabilities(in);
  if (!c.ok()) {
    int e = to_wire_errno(c.err());
    if (e <= 0 || e >= 4096) std::abort();
    return 0;
  }
  round_trip(in, *c, false);
  round_trip(in, *c, true);
  return 0;
}
