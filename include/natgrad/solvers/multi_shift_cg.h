/// \file multi_shift_cg.h
/// \brief Several shifted systems (A + σ_j I) x_j = b from one Krylov space: multi-shift conjugate gradient.
///
/// The Krylov space of A + σ I does not depend on σ, and CG's residuals for every shift are collinear with
/// those of the base system A x = b: r_k(σ) = ζ_k(σ) r_k. So one CG on A (one product per iteration)
/// gives every shifted solution with a few scalar recurrences and two more vectors per shift (Jegerlehner
/// 1996, hep-lat/9612014; Frommer 2003). With A = F + λ_min I and σ_j = λ_j − λ_min ≥ 0, a list of dampings
/// costs the products of the smallest one alone; the larger shifts are better conditioned and converge
/// first, after which their vectors stop moving.
///
/// Each system stops when its recursive residual |ζ_k(σ)|·‖r_k‖ meets the tolerance; at exit its true
/// residual ‖b − (A + σ I) x‖ / ‖b‖ is recomputed with one product (counted), and `converged` is decided on
/// it as in conjugate_gradient(). In finite precision (float) the true residual can fall short of the
/// recursive one; a residual replacement would break the shared Krylov space, so such a system is finished
/// by conjugate_gradient() on its own shifted operator, warm-started from its iterate (its products counted,
/// `restarts` = 1 + CG's). There is no preconditioner (the shifted systems would no longer share a Krylov
/// space).
///
/// Each system returns its last iterate, as conjugate_gradient() does for every stop but a breakdown (the
/// last iterate has the lowest φ_j(x) = ½xᵀ(A + σ_j I)x − bᵀx: each shifted system's iterates minimize it
/// over the same growing Krylov space); the finishing CG applies conjugate_gradient()'s own rule. A breakdown
/// in the shared phase also returns the last iterate: a smallest-residual copy per shift would cost one more
/// vector each.
///
/// A stop request (natgrad::Interrupted thrown by a product) stops every running system as the callback's
/// stop does (user_stop, the last completed iterate); the true residuals it prevents are NaN.
///
/// \code
/// natgrad::CgOptions opt;                       // tolerance, iteration limit, callback (on the base system)
/// std::vector<double> shifts = {0.0, 9e-3, 9.9e-2};   // F + 1e-3 I, F + 1e-2 I, F + 1e-1 I
/// std::vector<natgrad::Vec<float>> x;
/// auto summaries = natgrad::multi_shift_conjugate_gradient(F, shifts, g.data(), x, opt);
/// \endcode
#pragma once

#include <natgrad/core/types.h>
#include <natgrad/solvers/conjugate_gradient.h>
#include <natgrad/solvers/operator_ref.h>

#include <cstddef>
#include <vector>

namespace natgrad {

/// What multi_shift_conjugate_gradient allocates at its peak for n unknowns and `shifts` systems of a scalar
/// of `scalar_bytes`: 2·shifts + 3 vectors of n — the solutions it sizes x to, each system's search
/// direction, and the base system's r, p and Ap. (A finishing CG reuses r, p and Ap and adds its best
/// iterate once the directions are freed: shifts + 4 vectors. The Summaries' histories, two doubles per
/// iteration and system, are not counted.) Its out-of-memory error quotes this figure.
std::size_t multi_shift_required_bytes(Index n, std::size_t shifts, std::size_t scalar_bytes);

/// Solves the shifted systems for the operator view (operator_ref.h): the body every
/// multi_shift_conjugate_gradient call runs, compiled in the library for float and double.
std::vector<CgSummary> multi_shift_conjugate_gradient(const OperatorRef<float>& A,
                                                      const std::vector<double>& shifts, const float* b,
                                                      std::vector<Vec<float>>& x, const CgOptions& options,
                                                      Index* total_products = nullptr);
std::vector<CgSummary> multi_shift_conjugate_gradient(const OperatorRef<double>& A,
                                                      const std::vector<double>& shifts, const double* b,
                                                      std::vector<Vec<double>>& x, const CgOptions& options,
                                                      Index* total_products = nullptr);

/// Solves (A + shifts[j] I) x[j] = b for every j (shifts ≥ 0, finite); x is resized to shifts.size()
/// vectors of A.rows(). options.warm_start must be false. The callback sees the base system (shift 0)
/// and may stop every system. Returns one CgSummary per shift, in the order given; each one's
/// operator_applications counts the shared products up to its stop plus its own residual check (and its
/// finishing CG, if any); `total_products`, if given, receives the products of the whole call.
template <typename Op>
std::vector<CgSummary> multi_shift_conjugate_gradient(const Op& A, const std::vector<double>& shifts,
                                                      const typename Op::Scalar* b,
                                                      std::vector<Vec<typename Op::Scalar>>& x,
                                                      const CgOptions& options,
                                                      Index* total_products = nullptr) {
  NATGRAD_CHECK_OPERATOR(Op);
  NATGRAD_CHECK_SOLVER_SCALAR(typename Op::Scalar);
  return multi_shift_conjugate_gradient(OperatorRef<typename Op::Scalar>(A), shifts, b, x, options,
                                        total_products);
}

}  // namespace natgrad
