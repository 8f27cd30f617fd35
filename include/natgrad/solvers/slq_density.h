/// \file slq_density.h
/// \brief The spectral density of a symmetric operator by stochastic Lanczos quadrature.
///
/// \code
/// natgrad::SpectralDensity d = natgrad::slq_density(F, /*steps=*/80, /*probes=*/10, /*seed=*/0);
/// \endcode
#pragma once

#include <natgrad/core/types.h>
#include <natgrad/solvers/detail/double_operator.h>
#include <natgrad/solvers/operator_concept.h>

#include <Eigen/Eigenvalues>

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>
#include <vector>

namespace natgrad {

struct SpectralDensity {
  std::vector<double> grid;     ///< equally spaced points
  std::vector<double> density;  ///< smoothed density at the grid points (integrates to ≈ 1)
  std::vector<double> nodes;    ///< all Ritz values θ of all probes
  std::vector<double> weights;  ///< their weights τ² / probes (sum to 1)
  double first_moment = 0;      ///< Σ weights·nodes, an estimate of tr(A)/n
  double first_moment_standard_error = 0;
  double sigma = 0;             ///< Gaussian smoothing width
  Index matvecs = 0;
};

/// Spectral density by stochastic Lanczos quadrature (Ghorbani, Krishnan & Xiao 2019): for each of
/// `probes` normalized Rademacher vectors, `steps` Lanczos steps with full reorthogonalization give a
/// tridiagonal T whose eigenvalues θ_k and squared first eigenvector components τ_k² are a quadrature rule
/// for vᵀ g(A) v; the density is Σ τ_k² N(t; θ_k, σ²) averaged over probes, on `grid_points` points.
/// σ ≤ 0 chooses 1% of the spectrum's range.
template <typename Op>
SpectralDensity slq_density(const Op& op, Index steps, Index probes, uint64_t seed, Index grid_points = 1000,
                            double sigma = 0) {
  NATGRAD_CHECK_OPERATOR(Op);
  const Index n = op.rows();
  if (steps < 1 || probes < 1 || grid_points < 2)
    throw std::invalid_argument("slq_density needs steps >= 1, probes >= 1 and grid_points >= 2");
  steps = std::min(steps, n);
  detail::DoubleOperator<Op> dop(op);
  SpectralDensity d;
  std::vector<double> moments;
  Mat<double> Q(n, steps);
  Vec<double> w(n);
  for (Index p = 0; p < probes; ++p) {
    Vec<double> q = detail::rademacher(n, seed, static_cast<uint64_t>(p));
    q.normalize();
    std::vector<double> alpha, beta;
    Index m = 0;
    for (Index j = 0; j < steps; ++j) {
      Q.col(j) = q;
      ++m;
      dop.perform_op(q.data(), w.data());
      const double a = q.dot(w);
      alpha.push_back(a);
      // Full reorthogonalization, twice (Gram–Schmidt is repeated for stability).
      for (int pass = 0; pass < 2; ++pass) w -= Q.leftCols(m) * (Q.leftCols(m).transpose() * w);
      const double b = w.norm();
      if (j + 1 == steps || !(b > 1e-12 * std::max(1.0, std::abs(a)))) break;  // invariant subspace
      beta.push_back(b);
      q = w / b;
    }
    Mat<double> T = Mat<double>::Zero(m, m);
    for (Index i = 0; i < m; ++i) T(i, i) = alpha[static_cast<std::size_t>(i)];
    for (Index i = 0; i + 1 < m; ++i) T(i, i + 1) = T(i + 1, i) = beta[static_cast<std::size_t>(i)];
    Eigen::SelfAdjointEigenSolver<Mat<double>> es(T);
    double moment = 0;
    for (Index i = 0; i < m; ++i) {
      const double tau2 = es.eigenvectors()(0, i) * es.eigenvectors()(0, i);
      d.nodes.push_back(es.eigenvalues()[i]);
      d.weights.push_back(tau2 / double(probes));
      moment += tau2 * es.eigenvalues()[i];
    }
    moments.push_back(moment);
  }
  d.matvecs = dop.count();
  for (double m : moments) d.first_moment += m / double(probes);
  if (probes > 1) {
    double var = 0;
    for (double m : moments) var += (m - d.first_moment) * (m - d.first_moment) / double(probes - 1);
    d.first_moment_standard_error = std::sqrt(var / double(probes));
  }
  const double lo = *std::min_element(d.nodes.begin(), d.nodes.end());
  const double hi = *std::max_element(d.nodes.begin(), d.nodes.end());
  d.sigma = sigma > 0 ? sigma : std::max(0.01 * (hi - lo), 1e-12 * std::max(1.0, std::abs(hi)));
  const double a = lo - 5 * d.sigma, b = hi + 5 * d.sigma, h = (b - a) / double(grid_points - 1);
  const double norm = 1.0 / (d.sigma * std::sqrt(2 * M_PI));
  for (Index g = 0; g < grid_points; ++g) {
    const double t = a + h * double(g);
    double v = 0;
    for (std::size_t i = 0; i < d.nodes.size(); ++i) {
      const double z = (t - d.nodes[i]) / d.sigma;
      v += d.weights[i] * norm * std::exp(-0.5 * z * z);
    }
    d.grid.push_back(t);
    d.density.push_back(v);
  }
  return d;
}

}  // namespace natgrad
