// The parameter gradient from stored cotangents (Network::gradient_block, gradient_of_samples) and the
// squared per-sample gradients (Network::squared_gradients): with the cotangent gY of every node with
// parameters stored for the whole batch, a node's gradient Σ_n (∂y_n/∂θ)ᵀ gY_n no longer needs the rest of
// the network, so a schedule can split it by weight blocks or by samples.
#include <natgrad/model/network.h>

#include <algorithm>

#include "core/check.h"
#include "model/network_schedule.h"
#include "model/workspace_buffers.h"

namespace natgrad {

template <typename Scalar>
void Network<Scalar>::gradient_block(std::size_t l, const ForwardCache<Scalar>& cache,
                                     const CotangentCache<Scalar>& cot, Index r0, Index m, Index c0, Index k,
                                     Scalar* g, Scalar* scratch) const {
  const BlockGradient<Scalar>* blocks = block_gradient(l);
  NATGRAD_CHECK(blocks != nullptr);
  const Mat<Scalar>& X = input_act(cache, l);
  const Mat<Scalar>& gY = cot.g[l];
  blocks->grad_block(ConstMatMap<Scalar>(X.data(), X.rows(), X.cols()),
                     ConstMatMap<Scalar>(gY.data(), gY.rows(), gY.cols()), r0, m, c0, k, g + param_offset(l),
                     scratch);
}

template <typename Scalar>
void Network<Scalar>::gradient_of_samples(std::size_t l, const Scalar* theta,
                                          const ForwardCache<Scalar>& cache,
                                          const CotangentCache<Scalar>& cot, Index col0, Index col1,
                                          Index chunk, Scalar* partial, Workspace<Scalar>& ws) const {
  NATGRAD_CHECK(chunk <= ws.max_cols());
  const Layer<Scalar>& layer = *layers_[l];
  const Index in = layer.input_size(), out = layer.output_size(), aux = layer.aux_per_sample();
  const Mat<Scalar>& X = input_act(cache, l);
  const Mat<Scalar>& Y = cache.acts[l + 1];
  const Mat<Scalar>& gY = cot.g[l];
  for (Index c0 = col0; c0 < col1; c0 += chunk) {
    const Index n = std::min(chunk, col1 - c0);
    layer.vjp(theta + offsets_[l], ConstMatMap<Scalar>(X.data() + c0 * in, in, n),
              ConstMatMap<Scalar>(Y.data() + c0 * out, out, n),
              aux ? cache.aux[l].data() + c0 * aux : nullptr,
              ConstMatMap<Scalar>(gY.data() + c0 * out, out, n), nullptr, partial, scratch_for(l, ws));
  }
}

template <typename Scalar>
void Network<Scalar>::squared_gradients(std::size_t l, const Scalar* theta, const ForwardCache<Scalar>& cache,
                                        const CotangentCache<Scalar>& cot, Index col0, Index col1,
                                        Index chunk, Scalar* gsq, Workspace<Scalar>& ws,
                                        Scalar* scratch) const {
  const Index P = layers_[l]->num_params();
  if (const SquaredGradients<Scalar>* squared = sched_->squared[l]; squared && aliases_[l].empty()) {
    const Layer<Scalar>& layer = *layers_[l];
    const Index in = layer.input_size(), out = layer.output_size();
    const Mat<Scalar>& X = input_act(cache, l);
    for (Index c0 = col0; c0 < col1; c0 += chunk) {
      const Index n = std::min(chunk, col1 - c0);
      squared->accumulate_squared_grads(theta + offsets_[l], ConstMatMap<Scalar>(X.data() + c0 * in, in, n),
                                        ConstMatMap<Scalar>(cot.g[l].data() + c0 * out, out, n), gsq,
                                        scratch);
    }
    return;
  }
  // Per sample: each use's gradient (a one-column vjp) added into g, which is then squared. (Once per solve.)
  std::vector<std::size_t> uses{l};
  uses.insert(uses.end(), aliases_[l].begin(), aliases_[l].end());
  Vec<Scalar> g(P);
  for (Index col = col0; col < col1; ++col) {
    g.setZero();
    for (std::size_t u : uses) gradient_of_samples(u, theta, cache, cot, col, col + 1, 1, g.data(), ws);
    VecMap<Scalar>(gsq, P).array() += g.array().square();
  }
}

#define NATGRAD_INSTANTIATE(S)                                                                            \
  template void Network<S>::gradient_block(std::size_t, const ForwardCache<S>&, const CotangentCache<S>&, \
                                           Index, Index, Index, Index, S*, S*) const;                     \
  template void Network<S>::gradient_of_samples(std::size_t, const S*, const ForwardCache<S>&,            \
                                                const CotangentCache<S>&, Index, Index, Index, S*,        \
                                                Workspace<S>&) const;                                     \
  template void Network<S>::squared_gradients(std::size_t, const S*, const ForwardCache<S>&,              \
                                              const CotangentCache<S>&, Index, Index, Index, S*,          \
                                              Workspace<S>&, S*) const;
NATGRAD_INSTANTIATE(float)
NATGRAD_INSTANTIATE(double)
#undef NATGRAD_INSTANTIATE

}  // namespace natgrad
