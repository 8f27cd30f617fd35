/// \file condition_number.h
/// \brief λ_max, λ_min and their ratio for a symmetric positive semi-definite operator, with an honest
/// accuracy for λ_min.
///
/// \code
/// natgrad::ConditionEstimate c = natgrad::condition_number(F);   // F with its damping
/// std::cout << c.condition_number << " (" << c.method << ")\n";
/// \endcode
#pragma once

#include <natgrad/core/detail/format_number.h>
#include <natgrad/core/types.h>
#include <natgrad/solvers/detail/arnoldi_op.h>
#include <natgrad/solvers/detail/double_operator.h>
#include <natgrad/solvers/operator_concept.h>

#include <Spectra/SymEigsSolver.h>

#include <cmath>
#include <limits>
#include <string>

namespace natgrad {

/// How ConditionEstimate::lambda_min was obtained.
enum class ConditionMethod {
  rank_bound,  ///< λ_min = 0 exactly: the operator's rank is provably below its size
  lanczos,     ///< from Lanczos on λ_max·I − A, with the error bound lambda_min_error
  failed,      ///< unknown (Lanczos did not converge, threw, or met NaN/Inf): λ_min and the ratio are NaN
};
const char* to_string(ConditionMethod m);

struct ConditionEstimate {
  double lambda_max = 0;        ///< of the operator
  double lambda_min = 0;
  double condition_number = 0;  ///< λ_max / λ_min of the operator as given
  ConditionMethod kind = ConditionMethod::failed;
  /// |λ_min − (an eigenvalue of A)| ≤ lambda_min_error: the residual ‖A u − λ_min u‖ of the returned unit
  /// Ritz vector u, computed with one more product (so it includes the operator's own rounding, about
  /// ε·λ_max for a float operator). 0 for rank_bound, NaN when failed.
  double lambda_min_error = std::numeric_limits<double>::quiet_NaN();
  /// True only for rank_bound: λ_min is known exactly, not estimated.
  bool exact_min = false;
  std::string method;  ///< how λ_min was obtained, in words, with the numbers
  Index matvecs = 0;

  /// One line: the ratio, λ_max, λ_min with its error bound, and how it was obtained.
  std::string brief_report() const;
  /// Several lines, one per field.
  std::string full_report() const;
};

/// λ_max, λ_min and their ratio for a symmetric positive semi-definite operator. λ_min comes from Lanczos on
/// the shifted operator λ_max·I − A (its largest eigenvalue θ = λ_max − λ_min), applied in double on top of
/// the operator's products; λ_min = λ_max − θ cancels when λ_min ≪ λ_max, so its accuracy is reported as a
/// residual bound (lambda_min_error), never claimed exact. If the operator's rank is known to be below n
/// (`rank_bound` < n, e.g. N·C for a Fisher on N samples with C outputs), λ_min is 0 exactly and no Lanczos
/// is run for it. A finite `known_lambda_max` (the top eigenvalue top_eigenvalues() already found) is used
/// as λ_max without a Lanczos run of its own. Spectra's exceptions and NaN/Inf products end in
/// kind == failed with the reason in `method`; nothing is thrown.
template <typename Op>
ConditionEstimate condition_number(const Op& op, Index rank_bound = -1, double tolerance = 1e-10,
                                   Index max_restarts = 300,
                                   double known_lambda_max = std::numeric_limits<double>::quiet_NaN()) {
  NATGRAD_CHECK_OPERATOR(Op);
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
    c.method = "rank bound: rank <= " + std::to_string(rank_bound) + " < " + std::to_string(n) + " parameters";
    c.condition_number = std::numeric_limits<double>::infinity();
    return c;
  }
  detail::DoubleOperator<Op> shifted(op, c.lambda_max, -1.0);  // λ_max I − A
  double theta = 0;
  Vec<double> u;
  if (!largest(shifted, theta, &u, why))
    return fail("unknown: Lanczos on lambda_max*I - A " + why);
  c.kind = ConditionMethod::lanczos;
  c.lambda_min = c.lambda_max - theta;
  // ‖A u − λ_min u‖ for the unit Ritz vector u: some eigenvalue of A lies within it of λ_min.
  Vec<double> Au(n);
  top.perform_op(u.data(), Au.data());
  ++c.matvecs;
  c.lambda_min_error = (Au - c.lambda_min * u).norm();
  if (!std::isfinite(c.lambda_min_error))
    return fail("unknown: the residual of the smallest Ritz pair is not finite");
  c.method = "Lanczos on lambda_max*I - A; |lambda_min error| <= " + detail::format_number(c.lambda_min_error);
  c.condition_number = c.lambda_min > 0 ? c.lambda_max / c.lambda_min : std::numeric_limits<double>::infinity();
  return c;
}

}  // namespace natgrad
