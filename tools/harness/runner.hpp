// runner.hpp: runs parsed scenarios and reports one line per step.
//
//   gpio.vfu:12: ok   region_read region=7 offset=0 count=4
//   gpio.vfu:13: FAIL expect-reply region_read data=4f49c80d: data: expected 4f49c80d, got 75760100
//
// Every wait has a deadline (the step's `timeout=`, else the scenario's `set timeout=`, else
// 5 s), so a failed expectation never hangs: the run goes on with the next step. After the
// last step the runner checks that the vfu-serve it started is still alive and stops cleanly
// on SIGTERM (one more reported step), then that no descriptor of its own leaked.
#pragma once

#include <ostream>
#include <string>
#include <vector>

#include "tools/harness/scenario.hpp"

namespace vfu::harness {

struct runner_options {
  std::string serve_path;              ///< vfu-serve, for start-server
  std::string probe_path;              ///< vfu-probe, for spawn-client
  std::string vectors_dir;             ///< where replay looks for captures first
  std::vector<std::string> caf_args;   ///< --logger.* etc., passed to vfu-serve
  bool verbose = false;                ///< print every frame, decoded
  bool ci = false;                     ///< a skipped step (missing capture) is a failure
};

struct run_totals {
  int passed = 0;
  int failed = 0;
  int skipped = 0;
  run_totals& operator+=(const run_totals& o) {
    passed += o.passed;
    failed += o.failed;
    skipped += o.skipped;
    return *this;
  }
};

run_totals run_scenario(const scenario& s, const runner_options& o, std::ostream& out);

}  // namespace vfu::harness
