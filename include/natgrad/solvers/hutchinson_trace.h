/// \file hutchinson_trace.h
/// \brief Hutchinson's estimate of tr(A) with Rademacher probes from the counter-based generator.
///
/// \code
/// natgrad::TraceEstimate t = natgrad::hutchinson_trace(F, 100, /*seed=*/0);   // t.trace ± t.standard_error
/// \endcode
#pragma once

#include <natgrad/core/interrupted.h>
#include <natgrad/core/types.h>
#include <natgrad/solvers/detail/double_operator.h>
#include <natgrad/solvers/operator_concept.h>
#include <natgrad/solvers/spectrum_progress.h>

#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

namespace natgrad {

struct TraceEstimate {
  double trace = 0;
  double standard_error = 0;   ///< sample standard deviation / √probes; NaN with fewer than 2 probes
  Index probes = 0;            ///< the probes the estimate is made of
  /// The computation was stopped (its callback, or the operator's Interrupted) before all the probes asked
  /// for were done: the estimate is that of the `probes` completed.
  bool interrupted = false;
};

/// The estimate from the probes' samples vᵀ A v: their mean and its standard error (NaN for fewer than two
/// samples; the mean is NaN for none).
inline TraceEstimate trace_from_samples(const std::vector<double>& q) {
  TraceEstimate t;
  t.probes = static_cast<Index>(q.size());
  if (q.empty()) {
    t.trace = t.standard_error = std::numeric_limits<double>::quiet_NaN();
    return t;
  }
  for (double x : q) t.trace += x / double(q.size());
  if (q.size() < 2) {
    t.standard_error = std::numeric_limits<double>::quiet_NaN();
    return t;
  }
  double var = 0;
  for (double x : q) var += (x - t.trace) * (x - t.trace) / double(q.size() - 1);
  t.standard_error = std::sqrt(var / double(q.size()));
  return t;
}

/// Hutchinson's estimate tr(A) ≈ 1/m Σ vᵀ A v with m Rademacher probes from the counter-based generator
/// (probe p keyed by (seed, p), so the first m' probes of a run are those of a run with m' probes).
/// `callback`, if given, sees every product (phase "hutchinson", one product per probe); when it asks to
/// stop, or the operator throws Interrupted, the estimate is that of the probes completed, marked
/// `interrupted`.
template <typename Op>
TraceEstimate hutchinson_trace(const Op& op, Index probes, uint64_t seed, const SpectrumCallback& callback = nullptr) {
  NATGRAD_CHECK_OPERATOR(Op);
  if (probes < 2) throw std::invalid_argument("hutchinson_trace needs at least 2 probes, got " + std::to_string(probes));
  detail::DoubleOperator<Op> dop(op);
  const Index n = op.rows();
  Vec<double> y(n);
  std::vector<double> q;
  for (Index p = 0; p < probes; ++p) {
    const Vec<double> v = detail::rademacher(n, seed, static_cast<uint64_t>(p));
    try {
      dop.perform_op(v.data(), y.data());
    } catch (const Interrupted&) {
      break;
    }
    q.push_back(v.dot(y));
    if (callback) {
      SpectrumProgress info;
      info.phase = "hutchinson";
      info.products = info.done = p + 1;
      info.products_total = info.total = probes;
      if (callback(info) == CallbackResult::stop) break;
    }
  }
  TraceEstimate t = trace_from_samples(q);
  t.interrupted = t.probes < probes;
  return t;
}

}  // namespace natgrad
