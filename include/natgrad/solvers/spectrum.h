/// \file spectrum.h
/// \brief The Fisher's spectrum without forming it: top-k eigenpairs (Spectra's Lanczos), the condition
/// number of F + λI, Hutchinson's trace estimate, and the spectral density by stochastic Lanczos quadrature.
///
/// Every function takes any operator of Spectra's concept (FisherOperator among them) and works on it as
/// given, so pass an operator with damping 0 to study F itself. Lanczos always runs in double precision;
/// a float operator is called through a converting adapter, so the eigenvalues are those of the float
/// operator to double-precision convergence.
///
/// \code
/// natgrad::SpectrumOptions opt;
/// opt.num_eigenvalues = 10;
/// natgrad::SpectrumResult r = natgrad::top_eigenvalues(F, opt);   // r.eigenvalues descending
/// natgrad::TraceEstimate t = natgrad::hutchinson_trace(F, 100, /*seed=*/0);
/// \endcode
#pragma once

#include <natgrad/core/detail/format_number.h>
#include <natgrad/core/random.h>
#include <natgrad/core/types.h>
#include <natgrad/solvers/operator_concept.h>

#include <Eigen/Eigenvalues>
#include <Spectra/SymEigsSolver.h>

#include <algorithm>
#include <functional>
#include <chrono>
#include <limits>
#include <stdexcept>
#include <cmath>
#include <string>
#include <vector>

namespace natgrad {

struct SpectrumOptions {
  /// k, the number of largest eigenvalues. Range [1, n − 1]. Default 10.
  Index num_eigenvalues = 10;
  /// Lanczos basis size; 0 chooses min(n, max(2k + 1, 20)). Range (k, n] otherwise. Default 0.
  Index ncv = 0;
  /// Maximum implicit restarts. Default 1000.
  Index max_restarts = 1000;
  /// Relative accuracy of the Ritz values. Default 1e-10.
  double tolerance = 1e-10;
  /// Also return the eigenvectors. Default false.
  bool compute_eigenvectors = false;
  /// Called after every operator application with the count so far (progress reporting). Optional.
  std::function<void(Index)> on_product;

  bool is_valid(Index n, std::string* why) const;
};

struct SpectrumResult {
  Vec<double> eigenvalues;     ///< descending
  Mat<double> eigenvectors;    ///< n × k, if asked
  Index matvecs = 0;           ///< operator applications used
  Index restarts = 0;
  bool converged = false;
  std::string status;          ///< "converged", or what went wrong
  double time_s = 0;
};

/// How ConditionEstimate::lambda_min was obtained.
enum class ConditionMethod {
  rank_bound,  ///< λ_min = 0 exactly: the operator's rank is provably below its size
  lanczos,     ///< from Lanczos on λ_max·I − A, with the error bound lambda_min_error
  failed,      ///< unknown (Lanczos did not converge, threw, or met NaN/Inf): λ_min and the ratio are NaN
};
const char* to_string(ConditionMethod m);

struct ConditionEstimate {
  double lambda_max = 0;        ///< of the operator
  double lambda_min = 0;
  double condition_number = 0;  ///< λ_max / λ_min of the operator as given
  ConditionMethod kind = ConditionMethod::failed;
  /// |λ_min − (an eigenvalue of A)| ≤ lambda_min_error: the residual ‖A u − λ_min u‖ of the returned unit
  /// Ritz vector u, computed with one more product (so it includes the operator's own rounding, about
  /// ε·λ_max for a float operator). 0 for rank_bound, NaN when failed.
  double lambda_min_error = std::numeric_limits<double>::quiet_NaN();
  /// True only for rank_bound: λ_min is known exactly, not estimated.
  bool exact_min = false;
  std::string method;  ///< how λ_min was obtained, in words, with the numbers
  Index matvecs = 0;
};

struct TraceEstimate {
  double trace = 0;
  double standard_error = 0;   ///< sample standard deviation / √probes
  Index probes = 0;
};

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

namespace detail {
/// Presents any operator to Spectra as a double-precision one and counts its applications.
template <typename Op>
class DoubleOperator {
 public:
  using Scalar = double;
  explicit DoubleOperator(const Op& op, double shift = 0, double scale = 1,
                          std::function<void(Index)> on_product = nullptr)
      : op_(op), shift_(shift), scale_(scale), on_product_(std::move(on_product)), x_(op.rows()), y_(op.rows()) {}
  Index rows() const { return op_.rows(); }
  Index cols() const { return op_.rows(); }
  /// y = shift·x + scale·(A x)
  void perform_op(const double* x, double* y) const {
    using S = typename Op::Scalar;
    const Index n = rows();
    x_ = ConstVecMap<double>(x, n).template cast<S>();
    op_.perform_op(x_.data(), y_.data());
    VecMap<double>(y, n) = scale_ * y_.template cast<double>() + shift_ * ConstVecMap<double>(x, n);
    ++count_;
    if (first_bad_ == 0 && !ConstVecMap<double>(y, n).allFinite()) first_bad_ = count_;
    if (on_product_) on_product_(count_);
  }
  Index count() const { return count_; }
  /// The 1-based product at which the operator first returned NaN or Inf, or 0.
  Index first_non_finite() const { return first_bad_; }

 private:
  const Op& op_;
  double shift_, scale_;
  std::function<void(Index)> on_product_;
  mutable Vec<typename Op::Scalar> x_, y_;
  mutable Index count_ = 0;
  mutable Index first_bad_ = 0;
};

inline Vec<double> rademacher(Index n, uint64_t seed, uint64_t probe) {
  const CounterRng rng(seed, rng_stream(RngDomain::probes, probe));
  Vec<double> v(n);
  for (Index i = 0; i < n; ++i) v[i] = rng.rademacher(static_cast<uint64_t>(i));
  return v;
}
}  // namespace detail

/// The k largest eigenvalues (and optionally eigenvectors) of a symmetric operator.
template <typename Op>
SpectrumResult top_eigenvalues(const Op& op, const SpectrumOptions& options) {
  NATGRAD_CHECK_OPERATOR(Op);
  std::string why;
  if (!options.is_valid(op.rows(), &why)) throw std::invalid_argument("SpectrumOptions: " + why);
  const auto start = std::chrono::steady_clock::now();
  const Index n = op.rows(), k = options.num_eigenvalues;
  const Index ncv = options.ncv > 0 ? options.ncv : std::min(n, std::max<Index>(2 * k + 1, 20));
  detail::DoubleOperator<Op> dop(op, 0, 1, options.on_product);
  Spectra::SymEigsSolver<detail::DoubleOperator<Op>> solver(dop, k, ncv);
  solver.init();
  SpectrumResult r;
  Index nconv = 0;
  std::string thrown;
  try {
    nconv = solver.compute(Spectra::SortRule::LargestAlge, options.max_restarts, options.tolerance,
                           Spectra::SortRule::LargestAlge);
  } catch (const std::exception& e) {  // Spectra throws on some numerical failures
    thrown = e.what();
  }
  r.converged = thrown.empty() && dop.first_non_finite() == 0 && solver.info() == Spectra::CompInfo::Successful;
  r.matvecs = dop.count();
  r.restarts = solver.num_iterations();
  r.status = dop.first_non_finite() ? "the operator returned NaN or Inf at product " + std::to_string(dop.first_non_finite()) +
                                          " of the Lanczos iteration" :
             !thrown.empty() ? "Lanczos failed: " + thrown :
             r.converged ? "converged" :
             solver.info() == Spectra::CompInfo::NotConverging ? "not converged: " + std::to_string(nconv) + " of " +
                 std::to_string(k) + " eigenvalues met the tolerance within " + std::to_string(options.max_restarts) +
                 " restarts" : "numerical failure in Lanczos (NaN or Inf in the operator?)";
  if (r.converged) {
    r.eigenvalues = solver.eigenvalues();
    if (options.compute_eigenvectors) r.eigenvectors = solver.eigenvectors();
  }
  r.time_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return r;
}

/// λ_max, λ_min and their ratio for a symmetric positive semi-definite operator. λ_min comes from Lanczos on
/// the shifted operator λ_max·I − A (its largest eigenvalue θ = λ_max − λ_min), applied in double on top of
/// the operator's products; λ_min = λ_max − θ cancels when λ_min ≪ λ_max, so its accuracy is reported as a
/// residual bound (lambda_min_error), never claimed exact. If the operator's rank is known to be below n
/// (`rank_bound` < n, e.g. N·C for a Fisher on N samples with C outputs), λ_min is 0 exactly and no Lanczos
/// is run for it. Spectra's exceptions and NaN/Inf products end in kind == failed with the reason in
/// `method`; nothing is thrown.
template <typename Op>
ConditionEstimate condition_number(const Op& op, Index rank_bound = -1, double tolerance = 1e-10,
                                   Index max_restarts = 300) {
  NATGRAD_CHECK_OPERATOR(Op);
  const Index n = op.rows();
  ConditionEstimate c;
  const Index ncv = std::min<Index>(n, 20);
  auto fail = [&](const std::string& why) {
    c.kind = ConditionMethod::failed;
    c.lambda_min = c.condition_number = c.lambda_min_error = std::numeric_limits<double>::quiet_NaN();
    c.method = why;
    return c;
  };
  // One Lanczos run for the largest eigenvalue of `dop`: its value and unit eigenvector, or the reason it
  // failed.
  auto largest = [&](detail::DoubleOperator<Op>& dop, double& value, Vec<double>* vector, std::string& why) {
    Spectra::SymEigsSolver<detail::DoubleOperator<Op>> solver(dop, 1, ncv);
    solver.init();
    std::string thrown;
    try {
      solver.compute(Spectra::SortRule::LargestAlge, max_restarts, tolerance);
    } catch (const std::exception& e) {
      thrown = e.what();
    }
    c.matvecs += dop.count();
    if (dop.first_non_finite()) {  // the cause, also when Spectra then threw
      why = "the operator returned NaN or Inf at product " + std::to_string(dop.first_non_finite());
      return false;
    }
    if (!thrown.empty()) {
      why = "Spectra threw: " + thrown;
      return false;
    }
    if (solver.info() != Spectra::CompInfo::Successful) {
      why = "did not converge within " + std::to_string(max_restarts) + " restarts (tolerance " +
            detail::format_number(tolerance) + ")";
      return false;
    }
    value = solver.eigenvalues()[0];
    if (vector) *vector = solver.eigenvectors().col(0);
    return true;
  };
  std::string why;
  detail::DoubleOperator<Op> top(op);
  if (!largest(top, c.lambda_max, nullptr, why)) {
    fail("failed: the largest eigenvalue: " + why);
    c.lambda_max = std::numeric_limits<double>::quiet_NaN();
    return c;
  }
  if (rank_bound >= 0 && rank_bound < n) {
    c.kind = ConditionMethod::rank_bound;
    c.lambda_min = 0;
    c.lambda_min_error = 0;
    c.exact_min = true;
    c.method = "rank bound: rank <= " + std::to_string(rank_bound) + " < " + std::to_string(n) + " parameters";
    c.condition_number = std::numeric_limits<double>::infinity();
    return c;
  }
  detail::DoubleOperator<Op> shifted(op, c.lambda_max, -1.0);  // λ_max I − A
  double theta = 0;
  Vec<double> u;
  if (!largest(shifted, theta, &u, why))
    return fail("unknown: Lanczos on lambda_max*I - A " + why);
  c.kind = ConditionMethod::lanczos;
  c.lambda_min = c.lambda_max - theta;
  // ‖A u − λ_min u‖ for the unit Ritz vector u: some eigenvalue of A lies within it of λ_min.
  Vec<double> Au(n);
  top.perform_op(u.data(), Au.data());
  ++c.matvecs;
  c.lambda_min_error = (Au - c.lambda_min * u).norm();
  if (!std::isfinite(c.lambda_min_error))
    return fail("unknown: the residual of the smallest Ritz pair is not finite");
  c.method = "Lanczos on lambda_max*I - A; |lambda_min error| <= " + detail::format_number(c.lambda_min_error);
  c.condition_number = c.lambda_min > 0 ? c.lambda_max / c.lambda_min : std::numeric_limits<double>::infinity();
  return c;
}

/// Hutchinson's estimate tr(A) ≈ 1/m Σ vᵀ A v with m Rademacher probes from the counter-based generator.
template <typename Op>
TraceEstimate hutchinson_trace(const Op& op, Index probes, uint64_t seed) {
  NATGRAD_CHECK_OPERATOR(Op);
  if (probes < 2) throw std::invalid_argument("hutchinson_trace needs at least 2 probes, got " + std::to_string(probes));
  detail::DoubleOperator<Op> dop(op);
  const Index n = op.rows();
  Vec<double> y(n);
  std::vector<double> q;
  for (Index p = 0; p < probes; ++p) {
    const Vec<double> v = detail::rademacher(n, seed, static_cast<uint64_t>(p));
    dop.perform_op(v.data(), y.data());
    q.push_back(v.dot(y));
  }
  TraceEstimate t;
  t.probes = probes;
  for (double x : q) t.trace += x / double(probes);
  double var = 0;
  for (double x : q) var += (x - t.trace) * (x - t.trace) / double(probes - 1);
  t.standard_error = std::sqrt(var / double(probes));
  return t;
}

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
