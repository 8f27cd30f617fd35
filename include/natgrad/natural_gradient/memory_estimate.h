/// \file memory_estimate.h
/// \brief What a solve will hold in memory, computed from the model and the options before anything runs.
///
/// \code
/// natgrad::MemoryEstimate m = natgrad::estimate_solve_memory(spec, 1000, 1000, sizeof(float), fisher, 10,
/// 2); std::cout << m.total / 1e9 << " GB\n"; \endcode
#pragma once

#include <natgrad/curvature/fisher_operator.h>
#include <natgrad/model/layer_spec.h>

#include <cstddef>
#include <string>

namespace natgrad {

/// The solve's peak is the larger of two phases. The fields describe the conjugate-gradient phase; when the
/// curvature batch is smaller than the batch, a second operator on the whole batch computes the gradient
/// first and is released before CG, and `gradient_phase` is what is held while it lives.
struct MemoryEstimate {
  std::size_t parameters = 0;      ///< parameter-sized vectors as the CLI solves: θ (moved into the operator),
                                   ///< g (moved out of it), d, CG's r, p, Ap and best iterate, z when
                                   ///< preconditioned or deflated (top_k > 0)
  std::size_t activations = 0;     ///< the cached forward pass and the network outputs' curvature
  std::size_t workspaces = 0;      ///< per-thread tangent, im2col and GEMM packing buffers
  std::size_t cotangents = 0;      ///< the product's stored cotangents, partial gradients and packed
                                   ///< weights (FisherPlan)
  std::size_t spectrum = 0;        ///< Lanczos basis (double or float), if a spectrum is asked
  std::size_t preconditioner = 0;  ///< the diagonal preconditioner and the empirical diagonal it is built from
  std::size_t data = 0;            ///< the batch itself
  std::size_t communication = 0;   ///< under MPI: the rank's scratch for the sums over ranks
  std::size_t gram = 0;            ///< the exact solver's Gram, its factor, kept cotangents and explicit rows
                                   ///< (solve --solver smw, spectrum --exact; FisherGram::required_bytes)
  std::size_t gradient_phase = 0;  ///< peak of the separate full-batch gradient, 0 if there is none
  std::size_t runtime = 0;         ///< the process itself: code, libraries, stacks (more with MPI linked in)
  std::size_t total = 0;           ///< max(sum of the fields above but gradient_phase and runtime,
                                   ///< gradient_phase) + runtime
  std::string report() const;
  /// Adds what multi-shift CG over `dampings` ≥ 2 dampings (NaturalGradientOptions::dampings) needs beyond
  /// one CG solve: multi_shift_required_bytes (per damping its direction and its search direction, and the
  /// base system's r, p and Ap) in place of CG's workspace.
  void add_multi_shift(Index params, std::size_t scalar_bytes, Index dampings);
  /// Adds what K-FAC takes (the kfac preconditioner, or, when `compared`, solve's comparison with it, which
  /// also multiplies by it) on `curvature_samples` samples under `fisher` (its threads):
  /// KfacApproximation::required_bytes, and CG's preconditioned residual z. Counted in `preconditioner`.
  template <typename Scalar>
  void add_kfac(const Network<Scalar>& model, Index curvature_samples, const FisherOptions& fisher,
                bool compared = false);
  /// Adds what the Gram of `curvature_samples` samples takes (FisherGram::required_bytes), in `gram`.
  template <typename Scalar>
  void add_gram(const Network<Scalar>& model, Index curvature_samples, const FisherOptions& fisher);
  /// Adds a second operator on the curvature batch (solve's comparison with the empirical or Monte-Carlo
  /// Fisher): activations, workspaces and cotangents once more.
  void add_second_operator();
};

/// `batch` samples for the gradient, `curvature_batch` (≤ batch) for F; `top_k` > 0 adds a Lanczos basis of
/// `basis_bytes` per entry (8 for double, sizeof(float) when top_eigenvalues keeps it in float:
/// basis_in_operator_precision());
/// `diagonal_preconditioner` adds its vectors; the likelihood decides what the targets and the output
/// curvature hold; `ncv` is the spectrum's SpectrumOptions::ncv (0: top_eigenvalues' default rule). The parts
/// come from the allocating classes themselves: FisherOperator::required_bytes (each operator),
/// CgWorkspace::required_bytes and spectrum_required_bytes (the Lanczos basis).
MemoryEstimate estimate_solve_memory(const ModelSpec& spec, Index batch, Index curvature_batch,
                                     std::size_t scalar_bytes, const FisherOptions& fisher, Index top_k,
                                     int threads, bool diagonal_preconditioner = false,
                                     LikelihoodKind likelihood = LikelihoodKind::categorical,
                                     std::size_t basis_bytes = sizeof(double), Index ncv = 0);

/// One rank's estimate when `ranks` > 1 share the batch: `batch` and `curvature_batch` are then that rank's
/// shares (share_of()); it adds the rank's own copy of its curvature share (read apart from its batch share
/// when the curvature batch is smaller) and the communicator's scratch.
MemoryEstimate estimate_solve_memory(const ModelSpec& spec, Index batch, Index curvature_batch,
                                     std::size_t scalar_bytes, const FisherOptions& fisher, Index top_k,
                                     int threads, bool diagonal_preconditioner, LikelihoodKind likelihood,
                                     int ranks, std::size_t basis_bytes = sizeof(double), Index ncv = 0);

/// A byte count with the precision it needs: "512 B", "9.8 KiB", "1847.0 MiB", "2.41 GiB".
std::string format_bytes(double bytes);

/// Physical memory currently available (MemAvailable in /proc/meminfo), or 0 if unknown.
std::size_t available_memory_bytes();

}  // namespace natgrad
