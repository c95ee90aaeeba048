// vfu-decode: decodes vfio-user wire captures (*.vec) with vfu-broker's codec and prints a
// per-command summary, or every frame with --verbose.
//   vfu-decode [--verbose] FILE.vec|DIR...
#include <dirent.h>
#include <sys/stat.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "protocol/messages.hpp"
#include "protocol/vec_file.hpp"

using namespace vfu::proto;

static std::vector<std::string> expand(const std::string& arg) {
  struct stat st;
  if (::stat(arg.c_str(), &st) != 0) return {arg};
  if (!S_ISDIR(st.st_mode)) return {arg};
  std::vector<std::string> out;
  if (DIR* d = ::opendir(arg.c_str())) {
    while (auto* e = ::readdir(d)) {
      std::string n = e->d_name;
      if (n.size() > 4 && n.substr(n.size() - 4) == ".vec") out.push_back(arg + "/" + n);
    }
    ::closedir(d);
  }
  std::sort(out.begin(), out.end());
  return out;
}

int main(int argc, char** argv) {
  bool verbose = false;
  std::vector<std::string> files;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--verbose" || a == "-v") verbose = true;
    else if (a == "--help" || a == "-h") {
      std::printf("usage: vfu-decode [--verbose] FILE.vec|DIR...\n");
      return 0;
    } else if (a.rfind("-", 0) == 0) {
      std::fprintf(stderr, "vfu-decode: unknown option %s\n", a.c_str());
      return 2;
    } else {
      auto more = expand(a);
      files.insert(files.end(), more.begin(), more.end());
    }
  }
  if (files.empty()) {
    std::fprintf(stderr, "vfu-decode: no capture files given (usage: vfu-decode [--verbose] FILE.vec|DIR...)\n");
    return 2;
  }
  int failures = 0;
  for (auto& path : files) {
    auto vf = read_vec_file(path);
    if (!vf.ok()) {
      std::fprintf(stderr, "vfu-decode: %s\n", vf.err().message().c_str());
      return 1;
    }
    quirks q = vf->peer_quirks();
    std::printf("== %s: %zu frames (quirks: qemu_dma_layout=%d error_reply_payload=%d)\n", path.c_str(),
                vf->records.size(), q.qemu_dma_layout, q.error_reply_payload);
    struct counts { int req = 0, rep = 0, err = 0, fds = 0, bytes = 0, bad = 0; };
    std::map<uint16_t, counts> by_cmd;
    for (auto& r : vf->records) {
      header h = read_header(r.bytes.data());
      auto m = decode(h, byte_view{r.bytes.data() + 16, r.bytes.size() - 16}, r.nfds, q);
      auto& c = by_cmd[h.command];
      c.bytes += int(r.bytes.size());
      c.fds += int(r.nfds);
      bool exact = m.ok() && make_frame(h.msg_id, *m, h.flags & hflags::no_reply).bytes == r.bytes;
      if (!m.ok() || !exact) {
        ++c.bad;
        ++failures;
      } else if (h.is_error()) ++c.err;
      else if (h.is_reply()) ++c.rep;
      else ++c.req;
      if (verbose || !m.ok() || !exact)
        std::printf("  %-6s %s %s  %s%s\n", r.session.c_str(), r.client_to_server ? "C>S" : "S>C",
                    describe(h, r.nfds).c_str(), m.ok() ? message_name(*m).c_str() : m.err().message().c_str(),
                    m.ok() && !exact ? "  (re-encoding differs)" : "");
    }
    std::printf("  %-26s %8s %8s %8s %6s %10s %6s\n", "command", "requests", "replies", "errors", "fds", "bytes", "bad");
    for (auto& [cmd, c] : by_cmd)
      std::printf("  %-26s %8d %8d %8d %6d %10d %6d\n", command_name(cmd), c.req, c.rep, c.err, c.fds, c.bytes, c.bad);
  }
  std::printf("%s\n", failures ? "FAILED: some frames did not round-trip" : "all frames decoded and re-encoded byte-exactly");
  return failures ? 1 : 0;
}
