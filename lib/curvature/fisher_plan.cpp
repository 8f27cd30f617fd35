// The parallel work plan of a product (fisher_plan.h): the chunk size, the phase-B tasks and their cost, and
// their assignment to threads.
#include "curvature/fisher_plan.h"

#include <natgrad/core/threads.h>

#include <algorithm>

namespace natgrad {
namespace detail {

namespace {
// The partial gradients of a node's sample groups stay within this many bytes (SampleGroups::within_budget).
constexpr double kPartialBudgetBytes = 64.0 * 1024 * 1024;
// Weight blocks of a block-split layer: edges of about 256 (one GEMM of depth N per block packs its rows of
// X and of the cotangents, (rows + cols)·N scalars for 2·rows·cols·N flops, so square, large blocks pack
// least; a 1024 × 1024 weight gives 16 blocks).
constexpr Index kBlockEdge = 256;
// Automatic chunks hold at most this many bytes of their widest activation (at least 8 samples): the L2 cache
// of one core on current x86 servers (1 MiB on AMD Zen 4 and Intel Skylake-SP; 2 MiB on Sapphire Rapids). On
// the benchmark ResNet (widest activation 32×28×28 floats, 100 KB a sample) chunks of 8 instead of 32 made
// the exact product 0.95× and the gradient 0.97× the time (AMD EPYC Zen 4, 2 threads, same run); models whose
// activations are narrower keep their chunks.
constexpr double kChunkCacheBytes = 1024.0 * 1024;
// Phase A's GEMMs on a chunk of c columns pack their weight operand (m·k scalars, read strided and written)
// for 2·m·k·c flops, on every chunk. Below 512 columns that shows: on the 784-1024-1024-10 MLP (64 columns)
// packing took 30% of the R-op's time, and packing each weight once per pass instead
// (Network::make_packed_weights) made the whole product 0.87× the time (AMD EPYC Zen 5, one thread, CPU
// time of interleaved runs on a shared host). Those nodes' packed weights (dW, W, Wᵀ: up to 3× their
// parameters) are kept within this many bytes, the first nodes first.
constexpr Index kPackBelowColumns = 512;
constexpr double kPackedBudgetBytes = 64.0 * 1024 * 1024;
Index block_step(Index extent) {
  const Index blocks = (extent + kBlockEdge - 1) / kBlockEdge;
  return (extent + blocks - 1) / blocks;
}
}  // namespace

template <typename Scalar>
FisherPlan FisherPlan::make(const Network<Scalar>& model, Index N, const FisherOptions& options) {
  FisherPlan plan;
  const std::size_t L = model.num_layers();
  // A chunk's GEMMs pack the whole weight of a block-split (linear) layer for 2·chunk flops per packed entry:
  // below 64 samples that packing showed (a 784-1024-1024-10 product was 17% slower at 32 than at 64 on one
  // thread, before such weights were packed once per pass: `packed` below). Convolutions pack small weights
  // and do not care. So the smallest chunk is 64 when most of the per-sample work is in such layers, else 32.
  double block_macs = 0, all_macs = 0;
  for (std::size_t l = 0; l < L; ++l) {
    all_macs += model.layer(l).macs_per_sample();
    if (model.block_gradient(l)) block_macs += model.layer(l).macs_per_sample();
  }
  plan.chunk_size =
      std::min(options.chunk_for(N, 2 * block_macs > all_macs ? 64 : 32), std::max<Index>(N, 1));
  // Each pass streams a chunk's activations from one node to the next: chunks whose widest activation fits in
  // a core's L2 cache keep that traffic out of the shared L3 (see kChunkCacheBytes).
  if (options.chunk_size <= 0) {
    const double widest = double(std::max<Index>(model.max_width(), 1)) * double(sizeof(Scalar));
    const Index fits = std::max<Index>(8, Index(kChunkCacheBytes / widest) / 8 * 8);
    plan.chunk_size = std::min(plan.chunk_size, fits);
  }
  // A sequence of T positions is T GEMM columns already: chunks of about 256 columns (one sequence from
  // T = 256 on) keep every thread busy on a small batch and the workspaces a few sequences wide, whatever
  // the batch.
  const Index T = model.output_positions();
  if (T > 1 && options.chunk_size <= 0)
    plan.chunk_size = std::min(std::max<Index>(N, 1), std::max<Index>(1, (256 + T - 1) / T));
  plan.num_chunks = (N + plan.chunk_size - 1) / plan.chunk_size;
  plan.groups.assign(L, 0);
  plan.partial_offset.assign(L, 0);
  bool first = true;
  for (std::size_t l = 0; l < L; ++l) {
    const Layer<Scalar>& layer = model.layer(l);
    if (layer.num_params() == 0) continue;
    const double macs = layer.macs_per_sample();
    // Phase A: the R-op's dW·x (and W·dx after the first layer with parameters), backprop's Wᵀ·g (not for
    // the first, whose input cotangent nobody needs).
    plan.chunk_macs_per_sample += (first ? 1 : 3) * macs;
    first = false;
    plan.cotangent_size += layer.output_size() * N;
    const BlockGradient<Scalar>* blocks = model.block_gradient(l);
    // Tied nodes (and their owner) sum into one slice: each keeps partial gradients, added in phase C.
    const bool tied = model.tied_to(l) != l || !model.aliases(l).empty();
    if (blocks && !tied) {
      const auto [R, K] = blocks->grad_grid();
      const Index rs = block_step(R), ks = block_step(K);
      for (Index r0 = 0; r0 < R; r0 += rs)
        for (Index c0 = 0; c0 < K; c0 += ks) {
          FisherPlan::Task t;
          t.layer = l;
          t.by_blocks = true;
          t.row0 = r0;
          t.rows = std::min(rs, R - r0);
          t.col0 = c0;
          t.cols = std::min(ks, K - c0);
          t.macs = macs * double(N) * double(t.rows) * double(t.cols) / (double(R) * double(K));
          plan.tasks.push_back(t);
          plan.task_scratch = std::max(plan.task_scratch, blocks->grad_block_scratch(t.rows, t.cols, N));
        }
    } else {
      const SampleGroups split =
          SampleGroups::within_budget(plan.num_chunks, double(layer.num_params()) * double(sizeof(Scalar)));
      const Index G = split.groups;
      plan.groups[l] = static_cast<int>(G);
      plan.partial_offset[l] = plan.partial_size;
      plan.partial_size += G * layer.num_params();
      for (Index g = 0; g < G; ++g) {
        FisherPlan::Task t;
        t.layer = l;
        t.group = static_cast<int>(g);
        t.chunk0 = split.begin(g);
        t.chunk1 = split.end(g);
        const Index c0 = t.chunk0 * plan.chunk_size, c1 = std::min(N, t.chunk1 * plan.chunk_size);
        t.macs = macs * double(c1 - c0);
        plan.tasks.push_back(t);
      }
    }
  }
  plan.packed.assign(L, false);
  for (std::size_t l = 0; l < L; ++l) {
    if (!model.packs_weights(l) || plan.chunk_size * model.packed_columns_per_sample(l) >= kPackBelowColumns)
      continue;
    std::vector<bool> one(L, false);
    one[l] = true;
    const Index size = model.packed_weights_size(one);
    if (double(plan.packed_size + size) * double(sizeof(Scalar)) > kPackedBudgetBytes) continue;
    plan.packed[l] = true;
    plan.packed_size += size;
  }
  plan.diagonal_groups =
      SampleGroups::within_budget(plan.num_chunks, double(model.num_params()) * double(sizeof(Scalar)));
  plan.diagonal_partial_size = plan.diagonal_groups.groups * model.num_params();
  return plan;
}

SampleGroups SampleGroups::within_budget(Index chunks, double bytes) {
  SampleGroups s;
  s.chunks = chunks;
  s.groups = std::min<Index>(chunks, std::max<Index>(1, Index(kPartialBudgetBytes / std::max(bytes, 1.0))));
  return s;
}

int FisherPlan::threads_for(int requested) const {
  const Index useful = std::max<Index>(num_chunks, static_cast<Index>(tasks.size()));
  return static_cast<int>(std::max<Index>(1, std::min<Index>(resolve_threads(requested), useful)));
}

std::vector<std::vector<int>> FisherPlan::assign(int threads) const {
  std::vector<std::vector<int>> out(static_cast<std::size_t>(std::max(threads, 1)));
  std::vector<int> order(tasks.size());
  for (std::size_t i = 0; i < order.size(); ++i) order[i] = static_cast<int>(i);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) {
    return tasks[static_cast<std::size_t>(a)].macs > tasks[static_cast<std::size_t>(b)].macs;
  });
  std::vector<double> load(out.size(), 0.0);
  for (int i : order) {
    const auto t = static_cast<std::size_t>(std::min_element(load.begin(), load.end()) - load.begin());
    out[t].push_back(i);
    load[t] += tasks[static_cast<std::size_t>(i)].macs;
  }
  return out;
}

template <typename Scalar>
std::vector<Index> squared_partial_layout(const Network<Scalar>& model, Index groups,
                                          const std::vector<bool>& nodes, Index& total) {
  std::vector<Index> base(model.num_layers(), -1);
  total = 0;
  for (std::size_t l = 0; l < model.num_layers(); ++l) {
    const Index P = model.layer(l).num_params();
    if (P == 0 || model.tied_to(l) != l || !nodes[l]) continue;
    base[l] = total;
    total += groups * P;
  }
  return base;
}

template <typename Scalar>
std::size_t squared_gradients_bytes(const Network<Scalar>& model, const FisherPlan& plan, int threads,
                                    const std::vector<bool>& nodes) {
  Index partial = 0;
  squared_partial_layout(model, plan.diagonal_groups.groups, nodes, partial);
  const Index scratch = static_cast<Index>(threads) * model.squared_scratch_size(plan.chunk_size);
  return static_cast<std::size_t>(partial + std::max(scratch, model.num_params())) * sizeof(Scalar);
}

#define NATGRAD_INSTANTIATE(S)                                                                              \
  template FisherPlan FisherPlan::make<S>(const Network<S>&, Index, const FisherOptions&);                  \
  template std::vector<Index> squared_partial_layout<S>(const Network<S>&, Index, const std::vector<bool>&, \
                                                        Index&);                                            \
  template std::size_t squared_gradients_bytes<S>(const Network<S>&, const FisherPlan&, int,                \
                                                  const std::vector<bool>&);
NATGRAD_INSTANTIATE(float)
NATGRAD_INSTANTIATE(double)
#undef NATGRAD_INSTANTIATE

}  // namespace detail
}  // namespace natgrad
