// Private: what a FisherOperator holds (its pimpl), and the parallel passes over its cached forward pass
// (fisher_passes.cpp). fisher_operator.cpp composes these passes into the product, the gradient and the
// empirical diagonal.
#pragma once

#include <natgrad/curvature/fisher_operator.h>

#include <atomic>
#include <exception>
#include <mutex>
#include <string>
#include <vector>

#include "core/function_ref.h"
#include "curvature/fisher_plan.h"
#include "curvature/pass_timers.h"

namespace natgrad {
namespace detail {

/// y ← s·y + λx on entries [i0, i0 + n) of a parameter vector (x is read only when λ ≠ 0): the last step of
/// every product (s = 1/M, λ the damping) and of the gradient (s = 1/M, λ = 0), M the positions that count
/// (N·T less the ignored ones, State::counted), applied by
/// State::scale_and_damp to the whole of y once the sum over samples (and ranks) is complete.
template <typename Scalar>
struct ScaleAndDamp {
  Scalar s = 1;
  Scalar lambda = 0;
  const Scalar* x = nullptr;
  void operator()(Scalar* y, Index i0, Index n) const {
    VecMap<Scalar> part(y + i0, n);
    if (lambda != Scalar(0))
      part = s * part + lambda * ConstVecMap<Scalar>(x + i0, n);
    else
      part *= s;
  }
};

/// What stops a pass early, shared by its threads: a stop request (FisherOptions::stop_requested) or the
/// first exception a user callback threw inside the parallel region (it cannot leave the region; it is
/// rethrown after it). Every thread reads `halted` before it starts a chunk.
struct PassHalt {
  std::atomic<bool> halted{false};
  std::atomic<Index> chunks_done{0};
  std::mutex mutex;
  std::exception_ptr error;
  /// Runs f (a user callback); an exception it throws halts the pass and is kept, the first one only.
  template <typename F>
  void guard(F&& f) {
    try {
      f();
    } catch (...) {
      const std::lock_guard<std::mutex> lock(mutex);
      if (!error) error = std::current_exception();
      halted = true;
    }
  }
};

/// How a rank's failure travels to the others through Communicator::first_error: a kind letter (s:
/// Interrupted, i: std::invalid_argument, r: anything else) and the message.
std::string describe_failure(const std::exception_ptr& e);
/// Throws the agreed failure: this rank's own exception when it is the one agreed on (its type kept),
/// otherwise an exception of the agreed kind with the agreed message.
[[noreturn]] void throw_agreed(const std::string& agreed, const std::exception_ptr& mine);

}  // namespace detail

template <typename Scalar>
struct FisherOperator<Scalar>::State {
  /// Phase A's head for chunk k of samples [c0, c0 + n): the output cotangents w (C × n) to backpropagate.
  using Head = detail::FunctionRef<void(Index k, Index c0, Index n, MatMap<Scalar> w, Workspace<Scalar>& ws)>;

  State(const Network<Scalar>& m, Vec<Scalar> th, LikelihoodKind lik, const FisherOptions& opt, Index n)
      : model(m),
        theta(std::move(th)),
        likelihood(lik),
        options(opt),
        damping(opt.damping),
        num_params(m.num_params()),
        num_samples(n),
        total_samples(opt.total_samples > 0 ? opt.total_samples : n),
        positions(m.output_positions()),
        comm(opt.communicator ? opt.communicator : &serial_communicator()) {
    stop_set = static_cast<bool>(opt.stop_requested);
  }

  /// Everything up to the forward pass: checks, the plan, the buffers.
  void setup(const Dataset<Scalar>& data);
  /// The forward pass into the cache (the first NaN or Inf found goes to forward_error), then the output
  /// curvature of its outputs. `failed`: setup's exception on this rank, which skips the pass. Every rank
  /// then agrees on a failure or a stop (any rank's, first in rank order) and all throw it, so none is left
  /// waiting in a collective; then on the first NaN report.
  void run_forward(std::exception_ptr failed = nullptr);
  /// **Phase A** of every pass over the stored cotangents: per chunk of samples, head writes the output
  /// cotangents, which Network::backprop_cotangents stores for every node with parameters (cot). The
  /// threads take contiguous ranges of chunks. A named `pass` ("product", "gradient") polls stop_requested
  /// before every chunk and ends with end_pass; with `report`, it reports progress to on_progress. First the
  /// weights the chunks' GEMMs read are packed once for the pass (plan.packed): W and Wᵀ from θ, and dW from
  /// `tangent`, the v of a product whose head runs the R-op (nullptr: a pass without it).
  void backprop_chunks(const char* pass, bool report, Head head, const Scalar* tangent = nullptr);
  /// Before a chunk of a pass: whether to start no further chunk (a stop was requested, or a callback threw).
  bool halted(detail::PassHalt& h) const {
    if (!stop_set) return h.halted.load(std::memory_order_relaxed);
    if (!h.halted.load(std::memory_order_relaxed))
      h.guard([&] {
        if (options.stop_requested()) h.halted = true;
      });
    return h.halted.load(std::memory_order_relaxed);
  }
  /// After a pass that may have halted: throws its callback's exception, or Interrupted naming the pass and
  /// the chunks done. With `agree` (a shared batch) the ranks first agree — one max over the ranks, and the
  /// first failure's message if any — so that either every rank throws or none does.
  void end_pass(detail::PassHalt& h, const char* pass, Index total, bool agree) const;
  /// Products, gradient() and loss() need a complete forward pass (a rebind may have been interrupted).
  void require_forward() const;
  /// **Phases B and C**: y = Σ_n J_nᵀ w_n over this rank's samples, from the stored cotangents — weight
  /// blocks and sample groups (Network::gradient_block, gradient_of_samples), then the groups' partial sums
  /// in group order. Unscaled.
  void sum_gradients(Scalar* y);
  /// y = Σ_n J_nᵀ w_n over all ranks' samples: phases B and C, then (under a communicator) the sum over the
  /// ranks in rank order, so every rank holds the same bits. Unscaled: see scale_and_damp.
  void sum_over_samples(Scalar* y);
  /// y ← s·y + λx on every entry of y (`finish`), in fixed blocks shared by the threads: one pass, the same
  /// in one process and across ranks, after sum_over_samples.
  void scale_and_damp(Scalar* y, const detail::ScaleAndDamp<Scalar>& finish);
  /// Σ_n g_n² of the nodes with nodes[l], from the stored cotangents (Network::squared_gradients), over the
  /// plan's sample groups summed in group order; this rank's samples, unscaled.
  Vec<Scalar> squared_gradients(const std::vector<bool>& nodes);

  /// 1/M: the loss and the Fisher are means over the M positions that count (the N samples' T positions
  /// less those whose label is kIgnoreIndex, over all ranks).
  Scalar inverse_count() const { return Scalar(1) / Scalar(counted); }
  /// M, once the targets are copied: this rank's positions that count, then (count_positions) over all
  /// ranks. Without a communicator the samples of total_samples outside this one's count T positions each.
  /// A batch in which no position counts is an error.
  void count_positions();
  bool distributed() const { return comm->size() > 1; }
  void require_targets(const char* what) const;

  const Network<Scalar>& model;
  Vec<Scalar> theta;
  LikelihoodKind likelihood;
  Dataset<Scalar> data;  // the targets only (the inputs are cache.acts[0])
  FisherOptions options;
  double damping;
  Index num_params, num_samples, total_samples;
  Index positions;  // T when the output is [T, C] (a likelihood per position), else 1
  Index counted = 0;  // M: the positions that count (N·T less the ignored), over all ranks
  const Communicator* comm;
  detail::FisherPlan plan;
  int num_threads = 1;
  std::vector<std::vector<int>> assignment;  // per thread: its phase-B tasks
  ForwardCache<Scalar> cache;
  OutputCurvature<Scalar> curvature;
  std::string forward_error;
  bool forward_done = false;  // the last forward pass ran to the end
  bool stop_set = false;      // options.stop_requested is set: the passes poll it

  // The products' buffers, allocated once.
  std::vector<Workspace<Scalar>> workspaces;  // one per thread
  std::vector<Mat<Scalar>> out_buffers;       // one per thread: C × chunk_size
  std::vector<Vec<Scalar>> task_scratch;      // one per thread: block-task packing space
  PackedWeights<Scalar> packed;               // phase A's weight operands, packed once per pass
  bool weights_packed = false;                // packed holds θ's W and Wᵀ (until rebind sets a new θ)
  CotangentCache<Scalar> cot;
  Vec<Scalar> partials;
  std::vector<std::vector<const Scalar*>> reduction_parts;  // per group-split node: its partials in sum order
  std::vector<double> chunk_loss;
  Vec<Scalar> aligned_x, aligned_y;  // a product's vectors when the caller's are not aligned (perform_op)
  /// The cached outputs (logits) of samples [c0, c0 + n): C × n.
  ConstMatMap<Scalar> outputs_of(Index c0, Index n) const;
  /// chunk_loss[k] = the summed loss of chunk k's samples [c0, c0 + n), one computation for loss() and
  /// gradient() alike (so the two give the same bits).
  void record_chunk_loss(Index k, Index c0, Index n);
  /// The loss from chunk_loss: summed in chunk order, over the ranks, divided by the positions that count.
  void sum_loss() {
    loss = 0;
    for (double l : chunk_loss) loss += l;
    if (distributed()) comm->sum(&loss, 1);
    loss /= static_cast<double>(counted);
    have_loss = true;
  }
  std::vector<double> work;
  Index num_products = 0;
  detail::PassTimers timers;

  bool have_gradient = false, have_loss = false;
  Vec<Scalar> gradient;
  double loss = 0;
};

}  // namespace natgrad
