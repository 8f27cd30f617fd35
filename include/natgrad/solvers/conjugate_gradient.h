/// \file conjugate_gradient.h
/// \brief Damped, preconditioned conjugate gradient for A x = b with A symmetric positive (semi)definite.
///
/// A free function template over (operator, preconditioner) with caller-provided workspace: it allocates
/// nothing but the Summary's histories. It minimizes the quadratic model
/// \f[ \varphi(x) = \tfrac12 x^\top A x - b^\top x, \f]
/// whose value is tracked for free as φ(x) = −½ xᵀ(b + r) with r = b − A x.
///
/// Stopping (whichever comes first):
///   - converged:          ‖b − A x‖ ≤ relative_tolerance · ‖b‖ for the true residual, recomputed with one more
///                         product once the recursively updated one meets the tolerance;
///   - relative_progress:  Martens' rule (2010, §4.4), on when `use_relative_progress`: with
///                         k = max(10, ⌈0.1 i⌉), stop when i > k, φ_i < 0 and (φ_i − φ_{i−k}) / φ_i < k ε;
///   - max_iterations;
///   - breakdown:          pᵀAp ≤ 0 or not finite (A indefinite, singular along p, or NaN), or rᵀz not finite;
///                         CgSummary::breakdown says which;
///   - stagnation:         the recursive residual met the tolerance but the true one did not, after
///                         CgOptions::kMaxRestarts residual replacements (the precision's attainable accuracy);
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
/// std::cout << s.brief_report() << "\n";
/// \endcode
#pragma once

#include <natgrad/core/detail/format_number.h>
#include <natgrad/core/interrupted.h>
#include <natgrad/core/types.h>
#include <natgrad/solvers/callback_result.h>
#include <natgrad/solvers/detail/cg_kernels.h>
#include <natgrad/solvers/operator_concept.h>
#include <natgrad/solvers/preconditioner.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <functional>
#include <limits>
#include <string>
#include <type_traits>
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
  rz_not_finite,                ///< rᵀz is NaN or Inf with a finite positive pᵀAp: residual or preconditioner
  problem_not_finite,           ///< CG did not run: its caller found NaN or Inf first; x = 0
};
const char* to_string(CgBreakdown b);

/// What the callback sees after each iteration.
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
  double rhs_norm = 0;                    ///< ‖b‖
  /// ‖b − A x‖ / ‖b‖ of the returned x, recomputed at exit with one more product (counted in
  /// operator_applications): what "converged" is decided on. NaN when a stop request (natgrad::Interrupted)
  /// prevented that product.
  double relative_residual = 0;
  /// The recursively updated residual of the returned iterate, ‖r‖ / ‖b‖; drifts from the true one in
  /// finite precision.
  double recursive_relative_residual = 0;
  CgBreakdown breakdown = CgBreakdown::none;  ///< what failed, when termination == breakdown
  double breakdown_value = 0;                 ///< the failing quantity (pᵀAp or rᵀz)
  Index restarts = 0;                         ///< residual replacements (see CgOptions::kMaxRestarts)
  std::vector<double> residual_history;   ///< ‖r_i‖ / ‖b‖, i = 0 … iterations
  std::vector<double> quadratic_history;  ///< φ(x_i), i = 0 … iterations
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

/// Solves A x = b. `b` and `x` hold A.rows() scalars; x is the initial guess when options.warm_start,
/// and the result on return. Throws std::invalid_argument only for invalid options or a workspace of the
/// wrong size; a natgrad::Interrupted thrown by A or M ends the solve (user_stop) and is not rethrown.
template <typename Op, typename Preconditioner>
CgSummary conjugate_gradient(const Op& A, const Preconditioner& M, const typename Op::Scalar* b_in,
                             typename Op::Scalar* x_out, const CgOptions& options,
                             CgWorkspace<typename Op::Scalar>& ws) {
  NATGRAD_CHECK_OPERATOR(Op);
  using Scalar = typename Op::Scalar;
  NATGRAD_CHECK_PRECONDITIONER(Preconditioner, Scalar);
  std::string why;
  if (!options.is_valid(&why)) throw std::invalid_argument("CgOptions: " + why);
  const Index n = A.rows();
  constexpr bool identity = std::is_same<Preconditioner, IdentityPreconditioner<Scalar>>::value;
  if (ws.r.size() != n)
    throw std::invalid_argument("CgWorkspace has size " + std::to_string(ws.r.size()) +
                                " but the operator has " + std::to_string(n) + " rows");
  if (!identity && ws.z.size() != n)
    throw std::invalid_argument("CgWorkspace has no z of size " + std::to_string(n) +
                                " (a preconditioned solve needs resize(n, true))");
  const auto start = std::chrono::steady_clock::now();
  auto elapsed = [&] {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  };

  ConstVecMap<Scalar> b(b_in, n);
  VecMap<Scalar> x(x_out, n);
  CgSummary s;
  s.rhs_norm = double(b.norm());
  if (!std::isfinite(s.rhs_norm)) {
    x.setZero();
    s.termination = CgTermination::breakdown;
    s.breakdown = CgBreakdown::rhs_not_finite;
    s.breakdown_value = s.rhs_norm;
    s.message = "the right-hand side contains NaN or Inf";
    s.time_s = elapsed();
    return s;
  }
  if (s.rhs_norm == 0) {
    x.setZero();
    s.termination = CgTermination::converged;
    s.message = "b = 0, so x = 0";
    s.residual_history.push_back(0);
    s.quadratic_history.push_back(0);
    s.time_s = elapsed();
    return s;
  }

  auto phi = [&] { return -0.5 * double(x.dot(b + ws.r)); };  // φ = ½xᵀAx − bᵀx with Ax = b − r
  // With the identity preconditioner z = r: no copy, and rᵀz is the ‖r‖² the residual update returns.
  const Scalar* z = identity ? ws.r.data() : ws.z.data();
  double rz = 0;
  auto start_direction = [&] {  // p = z = M⁻¹ r
    if (!identity) M.apply(ws.r.data(), ws.z.data());
    ++s.preconditioner_applications;
    detail::cg_copy(ws.p.data(), z, n);
    rz = detail::cg_dot(ws.r.data(), z, n);
  };
  // ‖b − A x‖ / ‖b‖ recomputed from scratch (one product), into r: the recursively updated residual drifts
  // from it in finite precision, so convergence is decided on this one.
  auto true_residual = [&] {
    A.perform_op(x.data(), ws.Ap.data());
    ++s.operator_applications;
    ws.r = b - ws.Ap;
    return double(ws.r.norm()) / s.rhs_norm;
  };
  // rᵀz is NaN or Inf while pᵀAp was finite and positive: the residual or the preconditioner failed.
  auto rz_breakdown = [&](double value, double pAp, Index at) {
    s.termination = CgTermination::breakdown;
    s.breakdown = CgBreakdown::rz_not_finite;
    s.breakdown_value = value;
    s.message = "breakdown at iteration " + std::to_string(at) + ": r^T z = " + detail::format_number(value) +
                " is not finite" + (at > 0 ? " while p^T A p = " + detail::format_number(pAp) + " > 0" : "") +
                " (NaN or Inf in the residual or the preconditioner)";
  };
  // The state the loop leaves for the end (declared here: a stop request may leave the loop early).
  constexpr double nan = std::numeric_limits<double>::quiet_NaN();
  double rel = nan, true_rel = nan;
  // The best iterate (after a breakdown) is x itself while best_iter is the current iterate; ws.best holds
  // it only once a later step fails to improve on it (copied just before x moves on), so improving steps
  // copy nothing.
  double best_rel = nan;
  Index best_iter = 0, i = 0;
  // A stop request thrown by a product or the preconditioner (natgrad::Interrupted, core/interrupted.h) ends
  // the solve as the callback's stop does, with the iterate of the last completed iteration: x moves only
  // after its iteration's product. No product can run after it, so the true residual stays unknown (NaN).
  auto stop_on_interruption = [&](const Interrupted& e) {
    s.termination = CgTermination::user_stop;
    s.returned_iterate = s.iterations;
    s.recursive_relative_residual = rel;
    s.relative_residual = nan;
    s.message = "interrupted after " + std::to_string(s.iterations) + " iterations (" + e.what() +
                "); returned iterate " + std::to_string(s.iterations) +
                ", recursive |r|/|b| = " + detail::format_number(rel) +
                " (the true residual would need one more product)";
    s.time_s = elapsed();
    return s;
  };
  try {
    // r = b − A x
    if (options.warm_start) {
      A.perform_op(x.data(), ws.Ap.data());
      ++s.operator_applications;
      ws.r = b - ws.Ap;
    } else {
      x.setZero();
      ws.r = b;
    }
    rel = double(ws.r.norm()) / s.rhs_norm;
    s.residual_history.push_back(rel);
    s.quadratic_history.push_back(phi());
    s.relative_residual = s.recursive_relative_residual = rel;
    if (!std::isfinite(rel)) {
      s.termination = CgTermination::breakdown;
      s.breakdown = CgBreakdown::initial_residual_not_finite;
      s.breakdown_value = rel;
      s.message = "the initial residual b - A x0 is not finite (NaN or Inf in the operator or x0)";
      s.time_s = elapsed();
      return s;
    }
    if (rel <= options.relative_tolerance) {
      s.termination = CgTermination::converged;
      s.message = "the initial guess already meets the tolerance: |r|/|b| = " + detail::format_number(rel);
      s.time_s = elapsed();
      return s;
    }

    start_direction();
    s.termination = CgTermination::max_iterations;
    best_rel = rel;
    if (!std::isfinite(rz)) rz_breakdown(rz, 0, 0);
    while (s.termination != CgTermination::breakdown) {
      while (i < options.max_iterations) {
        ++i;
        A.perform_op(ws.p.data(), ws.Ap.data());
        ++s.operator_applications;
        const double pAp = detail::cg_dot(ws.p.data(), ws.Ap.data(), n);
        if (!std::isfinite(pAp) || !(pAp > 0)) {
          s.termination = CgTermination::breakdown;
          s.breakdown =
              std::isfinite(pAp) ? CgBreakdown::curvature_nonpositive : CgBreakdown::curvature_not_finite;
          s.breakdown_value = pAp;
          s.message =
              "breakdown at iteration " + std::to_string(i) + ": p^T A p = " + detail::format_number(pAp) +
              (std::isfinite(pAp) ? " <= 0 (the operator is indefinite or singular along p; add damping)"
                                  : " is not finite (NaN or Inf in the operator)");
          break;
        }
        const double alpha = rz / pAp;
        const double rr =
            detail::cg_update_residual(ws.r.data(), ws.Ap.data(), Scalar(alpha), n);  // r −= α Ap
        rel = std::sqrt(rr) / s.rhs_norm;
        if (rel < best_rel) {
          best_rel = rel;
          best_iter = i;
        } else if (best_iter == i - 1) {
          detail::cg_copy(ws.best.data(), x.data(), n);  // x_{i−1} stays the best: keep it before x moves on
        }
        const double phi_i = -0.5 * detail::cg_update_solution(x.data(), ws.p.data(), Scalar(alpha), b.data(),
                                                               ws.r.data(), n);  // x += α p; φ = −½ xᵀ(b + r)
        s.iterations = i;
        s.recursive_relative_residual = rel;
        s.residual_history.push_back(rel);
        s.quadratic_history.push_back(phi_i);
        if (options.callback) {
          CgIterationInfo info{i, rel, phi_i, alpha, elapsed()};
          if (options.callback(info) == CallbackResult::stop) {
            s.termination = CgTermination::user_stop;
            s.message = "stopped by the callback at iteration " + std::to_string(i) +
                        ", |r|/|b| = " + detail::format_number(rel);
            break;
          }
        }
        if (rel <= options.relative_tolerance) {
          s.termination = CgTermination::converged;
          break;
        }
        if (options.use_relative_progress) {
          const Index k = std::max<Index>(10, static_cast<Index>(std::ceil(0.1 * double(i))));
          if (i > k && phi_i < 0) {
            const double progress = (phi_i - s.quadratic_history[static_cast<std::size_t>(i - k)]) / phi_i;
            if (progress < double(k) * options.progress_epsilon) {
              s.termination = CgTermination::relative_progress;
              s.message = "relative progress of phi over the last " + std::to_string(k) + " iterations is " +
                          detail::format_number(progress) +
                          " < k*eps = " + detail::format_number(double(k) * options.progress_epsilon) +
                          " at iteration " + std::to_string(i) + ", |r|/|b| = " + detail::format_number(rel);
              break;
            }
          }
        }
        double rz_new = rr;
        if (!identity) {
          M.apply(ws.r.data(), ws.z.data());
          rz_new = detail::cg_dot(ws.r.data(), z, n);
        }
        ++s.preconditioner_applications;
        if (!std::isfinite(rz_new)) {
          rz_breakdown(rz_new, pAp, i);
          break;
        }
        detail::cg_update_direction(ws.p.data(), z, Scalar(rz_new / rz), n);  // p = z + β p
        rz = rz_new;
      }
      if (s.termination != CgTermination::converged) break;
      // The recursive residual says converged: check the true one. If it falls short, restart from x with the
      // true residual (residual replacement), while iterations and restarts remain.
      true_rel = true_residual();
      if (true_rel <= options.relative_tolerance) {
        s.message = "|b - A x|/|b| = " + detail::format_number(true_rel) +
                    " <= " + detail::format_number(options.relative_tolerance) + " after " +
                    std::to_string(i) + " iterations" +
                    (s.restarts ? " and " + std::to_string(s.restarts) + " residual replacements" : "");
        break;
      }
      if (i >= options.max_iterations || s.restarts >= CgOptions::kMaxRestarts) {
        s.termination =
            i >= options.max_iterations ? CgTermination::max_iterations : CgTermination::stagnation;
        s.message = "the recursive residual reached " + detail::format_number(rel) +
                    " but the true |b - A x|/|b| = " + detail::format_number(true_rel) + " > " +
                    detail::format_number(options.relative_tolerance) + " after " +
                    std::to_string(s.restarts) +
                    " residual replacements (the precision's attainable accuracy)";
        break;
      }
      ++s.restarts;
      rel = true_rel;
      best_rel = rel;
      best_iter = i;
      start_direction();
      s.termination = CgTermination::max_iterations;
      true_rel = std::numeric_limits<double>::quiet_NaN();
      if (!std::isfinite(rz)) rz_breakdown(rz, 0, i);
    }
  } catch (const Interrupted& e) {
    return stop_on_interruption(e);
  }
  if (s.termination == CgTermination::max_iterations && s.message.empty())
    s.message = "reached max_iterations = " + std::to_string(options.max_iterations) +
                " with |r|/|b| = " + detail::format_number(rel) + " > " +
                detail::format_number(options.relative_tolerance);
  // Every stop but a breakdown returns the last iterate: it has the lowest φ (see the file comment).
  s.returned_iterate = s.iterations;
  bool x_moved = false;
  if (s.termination == CgTermination::breakdown && best_iter != s.iterations) {
    detail::cg_copy(x.data(), ws.best.data(), n);
    x_moved = true;
    s.returned_iterate = best_iter;
    s.message += "; returned iterate " + std::to_string(best_iter) +
                 " (|r|/|b| = " + detail::format_number(best_rel) + "), the one with the smallest residual";
  } else if (s.termination == CgTermination::breakdown) {
    s.message +=
        "; returned iterate " + std::to_string(s.iterations) + ", the one with the smallest residual";
  } else if (s.termination == CgTermination::max_iterations) {
    s.message += "; returned the last iterate, " + std::to_string(s.iterations) +
                 " (phi = " + detail::format_number(s.quadratic_history.back()) +
                 ", the lowest: CG minimizes phi over a growing Krylov space)";
  }
  s.recursive_relative_residual = s.returned_iterate == s.iterations ? rel : best_rel;
  if (std::isnan(true_rel) || x_moved) {
    try {
      true_rel = true_residual();
    } catch (const Interrupted& e) {  // (the solve ended by its own rule; only the check was stopped)
      true_rel = nan;
      s.message += std::string("; the true residual was not recomputed: ") + e.what();
    }
  }
  s.relative_residual = true_rel;
  s.time_s = elapsed();
  return s;
}

}  // namespace natgrad
