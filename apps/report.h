// What the commands print and write: eigenvalue lists, the spectrum, condition-number and comparison parts of
// the JSON reports, and the Lanczos progress settings.
#pragma once

#include "options.h"
#include "progress.h"
#include "world.h"

#include <natgrad/natural_gradient/compare_approximations.h>
#include <natgrad/natural_gradient/module_spectrum.h>
#include <natgrad/solvers/spectrum.h>

#include <nlohmann/json.hpp>

#include <string>

namespace natgrad {
namespace cli {

/// The eigenvalues of F as printed: "%.6e" each, a negative one (rounding: F is positive semi-definite)
/// shown as 0. Reports keep the computed values.
std::string format_eigenvalues(const Vec<double>& ev);
nlohmann::ordered_json spectrum_json(const SpectrumResult& s);
nlohmann::ordered_json condition_json(const ConditionEstimate& c);
void print_condition(const ConditionEstimate& c);
/// solve --compare: the table printed, and the report's "compare" list.
void print_comparison(const std::vector<ApproximationComparison>& rows, Index top_k);
nlohmann::ordered_json comparison_json(const std::vector<ApproximationComparison>& rows);
/// Lanczos settings: tolerance 1e-8, progress lines and the stop on a signal (spectrum_callback).
SpectrumOptions spectrum_options(const Progress& progress, const World& world);
/// spectrum --per-layer: the report's "per_layer" list (a top eigenvalue not computed is null).
nlohmann::ordered_json per_module_json(const std::vector<ModuleSpectrum>& modules);

}  // namespace cli
}  // namespace natgrad
