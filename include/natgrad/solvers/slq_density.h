/// \file slq_density.h
/// \brief The spectral density of a symmetric operator by stochastic Lanczos quadrature.
///
/// \code
/// natgrad::SpectralDensity d = natgrad::slq_density(F, /*steps=*/80, /*probes=*/10, /*seed=*/0);
/// \endcode
#pragma once

#include <natgrad/core/types.h>
#include <natgrad/solvers/operator_ref.h>
#include <natgrad/solvers/spectrum_progress.h>

#include <cstdint>
#include <vector>

namespace natgrad {

struct SpectralDensity {
  std::vector<double> grid;                ///< equally spaced points
  std::vector<double> density;             ///< smoothed density at the grid points (integrates to ≈ 1)
  std::vector<double> nodes;               ///< all Ritz values θ of all probes
  std::vector<double> weights;             ///< their weights τ² / probes (sum to 1)
  double first_moment = 0;                 ///< Σ weights·nodes, an estimate of tr(A)/n
  double first_moment_standard_error = 0;  ///< 0 with one probe
  double sigma = 0;                        ///< Gaussian smoothing width
  Index matvecs = 0;
  Index probes = 0;  ///< the probes the density is made of
  /// The computation was stopped (its callback, or the operator's Interrupted) before all the probes asked
  /// for were done: the density is that of the `probes` completed (empty when none was).
  bool interrupted = false;
};

/// The density for the operator view (operator_ref.h): the body every slq_density call runs, compiled in
/// the library for float and double.
SpectralDensity slq_density(const OperatorRef<float>& op, Index steps, Index probes, uint64_t seed,
                            Index grid_points, double sigma, const SpectrumCallback& callback);
SpectralDensity slq_density(const OperatorRef<double>& op, Index steps, Index probes, uint64_t seed,
                            Index grid_points, double sigma, const SpectrumCallback& callback);

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
/// Throws std::invalid_argument unless steps ≥ 1, probes ≥ 1 and grid_points ≥ 2.
template <typename Op>
SpectralDensity slq_density(const Op& op, Index steps, Index probes, uint64_t seed, Index grid_points = 1000,
                            double sigma = 0, const SpectrumCallback& callback = nullptr) {
  NATGRAD_CHECK_OPERATOR(Op);
  NATGRAD_CHECK_SOLVER_SCALAR(typename Op::Scalar);
  return slq_density(OperatorRef<typename Op::Scalar>(op), steps, probes, seed, grid_points, sigma, callback);
}

}  // namespace natgrad
