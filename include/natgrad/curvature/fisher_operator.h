/// \file fisher_operator.h
/// \brief y = (F + λI) v without forming F: the Fisher-vector product over a cached forward pass.
///
/// For a batch of N samples with outputs z_n = f(x_n; θ) ∈ R^C,
/// \f[ F v = \frac{1}{N} \sum_n J_n^\top H_n J_n v, \qquad J_n = \partial z_n / \partial \theta, \f]
/// with H_n the output Fisher of the likelihood (exact, Monte-Carlo or empirical; see OutputCurvature).
/// One product is
///   1. u_n = J_n v          one forward-mode (R-op) pass over the cached activations,
///   2. w_n = H_n u_n / N    a C × C product per sample (O(C) for the exact Fisher),
///   3. F v = Σ_n J_nᵀ w_n    one reverse-mode pass,
/// plus λ v. The forward pass runs once, at construction, and is reused by every product, by loss() and
/// gradient().
///
/// **Parallelism and determinism.** The batch is cut into chunks of `chunk_size` samples. Chunk k is
/// accumulated into slot k mod `num_slots` (a parameter-sized buffer), each slot's chunks in increasing
/// order by one thread, and the slots are summed in slot order. Nothing in that order depends on the
/// thread count, so every result is bit-identical for any number of threads. Monte-Carlo labels are drawn
/// once at construction from the counter-based generator keyed by (seed, sample index, draw index).
///
/// **Spectra.** The class has `Scalar`, `rows()`, `cols()` and `perform_op(const Scalar*, Scalar*) const`,
/// so `Spectra::SymEigsSolver<FisherOperator<double>>` uses it as is.
///
/// **Thread safety.** perform_op is const but uses internal mutable buffers: one FisherOperator must not be
/// used by two threads at once (it parallelizes internally). No allocation happens after the first product.
///
/// \code
/// natgrad::FisherOptions opt;
/// opt.kind = natgrad::FisherKind::exact;
/// opt.damping = 1e-3;
/// natgrad::FisherOperator<float> F(model, theta, natgrad::LikelihoodKind::categorical, data, opt);
/// natgrad::Vec<float> v = natgrad::Vec<float>::Random(F.cols()), y(F.rows());
/// F.perform_op(v.data(), y.data());                 // y = (F + 1e-3 I) v
/// float loss = F.loss();  const auto& g = F.gradient();
/// \endcode
#pragma once

#include <natgrad/core/dataset.h>
#include <natgrad/likelihood/likelihood.h>
#include <natgrad/likelihood/output_curvature.h>
#include <natgrad/model/sequential.h>

#include <cstdint>
#include <string>
#include <vector>

namespace natgrad {

struct FisherOptions {
  /// Which output Fisher H_n: exact (default), mc or empirical.
  FisherKind kind = FisherKind::exact;
  /// Monte-Carlo labels per input for kind == mc; ≥ 1. Default 1.
  int mc_samples = 1;
  /// Damping λ ≥ 0 added as λI. Default 0.
  double damping = 0.0;
  /// Seed of the counter-based generator for Monte-Carlo labels. Default 0.
  uint64_t seed = 0;
  /// Samples per work item. 0 (default) chooses ⌈N/4⌉ rounded up to a multiple of 8 and clamped to
  /// [16, 256]: large enough for efficient GEMMs, small enough that a batch gives several work items.
  /// Results depend on it (summation order) and on N, never on the thread count. Otherwise ≥ 1.
  Index chunk_size = 0;
  /// Parameter-sized accumulation buffers: more lets more threads work, each costs P scalars of memory and
  /// of zeroing and summing per product. 0 (default) chooses the largest power of two in [2, 4] whose
  /// buffers fit in 512 MiB (a function of P only, never of the thread count, so results stay bit-identical
  /// across thread counts). Otherwise ≥ 1.
  int num_slots = 0;
  /// Threads; 0 (default) uses the library-wide count, natgrad::num_threads() (core/threads.h).
  int num_threads = 0;

  /// True if every field is in range; otherwise false with the reason in *why.
  bool is_valid(std::string* why) const;
  /// The slot count used for P parameters of `scalar_bytes` each (resolves num_slots = 0).
  int slots_for(Index num_params, std::size_t scalar_bytes) const;
  /// The chunk size used for a batch of N samples (resolves chunk_size = 0).
  Index chunk_for(Index num_samples) const;
};

template <typename Scalar_>
class FisherOperator {
 public:
  using Scalar = Scalar_;

  /// Binds the model at parameters theta to a batch and runs the forward pass. Throws
  /// std::invalid_argument for invalid options, a parameter vector or inputs of the wrong size, or targets
  /// that do not fit the likelihood. The model must outlive the operator; theta and data are copied.
  FisherOperator(const Sequential<Scalar>& model, const Vec<Scalar>& theta, LikelihoodKind likelihood,
                 const Dataset<Scalar>& data, const FisherOptions& options = FisherOptions());

  Index rows() const { return num_params_; }
  Index cols() const { return num_params_; }

  /// Moves the operator to new parameters on the same batch: reruns the forward pass into the existing
  /// activation buffers. Monte-Carlo labels are drawn again from the same (seed, sample, draw) keys at the
  /// new outputs. Throws std::invalid_argument if theta has the wrong size.
  void rebind(const Vec<Scalar>& theta);

  /// y = (F + λI) x. x and y must not overlap and hold cols() scalars.
  void perform_op(const Scalar* x, Scalar* y) const;

  /// Empty if every activation of the cached forward pass is finite; otherwise where NaN or Inf first
  /// appears ("the output of layer 2 (tanh) is NaN or Inf, first at sample 17"), in layer order. Products on
  /// such a batch are meaningless; solve_natural_gradient reports this instead of solving.
  const std::string& forward_error() const { return forward_error_; }

  /// Mean negative log-likelihood on the batch.
  double loss() const;
  /// ∇θ of the mean negative log-likelihood (computed on first use from the cached forward pass).
  const Vec<Scalar>& gradient() const;
  /// The empirical Fisher's diagonal, 1/N Σ_n (∇θ ℓ_n)², from per-sample squared gradients.
  Vec<Scalar> empirical_fisher_diagonal() const;

  double damping() const { return damping_; }
  void set_damping(double lambda);
  /// Products computed so far (perform_op calls).
  Index num_products() const { return num_products_; }
  void reset_product_count() { num_products_ = 0; }

  Index num_samples() const { return num_samples_; }
  const Sequential<Scalar>& model() const { return model_; }
  const Vec<Scalar>& parameters() const { return theta_; }
  LikelihoodKind likelihood() const { return likelihood_; }
  const FisherOptions& options() const { return options_; }
  /// Network outputs on the batch (C × N).
  const Mat<Scalar>& outputs() const { return cache_.acts.back(); }
  /// H_n of this operator (C × C), for references.
  Mat<Scalar> output_fisher(Index n) const { return curvature_.dense(n); }

 private:
  // Runs body(chunk, col0, ncols, slot_buffer, thread_workspace) over all chunks with the slot schedule.
  template <typename Body>
  void for_each_chunk(Body body) const;
  void reduce_slots(Scalar scale, const Scalar* x, Scalar lambda, Scalar* y) const;
  void run_forward();
  void require_targets(const char* what) const;

  const Sequential<Scalar>& model_;
  Vec<Scalar> theta_;
  LikelihoodKind likelihood_;
  Dataset<Scalar> data_;
  FisherOptions options_;
  double damping_;
  Index num_params_;
  Index num_samples_;
  Index chunk_size_;
  Index num_chunks_;
  int num_slots_;
  int num_threads_;
  ForwardCache<Scalar> cache_;
  OutputCurvature<Scalar> curvature_;

  std::string forward_error_;
  mutable std::vector<Workspace<Scalar>> workspaces_;  // one per thread
  mutable std::vector<Mat<Scalar>> out_buffers_;       // one per thread: C × chunk_size
  mutable std::vector<Vec<Scalar>> slots_;             // num_slots × P
  mutable Index num_products_ = 0;
  mutable bool have_gradient_ = false;
  mutable Vec<Scalar> gradient_;
  mutable double loss_ = 0;
};

}  // namespace natgrad
