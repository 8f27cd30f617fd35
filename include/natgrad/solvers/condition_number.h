/// \file condition_number.h
/// \brief λ_max, λ_min and their ratio for a symmetric positive semi-definite operator, with an honest
/// accuracy for λ_min.
///
/// \code
/// natgrad::ConditionEstimate c = natgrad::condition_number(F);   // F with its damping
/// std::cout << c.condition_number << " (" << c.method << ")\n";
/// \endcode
#pragma once

#include <natgrad/core/types.h>
#include <natgrad/solvers/operator_ref.h>

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
  double lambda_max = 0;  ///< of the operator
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

/// The estimate for the operator view (operator_ref.h): the body every condition_number call runs, compiled
/// in the library for float and double.
ConditionEstimate condition_number(const OperatorRef<float>& op, Index rank_bound, double tolerance,
                                   Index max_restarts, double known_lambda_max);
ConditionEstimate condition_number(const OperatorRef<double>& op, Index rank_bound, double tolerance,
                                   Index max_restarts, double known_lambda_max);

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
  NATGRAD_CHECK_SOLVER_SCALAR(typename Op::Scalar);
  return condition_number(OperatorRef<typename Op::Scalar>(op), rank_bound, tolerance, max_restarts,
                          known_lambda_max);
}

}  // namespace natgrad
