// FisherOperator: y = (F + λI) x without forming F. This file composes the operator's passes
// (fisher_passes.cpp: phase A per chunk of samples, phases B and C over the stored cotangents, the sum over
// ranks) into the product, the gradient and the empirical diagonal; the work plan they follow is
// fisher_plan.h, the state they share fisher_state.h.
#include <natgrad/curvature/fisher_operator.h>

#include <cmath>
#include <cstdint>
#include <new>
#include <stdexcept>

#include "core/check.h"
#include "core/fail.h"
#include "core/format_number.h"
#include "curvature/fisher_state.h"

namespace natgrad {

template <typename Scalar>
void FisherOperator<Scalar>::perform_op(const Scalar* x, Scalar* y) const {
  // The product, derived. A sample's outputs z_n = f(x_n; θ) ∈ R^{T·C} (T positions of C outputs) define the
  // mean negative log-likelihood over the M positions that count (N·T less those whose categorical label is
  // kIgnoreIndex: their blocks of H_n are zero), whose Fisher is
  //
  //     F = s Σ_n J_nᵀ H_n J_n,   s = 1/M,   J_n = ∂z_n/∂θ,   H_n = E_y[∇_z log p ∇_z log pᵀ]
  //
  // with y ~ p(y | z_n) (H_n: the output distribution's Fisher, exact, Monte-Carlo or empirical:
  // OutputCurvature). For v = x
  //
  //     (F + λI) v = s Σ_n J_nᵀ (H_n (J_n v)) + λ v,
  //
  // read from the inside out: passes over the cached forward pass, never F itself.
  //   1. u_n = J_n v       the R-op (forward mode), per chunk of samples:   Network::jvp
  //   2. w_n = H_n u_n     C × C per sample (O(C) for the exact Fisher):    OutputCurvature::apply
  //   3. y = Σ_n J_nᵀ w_n  w backpropagated to every node with parameters   Network::backprop_cotangents
  //                        and stored (phase A), then each node's gradient  Network::gradient_block,
  //                        (phases B, C), summed over the ranks:            gradient_of_samples
  //   4. y ← s·y + λv      once, over all of y:                             detail::ScaleAndDamp
  //
  // Step 4 comes after every sum, in one place for one process and for K ranks. Steps 1–3 add per-sample
  // terms only — over chunks, sample groups and (under MPI) ranks, each rank holding its share of the N
  // samples — so y after step 3 is the full Σ_n over all N·T positions whatever the split. The mean's factor
  // s = 1/M uses the count over all ranks (State::count_positions), not a rank's share, and λv belongs to no
  // sample: added inside the sum, it would count once per rank (K·λv) or per group. Hence exactly one
  // y = s·y + λx, on the summed y.
  NATGRAD_CHECK(x != nullptr && y != nullptr && (y + num_params_ <= x || x + num_params_ <= y));
  State& st = *s_;
  st.require_forward();
  // Eigen takes its vectorized or its scalar path for an entry by where it lies against the alignment, and the
  // two may round differently (fused multiply-adds): vectors that do not start at Eigen's alignment (NumPy's,
  // a slice) are copied to and from the operator's own, so that the product's bits do not depend on where
  // the caller put them. (Allocated at the first such product.)
  const auto unaligned = [](const Scalar* p) {
    return reinterpret_cast<std::uintptr_t>(p) % std::uintptr_t(EIGEN_MAX_ALIGN_BYTES) != 0;
  };
  if (unaligned(x) || unaligned(y)) {
    st.aligned_x.resize(num_params_);
    st.aligned_y.resize(num_params_);
    std::copy(x, x + num_params_, st.aligned_x.data());
    perform_op(st.aligned_x.data(), st.aligned_y.data());
    std::copy(st.aligned_y.data(), st.aligned_y.data() + num_params_, y);
    return;
  }
  const Index C = st.model.output_size();
  const auto head = [&](Index, Index c0, Index n, MatMap<Scalar> w, Workspace<Scalar>& ws) {
    st.model.jvp(st.theta.data(), x, st.cache, c0, n, ws, &st.packed);  // 1. u = J v
    st.curvature.apply(c0, ConstMatMap<Scalar>(ws.result(), C, n), w);  // 2. w = H u
  };
  st.backprop_chunks("product", false, head, x);                                   // 3. (phase A)
  st.sum_over_samples(y);                                                          // 3. y = Σ_n J_nᵀ w_n
  st.scale_and_damp(y, {st.inverse_count(), static_cast<Scalar>(st.damping), x});  // 4. y ← s·y + λx
  ++st.num_products;
}

template <typename Scalar>
const Vec<Scalar>& FisherOperator<Scalar>::gradient() const {
  // g = s Σ_n J_nᵀ ∇_z ℓ_n: the product's passes with the loss's cotangents as the head and no damping.
  State& st = *s_;
  if (st.have_gradient) return st.gradient;
  st.require_forward();
  st.require_targets("computing the loss and its gradient");
  st.gradient.resize(num_params_);
  const auto head = [&](Index k, Index c0, Index n, MatMap<Scalar> gz, Workspace<Scalar>&) {
    st.record_chunk_loss(k, c0, n);
    nll_gradient<Scalar>(st.likelihood, st.outputs_of(c0, n), st.data, c0, gz, st.positions);
  };
  st.backprop_chunks("gradient", true, head);
  st.sum_over_samples(st.gradient.data());
  st.scale_and_damp(st.gradient.data(), {st.inverse_count(), Scalar(0), nullptr});
  st.sum_loss();
  st.have_gradient = true;
  return st.gradient;
}

template <typename Scalar>
Vec<Scalar> FisherOperator<Scalar>::empirical_fisher_diagonal() const {
  // diag(F_emp) = s Σ_n (J_nᵀ ∇_z ℓ_n)²: the cotangents of the true-label scores (phase A of the gradient),
  // then the per-sample squared gradients, summed over the ranks.
  State& st = *s_;
  st.require_forward();
  st.require_targets("the empirical Fisher diagonal");
  backprop_outputs([&](Index c0, Index n, MatMap<Scalar> gz) {
    nll_gradient<Scalar>(st.likelihood, st.outputs_of(c0, n), st.data, c0, gz, st.positions);
  });
  Vec<Scalar> diag = st.squared_gradients(std::vector<bool>(st.model.num_layers(), true));
  if (st.distributed()) st.comm->sum(diag.data(), num_params_);
  diag *= st.inverse_count();
  return diag;
}

template <typename Scalar>
void FisherOperator<Scalar>::backprop_outputs(
    const std::function<void(Index, Index, MatMap<Scalar>)>& head) const {
  s_->require_forward();
  s_->backprop_chunks(nullptr, false, [&](Index, Index c0, Index n, MatMap<Scalar> gz, Workspace<Scalar>&) {
    head(c0, n, gz);
  });
}

template <typename Scalar>
Vec<Scalar> FisherOperator<Scalar>::squared_gradients(const std::vector<bool>& nodes) const {
  return s_->squared_gradients(nodes);
}

template <typename Scalar>
FisherOperator<Scalar>::FisherOperator(const Network<Scalar>& model, Vec<Scalar> theta,
                                       LikelihoodKind likelihood, const Dataset<Scalar>& data,
                                       const FisherOptions& options)
    : s_(std::make_unique<State>(model, std::move(theta), likelihood, options, data.size())),
      num_params_(model.num_params()) {
  // Under a communicator the ranks construct the operator together: a rank whose setup fails (bad input, no
  // memory, anything) still takes part in the forward pass's agreement, where every rank learns the first
  // failure and throws it, instead of leaving the others waiting.
  std::exception_ptr failed;
  try {
    s_->setup(data);
  } catch (...) {
    failed = std::current_exception();
  }
  s_->run_forward(failed);
  s_->count_positions();  // (every rank is here: a failed setup threw on all of them in run_forward)
}

template <typename Scalar>
void FisherOperator<Scalar>::State::count_positions() {
  // M, the positions the means are over. Only categorical labels can be ignored; any other likelihood (or a
  // batch without an ignored label anywhere) counts all N·T, and a batch whose ranks hold no ignored label
  // still takes part in the one sum (a collective: every rank or none).
  const Index all = total_samples * positions;
  if (likelihood != LikelihoodKind::categorical) {
    counted = all;
    return;
  }
  const Index mine = counted_labels(data.labels);
  if (distributed()) {
    double m = double(mine);
    comm->sum(&m, 1);
    counted = static_cast<Index>(m);
  } else {
    counted = mine + (total_samples - num_samples) * positions;
  }
  if (counted == 0)
    detail::fail("every target of the batch is the ignore index " + std::to_string(kIgnoreIndex) +
                 (positions > 1 ? " (all " + std::to_string(all) + " positions)" : "") +
                 ": no position counts toward the loss, the gradient or the Fisher");
}

template <typename Scalar>
FisherOperator<Scalar>::~FisherOperator() = default;
template <typename Scalar>
FisherOperator<Scalar>::FisherOperator(FisherOperator&&) noexcept = default;
template <typename Scalar>
FisherOperator<Scalar>& FisherOperator<Scalar>::operator=(FisherOperator&&) noexcept = default;

namespace {
// What an operator with this plan and `threads` workspaces allocates: one rule for required_bytes (the memory
// estimate, before anything is built) and for the constructor (its out-of-memory messages).
template <typename Scalar>
typename FisherOperator<Scalar>::Footprint footprint(const Network<Scalar>& model,
                                                     const detail::FisherPlan& plan, int threads,
                                                     Index num_samples, LikelihoodKind likelihood,
                                                     const FisherOptions& options) {
  const std::size_t s = sizeof(Scalar), n = static_cast<std::size_t>(num_samples);
  const std::size_t C = static_cast<std::size_t>(model.output_size());
  const std::size_t T = static_cast<std::size_t>(model.output_positions());
  // Per sample: the cached activations (input included) and what layers save for the other passes
  // (attention's probabilities; max-pool indices as int32); the output curvature's statistics (the
  // Monte-Carlo draws or the empirical gradients: C per draw; the exact categorical's p and dominant class
  // while they are kept, Bernoulli's σ(1 − σ)); the copied targets (int64 labels per position, or C values).
  std::size_t per_sample = static_cast<std::size_t>(model.input_size() + model.saved_per_sample()), aux = 0;
  for (std::size_t l = 0; l < model.num_layers(); ++l) {
    per_sample += static_cast<std::size_t>(model.layer(l).output_size());
    aux += static_cast<std::size_t>(model.layer(l).aux_per_sample());
  }
  const bool categorical = likelihood == LikelihoodKind::categorical;
  const std::size_t draws = options.kind == FisherKind::mc ? static_cast<std::size_t>(options.mc_samples) : 1;
  std::size_t statistics = C * draws * s;
  if (options.kind == FisherKind::exact) {
    if (likelihood == LikelihoodKind::gaussian ||
        (categorical && !FisherOperator<Scalar>::keeps_probabilities(model.output_size() * num_samples)))
      statistics = 0;
    else
      statistics = C * s + (categorical ? T * sizeof(Index) : 0);
  }
  const std::size_t targets = categorical ? T * sizeof(std::int64_t) : C * s;
  typename FisherOperator<Scalar>::Footprint f;
  f.forward = n * (per_sample * s + aux * sizeof(std::int32_t) + statistics + targets);
  // Per thread: its workspace (tangent and cotangent buffers, layer scratch), the forward pass's per-call
  // layer buffer (a convolution's im2col block, alive while the workspaces are), the output buffer and the
  // block tasks' packing space.
  const Index chunk = plan.chunk_size;
  f.workspaces = static_cast<std::size_t>(threads) *
                 static_cast<std::size_t>(model.workspace_width() * chunk + model.scratch_size(chunk) +
                                          model.forward_scratch_size(chunk) + model.output_size() * chunk +
                                          plan.task_scratch) *
                 s;
  f.cotangents = static_cast<std::size_t>(plan.cotangent_size + plan.partial_size + plan.packed_size) * s;
  f.parameters = static_cast<std::size_t>(model.num_params()) * s;
  return f;
}
}  // namespace

template <typename Scalar>
typename FisherOperator<Scalar>::Footprint FisherOperator<Scalar>::required_bytes(
    const Network<Scalar>& model, Index num_samples, LikelihoodKind likelihood,
    const FisherOptions& options) {
  const detail::FisherPlan plan = detail::FisherPlan::make(model, num_samples, options);
  return footprint(model, plan, plan.threads_for(options.num_threads), num_samples, likelihood, options);
}

template <typename Scalar>
std::size_t FisherOperator<Scalar>::empirical_diagonal_required_bytes(const Network<Scalar>& model,
                                                                      Index num_samples,
                                                                      const FisherOptions& options) {
  const detail::FisherPlan plan = detail::FisherPlan::make(model, num_samples, options);
  return detail::squared_gradients_bytes(model, plan, plan.threads_for(options.num_threads),
                                         std::vector<bool>(model.num_layers(), true));
}

template <typename Scalar>
void FisherOperator<Scalar>::State::setup(const Dataset<Scalar>& given) {
  std::string why;
  if (!options.is_valid(&why)) detail::fail("FisherOptions: " + why);
  model.check_params(theta.size());
  // A rank of a shared batch may hold no sample (a batch smaller than the ranks): it takes part in every
  // collective with zeros, so it contributes nothing.
  if (total_samples == 0 || (num_samples == 0 && !distributed())) detail::fail("the batch is empty");
  if (options.first_sample + num_samples > total_samples)
    detail::fail("FisherOptions: samples [" + std::to_string(options.first_sample) + ", " +
                 std::to_string(options.first_sample + num_samples) + ") lie beyond total_samples " +
                 std::to_string(total_samples));
  if (options.kind == FisherKind::empirical || likelihood == LikelihoodKind::categorical ||
      given.targets.size() > 0)
    check_targets(likelihood, given, model.output_size() / positions, positions);
  // The targets only; a 0 × N input matrix (no storage) keeps data.size() == N for the target checks.
  data.inputs.resize(0, num_samples);
  data.labels = given.labels;
  data.targets = given.targets;

  plan = detail::FisherPlan::make(model, num_samples, options);
  num_threads = plan.threads_for(options.num_threads);
  assignment = plan.assign(num_threads);
  const Index chunk = plan.chunk_size;

  // An allocation that fails says what it was for and how large it was.
  auto allocating = [](const std::string& what, double bytes, auto&& allocate) {
    try {
      allocate();
    } catch (const std::bad_alloc&) {
      throw std::runtime_error("out of memory allocating " + what + " (" + detail::format_bytes(bytes) + ")");
    }
  };
  const Footprint need = footprint(model, plan, num_threads, num_samples, likelihood, options);
  allocating("the forward cache of " + std::to_string(num_samples) + " samples", double(need.forward),
             [&] { cache = model.make_cache(given.inputs); });
  allocating("the per-thread workspaces", double(need.workspaces), [&] {
    for (int t = 0; t < num_threads; ++t) {
      workspaces.push_back(model.make_workspace(chunk));
      out_buffers.emplace_back(model.output_size(), chunk);
      task_scratch.emplace_back(plan.task_scratch);
    }
  });
  if (options.profile) timers.start(num_threads, model.num_layers());
  allocating("the stored cotangents, partial gradients and packed weights of " + std::to_string(num_samples) +
                 " samples",
             double(need.cotangents), [&] {
               cot = model.make_cotangents(num_samples);
               partials.resize(plan.partial_size);
               packed = model.make_packed_weights(plan.packed);
             });
  // Phase C's sums: per node whose gradient is split by sample groups, its groups' partials and then its
  // aliases' (a tied tensor sums its uses), in that order.
  reduction_parts.assign(model.num_layers(), {});
  for (std::size_t l = 0; l < model.num_layers(); ++l) {
    if (plan.groups[l] == 0 || model.tied_to(l) != l) continue;
    const Index P = model.layer(l).num_params();
    std::vector<std::size_t> uses{l};
    uses.insert(uses.end(), model.aliases(l).begin(), model.aliases(l).end());
    for (std::size_t u : uses)
      for (int g = 0; g < plan.groups[u]; ++g)
        reduction_parts[l].push_back(partials.data() + plan.partial_offset[u] + g * P);
  }
  chunk_loss.assign(static_cast<std::size_t>(plan.num_chunks), 0.0);
  work.assign(static_cast<std::size_t>(num_threads), 0.0);
}

template <typename Scalar>
void FisherOperator<Scalar>::State::require_forward() const {
  if (!forward_done)
    throw std::logic_error(
        "the Fisher operator's forward pass did not finish (an interrupted rebind): rebind it "
        "before computing products, the loss or the gradient");
}

template <typename Scalar>
void FisherOperator<Scalar>::State::require_targets(const char* what) const {
  // (Categorical labels are checked at construction; real targets by their rows, which a rank holding no
  // sample of a batch with targets keeps.)
  if (likelihood != LikelihoodKind::categorical && data.labels.empty() && data.targets.rows() == 0)
    detail::fail(std::string(what) + " requires targets, and this batch has none");
}

template <typename Scalar>
void FisherOperator<Scalar>::rebind(const Vec<Scalar>& theta) {
  s_->model.check_params(theta.size());
  s_->theta = theta;
  s_->have_gradient = s_->have_loss = s_->weights_packed = false;
  s_->run_forward();
}

template <typename Scalar>
Vec<Scalar> FisherOperator<Scalar>::take_gradient() {
  gradient();
  s_->have_gradient = false;
  return std::move(s_->gradient);
}

template <typename Scalar>
double FisherOperator<Scalar>::loss() const {
  // Without the gradient's reverse pass: each chunk's sum as gradient() takes it, then the same reduction, so
  // the loss has the same bits whichever of the two computes it.
  State& st = *s_;
  st.require_forward();
  if (st.have_loss) return st.loss;
  st.require_targets("computing the loss");
  const Index cs = st.plan.chunk_size, chunks = st.plan.num_chunks;
#ifdef NATGRAD_HAVE_OPENMP
#pragma omp parallel for num_threads(st.num_threads) schedule(static) if (st.num_threads > 1 && chunks > 1)
#endif
  for (Index k = 0; k < chunks; ++k) st.record_chunk_loss(k, k * cs, std::min(cs, st.num_samples - k * cs));
  st.sum_loss();
  return st.loss;
}

template <typename Scalar>
ConstMatMap<Scalar> FisherOperator<Scalar>::State::outputs_of(Index c0, Index n) const {
  const Index C = model.output_size();
  return ConstMatMap<Scalar>(cache.acts.back().data() + c0 * C, C, n);
}

template <typename Scalar>
void FisherOperator<Scalar>::State::record_chunk_loss(Index k, Index c0, Index n) {
  chunk_loss[static_cast<std::size_t>(k)] = nll_sum<Scalar>(likelihood, outputs_of(c0, n), data, c0, positions);
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
  s_->damping = lambda;
}

template <typename Scalar>
OperatorProfile FisherOperator<Scalar>::profile() const {
  return s_->timers.profile(s_->model.num_layers());
}
template <typename Scalar>
void FisherOperator<Scalar>::reset_profile() const {
  s_->timers.reset();
}

template <typename Scalar>
const std::string& FisherOperator<Scalar>::forward_error() const {
  return s_->forward_error;
}
template <typename Scalar>
const CotangentCache<Scalar>& FisherOperator<Scalar>::cotangents() const {
  return s_->cot;
}
template <typename Scalar>
const ForwardCache<Scalar>& FisherOperator<Scalar>::forward_cache() const {
  return s_->cache;
}
template <typename Scalar>
double FisherOperator<Scalar>::damping() const {
  return s_->damping;
}
template <typename Scalar>
Index FisherOperator<Scalar>::num_products() const {
  return s_->num_products;
}
template <typename Scalar>
void FisherOperator<Scalar>::reset_product_count() {
  s_->num_products = 0;
}
template <typename Scalar>
Index FisherOperator<Scalar>::num_samples() const {
  return s_->num_samples;
}
template <typename Scalar>
Index FisherOperator<Scalar>::total_samples() const {
  return s_->total_samples;
}
template <typename Scalar>
Index FisherOperator<Scalar>::counted_positions() const {
  return s_->counted;
}
template <typename Scalar>
const Network<Scalar>& FisherOperator<Scalar>::model() const {
  return s_->model;
}
template <typename Scalar>
const Dataset<Scalar>& FisherOperator<Scalar>::targets() const {
  return s_->data;
}
template <typename Scalar>
const Vec<Scalar>& FisherOperator<Scalar>::parameters() const {
  return s_->theta;
}
template <typename Scalar>
LikelihoodKind FisherOperator<Scalar>::likelihood() const {
  return s_->likelihood;
}
template <typename Scalar>
const FisherOptions& FisherOperator<Scalar>::options() const {
  return s_->options;
}
template <typename Scalar>
const Mat<Scalar>& FisherOperator<Scalar>::outputs() const {
  return s_->cache.acts.back();
}
template <typename Scalar>
Mat<Scalar> FisherOperator<Scalar>::output_fisher(Index n) const {
  return s_->curvature.dense(n);
}
template <typename Scalar>
const std::vector<double>& FisherOperator<Scalar>::work_per_thread() const {
  return s_->work;
}

template class FisherOperator<float>;
template class FisherOperator<double>;

}  // namespace natgrad
