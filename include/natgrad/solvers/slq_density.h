/// \file slq_density.h
/// \brief The spectral density of a symmetric operator by stochastic Lanczos quadrature.
///
/// \code
/// natgrad::SpectralDensity d = natgrad::slq_density(F, /*steps=*/80, /*probes=*/10, /*seed=*/0);
/// \endcode
#pragma once

#include <natgrad/core/interrupted.h>
#include <natgrad/core/types.h>
#include <natgrad/solvers/detail/double_operator.h>
#include <natgrad/solvers/operator_concept.h>
#include <natgrad/solvers/spectrum_progress.h>

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
  double first_moment_standard_error = 0;  ///< 0 with one probe
  double sigma = 0;             ///< Gaussian smoothing width
  Index matvecs = 0;
  Index probes = 0;             ///< the probes the density is made of
  /// The computation was stopped (its callback, or the operator's Interrupted) before all the probes asked
  /// for were done: the density is that of the `probes` completed (empty when none was).
  bool interrupted = false;
};

/// Spectral density by stochastic Lanczos quadrature (Ghorbani, Krishnan & Xiao 2019): for each of
/// `probes` normalized Rademacher vectors, `steps` Lanczos steps with full reorthogonalization give a
/// tridiagonal T whose eigenvalues θ_k and squared first eigenvector components τ_k² are a quadrature rule
/// for vᵀ g(A) v; the density is Σ τ_k² N(t; θ_k, σ²) averaged over probes, on `grid_points` points.
/// σ ≤ 0 chooses 1% of the spectrum's range. Probe p is keyed by (seed, p), so the first m' probes of a run
/// are those of a run with m' probes.
///
/// `callback`, if given, sees every product (phase "slq"; at most probes × steps in all: a probe ends early
/// when its Krylov space is invariant). When it asks to stop, or the operator throws Interrupted, the probe
/// under way is dropped and the density is that of the probes completed, marked `interrupted`.
template <typename Op>
SpectralDensity slq_density(const Op& op, Index steps, Index probes, uint64_t seed, Index grid_points = 1000,
                            double sigma = 0, const SpectrumCallback& callback = nullptr) {
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
  std::vector<double> tau2;  // the weights before the division by the probes completed
  bool stop = false;         // asked (callback or Interrupted): no product after the current one
  bool dropped = false;      // the probe under way was incomplete when the stop came
  Index done = 0;
  for (Index p = 0; p < probes && !stop; ++p) {
    Vec<double> q = detail::rademacher(n, seed, static_cast<uint64_t>(p));
    q.normalize();
    std::vector<double> alpha, beta;
    Index m = 0;
    for (Index j = 0; j < steps; ++j) {
      Q.col(j) = q;
      ++m;
      try {
        dop.perform_op(q.data(), w.data());
      } catch (const Interrupted&) {
        stop = dropped = true;
        break;
      }
      const double a = q.dot(w);
      alpha.push_back(a);
      // Full reorthogonalization, twice (Gram–Schmidt is repeated for stability).
      for (int pass = 0; pass < 2; ++pass) w -= Q.leftCols(m) * (Q.leftCols(m).transpose() * w);
      const double b = w.norm();
      const bool ends = j + 1 == steps || !(b > 1e-12 * std::max(1.0, std::abs(a)));  // invariant subspace
      if (callback) {
        SpectrumProgress info;
        info.phase = "slq";
        info.products = dop.count();
        info.products_total = probes * steps;
        info.done = ends ? p + 1 : p;
        info.total = probes;
        stop = callback(info) == CallbackResult::stop;
        dropped = stop && !ends;
      }
      if (ends || stop) break;
      beta.push_back(b);
      q = w / b;
    }
    if (dropped) break;
    Mat<double> T = Mat<double>::Zero(m, m);
    for (Index i = 0; i < m; ++i) T(i, i) = alpha[static_cast<std::size_t>(i)];
    for (Index i = 0; i + 1 < m; ++i) T(i, i + 1) = T(i + 1, i) = beta[static_cast<std::size_t>(i)];
    Eigen::SelfAdjointEigenSolver<Mat<double>> es(T);
    double moment = 0;
    for (Index i = 0; i < m; ++i) {
      const double t2 = es.eigenvectors()(0, i) * es.eigenvectors()(0, i);
      d.nodes.push_back(es.eigenvalues()[i]);
      tau2.push_back(t2);
      moment += t2 * es.eigenvalues()[i];
    }
    moments.push_back(moment);
    ++done;
  }
  d.matvecs = dop.count();
  d.probes = done;
  d.interrupted = done < probes;
  if (done == 0) return d;
  for (double t2 : tau2) d.weights.push_back(t2 / double(done));
  for (double m : moments) d.first_moment += m / double(done);
  if (done > 1) {
    double var = 0;
    for (double m : moments) var += (m - d.first_moment) * (m - d.first_moment) / double(done - 1);
    d.first_moment_standard_error = std::sqrt(var / double(done));
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
