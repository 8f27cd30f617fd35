/// \file conjugate_gradient.h
/// \brief Damped, preconditioned conjugate gradient for A x = b with A symmetric positive (semi)definite.
///
/// A free function template over (operator, preconditioner) with caller-provided workspace: it allocates
/// nothing but the Summary's histories. It minimizes the quadratic model
/// \f[ \varphi(x) = \tfrac12 x^\top A x - b^\top x, \f]
/// whose value is tracked for free as φ(x) = −½ xᵀ(b + r) with r = b − A x.
///
/// Stopping (whichever comes first):
///   - converged:          ‖r‖ ≤ relative_tolerance · ‖b‖;
///   - relative_progress:  Martens' rule (2010, §4.4), on when `use_relative_progress`: with
///                         k = max(10, ⌈0.1 i⌉), stop when i > k, φ_i < 0 and (φ_i − φ_{i−k}) / φ_i < k ε;
///   - max_iterations;
///   - breakdown:          pᵀAp ≤ 0 or not finite (A indefinite, singular along p, or NaN);
/// On breakdown and at the iteration limit x is the iterate with the smallest residual seen (for a singular
/// or inconsistent system the residual is not monotone), and the Summary says which — never thrown, never
/// silent;
///   - user_stop:          the iteration callback returned CallbackResult::stop.
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
#include <natgrad/solvers/cg_kernels.h>
#include <natgrad/solvers/operator_concept.h>
#include <natgrad/solvers/preconditioner.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <functional>
#include <string>
#include <type_traits>
#include <vector>

namespace natgrad {

namespace detail {
/// A number for a CG message: 4 significant digits, exponent when needed (1e-12 must not print as 0.000000).
inline std::string cg_number(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.4g", v);
  return buf;
}
}  // namespace detail

enum class CgTermination { converged, relative_progress, max_iterations, breakdown, user_stop };
const char* to_string(CgTermination t);

enum class CallbackResult { keep_going, stop };

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
  double relative_residual = 0;           ///< final ‖r‖ / ‖b‖ (recursively updated residual)
  std::vector<double> residual_history;   ///< ‖r_i‖ / ‖b‖, i = 0 … iterations
  std::vector<double> quadratic_history;  ///< φ(x_i), i = 0 … iterations
  Index returned_iterate = 0;  ///< which iterate x is (the best one after a breakdown or the limit)
  double time_s = 0;

  /// converged or relative_progress: the solution is usable as asked.
  bool is_converged() const {
    return termination == CgTermination::converged || termination == CgTermination::relative_progress;
  }
  std::string brief_report() const;
  std::string full_report() const;
};

/// Vectors CG needs, sized once for n unknowns and reused across solves.
template <typename Scalar>
struct CgWorkspace {
  explicit CgWorkspace(Index n = 0) { resize(n); }
  void resize(Index n) {
    r.resize(n);
    z.resize(n);
    p.resize(n);
    Ap.resize(n);
    best.resize(n);
  }
  Vec<Scalar> r, z, p, Ap, best;
};

/// Solves A x = b. `b` and `x` hold A.rows() scalars; x is the initial guess when options.warm_start,
/// and the result on return. Throws std::invalid_argument only for invalid options or a workspace of the
/// wrong size.
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
  if (ws.r.size() != n)
    throw std::invalid_argument("CgWorkspace has size " + std::to_string(ws.r.size()) +
                                " but the operator has " + std::to_string(n) + " rows");
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

  // r = b − A x
  if (options.warm_start) {
    A.perform_op(x.data(), ws.Ap.data());
    ++s.operator_applications;
    ws.r = b - ws.Ap;
  } else {
    x.setZero();
    ws.r = b;
  }
  auto phi = [&] { return -0.5 * double(x.dot(b + ws.r)); };  // φ = ½xᵀAx − bᵀx with Ax = b − r
  double rel = double(ws.r.norm()) / s.rhs_norm;
  s.residual_history.push_back(rel);
  s.quadratic_history.push_back(phi());
  s.relative_residual = rel;
  if (!std::isfinite(rel)) {
    s.termination = CgTermination::breakdown;
    s.message = "the initial residual b - A x0 is not finite (NaN or Inf in the operator or x0)";
    s.time_s = elapsed();
    return s;
  }
  if (rel <= options.relative_tolerance) {
    s.termination = CgTermination::converged;
    s.message = "the initial guess already meets the tolerance: |r|/|b| = " + detail::cg_number(rel);
    s.time_s = elapsed();
    return s;
  }

  // With the identity preconditioner z = r: no copy, and rᵀz is the ‖r‖² the residual update returns.
  constexpr bool identity = std::is_same<Preconditioner, IdentityPreconditioner<Scalar>>::value;
  const Scalar* z = identity ? ws.r.data() : ws.z.data();
  if (!identity) M.apply(ws.r.data(), ws.z.data());
  ++s.preconditioner_applications;
  detail::cg_copy(ws.p.data(), z, n);
  double rz = detail::cg_dot(ws.r.data(), z, n);
  s.termination = CgTermination::max_iterations;
  double best_rel = rel;
  // The best iterate is x itself while best_iter is the current iterate; ws.best holds it only once a later
  // step fails to improve on it (copied just before x moves on), so improving steps copy nothing.
  Index best_iter = 0;
  for (Index i = 1; i <= options.max_iterations; ++i) {
    A.perform_op(ws.p.data(), ws.Ap.data());
    ++s.operator_applications;
    const double pAp = detail::cg_dot(ws.p.data(), ws.Ap.data(), n);
    if (!(pAp > 0) || !std::isfinite(pAp) || !std::isfinite(rz)) {
      s.termination = CgTermination::breakdown;
      s.message = "breakdown at iteration " + std::to_string(i) + ": p^T A p = " + detail::cg_number(pAp) +
                  (std::isfinite(pAp) ? " <= 0 (the operator is indefinite or singular along p; add damping)"
                                      : " is not finite (NaN or Inf in the operator)");
      break;
    }
    const double alpha = rz / pAp;
    const double rr = detail::cg_update_residual(ws.r.data(), ws.Ap.data(), Scalar(alpha), n);  // r −= α Ap
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
    s.relative_residual = rel;
    s.residual_history.push_back(rel);
    s.quadratic_history.push_back(phi_i);
    if (options.callback) {
      CgIterationInfo info{i, rel, phi_i, alpha, elapsed()};
      if (options.callback(info) == CallbackResult::stop) {
        s.termination = CgTermination::user_stop;
        s.message = "stopped by the callback at iteration " + std::to_string(i) +
                    ", |r|/|b| = " + detail::cg_number(rel);
        break;
      }
    }
    if (rel <= options.relative_tolerance) {
      s.termination = CgTermination::converged;
      s.message = "|r|/|b| = " + detail::cg_number(rel) +
                  " <= " + detail::cg_number(options.relative_tolerance) + " after " + std::to_string(i) +
                  " iterations";
      break;
    }
    if (options.use_relative_progress) {
      const Index k = std::max<Index>(10, static_cast<Index>(std::ceil(0.1 * double(i))));
      if (i > k && phi_i < 0) {
        const double progress = (phi_i - s.quadratic_history[static_cast<std::size_t>(i - k)]) / phi_i;
        if (progress < double(k) * options.progress_epsilon) {
          s.termination = CgTermination::relative_progress;
          s.message = "relative progress of phi over the last " + std::to_string(k) + " iterations is " +
                      detail::cg_number(progress) +
                      " < k*eps = " + detail::cg_number(double(k) * options.progress_epsilon) +
                      " at iteration " + std::to_string(i) + ", |r|/|b| = " + detail::cg_number(rel);
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
    detail::cg_update_direction(ws.p.data(), z, Scalar(rz_new / rz), n);  // p = z + β p
    rz = rz_new;
  }
  if (s.termination == CgTermination::max_iterations)
    s.message = "reached max_iterations = " + std::to_string(options.max_iterations) +
                " with |r|/|b| = " + detail::cg_number(rel) + " > " +
                detail::cg_number(options.relative_tolerance);
  s.returned_iterate = s.iterations;
  if ((s.termination == CgTermination::breakdown || s.termination == CgTermination::max_iterations) &&
      best_iter != s.iterations) {
    detail::cg_copy(x.data(), ws.best.data(), n);
    s.returned_iterate = best_iter;
    s.relative_residual = best_rel;
    s.message += "; returned iterate " + std::to_string(best_iter) +
                 " (|r|/|b| = " + detail::cg_number(best_rel) + "), the one with the smallest residual";
  } else if (s.termination == CgTermination::breakdown) {
    s.message +=
        "; returned iterate " + std::to_string(s.iterations) + ", the one with the smallest residual";
  }
  s.time_s = elapsed();
  return s;
}

}  // namespace natgrad
