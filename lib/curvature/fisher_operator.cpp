#include <natgrad/core/threads.h>
#include <natgrad/curvature/fisher_operator.h>

#include <algorithm>
#include <cmath>
#include <stdexcept>

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
  if (num_slots < 0) return bad("num_slots must be >= 0 (0 = automatic), got " + std::to_string(num_slots));
  if (num_threads < 0) return bad("num_threads must be >= 0, got " + std::to_string(num_threads));
  return true;
}

int FisherOptions::slots_for(Index num_params, std::size_t scalar_bytes) const {
  if (num_slots > 0) return num_slots;
  const double budget = 512.0 * 1024 * 1024, per_slot = double(num_params) * double(scalar_bytes);
  int slots = 4;
  while (slots > 2 && slots * per_slot > budget) slots /= 2;
  return slots;
}

Index FisherOptions::chunk_for(Index num_samples) const {
  if (chunk_size > 0) return chunk_size;
  const Index quarter = (num_samples + 3) / 4;
  return std::min<Index>(256, std::max<Index>(16, (quarter + 7) / 8 * 8));
}

template <typename Scalar>
FisherOperator<Scalar>::FisherOperator(const Sequential<Scalar>& model, const Vec<Scalar>& theta,
                                       LikelihoodKind likelihood, const Dataset<Scalar>& data,
                                       const FisherOptions& options)
    : model_(model),
      theta_(theta),
      likelihood_(likelihood),
      options_(options),
      damping_(options.damping),
      num_params_(model.num_params()),
      num_samples_(data.size()) {
  std::string why;
  if (!options.is_valid(&why)) throw std::invalid_argument("FisherOptions: " + why);
  model.check_params(theta.size());
  if (num_samples_ == 0) throw std::invalid_argument("the batch is empty");
  if (options.kind == FisherKind::empirical || likelihood == LikelihoodKind::categorical ||
      data.targets.size() > 0)
    check_targets(likelihood, data, model.output_size());
  // The targets only; a 0 × N input matrix (no storage) keeps data_.size() == N for the target checks.
  data_.inputs.resize(0, num_samples_);
  data_.labels = data.labels;
  data_.targets = data.targets;

  chunk_size_ = options.chunk_for(num_samples_);
  num_chunks_ = (num_samples_ + chunk_size_ - 1) / chunk_size_;
  num_slots_ = static_cast<int>(std::min<Index>(options.slots_for(num_params_, sizeof(Scalar)), num_chunks_));
  num_threads_ = resolve_threads(options.num_threads);
  const Index chunk = std::min(chunk_size_, num_samples_);

  cache_ = model.make_cache(data.inputs);
  for (int t = 0; t < num_threads_; ++t) {
    workspaces_.push_back(model.make_workspace(chunk));
    out_buffers_.emplace_back(model.output_size(), chunk);
  }
  slots_.assign(static_cast<std::size_t>(num_slots_), Vec<Scalar>(num_params_));

  run_forward();
}

template <typename Scalar>
void FisherOperator<Scalar>::rebind(const Vec<Scalar>& theta) {
  model_.check_params(theta.size());
  theta_ = theta;
  have_gradient_ = false;
  run_forward();
}

template <typename Scalar>
void FisherOperator<Scalar>::run_forward() {
  // The forward pass, once per parameter vector; its activations serve every later product. Each chunk then
  // looks for the first layer (input included) where a NaN or Inf appears, while its activations are still
  // in cache; the earliest such layer over all chunks, and its first sample, are reported.
  const Index cs = chunk_size_;
  const std::size_t none = cache_.acts.size();
  std::vector<std::pair<std::size_t, Index>> first_bad(static_cast<std::size_t>(num_chunks_), {none, 0});
#ifdef NATGRAD_HAVE_OPENMP
#pragma omp parallel for schedule(dynamic, 1) num_threads(num_threads_)
#endif
  for (Index k = 0; k < num_chunks_; ++k) {
    const Index c0 = k * cs, n = std::min(cs, num_samples_ - c0);
    model_.forward(theta_.data(), cache_, c0, n);
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
                : "the output of layer " + std::to_string(l - 1) + " (" + model_.layer(l - 1).name() + ")") +
        " is NaN or Inf, first at sample " + std::to_string(bad->second);
  }
  const Mat<Scalar>& Z = cache_.acts.back();
  curvature_ = OutputCurvature<Scalar>(likelihood_, options_.kind, options_.mc_samples, options_.seed,
                                       ConstMatMap<Scalar>(Z.data(), Z.rows(), Z.cols()), data_);
}

template <typename Scalar>
void FisherOperator<Scalar>::set_damping(double lambda) {
  if (!(lambda >= 0) || !std::isfinite(lambda))
    throw std::invalid_argument("damping must be finite and >= 0, got " + std::to_string(lambda));
  damping_ = lambda;
}

template <typename Scalar>
template <typename Body>
void FisherOperator<Scalar>::for_each_chunk(Body body) const {
  const Index cs = chunk_size_;
  const int slots = num_slots_;
  // Slot s owns chunks s, s + slots, s + 2·slots, … and adds them in that order.
#ifdef NATGRAD_HAVE_OPENMP
#pragma omp parallel for schedule(dynamic, 1) num_threads(num_threads_)
#endif
  for (int s = 0; s < slots; ++s) {
    Vec<Scalar>& acc = slots_[static_cast<std::size_t>(s)];
    acc.setZero();
    const int t = thread_id();
    for (Index k = s; k < num_chunks_; k += slots) {
      const Index c0 = k * cs;
      body(c0, std::min(cs, num_samples_ - c0), acc.data(), workspaces_[static_cast<std::size_t>(t)],
           out_buffers_[static_cast<std::size_t>(t)]);
    }
  }
}

template <typename Scalar>
void FisherOperator<Scalar>::reduce_slots(Scalar scale, const Scalar* x, Scalar lambda, Scalar* y) const {
  // y_i = scale · Σ_s slot_s[i] + λ x_i, slots summed in slot order: each entry's sum is the same for any
  // thread count. Parallel over blocks of entries.
  const Index P = num_params_, block = 4096;
  const Index nblocks = (P + block - 1) / block;
#ifdef NATGRAD_HAVE_OPENMP
#pragma omp parallel for schedule(static) num_threads(num_threads_)
#endif
  for (Index b = 0; b < nblocks; ++b) {
    const Index i0 = b * block, n = std::min(block, P - i0);
    VecMap<Scalar> out(y + i0, n);
    out = slots_[0].segment(i0, n);
    for (int s = 1; s < num_slots_; ++s) out += slots_[static_cast<std::size_t>(s)].segment(i0, n);
    out *= scale;
    if (x && lambda != Scalar(0)) out += lambda * ConstVecMap<Scalar>(x + i0, n);
  }
}

template <typename Scalar>
void FisherOperator<Scalar>::perform_op(const Scalar* x, Scalar* y) const {
  const Index C = model_.output_size();
  for_each_chunk([&](Index c0, Index n, Scalar* acc, Workspace<Scalar>& ws, Mat<Scalar>& hbuf) {
    model_.jvp(theta_.data(), x, cache_, c0, n, ws);  // u = J v
    MatMap<Scalar> hu(hbuf.data(), C, n);
    curvature_.apply(c0, ConstMatMap<Scalar>(ws.result, C, n), hu);                           // w = H u
    model_.vjp(theta_.data(), cache_, c0, n, ConstMatMap<Scalar>(hu.data(), C, n), acc, ws);  // acc += Jᵀ w
  });
  reduce_slots(Scalar(1) / Scalar(num_samples_), x, static_cast<Scalar>(damping_), y);  // F v = Σ / N, + λ v
  ++num_products_;
}

template <typename Scalar>
void FisherOperator<Scalar>::require_targets(const char* what) const {
  if (data_.labels.empty() && data_.targets.size() == 0)
    throw std::invalid_argument(std::string(what) + " requires targets, and this batch has none");
}

template <typename Scalar>
const Vec<Scalar>& FisherOperator<Scalar>::gradient() const {
  if (have_gradient_) return gradient_;
  require_targets("computing the loss and its gradient");
  const Index C = model_.output_size();
  const Mat<Scalar>& Z = cache_.acts.back();
  std::vector<double> chunk_loss(static_cast<std::size_t>(num_chunks_), 0.0);
  for_each_chunk([&](Index c0, Index n, Scalar* acc, Workspace<Scalar>& ws, Mat<Scalar>& gbuf) {
    ConstMatMap<Scalar> z(Z.data() + c0 * C, C, n);
    MatMap<Scalar> gz(gbuf.data(), C, n);
    chunk_loss[static_cast<std::size_t>(c0 / chunk_size_)] = nll_sum<Scalar>(likelihood_, z, data_, c0);
    nll_gradient<Scalar>(likelihood_, z, data_, c0, gz);
    model_.vjp(theta_.data(), cache_, c0, n, ConstMatMap<Scalar>(gz.data(), C, n), acc, ws);
  });
  gradient_.resize(num_params_);
  reduce_slots(Scalar(1) / Scalar(num_samples_), nullptr, Scalar(0), gradient_.data());
  loss_ = 0;
  for (double l : chunk_loss) loss_ += l;
  loss_ /= static_cast<double>(num_samples_);
  have_gradient_ = true;
  return gradient_;
}

template <typename Scalar>
double FisherOperator<Scalar>::loss() const {
  gradient();
  return loss_;
}

template <typename Scalar>
Vec<Scalar> FisherOperator<Scalar>::empirical_fisher_diagonal() const {
  require_targets("the empirical Fisher diagonal");
  const Index C = model_.output_size();
  const Mat<Scalar>& Z = cache_.acts.back();
  for_each_chunk([&](Index c0, Index n, Scalar* acc, Workspace<Scalar>& ws, Mat<Scalar>& gbuf) {
    ConstMatMap<Scalar> z(Z.data() + c0 * C, C, n);
    MatMap<Scalar> gz(gbuf.data(), C, n);
    nll_gradient<Scalar>(likelihood_, z, data_, c0, gz);
    model_.squared_vjp(theta_.data(), cache_, c0, n, ConstMatMap<Scalar>(gz.data(), C, n), acc, ws);
  });
  Vec<Scalar> diag(num_params_);
  reduce_slots(Scalar(1) / Scalar(num_samples_), nullptr, Scalar(0), diag.data());
  return diag;
}

template class FisherOperator<float>;
template class FisherOperator<double>;

}  // namespace natgrad
