// multi_shift_conjugate_gradient's body, compiled for float and double behind the operator view
// (operator_ref.h); the recurrences, the finishing pass and the stopping rules are documented in
// multi_shift_cg.h.
#include <natgrad/core/interrupted.h>
#include <natgrad/solvers/multi_shift_cg.h>

#include <chrono>
#include <cmath>
#include <limits>
#include <new>
#include <stdexcept>
#include <string>
#include <vector>

#include "core/format_number.h"
#include "solvers/cg_kernels.h"

namespace natgrad {

namespace {

// The vectors of n scalars the call holds at its peak, the shared phase: x_j and p_j per system, and the base
// system's r, p and Ap. (The finishing pass holds m + 4: x_j, r, p, Ap and its CG's best iterate, after the
// p_j are freed.)
std::size_t peak_vectors(std::size_t m) { return 2 * m + 3; }

// A + σ I: a system's finishing solve.
template <typename S>
struct ShiftedOperator {
  using Scalar = S;
  const OperatorRef<S>& A;
  double shift;
  Index rows() const { return A.rows(); }
  Index cols() const { return A.rows(); }
  void perform_op(const S* x, S* y) const {
    A.perform_op(x, y);
    VecMap<S>(y, rows()) += S(shift) * ConstVecMap<S>(x, rows());
  }
};

template <typename Scalar>
std::vector<CgSummary> solve(const OperatorRef<Scalar>& A, const std::vector<double>& shifts,
                             const Scalar* b_in, std::vector<Vec<Scalar>>& x, const CgOptions& options,
                             Index* total_products) {
  std::string why;
  if (!options.is_valid(&why)) throw std::invalid_argument("CgOptions: " + why);
  if (options.warm_start)
    throw std::invalid_argument("multi-shift CG starts from x = 0: warm_start must be false");
  if (shifts.empty()) throw std::invalid_argument("multi-shift CG needs at least one shift");
  for (double s : shifts)
    if (!(s >= 0) || !std::isfinite(s))
      throw std::invalid_argument("multi-shift CG: every shift must be finite and >= 0, got " +
                                  detail::format_number(s));
  const auto start = std::chrono::steady_clock::now();
  auto elapsed = [&] {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  };
  const Index n = A.rows();
  const std::size_t m = shifts.size();
  // An allocation that fails says what the whole call needs (multi_shift_required_bytes).
  auto allocating = [&](auto&& allocate) {
    try {
      allocate();
    } catch (const std::bad_alloc&) {
      throw std::runtime_error(
          "out of memory allocating multi-shift CG's vectors (" + std::to_string(peak_vectors(m)) + " x " +
          std::to_string(n) + " scalars, " +
          detail::format_bytes(double(multi_shift_required_bytes(n, m, sizeof(Scalar)))) + ")");
    }
  };
  ConstVecMap<Scalar> b(b_in, n);
  allocating([&] {
    x.assign(m, Vec<Scalar>());
    for (Vec<Scalar>& xj : x) xj.setZero(n);  // (no temporary n-vector)
  });
  std::vector<CgSummary> s(m);
  const double bnorm = double(b.norm());
  for (CgSummary& si : s) si.rhs_norm = bnorm;
  auto finish_all = [&](CgTermination t, const std::string& message) {
    for (CgSummary& si : s) {
      si.termination = t;
      si.message = message;
      si.time_s = elapsed();
    }
    return s;
  };
  if (!std::isfinite(bnorm)) {
    for (CgSummary& si : s) si.breakdown = CgBreakdown::rhs_not_finite;
    return finish_all(CgTermination::breakdown, "the right-hand side contains NaN or Inf");
  }
  if (bnorm == 0) {
    for (CgSummary& si : s) si.residual_history = si.quadratic_history = {0.0};
    return finish_all(CgTermination::converged, "b = 0, so x = 0");
  }

  // The base system's CG vectors, and per shift its direction p_j and the recurrences' ζ_j (this step and
  // the previous one).
  Vec<Scalar> r, p, Ap;
  std::vector<Vec<Scalar>> pj(m);
  allocating([&] {
    r = b;
    p = b;
    Ap.resize(n);
    for (Vec<Scalar>& v : pj) v = b;
  });
  std::vector<double> zeta(m, 1.0), zeta_prev(m, 1.0);
  std::vector<bool> active(m, true);
  for (CgSummary& si : s) {
    si.residual_history.push_back(1.0);
    si.quadratic_history.push_back(0.0);
    si.termination = CgTermination::max_iterations;
  }
  double rr = double(r.squaredNorm()), alpha_prev = 1, beta_prev = 0;
  std::size_t remaining = m;
  Index products = 0, i = 0;
  // A stop request (natgrad::Interrupted from a product, core/interrupted.h) stops every system still
  // running with its last completed iterate (x_j moves only after the product), as the callback's stop does;
  // no product runs after it.
  std::string interruption;
  while (remaining > 0 && i < options.max_iterations) {
    ++i;
    try {
      A.perform_op(p.data(), Ap.data());
    } catch (const Interrupted& e) {
      interruption = e.what();
      for (std::size_t j = 0; j < m; ++j)
        if (active[j]) {
          s[j].termination = CgTermination::user_stop;
          s[j].message = "interrupted after " + std::to_string(s[j].iterations) + " iterations (" +
                         interruption +
                         "), recursive |r|/|b| = " + detail::format_number(s[j].recursive_relative_residual);
          active[j] = false;
        }
      break;
    }
    ++products;
    const double pAp = detail::cg_dot(p.data(), Ap.data(), n);
    if (!std::isfinite(pAp) || !(pAp > 0)) {
      const std::string message =
          "breakdown at iteration " + std::to_string(i) + ": p^T A p = " + detail::format_number(pAp) +
          (std::isfinite(pAp) ? " <= 0 (the operator is indefinite or singular along p; add damping)"
                              : " is not finite (NaN or Inf in the operator)");
      for (std::size_t j = 0; j < m; ++j)
        if (active[j]) {
          s[j].termination = CgTermination::breakdown;
          s[j].breakdown =
              std::isfinite(pAp) ? CgBreakdown::curvature_nonpositive : CgBreakdown::curvature_not_finite;
          s[j].breakdown_value = pAp;
          s[j].message = message;
          s[j].operator_applications = products;
          active[j] = false;
        }
      break;
    }
    const double alpha = rr / pAp;
    // ζ_{k+1} = ζ_k ζ_{k−1} α_{k−1} / (α_k β_{k−1} (ζ_{k−1} − ζ_k) + ζ_{k−1} α_{k−1} (1 + σ α_k))
    std::vector<double> zeta_next(m, 0.0);
    for (std::size_t j = 0; j < m; ++j) {
      if (!active[j]) continue;
      zeta_next[j] = zeta[j] * zeta_prev[j] * alpha_prev /
                     (alpha * beta_prev * (zeta_prev[j] - zeta[j]) +
                      zeta_prev[j] * alpha_prev * (1 + shifts[j] * alpha));
      const double alpha_j = alpha * zeta_next[j] / zeta[j];
      x[j] += Scalar(alpha_j) * pj[j];
    }
    const double rr_new = detail::cg_update_residual(r.data(), Ap.data(), Scalar(alpha), n);  // r −= α Ap
    const double beta = rr_new / rr;
    const double rnorm = std::sqrt(rr_new);
    for (std::size_t j = 0; j < m; ++j) {
      if (!active[j]) continue;
      const double ratio = zeta_next[j] / zeta[j];
      pj[j] = Scalar(zeta_next[j]) * r + Scalar(beta * ratio * ratio) * pj[j];
      zeta_prev[j] = zeta[j];
      zeta[j] = zeta_next[j];
      const double rel = std::abs(zeta[j]) * rnorm / bnorm;
      s[j].iterations = i;
      s[j].recursive_relative_residual = rel;
      s[j].residual_history.push_back(rel);
      // φ_j = −½ x_jᵀ(b + r_j) with r_j = ζ_j r
      s[j].quadratic_history.push_back(-0.5 * (double(x[j].dot(b)) + zeta[j] * double(x[j].dot(r))));
      if (!std::isfinite(rel)) {
        s[j].termination = CgTermination::breakdown;
        s[j].breakdown = CgBreakdown::rz_not_finite;
        s[j].breakdown_value = rel;
        s[j].message = "breakdown at iteration " + std::to_string(i) + ": the shifted residual is not finite";
        active[j] = false;
        --remaining;
      } else if (rel <= options.relative_tolerance) {
        s[j].termination = CgTermination::converged;
        active[j] = false;
        --remaining;
      }
      s[j].operator_applications = products;
      s[j].preconditioner_applications = i;
    }
    detail::cg_update_direction(p.data(), r.data(), Scalar(beta), n);  // p = r + β p
    rr = rr_new;
    alpha_prev = alpha;
    beta_prev = beta;
    if (options.callback) {
      const double rel0 = rnorm / bnorm;
      CgIterationInfo info{i, rel0, 0.0, alpha, elapsed()};
      if (remaining > 0 && options.callback(info) == CallbackResult::stop) {
        for (std::size_t j = 0; j < m; ++j)
          if (active[j]) {
            s[j].termination = CgTermination::user_stop;
            s[j].message = "stopped by the callback at iteration " + std::to_string(i) +
                           ", |r|/|b| = " + detail::format_number(s[j].recursive_relative_residual);
            active[j] = false;
          }
        break;
      }
    }
  }
  // The search directions are done with; r, p and Ap become a finishing CG's workspace (below), so a
  // finishing solve needs one vector more (its best iterate) than the m freed here.
  pj.clear();
  pj.shrink_to_fit();
  CgWorkspace<Scalar> ws(0, false);
  ws.r = std::move(r);
  ws.p = std::move(p);
  auto limit_message = [&](std::size_t j) {
    return "reached max_iterations = " + std::to_string(options.max_iterations) +
           " with |r|/|b| = " + detail::format_number(s[j].recursive_relative_residual) + " > " +
           detail::format_number(options.relative_tolerance);
  };
  // Each system's true residual, from one product (none after a stop request: NaN, and a system whose
  // recursive residual converged cannot be confirmed, so it stopped).
  for (std::size_t j = 0; j < m; ++j) {
    s[j].returned_iterate = s[j].iterations;
    if (interruption.empty()) {
      try {
        A.perform_op(x[j].data(), Ap.data());
        ++s[j].operator_applications;
        ++products;
      } catch (const Interrupted& e) {
        interruption = e.what();
      }
    }
    if (!interruption.empty()) {
      s[j].relative_residual = std::numeric_limits<double>::quiet_NaN();
      if (s[j].termination == CgTermination::converged) {
        s[j].termination = CgTermination::user_stop;
        s[j].message = "interrupted before the true residual was checked (" + interruption + ")";
      } else if (s[j].termination != CgTermination::user_stop) {
        if (s[j].termination == CgTermination::max_iterations) s[j].message = limit_message(j);
        s[j].message += "; the true residual was not recomputed: " + interruption;
      }
      s[j].time_s = elapsed();
      continue;
    }
    Ap = b - Ap - Scalar(shifts[j]) * x[j];  // (element-wise: no temporary)
    const double true_rel = double(Ap.norm()) / bnorm;
    s[j].relative_residual = true_rel;
    if (s[j].termination == CgTermination::converged) {
      if (true_rel <= options.relative_tolerance) {
        s[j].message = "|b - A x|/|b| = " + detail::format_number(true_rel) +
                       " <= " + detail::format_number(options.relative_tolerance) + " after " +
                       std::to_string(s[j].iterations) + " iterations (multi-shift)";
      } else if (s[j].iterations >= options.max_iterations) {
        s[j].termination = CgTermination::max_iterations;
        s[j].message = "the recursive residual reached " +
                       detail::format_number(s[j].recursive_relative_residual) +
                       " but the true |b - A x|/|b| = " + detail::format_number(true_rel) + " > " +
                       detail::format_number(options.relative_tolerance) + " at the iteration limit";
      } else {
        // Finish this system alone: CG on A + σ_j I from x_j (its own residual replacements allowed).
        const ShiftedOperator<Scalar> shifted{A, shifts[j]};
        CgOptions finish = options;
        finish.warm_start = true;
        finish.max_iterations = options.max_iterations - s[j].iterations;
        finish.callback = nullptr;
        ws.Ap = std::move(Ap);
        ws.best.resize(n);
        const IdentityPreconditioner<Scalar> identity(n);
        const CgSummary f = conjugate_gradient(
            OperatorRef<Scalar>(shifted), PreconditionerRef<Scalar>(identity), b_in, x[j].data(), finish, ws);
        const double shared_rel = true_rel;
        s[j].termination = f.termination;
        s[j].iterations += f.iterations;
        s[j].operator_applications += f.operator_applications;
        products += f.operator_applications;
        s[j].restarts = 1 + f.restarts;
        s[j].relative_residual = f.relative_residual;
        s[j].recursive_relative_residual = f.recursive_relative_residual;
        s[j].breakdown = f.breakdown;
        s[j].breakdown_value = f.breakdown_value;
        s[j].returned_iterate = s[j].iterations - f.iterations + f.returned_iterate;
        for (std::size_t h = 1; h < f.residual_history.size(); ++h) {
          s[j].residual_history.push_back(f.residual_history[h]);
          s[j].quadratic_history.push_back(f.quadratic_history[h]);
        }
        Ap = std::move(ws.Ap);
        s[j].message = "multi-shift CG's true |b - A x|/|b| = " + detail::format_number(shared_rel) +
                       " fell short of " + detail::format_number(options.relative_tolerance) +
                       "; CG from its iterate: " + f.message;
      }
    } else if (s[j].termination == CgTermination::max_iterations) {
      s[j].message = limit_message(j);
    }
    s[j].time_s = elapsed();
  }
  if (total_products) *total_products = products;
  return s;
}

}  // namespace

std::size_t multi_shift_required_bytes(Index n, std::size_t shifts, std::size_t scalar_bytes) {
  return peak_vectors(shifts) * static_cast<std::size_t>(n) * scalar_bytes;
}

std::vector<CgSummary> multi_shift_conjugate_gradient(const OperatorRef<float>& A,
                                                      const std::vector<double>& shifts, const float* b,
                                                      std::vector<Vec<float>>& x, const CgOptions& options,
                                                      Index* total_products) {
  return solve(A, shifts, b, x, options, total_products);
}

std::vector<CgSummary> multi_shift_conjugate_gradient(const OperatorRef<double>& A,
                                                      const std::vector<double>& shifts, const double* b,
                                                      std::vector<Vec<double>>& x, const CgOptions& options,
                                                      Index* total_products) {
  return solve(A, shifts, b, x, options, total_products);
}

}  // namespace natgrad
