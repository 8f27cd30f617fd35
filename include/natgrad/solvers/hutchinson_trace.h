/// \file hutchinson_trace.h
/// \brief Hutchinson's estimate of tr(A) with Rademacher probes from the counter-based generator.
///
/// \code
/// natgrad::TraceEstimate t = natgrad::hutchinson_trace(F, 100, /*seed=*/0);   // t.trace ± t.standard_error
/// \endcode
#pragma once

#include <natgrad/core/types.h>
#include <natgrad/solvers/operator_ref.h>
#include <natgrad/solvers/spectrum_progress.h>

#include <cstdint>
#include <vector>

namespace natgrad {

struct TraceEstimate {
  double trace = 0;
  double standard_error = 0;  ///< sample standard deviation / √probes; NaN with fewer than 2 probes
  Index probes = 0;           ///< the probes the estimate is made of
  /// The computation was stopped (its callback, or the operator's Interrupted) before all the probes asked
  /// for were done: the estimate is that of the `probes` completed.
  bool interrupted = false;
};

/// The estimate from the probes' samples vᵀ A v: their mean and its standard error (NaN for fewer than two
/// samples; the mean is NaN for none).
TraceEstimate trace_from_samples(const std::vector<double>& q);

/// The estimate for the operator view (operator_ref.h): the body every hutchinson_trace call runs, compiled
/// in the library for float and double.
TraceEstimate hutchinson_trace(const OperatorRef<float>& op, Index probes, uint64_t seed,
                               const SpectrumCallback& callback);
TraceEstimate hutchinson_trace(const OperatorRef<double>& op, Index probes, uint64_t seed,
                               const SpectrumCallback& callback);

/// Hutchinson's estimate tr(A) ≈ 1/m Σ vᵀ A v with m Rademacher probes from the counter-based generator
/// (probe p keyed by (seed, p), so the first m' probes of a run are those of a run with m' probes).
/// `callback`, if given, sees every product (phase "hutchinson", one product per probe); when it asks to
/// stop, or the operator throws Interrupted, the estimate is that of the probes completed, marked
/// `interrupted`.
/// Throws std::invalid_argument for fewer than 2 probes.
template <typename Op>
TraceEstimate hutchinson_trace(const Op& op, Index probes, uint64_t seed,
                               const SpectrumCallback& callback = nullptr) {
  NATGRAD_CHECK_OPERATOR(Op);
  NATGRAD_CHECK_SOLVER_SCALAR(typename Op::Scalar);
  return hutchinson_trace(OperatorRef<typename Op::Scalar>(op), probes, seed, callback);
}

}  // namespace natgrad
