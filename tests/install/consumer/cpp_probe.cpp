// The C++ API from an installed copy: connect to a gpio device and read its IDs.
#include <cstdio>

#include "device/remote_device.hpp"

int main(int argc, char** argv) {
  if (argc != 2) return 2;
  vfu::runtime rt;
  auto d = vfu::dev::remote_device::open(rt, argv[1]);
  if (!d) return std::printf("cpp_probe: %s\n", d.err().message().c_str()), 1;
  if (auto s = (*d)->probe(); !s) return std::printf("cpp_probe: %s\n", s.err().message().c_str()), 1;
  uint16_t ids[2] = {};
  if (auto s = (*d)->read(vfu::proto::region_index::config, 0, ids, 4); !s) return 1;
  std::printf("cpp_probe: %04x:%04x, %u regions\n", ids[0], ids[1], (*d)->info().num_regions);
  return ids[0] == 0x494f ? 0 : 1;
}
