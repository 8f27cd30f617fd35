// slq_density's body (stochastic Lanczos quadrature in double), compiled for float and double operators
// behind the operator view (operator_ref.h).
#include <natgrad/core/interrupted.h>
#include <natgrad/solvers/slq_density.h>

#include <Eigen/Eigenvalues>
#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>
#include <vector>

#include "solvers/basis_operator.h"
#include "solvers/rademacher_probe.h"

namespace natgrad {

namespace {

template <typename S>
SpectralDensity density(const OperatorRef<S>& op, Index steps, Index probes, uint64_t seed, Index grid_points,
                        double sigma, const SpectrumCallback& callback) {
  using Op = OperatorRef<S>;
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

}  // namespace

SpectralDensity slq_density(const OperatorRef<float>& op, Index steps, Index probes, uint64_t seed,
                            Index grid_points, double sigma, const SpectrumCallback& callback) {
  return density(op, steps, probes, seed, grid_points, sigma, callback);
}

SpectralDensity slq_density(const OperatorRef<double>& op, Index steps, Index probes, uint64_t seed,
                            Index grid_points, double sigma, const SpectrumCallback& callback) {
  return density(op, steps, probes, seed, grid_points, sigma, callback);
}

}  // namespace natgrad
