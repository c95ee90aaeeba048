#include "protocol/vec_file.hpp"

#include <fstream>
#include <sstream>

namespace vfu::proto {

quirks vec_file::peer_quirks() const {
  quirks q;
  for (auto& c : comments) {
    if (c.find("QEMU") != std::string::npos) q = q | quirks::qemu();
    if (c.find("libvfio-user") != std::string::npos) q = q | quirks::libvfio_user();
  }
  return q;
}

result<vec_file> read_vec_file(const std::string& path) {
  std::ifstream in(path);
  if (!in) return error(errc::io_error, errno, "cannot open " + path);
  vec_file vf;
  vf.path = path;
  std::string line;
  size_t lineno = 0;
  while (std::getline(in, line)) {
    ++lineno;
    if (line.empty()) continue;
    if (line[0] == '#') {
      vf.comments.push_back(line.substr(1));
      continue;
    }
    std::istringstream ls(line);
    std::string session, dir, fds, hex;
    auto where = path + ":" + std::to_string(lineno) + ": ";
    if (!(ls >> session >> dir >> fds >> hex)) return error(errc::bad_value, where + "expected 4 fields");
    vec_record r;
    r.session = session;
    r.line = lineno;
    if (dir == "C>S") r.client_to_server = true;
    else if (dir == "S>C") r.client_to_server = false;
    else return error(errc::bad_value, where + "direction must be C>S or S>C");
    if (fds.rfind("fds=", 0) != 0) return error(errc::bad_value, where + "expected fds=<n>");
    try {
      r.nfds = std::stoul(fds.substr(4));
    } catch (...) {
      return error(errc::bad_value, where + "bad fd count");
    }
    if (!from_hex(hex, r.bytes)) return error(errc::bad_value, where + "bad hex");
    if (r.bytes.size() < header_size) return error(errc::bad_value, where + "frame shorter than a header");
    vf.records.push_back(std::move(r));
  }
  return vf;
}

}  // namespace vfu::proto
