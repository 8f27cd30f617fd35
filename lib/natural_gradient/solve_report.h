// The report of a natural-gradient solve (the fields docs/formats.md lists for `solve`), as `natgrad solve
// --report` writes it and Python's Fisher.solve returns it: one function for both, so that the two never
// drift apart. Private to the project (it hands out nlohmann's JSON, which the installed headers do not use).
#pragma once

#include <natgrad/natural_gradient/solve_natural_gradient.h>

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace natgrad {

/// What a report says about the solve that the result does not hold: how it was asked and where it ran.
struct SolveReportSetting {
  Index params = 0;
  Index positions = 1;  ///< T for a likelihood per position, else 1
  std::string fisher;   ///< "exact", "mc", "empirical"
  double damping = 0;   ///< the damping, the smallest with several
  std::string preconditioner = "none";
  std::string dtype;  ///< "float64", "float32"
  int threads = 1;
  int ranks = 1;
  /// Per damping of a multi-shift solve (r.solves[j]), the fields a caller adds to its entry after "damping"
  /// and "cg" (the command line: "output", "condition"); empty, or one object per solve.
  std::vector<nlohmann::ordered_json> solve_extras;
  /// The caller's own fields (the command line: "spectrum", "condition", "compare", "interrupted"), placed
  /// before "timing_s".
  nlohmann::ordered_json extras = nlohmann::ordered_json::object();
};

/// The report of r in docs/formats.md's order: command, loss, ..., cg, the several dampings' solves, the
/// setting's extras, timing_s. CG stopped by a signal or Ctrl-C is reported as termination "interrupted".
template <typename Scalar>
nlohmann::ordered_json solve_report(const NaturalGradientResult<Scalar>& r, const SolveReportSetting& s);

}  // namespace natgrad
