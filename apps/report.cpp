#include "report.h"

#include <cmath>
#include <cstdio>
#include <vector>

namespace natgrad {
namespace cli {

std::string format_eigenvalues(const Vec<double>& ev) {
  std::string s;
  char buf[32];
  for (Index i = 0; i < ev.size(); ++i) {
    std::snprintf(buf, sizeof buf, "%s%.6e", i ? " " : "", ev[i] <= 0 ? 0.0 : ev[i]);
    s += buf;
  }
  return s;
}

nlohmann::ordered_json spectrum_json(const SpectrumResult& s) {
  nlohmann::ordered_json j;
  j["eigenvalues"] = std::vector<double>(s.eigenvalues.data(), s.eigenvalues.data() + s.eigenvalues.size());
  j["matvecs"] = s.matvecs;
  j["converged"] = s.converged;
  j["termination"] = to_string(s.termination);
  j["status"] = s.status;
  j["time_s"] = s.time_s;
  return j;
}

nlohmann::ordered_json condition_json(const ConditionEstimate& c) {
  nlohmann::ordered_json j;
  auto num = [](double v) { return std::isfinite(v) ? nlohmann::ordered_json(v) : nlohmann::ordered_json(nullptr); };
  j["condition_number"] = num(c.condition_number);
  j["lambda_max"] = num(c.lambda_max);
  j["lambda_min"] = num(c.lambda_min);
  j["exact"] = c.exact_min;
  j["kind"] = to_string(c.kind);
  j["lambda_min_error"] = num(c.lambda_min_error);
  j["method"] = c.method;
  j["matvecs"] = c.matvecs;
  return j;
}

void print_condition(const ConditionEstimate& c) {
  std::printf("condition number of F + lambda*I: %.6e  (lambda_max %.6e, lambda_min %.6e; %s)\n", c.condition_number,
              c.lambda_max, c.lambda_min, c.method.c_str());
}

SpectrumOptions spectrum_options(const Progress& progress, const World& world) {
  SpectrumOptions so;
  so.tolerance = 1e-8;
  so.callback = spectrum_callback(progress, world);
  return so;
}

nlohmann::ordered_json per_module_json(const std::vector<ModuleSpectrum>& modules) {
  nlohmann::ordered_json j = nlohmann::ordered_json::array();
  auto num = [](double v) { return std::isfinite(v) ? nlohmann::ordered_json(v) : nlohmann::ordered_json(nullptr); };
  for (const ModuleSpectrum& s : modules) {
    nlohmann::ordered_json m;
    m["module"] = s.module;
    m["parameters"] = s.params;
    m["top_eigenvalue"] = num(s.top_eigenvalue);
    m["trace"] = num(s.trace);
    m["trace_standard_error"] = num(s.trace_standard_error);
    m["eigenvector_mass"] = s.eigenvector_mass;
    m["products"] = s.products;
    j.push_back(m);
  }
  return j;
}

void print_comparison(const std::vector<ApproximationComparison>& rows, Index top_k) {
  std::printf("approximations of F (product error: the largest over its top-%lld eigenvectors; cosine with the "
              "solved direction):\n", static_cast<long long>(top_k));
  std::printf("  %-10s %14s %18s %10s %9s\n", "kind", "product error", "direction cosine", "time (s)", "products");
  for (const ApproximationComparison& c : rows)
    std::printf("  %-10s %14.3e %18.6f %10.3f %9lld\n", to_string(c.kind), c.product_relative_error,
                c.direction_cosine, c.time_s, static_cast<long long>(c.products));
}

nlohmann::ordered_json comparison_json(const std::vector<ApproximationComparison>& rows) {
  nlohmann::ordered_json list = nlohmann::ordered_json::array();
  for (const ApproximationComparison& c : rows) {
    nlohmann::ordered_json e{{"kind", to_string(c.kind)},
                             {"product_relative_error", c.product_relative_error},
                             {"direction_cosine", c.direction_cosine},
                             {"time_s", c.time_s},
                             {"products", c.products}};
    if (c.cg.iterations > 0) e["cg_iterations"] = c.cg.iterations;
    list.push_back(e);
  }
  return list;
}

}  // namespace cli
}  // namespace natgrad
