// natgrad spectrum --per-layer: for each module (its parameter tensors together: the name up to its last
// dot; a name without a dot is its own module), the top eigenvalue and the trace of its diagonal block F_ll,
// and each top eigenvector's share of squared mass in it.
#pragma once

#include <natgrad/curvature/fisher_operator.h>
#include <natgrad/solvers/hutchinson_trace.h>

#include <nlohmann/json.hpp>

#include <string>
#include <vector>

namespace natgrad {
namespace cli {

struct ModuleSpectrum {
  std::string module;
  Index params = 0;
  double top_eigenvalue = 0;       ///< of F_ll, by Lanczos on the block (one product each step)
  double trace = 0, trace_standard_error = 0;  ///< of F_ll, from the shared Hutchinson probes
  std::vector<double> eigenvector_mass;       ///< per top eigenvector: Σ over the module of v_i²
  Index products = 0;              ///< the block Lanczos's products
};

/// F without damping; `eigenvectors` (P × K, unit columns) the top-K of F. The trace probes are Rademacher
/// vectors keyed by (seed, probe) over all P entries: one product each, shared by every module
/// (E[Σ_{i∈l} v_i (F v)_i] = tr F_ll). `*trace_products` receives their count. With `trace`, the same
/// probes also give Hutchinson's estimate of tr F (the same probes and arithmetic as hutchinson_trace: the
/// same bits), so `spectrum --trace --per-layer` pays for them once.
template <typename Scalar>
std::vector<ModuleSpectrum> per_module_spectrum(const FisherOperator<Scalar>& F, const Mat<double>& eigenvectors,
                                                Index probes, uint64_t seed, Index* trace_products,
                                                TraceEstimate* trace = nullptr);

nlohmann::ordered_json per_module_json(const std::vector<ModuleSpectrum>& modules);

}  // namespace cli
}  // namespace natgrad
