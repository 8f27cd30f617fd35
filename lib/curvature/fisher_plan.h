// Private: the parallel work plan of a Fisher-vector product (FisherOperator), fixed by the model, the batch
// size N, the chunk size and the scalar size — never by the thread count, so that every result is
// bit-identical for any number of threads.
//
//   A. per-sample work over `num_chunks` chunks of `chunk_size` samples (the R-op, H, the backpropagation of
//   the
//      cotangents), each thread a contiguous range of chunks (chunk_range); the weights of the linear nodes
//      whose chunks have few GEMM columns are packed once per pass first (`packed`);
//   B. the parameter gradient over `tasks`: a node with a blocked gradient (BlockGradient, linear) gets
//   weight
//      blocks of about 256 × 256, each one GEMM of depth N that writes its part of the result; any other node
//      with parameters gets sample groups (SampleGroups), each summing its chunks in order into its own
//      partial gradient. Tasks go to threads by cost (assign), which never changes a result;
//   C. each group-split node's partial gradients summed in group order (sum_in_order).
// The same group split and ordered sum serve the squared per-sample gradients (the empirical diagonal).
#pragma once

#include <natgrad/curvature/fisher_operator.h>
#include <natgrad/model/network.h>

#include <cstddef>
#include <vector>

namespace natgrad {
namespace detail {

/// G groups of K chunks: group g holds chunks [g·K/G, (g+1)·K/G), contiguous, sizes within one.
struct SampleGroups {
  Index chunks = 0, groups = 1;
  Index begin(Index g) const { return g * chunks / groups; }
  Index end(Index g) const { return (g + 1) * chunks / groups; }
  /// As many groups as partial sums of `bytes` each fit in 64 MiB: more groups (up to one per chunk) let more
  /// threads share a node, each costs a partial sum the size of its gradient. At least one.
  static SampleGroups within_budget(Index chunks, double bytes);
};

/// out[0, n) = parts[0][i0, i0 + n) + parts[1][i0, i0 + n) + …, added in the order of `parts`: the fixed
/// order that makes a sum of partial gradients the same whichever threads computed them.
template <typename Scalar>
void sum_in_order(const std::vector<const Scalar*>& parts, Index i0, Index n, Scalar* out) {
  VecMap<Scalar> o(out, n);
  o = ConstVecMap<Scalar>(parts[0] + i0, n);
  for (std::size_t g = 1; g < parts.size(); ++g) o += ConstVecMap<Scalar>(parts[g] + i0, n);
}

struct FisherPlan {
  /// A phase-B task: the weight block rows [row0, row0 + rows) × columns [col0, col0 + cols) of a node with a
  /// blocked gradient, or sample group `group` (chunks [chunk0, chunk1)) of another node with parameters.
  struct Task {
    std::size_t layer = 0;
    bool by_blocks = false;
    Index row0 = 0, rows = 0, col0 = 0, cols = 0;
    int group = 0;
    Index chunk0 = 0, chunk1 = 0;
    double macs = 0;  ///< multiply-adds of the task
  };
  Index chunk_size = 0, num_chunks = 0;
  double chunk_macs_per_sample = 0;   ///< phase A: R-op and input-cotangent GEMMs per sample
  std::vector<Task> tasks;            ///< phase B
  std::vector<int> groups;            ///< per node: sample groups (0 for block-split nodes and no params)
  std::vector<Index> partial_offset;  ///< per node: where its groups' partial gradients start
  Index partial_size = 0;             ///< scalars of all partial gradients
  Index cotangent_size = 0;           ///< scalars of the stored cotangents (N columns)
  Index task_scratch = 0;             ///< scalars of per-thread scratch the block tasks need
  /// Phase A: per node, whether its weights are packed once per pass (Network::make_packed_weights), and the
  /// scalars they take.
  std::vector<bool> packed;
  Index packed_size = 0;
  /// The squared per-sample gradients (empirical diagonal): the sample groups of every node (one split for
  /// all, within the partial budget for the whole parameter vector) and their partial sums' scalars.
  SampleGroups diagonal_groups;
  Index diagonal_partial_size = 0;

  template <typename Scalar>
  static FisherPlan make(const Network<Scalar>& model, Index num_samples, const FisherOptions& options);

  /// Phase A: the chunks [k0, k1) thread t of `threads` takes (contiguous, as equal as possible).
  void chunk_range(int t, int threads, Index& k0, Index& k1) const {
    k0 = num_chunks * t / threads;
    k1 = num_chunks * (t + 1) / threads;
  }
  /// Phase B: the tasks each of `threads` threads takes: the costliest first, each to the least loaded
  /// thread (ties: the lower thread, the earlier task). Which thread runs a task never changes its result.
  std::vector<std::vector<int>> assign(int threads) const;
  /// The threads worth keeping a workspace for: `requested` (0: the library-wide count), at most one per
  /// chunk or task, at least one.
  int threads_for(int requested) const;
};

/// The squared per-sample gradients of the nodes with nodes[l] (and parameters of their own; a tied node's
/// go with its owner's), each summed over `groups` sample groups into partial sums laid out node after node:
/// where each node's partial sums start (−1 for a node left out), and in `total` the scalars of them all.
/// One layout for FisherOperator's squared_gradients and for what it is said to allocate
/// (squared_gradients_bytes).
template <typename Scalar>
std::vector<Index> squared_partial_layout(const Network<Scalar>& model, Index groups,
                                          const std::vector<bool>& nodes, Index& total);

/// What the squared gradients of `nodes` allocate at their peak with the plan's diagonal_groups and `threads`
/// threads: the partial sums (squared_partial_layout), beside them first each thread's scratch
/// (Network::squared_scratch_size of a chunk), then the returned parameter-sized vector. The few per-node
/// bookkeeping entries are not counted.
template <typename Scalar>
std::size_t squared_gradients_bytes(const Network<Scalar>& model, const FisherPlan& plan, int threads,
                                    const std::vector<bool>& nodes);

}  // namespace detail
}  // namespace natgrad
