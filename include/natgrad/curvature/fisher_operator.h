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
/// gradient(). With T positions per sample the 1/N is 1/M over the M positions that count: N·T less those
/// whose categorical label is kIgnoreIndex (−100, as PyTorch's cross_entropy), which add nothing to the loss,
/// the gradient or any Fisher (counted_positions(); docs/math.md).
///
/// **Parallelism and determinism.** A product runs in three parallel phases, each over a fixed grid of work
/// items that depends on the problem only (N, the layer shapes, the scalar size), never on the thread count:
///   A. per-sample work, over chunks of `chunk_size` samples: the R-op, H, and the backpropagation of the
///      cotangents, which are stored for every layer with parameters (no parameter-sized buffer per thread);
///      a linear layer whose chunks have fewer than 512 GEMM columns has its weights (dW, W, Wᵀ) packed
///      once per product for all chunks' GEMMs (within 64 MiB; the results are the same bits);
///   B. the parameter gradient, over parameter tasks: a layer whose gradient splits into weight blocks
///      (linear) gets blocks of about 256 × 256, each one GEMM of depth N that writes its part of y
///      directly; any other layer (conv2d) gets sample groups, each summing its chunks in order into its own
///      partial gradient;
///   C. the partial gradients summed in group order.
/// Each output entry is therefore computed by one fixed sequence of operations, and every result is
/// bit-identical for any number of threads. Chunks are shared out in contiguous ranges and parameter tasks
/// by their cost (longest first, to the least loaded thread), so the threads do near-equal work;
/// work_per_thread() reports each thread's multiply-adds in the last product. Monte-Carlo labels are drawn
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
#include <natgrad/core/interrupted.h>
#include <natgrad/distributed/communicator.h>
#include <natgrad/likelihood/likelihood.h>
#include <natgrad/likelihood/output_curvature.h>
#include <natgrad/model/network.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
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
  /// Samples per phase-A work item. 0 (default) chooses ⌈N/64⌉ rounded up to a multiple of 8 and clamped
  /// to [m, 256], m = 64 when linear layers hold most of the work (their GEMMs pack the whole weight per
  /// chunk), else 32: about 64 chunks (64 threads' worth) from N = 64·m to N = 16384, 256-sample GEMMs
  /// beyond; then capped so that a chunk of the widest activation fits in 1 MiB (a core's L2 cache), at
  /// least 8 samples (a ResNet's 32×28×28 activations: 8). Results depend on it (summation order), on N and
  /// on the model, never on the thread count. Otherwise ≥ 1.
  Index chunk_size = 0;
  /// Threads; 0 (default) uses the library-wide count, natgrad::num_threads() (core/threads.h).
  int num_threads = 0;
  /// Progress of the long one-off passes, called by the first thread after each of its chunks of the forward
  /// pass ("forward") and of gradient() ("gradient") with the chunks done so far and the total (not during
  /// products). It runs inside the parallel region: keep it cheap and rate-limit any printing. An exception
  /// it throws ends the pass (no further chunk starts) and is rethrown once the pass's threads have stopped.
  /// Optional.
  std::function<void(const char* phase, Index done, Index total)> on_progress;
  /// **Stop requests** (a signal handler's flag, a deadline). Polled before every chunk of the forward pass
  /// (construction, rebind), of gradient() and of every product (perform_op), by each thread before it
  /// starts a chunk, so possibly from several threads at once: make it thread-safe and cheap (read an atomic
  /// flag). When it returns true the pass starts no further chunk, finishes the ones under way, and throws
  /// natgrad::Interrupted naming the pass and how far it got ("the product was interrupted after 5 of 16
  /// chunks"). The operator stays usable: an interrupted product writes nothing to y and an interrupted
  /// gradient() keeps nothing, so the same call can be made again (and gives the same result); after an
  /// interrupted rebind the cached forward pass is incomplete and products, loss() and gradient() throw
  /// std::logic_error until a rebind completes. Not polled by backprop_outputs(), squared_gradients() or
  /// empirical_fisher_diagonal(). With a communicator every rank must set it (or none): the ranks agree after
  /// the forward pass and after a product's or gradient's per-sample phase, before the sum over the ranks,
  /// and if any rank stopped every rank throws Interrupted (with the first such rank's message), so none is
  /// left waiting in a collective. Unset (the default): never polled, no agreement, no cost.
  std::function<bool()> stop_requested;

  /// **A batch shared by several processes.** With a communicator of K > 1 ranks, the operator's data is
  /// this rank's share of a batch of `total_samples` samples whose first sample has global index
  /// `first_sample` (see share_of()). Loss, gradient, every product and the empirical diagonal are then
  /// sums over all ranks (Communicator::sum, in rank order: deterministic for a given K, equal to the
  /// one-process result to rounding), Monte-Carlo labels are keyed by the global sample index (so they do
  /// not depend on K), and a NaN or Inf in any rank's forward pass is reported on every rank, naming the
  /// global sample. Every rank must construct the operator and call perform_op, gradient(), loss(),
  /// empirical_fisher_diagonal() and rebind() together (they are collective). A rank's share may be empty
  /// (a batch smaller than K): that rank takes part in every sum with zeros. nullptr (default): one
  /// process; the communicator must outlive the operator.
  const Communicator* communicator = nullptr;
  /// Global index of this rank's first sample. Default 0.
  Index first_sample = 0;
  /// Samples over all ranks; 0 (default) means this rank's only (one process).
  Index total_samples = 0;

  /// Time every node's passes (FisherOperator::profile()): the forward pass, and the R-op, backprop and
  /// parameter gradient of every product. Costs two clock reads per node and pass. Default false.
  bool profile = false;

  /// True if every field is in range; otherwise false with the reason in *why.
  bool is_valid(std::string* why) const;
  /// The chunk size used for a batch of N samples (resolves chunk_size = 0) with smallest chunk m.
  Index chunk_for(Index num_samples, Index min_chunk = 32) const;
};

/// Where a product's time goes, per node (FisherOptions::profile): seconds summed over the threads.
struct OperatorProfile {
  std::vector<double> forward_s;   ///< the last forward pass (construction or rebind)
  std::vector<double> rop_s;       ///< R-op (J v), over the products since reset_profile(), with the
                                   ///< packing of the node's weights once per product (dW, W and Wᵀ)
  std::vector<double> backprop_s;  ///< the cotangents' backpropagation through the node
  std::vector<double> gradient_s;  ///< the parameter gradient (phase B)
  double curvature_s = 0;          ///< the output curvature H u
  double reduction_s = 0;          ///< the partial gradients summed (phase C), then y ← s·y + λx
  Index products = 0;              ///< products (and gradients) these sums cover
};

template <typename Scalar_>
class FisherOperator {
 public:
  using Scalar = Scalar_;

  /// Binds the model at parameters theta to a batch and runs the forward pass. Throws
  /// std::invalid_argument for invalid options, a parameter vector or inputs of the wrong size, or targets
  /// that do not fit the likelihood; Interrupted when stop_requested stops the forward pass. With a
  /// communicator, a failure of any kind on one rank (an exception of any type, a stop) makes every rank
  /// throw: the failing rank its own exception, the others the same message as std::invalid_argument,
  /// Interrupted or std::runtime_error. The model must outlive the operator; theta and data are copied.
  FisherOperator(const Network<Scalar>& model, Vec<Scalar> theta, LikelihoodKind likelihood,
                 const Dataset<Scalar>& data, const FisherOptions& options = FisherOptions());
  ~FisherOperator();
  FisherOperator(FisherOperator&&) noexcept;
  FisherOperator& operator=(FisherOperator&&) noexcept;

  Index rows() const { return num_params_; }
  Index cols() const { return num_params_; }

  /// Moves the operator to new parameters on the same batch: reruns the forward pass into the existing
  /// activation buffers. Monte-Carlo labels are drawn again from the same (seed, sample, draw) keys at the
  /// new outputs. Throws std::invalid_argument if theta has the wrong size.
  void rebind(const Vec<Scalar>& theta);

  /// y = (F + λI) x. x and y must not overlap and hold cols() scalars. They may lie anywhere: vectors that
  /// do not start at Eigen's alignment are copied through the operator's own (two parameter-sized buffers,
  /// allocated at the first such product), so that y's bits do not depend on the caller's addresses.
  void perform_op(const Scalar* x, Scalar* y) const;

  /// The undamped Fisher's quadratic forms Q(i, j) = v_iᵀ F v_j = s Σ_n (J_n v_i)ᵀ H_n (J_n v_j) of the
  /// vectors v (each cols() scalars, anywhere in memory): one R-op pass per vector and no backprop, about
  /// half a product each where only the model's curvature along a few directions is needed (the K-FAC
  /// optimizer's quadratic model, the Levenberg–Marquardt ratio). In double: per chunk of the plan's samples,
  /// the chunks summed in order, then over the ranks — bit-identical for any thread count. Collective.
  Eigen::MatrixXd quadratic_forms(const std::vector<const Scalar*>& v) const;

  /// Empty if every activation of the cached forward pass is finite; otherwise where NaN or Inf first
  /// appears ("the output of layer 2 (tanh) is NaN or Inf, first at sample 17"), in layer order. Products on
  /// such a batch are meaningless; solve_natural_gradient reports this instead of solving.
  const std::string& forward_error() const;

  /// Mean negative log-likelihood on the batch.
  double loss() const;
  /// ∇θ of the mean negative log-likelihood (computed on first use from the cached forward pass).
  const Vec<Scalar>& gradient() const;
  /// The gradient, moved out of the operator (computed first if need be): a caller that keeps it saves a
  /// parameter-sized copy. A later gradient() computes it again.
  Vec<Scalar> take_gradient();
  /// The empirical Fisher's diagonal, 1/N Σ_n (∇θ ℓ_n)², from per-sample squared gradients (1/M for a
  /// likelihood per position, M = counted_positions(), ℓ_n then summing the sample's counted positions).
  Vec<Scalar> empirical_fisher_diagonal() const;

  /// **For curvature built outside the products (K-FAC, Fisher diagonals).** Backpropagates, for every
  /// chunk of samples [c0, c0 + n), the output cotangents head(c0, n, gz) writes (gz is (T·C) × n) and
  /// stores the cotangent at the output of every node with parameters for the whole batch (cotangents()),
  /// replacing what a product left there. head is called from several threads at once, each chunk once.
  /// This rank's samples only: nothing is summed over ranks.
  void backprop_outputs(const std::function<void(Index c0, Index n, MatMap<Scalar> gz)>& head) const;
  /// The cotangents the last backprop_outputs (or product, or gradient) stored, per node with parameters.
  const CotangentCache<Scalar>& cotangents() const;
  /// The cached forward pass (activations of every node on this rank's batch).
  const ForwardCache<Scalar>& forward_cache() const;
  /// Σ_n g_n², g_n the per-sample parameter gradients of the stored cotangents (a tied tensor's uses summed
  /// before squaring), for the nodes with nodes[l] true (zero elsewhere); unscaled, this rank's samples only.
  /// Bit-identical for any thread count.
  Vec<Scalar> squared_gradients(const std::vector<bool>& nodes) const;

  double damping() const;
  void set_damping(double lambda);
  /// With FisherOptions::profile, the time of every node's passes (all zero otherwise).
  OperatorProfile profile() const;
  /// Clears the products' times (the forward pass's stay).
  void reset_profile() const;
  /// Products computed so far (perform_op calls).
  Index num_products() const;
  void reset_product_count();

  /// This rank's samples.
  Index num_samples() const;
  /// Samples over all ranks (num_samples() in one process).
  Index total_samples() const;
  /// The positions the loss, the gradient and the Fisher average over, over all ranks: N·T less those whose
  /// categorical label is kIgnoreIndex (−100). Never 0 (such a batch is refused at construction).
  Index counted_positions() const;
  const Network<Scalar>& model() const;
  /// This rank's targets (labels or real targets) as the operator copied them; its inputs are empty (they
  /// are forward_cache().acts[0]).
  const Dataset<Scalar>& targets() const;
  const Vec<Scalar>& parameters() const;
  LikelihoodKind likelihood() const;
  const FisherOptions& options() const;
  /// Network outputs on the batch (C × N).
  const Mat<Scalar>& outputs() const;
  /// H_n of this operator (C × C), for references.
  Mat<Scalar> output_fisher(Index n) const;

  /// Multiply-adds each thread executed in the last product, gradient() or empirical_fisher_diagonal()
  /// (phase A's R-op and cotangent GEMMs and phase B's parameter-gradient GEMMs, from the layers' cost
  /// model): how evenly the work was shared.
  const std::vector<double>& work_per_thread() const;
  /// Whether the exact categorical curvature keeps softmax(z) for `outputs` logits (C·T·N) or recomputes it
  /// in each product (the memory estimate needs the same rule).
  static bool keeps_probabilities(Index outputs);

  /// What an operator allocates, in bytes, by part (required_bytes).
  struct Footprint {
    std::size_t forward = 0;     ///< the forward cache (activations, input included, and what layers save),
                                 ///< the output curvature's statistics and the copied targets
    std::size_t workspaces = 0;  ///< per thread: its workspace and layer scratch, the output buffer, the
                                 ///< phase-B task scratch
    std::size_t cotangents = 0;  ///< the stored cotangents, the partial gradients and the packed weights
    std::size_t parameters = 0;  ///< the operator's copy of θ
    std::size_t total() const { return forward + workspaces + cotangents + parameters; }
  };
  /// What the constructor allocates for `num_samples` samples of `model` (shapes only: a Network built from
  /// the ModelSpec, no parameters needed) under `options` (chunk size, threads, Fisher kind): the same plan
  /// and the same buffer sizes the constructor uses, so a caller can refuse a run before building anything
  /// (estimate_solve_memory does). The constructor's out-of-memory messages quote these parts.
  static Footprint required_bytes(const Network<Scalar>& model, Index num_samples, LikelihoodKind likelihood,
                                  const FisherOptions& options);
  /// What empirical_fisher_diagonal() allocates at its peak, beyond what the operator holds, on such an
  /// operator: the squared gradients' partial sums (one per sample group), beside them first each thread's
  /// scratch, then the returned parameter-sized diagonal (counted: it outlives the call).
  static std::size_t empirical_diagonal_required_bytes(const Network<Scalar>& model, Index num_samples,
                                                       const FisherOptions& options);

 private:
  struct State;  // lib/curvature/fisher_state.h
  std::unique_ptr<State> s_;
  Index num_params_ = 0;
};

}  // namespace natgrad
