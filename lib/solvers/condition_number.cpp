// condition_number's body: two Lanczos runs (for λ_max, then for λ_max·I − A) in double, compiled for float
// and double operators behind the operator view (operator_ref.h).
#include <Spectra/SymEigsSolver.h>
#include <natgrad/solvers/condition_number.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>

#include "core/format_number.h"
#include "solvers/arnoldi_op.h"
#include "solvers/basis_operator.h"

namespace natgrad {

namespace {

template <typename S>
ConditionEstimate estimate(const OperatorRef<S>& op, Index rank_bound, double tolerance, Index max_restarts,
                           double known_lambda_max) {
  using Op = OperatorRef<S>;
  const Index n = op.rows();
  ConditionEstimate c;
  const Index ncv = std::min<Index>(n, 20);
  auto fail = [&](const std::string& why) {
    c.kind = ConditionMethod::failed;
    c.lambda_min = c.condition_number = c.lambda_min_error = std::numeric_limits<double>::quiet_NaN();
    c.method = why;
    return c;
  };
  // One Lanczos run for the largest eigenvalue of `dop`: its value and unit eigenvector, or the reason it
  // failed.
  auto largest = [&](detail::DoubleOperator<Op>& dop, double& value, Vec<double>* vector, std::string& why) {
    Spectra::SymEigsSolver<detail::DoubleOperator<Op>> solver(dop, 1, ncv);
    solver.init();
    std::string thrown;
    try {
      solver.compute(Spectra::SortRule::LargestAlge, max_restarts, tolerance);
    } catch (const std::exception& e) {
      thrown = e.what();
    }
    c.matvecs += dop.count();
    if (dop.first_non_finite()) {  // the cause, also when Spectra then threw
      why = "the operator returned NaN or Inf at product " + std::to_string(dop.first_non_finite());
      return false;
    }
    if (!thrown.empty()) {
      why = "Spectra threw: " + thrown;
      return false;
    }
    if (solver.info() != Spectra::CompInfo::Successful) {
      why = "did not converge within " + std::to_string(max_restarts) + " restarts (tolerance " +
            detail::format_number(tolerance) + ")";
      return false;
    }
    value = solver.eigenvalues()[0];
    if (vector) *vector = solver.eigenvectors().col(0);
    return true;
  };
  std::string why;
  detail::DoubleOperator<Op> top(op);
  if (std::isfinite(known_lambda_max)) {  // from a spectrum already computed: no products
    c.lambda_max = known_lambda_max;
  } else if (!largest(top, c.lambda_max, nullptr, why)) {
    fail("failed: the largest eigenvalue: " + why);
    c.lambda_max = std::numeric_limits<double>::quiet_NaN();
    return c;
  }
  if (rank_bound >= 0 && rank_bound < n) {
    c.kind = ConditionMethod::rank_bound;
    c.lambda_min = 0;
    c.lambda_min_error = 0;
    c.exact_min = true;
    c.method =
        "rank bound: rank <= " + std::to_string(rank_bound) + " < " + std::to_string(n) + " parameters";
    c.condition_number = std::numeric_limits<double>::infinity();
    return c;
  }
  detail::DoubleOperator<Op> shifted(op, c.lambda_max, -1.0);  // λ_max I − A
  double theta = 0;
  Vec<double> u;
  if (!largest(shifted, theta, &u, why)) return fail("unknown: Lanczos on lambda_max*I - A " + why);
  c.kind = ConditionMethod::lanczos;
  c.lambda_min = c.lambda_max - theta;
  // ‖A u − λ_min u‖ for the unit Ritz vector u: some eigenvalue of A lies within it of λ_min.
  Vec<double> Au(n);
  top.perform_op(u.data(), Au.data());
  ++c.matvecs;
  c.lambda_min_error = (Au - c.lambda_min * u).norm();
  if (!std::isfinite(c.lambda_min_error))
    return fail("unknown: the residual of the smallest Ritz pair is not finite");
  c.method =
      "Lanczos on lambda_max*I - A; |lambda_min error| <= " + detail::format_number(c.lambda_min_error);
  c.condition_number =
      c.lambda_min > 0 ? c.lambda_max / c.lambda_min : std::numeric_limits<double>::infinity();
  return c;
}

}  // namespace

ConditionEstimate condition_number(const OperatorRef<float>& op, Index rank_bound, double tolerance,
                                   Index max_restarts, double known_lambda_max) {
  return estimate(op, rank_bound, tolerance, max_restarts, known_lambda_max);
}

ConditionEstimate condition_number(const OperatorRef<double>& op, Index rank_bound, double tolerance,
                                   Index max_restarts, double known_lambda_max) {
  return estimate(op, rank_bound, tolerance, max_restarts, known_lambda_max);
}

}  // namespace natgrad
