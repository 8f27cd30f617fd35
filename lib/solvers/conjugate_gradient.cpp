// conjugate_gradient's body, compiled for float and double behind the operator and preconditioner views
// (operator_ref.h); its stopping rules and the iterate it returns are documented in conjugate_gradient.h.
#include <natgrad/core/interrupted.h>
#include <natgrad/solvers/conjugate_gradient.h>

#include <chrono>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>

#include "core/format_number.h"
#include "solvers/cg_kernels.h"

namespace natgrad {

namespace {

template <typename Scalar>
CgSummary solve(const OperatorRef<Scalar>& A, const PreconditionerRef<Scalar>& M, const Scalar* b_in,
                Scalar* x_out, const CgOptions& options, CgWorkspace<Scalar>& ws) {
  std::string why;
  if (!options.is_valid(&why)) throw std::invalid_argument("CgOptions: " + why);
  const Index n = A.rows();
  const bool identity = M.is_identity();
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
  if (std::isnan(true_rel) || x_moved) {  // the returned iterate's true residual is not known yet
    if (!options.recompute_residual_at_exit) {
      true_rel = s.recursive_relative_residual;
    } else {
      try {
        true_rel = true_residual();
      } catch (const Interrupted& e) {  // (the solve ended by its own rule; only the check was stopped)
        true_rel = nan;
        s.message += std::string("; the true residual was not recomputed: ") + e.what();
      }
    }
  }
  s.relative_residual = true_rel;
  s.time_s = elapsed();
  return s;
}

}  // namespace

CgSummary conjugate_gradient(const OperatorRef<float>& A, const PreconditionerRef<float>& M, const float* b,
                             float* x, const CgOptions& options, CgWorkspace<float>& ws) {
  return solve(A, M, b, x, options, ws);
}

CgSummary conjugate_gradient(const OperatorRef<double>& A, const PreconditionerRef<double>& M,
                             const double* b, double* x, const CgOptions& options, CgWorkspace<double>& ws) {
  return solve(A, M, b, x, options, ws);
}

}  // namespace natgrad
