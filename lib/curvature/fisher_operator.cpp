#include <natgrad/core/threads.h>
#include <natgrad/curvature/fisher_operator.h>

#include <natgrad/core/detail/format_number.h>

#include "core/check.h"
#include "model/node_timer.h"

#include <algorithm>
#include <atomic>
#include <new>
#include <cmath>
#include <stdexcept>
#include "core/fail.h"

#ifdef NATGRAD_HAVE_OPENMP
#include <omp.h>
#endif

namespace natgrad {

namespace {
int thread_id() {
#ifdef NATGRAD_HAVE_OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}
int team_size() {
#ifdef NATGRAD_HAVE_OPENMP
  return omp_get_num_threads();
#else
  return 1;
#endif
}
}  // namespace

bool FisherOptions::is_valid(std::string* why) const {
  auto bad = [&](const std::string& m) {
    if (why) *why = m;
    return false;
  };
  if (kind == FisherKind::mc && mc_samples < 1)
    return bad("mc_samples must be >= 1, got " + std::to_string(mc_samples));
  if (!(damping >= 0) || !std::isfinite(damping))
    return bad("damping must be finite and >= 0, got " + std::to_string(damping));
  if (chunk_size < 0)
    return bad("chunk_size must be >= 0 (0 = automatic), got " + std::to_string(chunk_size));
  if (num_threads < 0) return bad("num_threads must be >= 0, got " + std::to_string(num_threads));
  if (first_sample < 0) return bad("first_sample must be >= 0, got " + std::to_string(first_sample));
  if (total_samples < 0) return bad("total_samples must be >= 0, got " + std::to_string(total_samples));
  return true;
}

Index FisherOptions::chunk_for(Index num_samples, Index min_chunk) const {
  if (chunk_size > 0) return chunk_size;
  const Index per64 = (num_samples + 63) / 64;
  return std::min<Index>(256, std::max<Index>(min_chunk, (per64 + 7) / 8 * 8));
}

namespace {
// Per-layer partial gradients of the group tasks stay within this many bytes: more groups (up to one per
// chunk) let more threads share a layer, each costs a copy of the layer's gradient.
constexpr double kPartialBudgetBytes = 64.0 * 1024 * 1024;
// Weight blocks of a block-split layer: edges of about 256 (one GEMM of depth N per block packs its rows of
// X and of the cotangents, (rows + cols)·N scalars for 2·rows·cols·N flops, so square, large blocks pack
// least; a 1024 × 1024 weight gives 16 blocks).
constexpr Index kBlockEdge = 256;
// Automatic chunks hold at most this many bytes of their widest activation (at least 8 samples): the L2 cache
// of one core on current x86 servers (1 MiB on AMD Zen 4 and Intel Skylake-SP; 2 MiB on Sapphire Rapids). On
// the benchmark ResNet (widest activation 32×28×28 floats, 100 KB a sample) chunks of 8 instead of 32 made the
// exact product 0.95× and the gradient 0.97× the time (AMD EPYC Zen 4, 2 threads, same run); models whose
// activations are narrower keep their chunks.
constexpr double kChunkCacheBytes = 1024.0 * 1024;
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
  // below 64 samples that packing shows (a 784-1024-1024-10 product is 17% slower at 32 than at 64 on one
  // thread). Convolutions pack small weights and do not care. So the smallest chunk is 64 when most of the
  // per-sample work is in such layers, else 32.
  double block_macs = 0, all_macs = 0;
  for (std::size_t l = 0; l < L; ++l) {
    all_macs += model.layer(l).macs_per_sample();
    if (model.block_gradient(l)) block_macs += model.layer(l).macs_per_sample();
  }
  plan.chunk_size = std::min(options.chunk_for(N, 2 * block_macs > all_macs ? 64 : 32), std::max<Index>(N, 1));
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
      const double bytes = double(layer.num_params()) * double(sizeof(Scalar));
      const Index G = std::min<Index>(plan.num_chunks, std::max<Index>(1, Index(kPartialBudgetBytes / bytes)));
      plan.groups[l] = static_cast<int>(G);
      plan.partial_offset[l] = plan.partial_size;
      plan.partial_size += G * layer.num_params();
      for (Index g = 0; g < G; ++g) {
        FisherPlan::Task t;
        t.layer = l;
        t.group = static_cast<int>(g);
        t.chunk0 = g * plan.num_chunks / G;
        t.chunk1 = (g + 1) * plan.num_chunks / G;
        const Index c0 = t.chunk0 * plan.chunk_size, c1 = std::min(N, t.chunk1 * plan.chunk_size);
        t.macs = macs * double(c1 - c0);
        plan.tasks.push_back(t);
      }
    }
  }
  const double all_bytes = double(model.num_params()) * double(sizeof(Scalar));
  plan.diagonal_groups =
      std::min<Index>(plan.num_chunks, std::max<Index>(1, Index(kPartialBudgetBytes / std::max(all_bytes, 1.0))));
  plan.diagonal_partial_size = plan.diagonal_groups * model.num_params();
  return plan;
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

template FisherPlan FisherPlan::make<float>(const Network<float>&, Index, const FisherOptions&);
template FisherPlan FisherPlan::make<double>(const Network<double>&, Index, const FisherOptions&);

template <typename Scalar>
FisherOperator<Scalar>::FisherOperator(const Network<Scalar>& model, Vec<Scalar> theta,
                                       LikelihoodKind likelihood, const Dataset<Scalar>& data,
                                       const FisherOptions& options)
    : model_(model),
      theta_(std::move(theta)),
      likelihood_(likelihood),
      options_(options),
      damping_(options.damping),
      num_params_(model.num_params()),
      num_samples_(data.size()),
      total_samples_(options.total_samples > 0 ? options.total_samples : data.size()),
      comm_(options.communicator ? options.communicator : &serial_communicator()),
      positions_(model.output_positions()) {
  if (!distributed()) {
    setup(model, data);
  } else {
    // The ranks construct the operator together: one that fails (bad input, no memory) must not leave the
    // others waiting in the forward pass's agreement, so every rank fails with the first failing rank's error.
    std::string error;
    try {
      setup(model, data);
    } catch (const std::invalid_argument& e) {
      error = std::string("i") + e.what();
    } catch (const std::runtime_error& e) {
      error = std::string("r") + e.what();
    } catch (const std::bad_alloc&) {
      error = "rout of memory setting up the Fisher operator";
    }
    error = comm_->first_error(error);
    if (!error.empty()) {
      if (error[0] == 'r') throw std::runtime_error(error.substr(1));
      detail::fail(error.substr(1));
    }
  }
  run_forward();
}

template <typename Scalar>
void FisherOperator<Scalar>::setup(const Network<Scalar>& model, const Dataset<Scalar>& data) {
  const FisherOptions& options = options_;
  std::string why;
  if (!options.is_valid(&why)) detail::fail("FisherOptions: " + why);
  model.check_params(theta_.size());
  if (num_samples_ == 0) detail::fail(distributed() ? "this rank's share of the batch is empty" : "the batch is empty");
  if (options.first_sample + num_samples_ > total_samples_)
    detail::fail("FisherOptions: samples [" + std::to_string(options.first_sample) + ", " +
                 std::to_string(options.first_sample + num_samples_) + ") lie beyond total_samples " +
                 std::to_string(total_samples_));
  if (options.kind == FisherKind::empirical || likelihood_ == LikelihoodKind::categorical ||
      data.targets.size() > 0)
    check_targets(likelihood_, data, model.output_size() / positions_, positions_);
  // The targets only; a 0 × N input matrix (no storage) keeps data_.size() == N for the target checks.
  data_.inputs.resize(0, num_samples_);
  data_.labels = data.labels;
  data_.targets = data.targets;

  plan_ = FisherPlan::make(model, num_samples_, options);
  // Threads beyond the work items would only hold workspaces.
  num_threads_ = static_cast<int>(std::min<Index>(
      resolve_threads(options.num_threads),
      std::max<Index>(plan_.num_chunks, static_cast<Index>(plan_.tasks.size()))));
  num_threads_ = std::max(num_threads_, 1);
  assignment_ = plan_.assign(num_threads_);
  const Index chunk = plan_.chunk_size;

  // An allocation that fails says what it was for and how large it was.
  auto allocating = [](const std::string& what, double bytes, auto&& allocate) {
    try {
      allocate();
    } catch (const std::bad_alloc&) {
      throw std::runtime_error("out of memory allocating " + what + " (" + detail::format_bytes(bytes) + ")");
    }
  };
  double cache_bytes = double(model.input_size()) * double(num_samples_) * sizeof(Scalar);
  for (std::size_t l = 0; l < model.num_layers(); ++l)
    cache_bytes += double(model.layer(l).output_size()) * double(num_samples_) * sizeof(Scalar);
  allocating("the forward cache of " + std::to_string(num_samples_) + " samples", cache_bytes,
             [&] { cache_ = model.make_cache(data.inputs); });
  allocating("the per-thread workspaces", double(num_threads_) * double(chunk) * double(model.workspace_width()) * sizeof(Scalar), [&] {
    for (int t = 0; t < num_threads_; ++t) {
      workspaces_.push_back(model.make_workspace(chunk));
      out_buffers_.emplace_back(model.output_size(), chunk);
      task_scratch_.emplace_back(plan_.task_scratch);
    }
  });
  if (options_.profile) timing_.assign(static_cast<std::size_t>(num_threads_), std::vector<double>(4 * model.num_layers() + 2, 0.0));
  allocating("the stored cotangents of " + std::to_string(num_samples_) + " samples",
             double(plan_.cotangent_size) * sizeof(Scalar), [&] { cot_ = model.make_cotangents(num_samples_); });
  allocating("the partial gradients", double(plan_.partial_size) * sizeof(Scalar),
             [&] { partials_.resize(plan_.partial_size); });
  chunk_loss_.assign(static_cast<std::size_t>(plan_.num_chunks), 0.0);
  work_.assign(static_cast<std::size_t>(num_threads_), 0.0);
}

template <typename Scalar>
void FisherOperator<Scalar>::rebind(const Vec<Scalar>& theta) {
  model_.check_params(theta.size());
  theta_ = theta;
  have_gradient_ = have_loss_ = false;
  run_forward();
}

template <typename Scalar>
void FisherOperator<Scalar>::run_forward() {
  // The forward pass, once per parameter vector; its activations serve every later product. Each chunk then
  // looks for the first layer (input included) where a NaN or Inf appears, while its activations are still
  // in cache; the earliest such layer over all chunks, and its first sample, are reported.
  const Index cs = plan_.chunk_size;
  const std::size_t none = cache_.acts.size();
  for (std::vector<double>& t : timing_) std::fill(t.begin(), t.begin() + model_.num_layers(), 0.0);
  std::vector<std::pair<std::size_t, Index>> first_bad(static_cast<std::size_t>(plan_.num_chunks), {none, 0});
  std::atomic<Index> chunks_done{0};
  const bool report = static_cast<bool>(options_.on_progress);
#ifdef NATGRAD_HAVE_OPENMP
#pragma omp parallel for schedule(dynamic, 1) num_threads(num_threads_)
#endif
  for (Index k = 0; k < plan_.num_chunks; ++k) {
    const Index c0 = k * cs, n = std::min(cs, num_samples_ - c0);
    model_.forward(theta_.data(), cache_, c0, n, timing(thread_id(), 0));
    const Index done = ++chunks_done;
    if (report && thread_id() == 0) options_.on_progress("forward", done, plan_.num_chunks);
    for (std::size_t l = 0; l < cache_.acts.size(); ++l) {
      const auto block = cache_.acts[l].middleCols(c0, n);
      // x·0 is 0 for every finite x and NaN otherwise: one vectorized pass, no per-element branch.
      if (!std::isnan((block.array() * Scalar(0)).sum())) continue;
      Index j = 0;
      while (!std::isnan((block.col(j).array() * Scalar(0)).sum())) ++j;
      first_bad[static_cast<std::size_t>(k)] = {l, c0 + j};
      break;
    }
  }
  forward_error_.clear();
  const auto bad = std::min_element(first_bad.begin(), first_bad.end(), [](const auto& a, const auto& b) {
    return a.first < b.first;  // the first chunk among those with the earliest layer: its first sample
  });
  if (bad != first_bad.end() && bad->first != none) {
    const std::size_t l = bad->first;
    forward_error_ =
        (l == 0 ? std::string("the input")
                : "the output of layer " + model_.node_id(l - 1) + " (" + model_.layer(l - 1).name() + ")") +
        " is NaN or Inf, first at sample " + std::to_string(options_.first_sample + bad->second);
  }
  if (distributed()) forward_error_ = comm_->first_error(forward_error_);  // every rank reports the first
  const Mat<Scalar>& Z = cache_.acts.back();
  curvature_ = OutputCurvature<Scalar>(likelihood_, options_.kind, options_.mc_samples, options_.seed,
                                       ConstMatMap<Scalar>(Z.data(), Z.rows(), Z.cols()), data_, positions_,
                                       keeps_probabilities(Z.size()), options_.first_sample);
}

template <typename Scalar>
bool FisherOperator<Scalar>::keeps_probabilities(Index outputs) {
  // A copy of the logits' softmax is kept up to 64 MiB (a product then reads it); above that (a language
  // model's vocabulary at every position) each product recomputes it from the cached logits.
  return double(outputs) * double(sizeof(Scalar)) <= 64.0 * 1024 * 1024;
}

template <typename Scalar>
void FisherOperator<Scalar>::set_damping(double lambda) {
  if (!(lambda >= 0) || !std::isfinite(lambda))
    detail::fail("damping must be finite and >= 0, got " + std::to_string(lambda));
  damping_ = lambda;
}

template <typename Scalar>
template <typename Head>
void FisherOperator<Scalar>::run(Head head, Scalar scale, const Scalar* x, Scalar lambda, Scalar* y,
                                 const char* phase) const {
  const Index cs = plan_.chunk_size, C = model_.output_size();
  std::fill(work_.begin(), work_.end(), 0.0);
  std::atomic<Index> chunks_done{0};
  const bool report = phase != nullptr && static_cast<bool>(options_.on_progress);
#ifdef NATGRAD_HAVE_OPENMP
#pragma omp parallel num_threads(num_threads_)
#endif
  {
    const int t = thread_id(), team = team_size();
    NATGRAD_CHECK(t < num_threads_ && team <= num_threads_);  // one workspace per thread of the team
    Workspace<Scalar>& ws = workspaces_[static_cast<std::size_t>(t)];
    Mat<Scalar>& obuf = out_buffers_[static_cast<std::size_t>(t)];
    double& work = work_[static_cast<std::size_t>(t)];
    // A: per chunk, the output cotangent and its backpropagation into cot_.
    Index k0, k1;
    plan_.chunk_range(t, team, k0, k1);
    for (Index k = k0; k < k1; ++k) {
      const Index c0 = k * cs, n = std::min(cs, num_samples_ - c0);
      MatMap<Scalar> out(obuf.data(), C, n);
      {
        const detail::NodeTimer timer(timing(t, 4), 0);  // the whole head; its R-op part is also per node
        ws.timing = timing(t, 1);
        head(k, c0, n, out, ws);
      }
      ws.timing = timing(t, 2);
      model_.backprop_cotangents(theta_.data(), cache_, c0, n, ConstMatMap<Scalar>(out.data(), C, n), cot_, ws);
      ws.timing = nullptr;
      work += plan_.chunk_macs_per_sample * double(n);
      const Index done = ++chunks_done;
      if (report && t == 0) options_.on_progress(phase, done, plan_.num_chunks);
    }
#ifdef NATGRAD_HAVE_OPENMP
#pragma omp barrier
#endif
    // B: the parameter tasks (a thread beyond the planned count would take over none).
    for (int a = t; a < num_threads_; a += team)
      for (int i : assignment_[static_cast<std::size_t>(a)]) {
        const FisherPlan::Task& task = plan_.tasks[static_cast<std::size_t>(i)];
        const detail::NodeTimer timer(timing(t, 3), task.layer);
        const Layer<Scalar>& layer = model_.layer(task.layer);
        const Index off = model_.param_offset(task.layer);
        const Mat<Scalar>& X = model_.input_act(cache_, task.layer);
        const Mat<Scalar>& gY = cot_.g[task.layer];
        if (task.by_blocks) {
          model_.block_gradient(task.layer)
              ->grad_block(ConstMatMap<Scalar>(X.data(), X.rows(), X.cols()),
                           ConstMatMap<Scalar>(gY.data(), gY.rows(), gY.cols()), task.row0, task.rows,
                           task.col0, task.cols, y + off, task_scratch_[static_cast<std::size_t>(t)].data());
          // y ← scale·y + λx on the block's rows (and its bias entries), while they are in cache.
          const auto [rows, cols] = model_.block_gradient(task.layer)->grad_grid();
          auto finish = [&](Index i0, Index k) {
            VecMap<Scalar> part(y + off + i0, k);
            if (x && lambda != Scalar(0))
              part = scale * part + lambda * ConstVecMap<Scalar>(x + off + i0, k);
            else
              part *= scale;
          };
          for (Index r = 0; r < task.rows; ++r) finish((task.row0 + r) * cols + task.col0, task.cols);
          if (task.col0 == 0 && layer.num_params() > rows * cols) finish(rows * cols + task.row0, task.rows);
        } else {
          Scalar* partial = partials_.data() + plan_.partial_offset[task.layer] + task.group * layer.num_params();
          std::fill(partial, partial + layer.num_params(), Scalar(0));
          const Mat<Scalar>& Y = cache_.acts[task.layer + 1];
          const Index in = layer.input_size(), out = layer.output_size(), aux = layer.aux_per_sample();
          for (Index k = task.chunk0; k < task.chunk1; ++k) {
            const Index c0 = k * cs, n = std::min(cs, num_samples_ - c0);
            layer.vjp(theta_.data() + off, ConstMatMap<Scalar>(X.data() + c0 * in, in, n),
                      ConstMatMap<Scalar>(Y.data() + c0 * out, out, n),
                      aux ? cache_.aux[task.layer].data() + c0 * aux : nullptr,
                      ConstMatMap<Scalar>(gY.data() + c0 * out, out, n), nullptr, partial, ws.scratch.data());
          }
        }
        work += task.macs;
      }
#ifdef NATGRAD_HAVE_OPENMP
#pragma omp barrier
#endif
    // C: each group-split layer's partial gradients summed in group order, in blocks of entries.
    const detail::NodeTimer timer(timing(t, 4), 1);
    constexpr Index block = 4096;
    Index item = 0;
    for (std::size_t l = 0; l < plan_.groups.size(); ++l) {
      const int G = plan_.groups[l];
      if (G == 0 || model_.tied_to(l) != l) continue;  // a tied node's partials go with its owner's
      const Index P = model_.layer(l).num_params(), off = model_.param_offset(l);
      const Scalar* partial = partials_.data() + plan_.partial_offset[l];
      for (Index i0 = 0; i0 < P; i0 += block, ++item) {
        if (item % team != t) continue;
        const Index n = std::min(block, P - i0);
        VecMap<Scalar> out(y + off + i0, n);
        out = ConstVecMap<Scalar>(partial + i0, n);
        for (int g = 1; g < G; ++g) out += ConstVecMap<Scalar>(partial + g * P + i0, n);
        for (std::size_t a : model_.aliases(l))
          for (int g = 0; g < plan_.groups[a]; ++g)
            out += ConstVecMap<Scalar>(partials_.data() + plan_.partial_offset[a] + g * P + i0, n);
        out *= scale;
        if (x && lambda != Scalar(0)) out += lambda * ConstVecMap<Scalar>(x + off + i0, n);
      }
    }
  }
  if (!timing_.empty()) ++timed_runs_;
}

template <typename Scalar>
OperatorProfile FisherOperator<Scalar>::profile() const {
  const std::size_t L = model_.num_layers();
  OperatorProfile p;
  for (std::vector<double>* v : {&p.forward_s, &p.rop_s, &p.backprop_s, &p.gradient_s}) v->assign(L, 0.0);
  double heads = 0;
  for (const std::vector<double>& t : timing_) {
    for (std::size_t l = 0; l < L; ++l) {
      p.forward_s[l] += t[l];
      p.rop_s[l] += t[L + l];
      p.backprop_s[l] += t[2 * L + l];
      p.gradient_s[l] += t[3 * L + l];
    }
    heads += t[4 * L];
    p.reduction_s += t[4 * L + 1];
  }
  double rop = 0;
  for (double v : p.rop_s) rop += v;
  p.curvature_s = std::max(0.0, heads - rop);  // the head is the R-op and H u
  p.products = timed_runs_;
  return p;
}

template <typename Scalar>
void FisherOperator<Scalar>::reset_profile() const {
  for (std::vector<double>& t : timing_) std::fill(t.begin() + model_.num_layers(), t.end(), 0.0);
  timed_runs_ = 0;
}

template <typename Scalar>
void FisherOperator<Scalar>::perform_op(const Scalar* x, Scalar* y) const {
  NATGRAD_CHECK(x != nullptr && y != nullptr && (y + num_params_ <= x || x + num_params_ <= y));
  const Index C = model_.output_size();
  run(
      [&](Index, Index c0, Index n, MatMap<Scalar>& hu, Workspace<Scalar>& ws) {
        model_.jvp(theta_.data(), x, cache_, c0, n, ws);                          // u = J v
        curvature_.apply(c0, ConstMatMap<Scalar>(ws.result, C, n), hu);           // w = H u
      },
      inverse_count(), x, distributed() ? Scalar(0) : static_cast<Scalar>(damping_), y);  // F v = Σ Jᵀ w / (N·T), + λ v
  if (distributed()) {  // this rank's samples' part, summed over the ranks; then λ v once
    reduce(y, num_params_);
    if (damping_ != 0) VecMap<Scalar>(y, num_params_) += static_cast<Scalar>(damping_) * ConstVecMap<Scalar>(x, num_params_);
  }
  ++num_products_;
}

template <typename Scalar>
void FisherOperator<Scalar>::require_targets(const char* what) const {
  if (data_.labels.empty() && data_.targets.size() == 0)
    detail::fail(std::string(what) + " requires targets, and this batch has none");
}

template <typename Scalar>
const Vec<Scalar>& FisherOperator<Scalar>::gradient() const {
  if (have_gradient_) return gradient_;
  require_targets("computing the loss and its gradient");
  const Index C = model_.output_size();
  const Mat<Scalar>& Z = cache_.acts.back();
  gradient_.resize(num_params_);
  run(
      [&](Index k, Index c0, Index n, MatMap<Scalar>& gz, Workspace<Scalar>&) {
        ConstMatMap<Scalar> z(Z.data() + c0 * C, C, n);
        chunk_loss_[static_cast<std::size_t>(k)] = nll_sum<Scalar>(likelihood_, z, data_, c0, positions_);
        nll_gradient<Scalar>(likelihood_, z, data_, c0, gz, positions_);
      },
      inverse_count(), nullptr, Scalar(0), gradient_.data(), "gradient");
  loss_ = 0;
  for (double l : chunk_loss_) loss_ += l;  // in chunk order
  if (distributed()) {
    reduce(gradient_.data(), num_params_);
    comm_->sum(&loss_, 1);
  }
  loss_ /= static_cast<double>(total_samples_) * static_cast<double>(positions_);
  have_gradient_ = have_loss_ = true;
  return gradient_;
}

template <typename Scalar>
Vec<Scalar> FisherOperator<Scalar>::take_gradient() {
  gradient();
  have_gradient_ = false;
  return std::move(gradient_);
}

template <typename Scalar>
double FisherOperator<Scalar>::loss() const {
  if (!have_loss_) gradient();  // (the loss outlives a gradient moved out by take_gradient)
  return loss_;
}

template <typename Scalar>
Vec<Scalar> FisherOperator<Scalar>::empirical_fisher_diagonal() const {
  // Once per solve: the cotangents of the true-label scores (phase A of the gradient), then the per-sample
  // squared gradients.
  require_targets("the empirical Fisher diagonal");
  const Index C = model_.output_size();
  const Mat<Scalar>& Z = cache_.acts.back();
  backprop_outputs([&](Index c0, Index n, MatMap<Scalar> gz) {
    nll_gradient<Scalar>(likelihood_, ConstMatMap<Scalar>(Z.data() + c0 * C, C, n), data_, c0, gz, positions_);
  });
  Vec<Scalar> diag = squared_gradients(std::vector<bool>(model_.num_layers(), true));
  diag *= inverse_count();
  if (distributed()) reduce(diag.data(), num_params_);
  return diag;
}

template <typename Scalar>
void FisherOperator<Scalar>::backprop_outputs(const std::function<void(Index, Index, MatMap<Scalar>)>& head) const {
  const Index C = model_.output_size(), cs = plan_.chunk_size;
#ifdef NATGRAD_HAVE_OPENMP
#pragma omp parallel num_threads(num_threads_)
#endif
  {
    const int t = thread_id(), team = team_size();
    Workspace<Scalar>& ws = workspaces_[static_cast<std::size_t>(t)];
    Mat<Scalar>& obuf = out_buffers_[static_cast<std::size_t>(t)];
    Index k0, k1;
    plan_.chunk_range(t, team, k0, k1);
    for (Index k = k0; k < k1; ++k) {
      const Index c0 = k * cs, n = std::min(cs, num_samples_ - c0);
      MatMap<Scalar> gz(obuf.data(), C, n);
      head(c0, n, gz);
      model_.backprop_cotangents(theta_.data(), cache_, c0, n, ConstMatMap<Scalar>(gz.data(), C, n), cot_, ws);
    }
  }
}

template <typename Scalar>
Vec<Scalar> FisherOperator<Scalar>::squared_gradients(const std::vector<bool>& nodes) const {
  // Per node with parameters and sample group, the per-sample squared gradients, summed in group order. Its
  // partial buffers are this call's own (FisherPlan::diagonal_partial_size scalars).
  const Index cs = plan_.chunk_size;
  Vec<Scalar> diag = Vec<Scalar>::Zero(num_params_);
  std::fill(work_.begin(), work_.end(), 0.0);
  struct Item {
    std::size_t layer;
    Index chunk0, chunk1;
    Index offset;  // in `partial`
  };
  std::vector<Item> items;
  std::vector<Index> groups(model_.num_layers(), 0), base(model_.num_layers(), 0);
  Index total = 0;
  for (std::size_t l = 0; l < model_.num_layers(); ++l) {
    const Index P = model_.layer(l).num_params();
    if (P == 0 || model_.tied_to(l) != l || !nodes[l]) continue;  // a tied node's gradients go with its owner's
    const Index G = plan_.diagonal_groups;
    groups[l] = G;
    base[l] = total;
    for (Index g = 0; g < G; ++g)
      items.push_back({l, g * plan_.num_chunks / G, (g + 1) * plan_.num_chunks / G, total + g * P});
    total += G * P;
  }
  Vec<Scalar> partial = Vec<Scalar>::Zero(total);
#ifdef NATGRAD_HAVE_OPENMP
#pragma omp parallel num_threads(num_threads_)
#endif
  {
    Workspace<Scalar>& ws = workspaces_[static_cast<std::size_t>(thread_id())];
    // The squared gradients' scratch (a sequence layer's whole per-sample gradient), for this call only.
    typename Workspace<Scalar>::Buffer squared_scratch(static_cast<std::size_t>(model_.squared_scratch_size(cs)));
#ifdef NATGRAD_HAVE_OPENMP
#pragma omp for schedule(dynamic, 1)
#endif
    for (std::size_t i = 0; i < items.size(); ++i) {
      const Item& it = items[i];
      const Layer<Scalar>& layer = model_.layer(it.layer);
      const Index off = model_.param_offset(it.layer), in = layer.input_size(), out = layer.output_size();
      const SquaredGradients<Scalar>* squared = model_.squared_gradients_of(it.layer);
      if (!model_.aliases(it.layer).empty() || !squared) {  // per sample, one-column vjps
        tied_squared_grads(it.layer, it.chunk0, it.chunk1, partial.data() + it.offset, ws.scratch.data());
        continue;
      }
      for (Index k = it.chunk0; k < it.chunk1; ++k) {
        const Index c0 = k * cs, n = std::min(cs, num_samples_ - c0);
        squared->accumulate_squared_grads(
            theta_.data() + off,
            ConstMatMap<Scalar>(model_.input_act(cache_, it.layer).data() + c0 * in, in, n),
            ConstMatMap<Scalar>(cot_.g[it.layer].data() + c0 * out, out, n), partial.data() + it.offset,
            squared_scratch.data());
      }
    }
  }
  for (std::size_t l = 0; l < model_.num_layers(); ++l) {
    if (groups[l] == 0) continue;
    const Index P = model_.layer(l).num_params();
    auto d = diag.segment(model_.param_offset(l), P);
    d = partial.segment(base[l], P);
    for (Index g = 1; g < groups[l]; ++g) d += partial.segment(base[l] + g * P, P);
  }
  return diag;
}

// A tensor tied across nodes gets per sample the sum of its uses' gradients before squaring: per sample, each
// use's gradient (a one-column vjp) is added into one buffer, which is then squared into gsq.
template <typename Scalar>
void FisherOperator<Scalar>::tied_squared_grads(std::size_t owner, Index chunk0, Index chunk1, Scalar* gsq,
                                                Scalar* scratch) const {
  const Index P = model_.layer(owner).num_params(), off = model_.param_offset(owner), cs = plan_.chunk_size;
  std::vector<std::size_t> uses{owner};
  uses.insert(uses.end(), model_.aliases(owner).begin(), model_.aliases(owner).end());
  Vec<Scalar> g(P);
  for (Index col = chunk0 * cs; col < std::min(num_samples_, chunk1 * cs); ++col) {
    g.setZero();
    for (std::size_t l : uses) {
      const Layer<Scalar>& layer = model_.layer(l);
      const Index in = layer.input_size(), out = layer.output_size(), aux = layer.aux_per_sample();
      layer.vjp(theta_.data() + off, ConstMatMap<Scalar>(model_.input_act(cache_, l).data() + col * in, in, 1),
                ConstMatMap<Scalar>(cache_.acts[l + 1].data() + col * out, out, 1),
                aux ? cache_.aux[l].data() + col * aux : nullptr,
                ConstMatMap<Scalar>(cot_.g[l].data() + col * out, out, 1), nullptr, g.data(), scratch);
    }
    VecMap<Scalar>(gsq, P).array() += g.array().square();
  }
}

template class FisherOperator<float>;
template class FisherOperator<double>;

}  // namespace natgrad
