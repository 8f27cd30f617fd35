// hutchinson_trace's body, compiled for float and double operators behind the operator view
// (operator_ref.h), and the estimate from a list of samples.
#include <natgrad/core/interrupted.h>
#include <natgrad/solvers/hutchinson_trace.h>

#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "solvers/basis_operator.h"
#include "solvers/rademacher_probe.h"

namespace natgrad {

namespace {

template <typename S>
TraceEstimate estimate(const OperatorRef<S>& op, Index probes, uint64_t seed,
                       const SpectrumCallback& callback) {
  using Op = OperatorRef<S>;
  if (probes < 2)
    throw std::invalid_argument("hutchinson_trace needs at least 2 probes, got " + std::to_string(probes));
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

}  // namespace

TraceEstimate trace_from_samples(const std::vector<double>& q) {
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

TraceEstimate hutchinson_trace(const OperatorRef<float>& op, Index probes, uint64_t seed,
                               const SpectrumCallback& callback) {
  return estimate(op, probes, seed, callback);
}

TraceEstimate hutchinson_trace(const OperatorRef<double>& op, Index probes, uint64_t seed,
                               const SpectrumCallback& callback) {
  return estimate(op, probes, seed, callback);
}

}  // namespace natgrad
