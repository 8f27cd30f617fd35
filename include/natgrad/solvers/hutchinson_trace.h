/// \file hutchinson_trace.h
/// \brief Hutchinson's estimate of tr(A) with Rademacher probes from the counter-based generator.
///
/// \code
/// natgrad::TraceEstimate t = natgrad::hutchinson_trace(F, 100, /*seed=*/0);   // t.trace ± t.standard_error
/// \endcode
#pragma once

#include <natgrad/core/types.h>
#include <natgrad/solvers/detail/double_operator.h>
#include <natgrad/solvers/operator_concept.h>

#include <cmath>
#include <stdexcept>
#include <string>
#include <vector>

namespace natgrad {

struct TraceEstimate {
  double trace = 0;
  double standard_error = 0;   ///< sample standard deviation / √probes
  Index probes = 0;
};

/// The estimate from the probes' samples vᵀ A v (at least 2): their mean and its standard error.
inline TraceEstimate trace_from_samples(const std::vector<double>& q) {
  TraceEstimate t;
  t.probes = static_cast<Index>(q.size());
  for (double x : q) t.trace += x / double(q.size());
  double var = 0;
  for (double x : q) var += (x - t.trace) * (x - t.trace) / double(q.size() - 1);
  t.standard_error = std::sqrt(var / double(q.size()));
  return t;
}

/// Hutchinson's estimate tr(A) ≈ 1/m Σ vᵀ A v with m Rademacher probes from the counter-based generator.
template <typename Op>
TraceEstimate hutchinson_trace(const Op& op, Index probes, uint64_t seed) {
  NATGRAD_CHECK_OPERATOR(Op);
  if (probes < 2) throw std::invalid_argument("hutchinson_trace needs at least 2 probes, got " + std::to_string(probes));
  detail::DoubleOperator<Op> dop(op);
  const Index n = op.rows();
  Vec<double> y(n);
  std::vector<double> q;
  for (Index p = 0; p < probes; ++p) {
    const Vec<double> v = detail::rademacher(n, seed, static_cast<uint64_t>(p));
    dop.perform_op(v.data(), y.data());
    q.push_back(v.dot(y));
  }
  return trace_from_samples(q);
}

}  // namespace natgrad
