// vfu-harness: runs vfio-user scenario files (docs/harness.md).
//   vfu-harness [--serve=PATH] [--probe=PATH] [--vectors=DIR] [--verbose] [--check]
//               [--logger.* CAF options] SCENARIO...
// Prints one line per step and a final "N passed, M failed". Exit 0 when every step passed,
// 1 when one failed, 2 for a scenario error (file:line), 77 when steps were skipped (a
// capture that is not there) and none failed.
#include <signal.h>
#include <unistd.h>

#include <climits>
#include <cstdlib>
#include <iostream>

#include "tools/harness/fields.hpp"
#include "tools/harness/runner.hpp"
#include "tools/harness/scenario.hpp"

using namespace vfu::harness;

namespace {

int usage(const std::string& msg) {
  if (!msg.empty()) std::cerr << "vfu-harness: " << msg << "\n";
  (msg.empty() ? std::cout : std::cerr)
      << "usage: vfu-harness [options] SCENARIO...\n"
         "  --serve=PATH    vfu-serve for start-server (default: next to vfu-harness)\n"
         "  --probe=PATH    vfu-probe for spawn-client (default: next to vfu-harness)\n"
         "  --vectors=DIR   where replay finds captures (default: $VFU_VECTORS_DIR)\n"
         "  --verbose       print every frame sent and received, decoded\n"
         "  --check         only parse the scenarios\n"
         "  --fields        list every command's request and reply fields, and exit\n"
         "  --logger.*      CAF logging options, passed to vfu-serve (e.g. --logger.console=uncolored\n"
         "                  --logger.console-verbosity=debug logs every frame it handles)\n";
  return msg.empty() ? 0 : 2;
}

/// CAF's own options, passed through to vfu-serve. The same rule as
/// vfu::runtime::is_caf_arg (actors/runtime.cpp), repeated here so that the harness needs only
/// the protocol library and builds (and runs against any vfu-serve) without CAF.
bool is_caf_option(const std::string& a) {
  return a.rfind("--logger.", 0) == 0 || a.rfind("--scheduler.", 0) == 0 || a.rfind("--caf#", 0) == 0 ||
         a.rfind("--config-file", 0) == 0;
}

bool value_of(const std::string& a, const char* key, std::string& out) {
  std::string k = std::string(key) + "=";
  if (a.rfind(k, 0) != 0) return false;
  out = a.substr(k.size());
  return true;
}

void print_fields() {
  for (uint16_t c = 1; c <= vfu::proto::max_command; ++c) {
    if (!vfu::proto::is_known_command(c)) continue;
    for (bool reply : {false, true}) {
      std::cout << command_key(c) << (reply ? " reply:" : " request:");
      auto& fs = schema({c, reply});
      if (fs.empty()) std::cout << " (none)";
      for (auto& f : fs) {
        std::cout << " " << f.name;
        if (f.kind == field_kind::flags) {
          std::cout << "=";
          const char* sep = "";
          for (auto& n : f.flags->bits) std::cout << sep << n.name, sep = "|";
          for (auto& n : f.flags->enums) std::cout << sep << n.name, sep = "|";
        } else if (f.kind == field_kind::enumeration) {
          std::cout << "=";
          const char* sep = "";
          for (auto& n : *f.enums) std::cout << sep << n.name, sep = "/";
        }
      }
      std::cout << "\n";
    }
  }
}

std::string sibling(const char* name) {
  char buf[PATH_MAX];
  ssize_t n = ::readlink("/proc/self/exe", buf, sizeof buf - 1);
  if (n <= 0) return "";
  std::string self(buf, size_t(n));
  std::string p = self.substr(0, self.rfind('/') + 1) + name;
  return ::access(p.c_str(), X_OK) == 0 ? p : "";
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> rest;
  runner_options opts;
  for (int i = 1; i < argc; ++i) (is_caf_option(argv[i]) ? opts.caf_args : rest).push_back(argv[i]);
  bool check_only = false;
  std::vector<std::string> files;
  for (auto& a : rest) {
    std::string v;
    if (a == "--help" || a == "-h") return usage("");
    if (a == "--verbose" || a == "-v") opts.verbose = true;
    else if (a == "--check") check_only = true;
    else if (a == "--fields") {
      print_fields();
      return 0;
    }
    else if (value_of(a, "--serve", v)) opts.serve_path = v;
    else if (value_of(a, "--probe", v)) opts.probe_path = v;
    else if (value_of(a, "--vectors", v)) opts.vectors_dir = v;
    else if (a.rfind("-", 0) == 0) return usage("unknown option " + a);
    else files.push_back(a);
  }
  if (files.empty()) return usage("no scenario files given");
  if (opts.serve_path.empty()) opts.serve_path = sibling("vfu-serve");
  if (opts.probe_path.empty()) opts.probe_path = sibling("vfu-probe");
  if (opts.vectors_dir.empty())
    if (const char* e = std::getenv("VFU_VECTORS_DIR")) opts.vectors_dir = e;
  if (const char* ci = std::getenv("CI")) opts.ci = std::string(ci) == "true";

  // Parse everything first: a scenario error anywhere stops the run before it starts.
  std::vector<scenario> scenarios(files.size());
  bool bad = false;
  for (size_t i = 0; i < files.size(); ++i)
    for (auto& e : load_scenario(files[i], scenarios[i])) {
      std::cerr << e.text() << "\n";
      bad = true;
    }
  if (bad) {
    std::cerr << "vfu-harness: scenario errors, nothing was run\n";
    return 2;
  }
  if (check_only) {
    std::cout << files.size() << " scenario file(s) OK\n";
    return 0;
  }
  ::signal(SIGPIPE, SIG_IGN);
  run_totals total;
  for (auto& s : scenarios) {
    std::cout << "== " << s.path << std::endl;
    total += run_scenario(s, opts, std::cout);
  }
  std::cout << total.passed << " passed, " << total.failed << " failed";
  if (total.skipped) std::cout << ", " << total.skipped << " skipped";
  std::cout << std::endl;
  if (total.failed) return 1;
  return total.skipped ? 77 : 0;
}
