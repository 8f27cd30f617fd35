// What the commands print and write: eigenvalue lists, the spectrum and condition-number parts of the JSON
// reports, and the Lanczos progress settings.
#pragma once

#include "options.h"

#include <natgrad/solvers/spectrum.h>

#include <nlohmann/json.hpp>

#include <string>

namespace natgrad {
namespace cli {

std::string format_eigenvalues(const Vec<double>& ev);
nlohmann::ordered_json spectrum_json(const SpectrumResult& s);
nlohmann::ordered_json condition_json(const ConditionEstimate& c);
void print_condition(const ConditionEstimate& c);
/// Lanczos settings with a progress line every 25 products.
SpectrumOptions spectrum_options(const Progress& progress);

}  // namespace cli
}  // namespace natgrad
