/// \file conjugate_gradient.h
/// \brief Damped, preconditioned conjugate gradient for A x = b with A symmetric positive (semi)definite.
///
/// A free function template over (operator, preconditioner) with caller-provided workspace: it allocates
/// nothing but the Summary's histories. It minimizes the quadratic model
/// \f[ \varphi(x) = \tfrac12 x^\top A x - b^\top x, \f]
/// whose value is tracked for free as φ(x) = −½ xᵀ(b + r) with r = b − A x.
///
/// Stopping (whichever comes first):
///   - converged:          ‖b − A x‖ ≤ relative_tolerance · ‖b‖ for the true residual, recomputed with one
///   more
///                         product once the recursively updated one meets the tolerance;
///   - relative_progress:  Martens' rule (2010, §4.4), on when `use_relative_progress`: with
///                         k = max(10, ⌈0.1 i⌉), stop when i > k, φ_i < 0 and (φ_i − φ_{i−k}) / φ_i < k ε;
///   - max_iterations;
///   - breakdown:          pᵀAp ≤ 0 or not finite (A indefinite, singular along p, or NaN), or rᵀz not
///   finite;
///                         CgSummary::breakdown says which;
///   - stagnation:         the recursive residual met the tolerance but the true one did not, after
///                         CgOptions::kMaxRestarts residual replacements (the precision's attainable
///                         accuracy);
///   - user_stop:          the iteration callback returned CallbackResult::stop, or a product or the
///                         preconditioner threw natgrad::Interrupted (a stop request, core/interrupted.h): x
///                         is the last completed iteration's iterate, and relative_residual is NaN when no
///                         product could recompute it.
///
/// Which iterate x is on return (CgSummary::returned_iterate, and the message, say which):
///   - the last one, for every stop but a breakdown. For A positive (semi)definite, CG's iterate x_i
///     minimizes φ over x₀ + K_i(M⁻¹A, M⁻¹r₀), a space that grows with i, so φ(x_i) never increases while
///     ‖r_i‖ may: for A = diag(100, 1), b = (1, 10), x₁ = 0.505 b has ‖r₁‖ = 49.7 > ‖b‖ = 10.05 but
///     φ(x₁) = −25.5 < φ(0) = 0. The last iterate is the best one CG has by the measure it minimizes;
///   - after a breakdown, the iterate with the smallest residual seen: A was not positive definite along
///     some p (or produced NaN), so φ no longer orders the iterates.
/// Nothing numerical is thrown, nothing is silent.
///
/// \code
/// natgrad::CgOptions opt;
/// opt.relative_tolerance = 1e-4;
/// natgrad::CgWorkspace<float> ws(F.rows());
/// natgrad::Vec<float> x(F.rows());
/// natgrad::CgSummary s = natgrad::conjugate_gradient(F, natgrad::IdentityPreconditioner<float>(F.rows()),
///                                                    g.data(), x.data(), opt, ws);
/// std::cout << s.brief_report() << "\n";
/// \endcode
#pragma once

#include <natgrad/core/types.h>
#include <natgrad/solvers/callback_result.h>
#include <natgrad/solvers/operator_ref.h>
#include <natgrad/solvers/preconditioner.h>

#include <cstddef>
#include <functional>
#include <string>
#include <vector>

namespace natgrad {

enum class CgTermination { converged, relative_progress, max_iterations, breakdown, user_stop, stagnation };
const char* to_string(CgTermination t);

/// What failed when the termination is `breakdown`: a field to branch on, never the message.
enum class CgBreakdown {
  none,
  rhs_not_finite,               ///< b holds NaN or Inf
  initial_residual_not_finite,  ///< b − A x₀ holds NaN or Inf
  curvature_nonpositive,        ///< pᵀAp ≤ 0 and finite: A is indefinite or singular along p
  curvature_not_finite,         ///< pᵀAp is NaN or Inf: the operator produced NaN or Inf
  rz_not_finite,       ///< rᵀz is NaN or Inf with a finite positive pᵀAp: residual or preconditioner
  problem_not_finite,  ///< CG did not run: its caller found NaN or Inf first; x = 0
};
const char* to_string(CgBreakdown b);

/// What the callback sees after each iteration. While the callback runs, the caller's x already holds this
/// iteration's iterate x_i (x += αp is done; nothing moves x before the next iteration): a callback may read
/// it, for instance to keep some iterates (CG backtracking, training/optimizer.h), and must not write it.
struct CgIterationInfo {
  Index iteration = 0;           ///< 1-based
  double relative_residual = 0;  ///< ‖r‖ / ‖b‖
  double quadratic_model = 0;    ///< φ(x)
  double step_size = 0;          ///< α
  double elapsed_s = 0;
};

struct CgOptions {
  /// Stop when ‖b − A x‖ ≤ relative_tolerance · ‖b‖. Range (0, 1). Default 1e-6.
  double relative_tolerance = 1e-6;
  /// Maximum iterations (one operator application each). Range ≥ 1. Default 250.
  Index max_iterations = 250;
  /// Start from the x passed in (warm start) instead of 0. Default false.
  bool warm_start = false;
  /// Martens' relative-progress stop on φ. Default off.
  bool use_relative_progress = false;
  /// ε of that rule. Range > 0. Default 5e-4 (Martens).
  double progress_epsilon = 5e-4;
  /// At a stop other than convergence (which is always decided on the true residual), recompute ‖b − A x‖
  /// with one more product for CgSummary::relative_residual. Default true; false reports the recursive
  /// residual there instead and saves the product (a caller that does not read it: the training optimizer).
  bool recompute_residual_at_exit = true;
  /// Residual replacements allowed when the recursive residual meets the tolerance but the true one does not.
  static constexpr Index kMaxRestarts = 2;
  /// Called after every iteration; returning CallbackResult::stop ends the solve (user_stop). Optional.
  std::function<CallbackResult(const CgIterationInfo&)> callback;

  bool is_valid(std::string* why) const;
};

struct CgSummary {
  CgTermination termination = CgTermination::max_iterations;
  std::string message;  ///< why it stopped, with the numbers
  Index iterations = 0;
  Index operator_applications = 0;
  Index preconditioner_applications = 0;
  double rhs_norm = 0;  ///< ‖b‖
  /// ‖b − A x‖ / ‖b‖ of the returned x, recomputed at exit with one more product (counted in
  /// operator_applications): what "converged" is decided on. NaN when a stop request (natgrad::Interrupted)
  /// prevented that product; the recursive one at a stop other than convergence with
  /// CgOptions::recompute_residual_at_exit off.
  double relative_residual = 0;
  /// The recursively updated residual of the returned iterate, ‖r‖ / ‖b‖; drifts from the true one in
  /// finite precision.
  double recursive_relative_residual = 0;
  CgBreakdown breakdown = CgBreakdown::none;  ///< what failed, when termination == breakdown
  double breakdown_value = 0;                 ///< the failing quantity (pᵀAp or rᵀz)
  Index restarts = 0;                         ///< residual replacements (see CgOptions::kMaxRestarts)
  std::vector<double> residual_history;       ///< ‖r_i‖ / ‖b‖, i = 0 … iterations
  std::vector<double> quadratic_history;      ///< φ(x_i), i = 0 … iterations
  /// Which iterate x is: the last (`iterations`), except after a breakdown, where it is the one with the
  /// smallest residual.
  Index returned_iterate = 0;
  double time_s = 0;

  /// converged or relative_progress: the solution is usable as asked.
  bool is_converged() const {
    return termination == CgTermination::converged || termination == CgTermination::relative_progress;
  }
  /// A breakdown caused by NaN or Inf (not by an indefinite or singular operator): the result is meaningless.
  bool is_numerical_failure() const {
    return breakdown != CgBreakdown::none && breakdown != CgBreakdown::curvature_nonpositive;
  }
  std::string brief_report() const;
  std::string full_report() const;
};

/// Vectors CG needs, sized once for n unknowns and reused across solves. `preconditioned` false leaves z
/// empty: with IdentityPreconditioner CG uses r in its place (one parameter-sized vector less).
template <typename Scalar>
struct CgWorkspace {
  explicit CgWorkspace(Index n = 0, bool preconditioned = true) { resize(n, preconditioned); }
  void resize(Index n, bool preconditioned = true) {
    r.resize(n);
    z.resize(preconditioned ? n : 0);
    p.resize(n);
    Ap.resize(n);
    best.resize(n);
  }
  /// What resize(n, preconditioned) allocates: the five vectors below, z only when preconditioned.
  static std::size_t required_bytes(Index n, bool preconditioned) {
    return std::size_t(preconditioned ? 5 : 4) * static_cast<std::size_t>(n) * sizeof(Scalar);
  }
  Vec<Scalar> r, z, p, Ap, best;
};

/// Solves A x = b for the views (operator_ref.h): the body every conjugate_gradient call runs, compiled in
/// the library for float and double.
CgSummary conjugate_gradient(const OperatorRef<float>& A, const PreconditionerRef<float>& M, const float* b,
                             float* x, const CgOptions& options, CgWorkspace<float>& ws);
CgSummary conjugate_gradient(const OperatorRef<double>& A, const PreconditionerRef<double>& M,
                             const double* b, double* x, const CgOptions& options, CgWorkspace<double>& ws);

/// Solves A x = b. `b` and `x` hold A.rows() scalars; x is the initial guess when options.warm_start,
/// and the result on return. Throws std::invalid_argument only for invalid options or a workspace of the
/// wrong size; a natgrad::Interrupted thrown by A or M ends the solve (user_stop) and is not rethrown.
/// The operator's scalar is float or double.
template <typename Op, typename Preconditioner>
CgSummary conjugate_gradient(const Op& A, const Preconditioner& M, const typename Op::Scalar* b,
                             typename Op::Scalar* x, const CgOptions& options,
                             CgWorkspace<typename Op::Scalar>& ws) {
  NATGRAD_CHECK_OPERATOR(Op);
  using Scalar = typename Op::Scalar;
  NATGRAD_CHECK_SOLVER_SCALAR(Scalar);
  NATGRAD_CHECK_PRECONDITIONER(Preconditioner, Scalar);
  return conjugate_gradient(OperatorRef<Scalar>(A), PreconditionerRef<Scalar>(M), b, x, options, ws);
}

}  // namespace natgrad
