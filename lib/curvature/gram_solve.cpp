// What the Gram gives exactly: the damped solves (F + λI)⁻¹g through the Woodbury identity, one Cholesky
// factorization of G + λI per λ, and F's nonzero spectrum from G's eigendecomposition.
#include <natgrad/core/threads.h>
#include <natgrad/curvature/fisher_gram.h>

#include <Eigen/Cholesky>
#include <Eigen/Eigenvalues>
#include <chrono>
#include <cmath>

#include "core/fail.h"
#include "core/format_number.h"
#include "solvers/tiled_cholesky.h"

namespace natgrad {

namespace {
double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}
}  // namespace

template <typename Scalar>
std::vector<GramSolution<Scalar>> FisherGram<Scalar>::solve(const Vec<Scalar>& g, const std::vector<double>& dampings,
                                                            bool g_is_gradient) const {
  if (g.size() != F_.rows())
    detail::fail("the right-hand side has " + std::to_string(g.size()) + " entries but the model has " +
                 std::to_string(F_.rows()) + " parameters");
  for (double lambda : dampings)
    if (!(lambda > 0) || !std::isfinite(lambda))
      detail::fail("the Gram solver needs a damping > 0 (F is singular on a minibatch), got " +
                   detail::format_number(lambda));
  const bool push = g_is_gradient && r_.size() > 0;
  // Push-through: d = Uᵀ(G + λI)⁻¹r. Otherwise d = (g − Uᵀ(G + λI)⁻¹Ug)/λ, with Ug one R-op for every λ.
  Eigen::VectorXd Ug;
  double ug_s = 0;
  if (!push) {
    const auto t0 = std::chrono::steady_clock::now();
    Ug = times(g);
    ug_s = seconds_since(t0);
  }
  std::vector<GramSolution<Scalar>> out;
  for (double lambda : dampings) {
    GramSolution<Scalar> s;
    s.damping = lambda;
    auto t0 = std::chrono::steady_clock::now();
    Eigen::MatrixXd A = G_;
    A.diagonal().array() += lambda;
    if (!detail::tiled_cholesky(A, resolve_threads(F_.options().num_threads)))
      detail::fail("the Cholesky factorization of G + λI failed at λ = " + detail::format_number(lambda) +
                   " (G is not positive semi-definite to rounding: a NaN or Inf in the rows?)");
    s.factor_s = seconds_since(t0);
    t0 = std::chrono::steady_clock::now();
    const Eigen::VectorXd w = detail::cholesky_solve(A, push ? r_ : Ug);
    Vec<Scalar> u = transpose_times(w);
    s.direction = push ? u : Vec<Scalar>((g - u) / Scalar(lambda));
    s.apply_s = seconds_since(t0) + ug_s;
    out.push_back(std::move(s));
  }
  return out;
}

template <typename Scalar>
GramSpectrum FisherGram<Scalar>::spectrum(Index vectors) const {
  const auto t0 = std::chrono::steady_clock::now();
  GramSpectrum s;
  s.trace = G_.trace();
  Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> eig(G_, vectors > 0 ? Eigen::ComputeEigenvectors
                                                                     : Eigen::EigenvaluesOnly);
  if (eig.info() != Eigen::Success) detail::fail("the eigendecomposition of the Gram did not converge");
  const Eigen::VectorXd& ev = eig.eigenvalues();  // ascending
  const double top = ev.size() ? ev(ev.size() - 1) : 0;
  Index nonzero = 0;
  for (Index i = ev.size(); i-- > 0;)
    if (ev(i) > 1e-12 * top && top > 0) ++nonzero;
  s.eigenvalues.resize(nonzero);
  for (Index i = 0; i < nonzero; ++i) s.eigenvalues(i) = ev(ev.size() - 1 - i);
  const Index k = std::min(vectors, nonzero);
  if (k > 0) {
    s.q.resize(R_, k);
    for (Index i = 0; i < k; ++i) s.q.col(i) = eig.eigenvectors().col(ev.size() - 1 - i);
  }
  s.zero_count = F_.rows() - nonzero;
  s.seconds = seconds_since(t0);
  return s;
}

template <typename Scalar>
Mat<Scalar> FisherGram<Scalar>::eigenvectors(const GramSpectrum& s, Index k) const {
  if (k > s.q.cols()) detail::fail("asked for " + std::to_string(k) + " eigenvectors, the spectrum kept " +
                                   std::to_string(s.q.cols()));
  Mat<Scalar> V(F_.rows(), k);
  for (Index i = 0; i < k; ++i) V.col(i) = transpose_times(s.q.col(i) / std::sqrt(s.eigenvalues(i)));
  return V;
}

template class FisherGram<float>;
template class FisherGram<double>;

}  // namespace natgrad
