// Network's passes over a chunk of samples: forward, the R-op (J v) in topological order, and backprop
// (Jᵀ u) in reverse, following the buffer plan made at construction (network_build.cpp).
#include <natgrad/model/network.h>

#include <algorithm>
#include <stdexcept>

#include "core/check.h"
#include "core/fail.h"
#include "model/layers.h"
#include "model/network_schedule.h"
#include "model/node_timer.h"
#include "model/packed_weights.h"
#include "model/workspace_buffers.h"

namespace natgrad {

template <typename Scalar>
void Network<Scalar>::check_params(Index size) const {
  if (size != num_params_)
    detail::fail("parameter vector has " + std::to_string(size) + " entries but the model has " +
                 std::to_string(num_params_) + " parameters");
}

template <typename Scalar>
void Network<Scalar>::check_inputs(const Mat<Scalar>& inputs) const {
  if (inputs.rows() != input_size())
    detail::fail("inputs have " + std::to_string(inputs.rows()) + " features per sample but the model's input_shape " +
                 shape_to_string(input_shape()) + " has " + std::to_string(input_size()));
  for (std::size_t l = 0; l < layers_.size(); ++l)
    if (inputs_[l][0] == 0 && sched_->tokens[l]) {
      try {
        sched_->tokens[l]->check_input(ConstMatMap<Scalar>(inputs.data(), inputs.rows(), inputs.cols()));
      } catch (const std::invalid_argument& e) {
        detail::fail("node \"" + ids_[l] + "\" (" + layers_[l]->name() + "): " + e.what());
      }
    }
}

template <typename Scalar>
ForwardCache<Scalar> Network<Scalar>::make_cache(const Mat<Scalar>& inputs) const {
  check_inputs(inputs);
  ForwardCache<Scalar> cache;
  const Index n = inputs.cols();
  cache.acts.reserve(layers_.size() + 1);
  cache.acts.push_back(inputs);
  for (const auto& l : layers_) {
    cache.acts.emplace_back(l->output_size(), n);
    cache.aux.emplace_back(static_cast<std::size_t>(l->aux_per_sample() * n));
  }
  cache.saved.resize(layers_.size());
  for (std::size_t l = 0; l < layers_.size(); ++l)
    if (sched_->saves[l]) cache.saved[l].resize(sched_->saves[l]->saved_per_sample(), n);
  return cache;
}

template <typename Scalar>
Index Network<Scalar>::workspace_width() const {
  Index w = sched_->has_fan_out ? sched_->sum_width : 0;
  for (Index s : sched_->slot_width) w += s;
  return w;
}

template <typename Scalar>
Index Network<Scalar>::saved_per_sample() const {
  Index total = 0;
  for (const auto* s : sched_->saves)
    if (s) total += s->saved_per_sample();
  return total;
}

template <typename Scalar>
Workspace<Scalar>::Workspace() : b_(std::make_unique<Buffers>()) {}
template <typename Scalar>
Workspace<Scalar>::~Workspace() = default;
template <typename Scalar>
Workspace<Scalar>::Workspace(Workspace&&) noexcept = default;
template <typename Scalar>
Workspace<Scalar>& Workspace<Scalar>::operator=(Workspace&&) noexcept = default;
template <typename Scalar>
Index Workspace<Scalar>::max_cols() const {
  return b_->max_cols;
}
template <typename Scalar>
const Scalar* Workspace<Scalar>::result() const {
  return b_->result;
}
template <typename Scalar>
void Workspace<Scalar>::time_nodes(std::vector<double>* seconds) {
  b_->timing = seconds;
}

template <typename Scalar>
Network<Scalar>::~Network() = default;
template <typename Scalar>
Network<Scalar>::Network(Network&&) noexcept = default;
template <typename Scalar>
Network<Scalar>& Network<Scalar>::operator=(Network&&) noexcept = default;

template <typename Scalar>
Index Network<Scalar>::workspace_buffers() const {
  return sched_->num_slots + (sched_->has_fan_out ? 1 : 0);
}
template <typename Scalar>
const BlockGradient<Scalar>* Network<Scalar>::block_gradient(std::size_t l) const {
  return sched_->block[l];
}
template <typename Scalar>
const KroneckerFactors<Scalar>* Network<Scalar>::kronecker_factors(std::size_t l) const {
  return sched_->kronecker[l];
}
template <typename Scalar>
const SquaredGradients<Scalar>* Network<Scalar>::squared_gradients_of(std::size_t l) const {
  return sched_->squared[l];
}
template <typename Scalar>
Scalar* Network<Scalar>::scratch_for(std::size_t l, Workspace<Scalar>& ws) const {
  return sched_->uses_scratch[l] ? ws.b_->scratch.data() : nullptr;
}

template <typename Scalar>
Workspace<Scalar> Network<Scalar>::make_workspace(Index max_cols) const {
  Workspace<Scalar> ws;
  ws.b_->max_cols = max_cols;
  ws.b_->slots.resize(static_cast<std::size_t>(sched_->num_slots));
  for (std::size_t k = 0; k < ws.b_->slots.size(); ++k)
    ws.b_->slots[k].resize(static_cast<std::size_t>(sched_->slot_width[k] * max_cols));
  if (sched_->has_fan_out) ws.b_->sum.resize(static_cast<std::size_t>(sched_->sum_width * max_cols));
  ws.b_->scratch.resize(static_cast<std::size_t>(scratch_size(max_cols)));
  ws.b_->values.assign(layers_.size() + 1, nullptr);
  ws.b_->operands.assign(sched_->max_operands, nullptr);
  ws.b_->operand_values.assign(sched_->max_operands, nullptr);
  return ws;
}

template <typename Scalar>
Index Network<Scalar>::scratch_size(Index max_cols) const {
  Index scratch = 0;
  for (const auto& l : layers_) scratch = std::max(scratch, l->scratch_size(max_cols));
  for (std::size_t p = 0; p < layers_.size(); ++p)  // the fused passes' two one-sample buffers
    if (sched_->fused_act[p]) scratch = std::max(scratch, 2 * layers_[p]->output_size());
  return scratch;
}

template <typename Scalar>
Index Network<Scalar>::squared_scratch_size(Index max_cols) const {
  Index scratch = scratch_size(max_cols);  // a layer without the capability runs vjp per sample
  for (const auto* sq : sched_->squared)
    if (sq) scratch = std::max(scratch, sq->squared_grads_scratch_size(max_cols));
  return scratch;
}

template <typename Scalar>
Index Network<Scalar>::forward_scratch_size(Index max_cols) const {
  Index scratch = 0;
  for (const auto& l : layers_) scratch = std::max(scratch, l->forward_scratch_size(max_cols));
  return scratch;
}

template <typename Scalar>
void Network<Scalar>::forward(const Scalar* theta, ForwardCache<Scalar>& cache, Index col0, Index n,
                              std::vector<double>* timing) const {
  NATGRAD_CHECK(cache.acts.size() == layers_.size() + 1 && col0 >= 0 && n >= 0 && col0 + n <= cache.acts[0].cols());
  std::vector<const Scalar*> operands(sched_->max_operands);
  for (std::size_t l = 0; l < layers_.size(); ++l) {
    const detail::NodeTimer timer(timing, l);
    const Layer<Scalar>& layer = *layers_[l];
    MatMap<Scalar> Y(cache.acts[l + 1].data() + col0 * layer.output_size(), layer.output_size(), n);
    if (const auto* merge = sched_->merge[l]) {
      for (std::size_t i = 0; i < inputs_[l].size(); ++i) {
        const Mat<Scalar>& X = cache.acts[static_cast<std::size_t>(inputs_[l][i])];
        operands[i] = X.data() + col0 * X.rows();
      }
      merge->forward_multi(operands.data(), theta + offsets_[l], n, Y.data());
      continue;
    }
    const Mat<Scalar>& in = input_act(cache, l);
    ConstMatMap<Scalar> X(in.data() + col0 * layer.input_size(), layer.input_size(), n);
    if (const auto* s = sched_->saves[l]) {
      s->forward_saving(X, Y, cache.saved[l].data() + col0 * s->saved_per_sample());
      continue;
    }
    int32_t* aux = layer.aux_per_sample() ? cache.aux[l].data() + col0 * layer.aux_per_sample() : nullptr;
    layer.forward(theta + offsets_[l], X, Y, aux);
  }
}

namespace {
// An element-wise node φ (activation a) read only by a max-pool p, as one pass. The pool's Jacobian selects
// input arg[o] for output o, so with x the activation's input and y = φ(x):
//   R-op:      dy[o] = φ'(x[arg[o]]) dx[arg[o]]
//   backprop:  gx = 0, then gx[arg[o]] += φ'(x[arg[o]]) gy[o]
// φ' is evaluated only at the selected inputs (a quarter for 2 × 2 pools), and y[arg[o]] is the pool's own
// output, so relu, tanh and sigmoid (φ' a function of y) never read x. Otherwise x[arg[o]] is gathered first,
// so that φ' runs as a contiguous, vectorized loop (a gathered loop with relu's data-dependent select does
// not vectorize and mispredicts). The R-op equals running the two layers one after the other bit for bit;
// so does backprop when pool windows do not overlap (otherwise the terms reaching one input are summed as
// Σ φ' g instead of φ' Σ g).
template <typename Scalar>
struct FusedPair {
  const detail::ElementwiseDerivative<Scalar>& act;
  const Mat<Scalar>& x;         // the activation's input
  const Mat<Scalar>& pooled;    // the pool's output
  const std::vector<int32_t>& arg;
};

template <typename Scalar>
void jvp_fused(const FusedPair<Scalar>& f, Index col0, Index n, const Scalar* dx, Scalar* dy, Scalar* xg) {
  const Index in = f.x.rows(), out = f.pooled.rows();
  const bool gather_x = f.act.derivative_needs_input();
  if (!dx) {
    std::fill(dy, dy + out * n, Scalar(0));
    return;
  }
  for (Index j = 0; j < n; ++j) {
    const int32_t* arg = f.arg.data() + (col0 + j) * out;
    const Scalar* x = f.x.data() + (col0 + j) * in;
    const Scalar* t = dx + j * in;
    Scalar* o = dy + j * out;
    for (Index k = 0; k < out; ++k) o[k] = t[arg[k]];
    if (gather_x)
      for (Index k = 0; k < out; ++k) xg[k] = x[arg[k]];
    f.act.scale_by_derivative(gather_x ? xg : nullptr, f.pooled.data() + (col0 + j) * out, o, o, out);
  }
}

template <typename Scalar>
void vjp_fused(const FusedPair<Scalar>& f, Index col0, Index n, const Scalar* gy, Scalar* gx, Scalar* xg,
               Scalar* tmp) {
  const Index in = f.x.rows(), out = f.pooled.rows();
  const bool gather_x = f.act.derivative_needs_input();
  for (Index j = 0; j < n; ++j) {
    const int32_t* arg = f.arg.data() + (col0 + j) * out;
    const Scalar* x = f.x.data() + (col0 + j) * in;
    if (gather_x)
      for (Index k = 0; k < out; ++k) xg[k] = x[arg[k]];
    f.act.scale_by_derivative(gather_x ? xg : nullptr, f.pooled.data() + (col0 + j) * out, gy + j * out, tmp, out);
    Scalar* g = gx + j * in;
    std::fill(g, g + in, Scalar(0));
    for (Index k = 0; k < out; ++k) g[arg[k]] += tmp[k];
  }
}
}  // namespace

template <typename Scalar>
void Network<Scalar>::jvp(const Scalar* theta, const Scalar* v, const ForwardCache<Scalar>& cache, Index col0,
                          Index n, Workspace<Scalar>& ws, const PackedWeights<Scalar>* packed) const {
  using Products = detail::PackedWeightProducts<Scalar>;
  NATGRAD_CHECK(n <= ws.max_cols() && col0 >= 0 && col0 + n <= cache.acts[0].cols());
  std::fill(ws.b_->values.begin(), ws.b_->values.end(), nullptr);  // nullptr: an exactly zero tangent
  for (std::size_t l = 0; l < layers_.size(); ++l) {
    if (!sched_->needs_grad[l] || sched_->fused[l]) continue;
    if (sched_->view[l]) {  // the input's tangent, as it is
      ws.b_->values[l + 1] = ws.b_->values[static_cast<std::size_t>(inputs_[l][0])];
      continue;
    }
    const detail::NodeTimer timer(ws.b_->timing, l);
    const Layer<Scalar>& layer = *layers_[l];
    Scalar* out = ws.b_->slots[static_cast<std::size_t>(sched_->tangent_slot[l])].data();
    ws.b_->values[l + 1] = out;
    if (const auto* merge = sched_->merge[l]) {
      for (std::size_t i = 0; i < inputs_[l].size(); ++i) {
        ws.b_->operands[i] = ws.b_->values[static_cast<std::size_t>(inputs_[l][i])];
        const Mat<Scalar>& Xi = cache.acts[static_cast<std::size_t>(inputs_[l][i])];
        ws.b_->operand_values[i] = Xi.data() + col0 * Xi.rows();
      }
      merge->jvp_multi(ws.b_->operand_values.data(), ws.b_->operands.data(),
                       layer.num_params() ? v + offsets_[l] : nullptr, n, out);
      continue;
    }
    const int in = inputs_[l][0];
    if (sched_->fused_act[l]) {
      const auto a = static_cast<std::size_t>(in - 1);
      const FusedPair<Scalar> f{*sched_->fused_act[l], input_act(cache, a), cache.acts[l + 1], cache.aux[l]};
      jvp_fused(f, col0, n, ws.b_->values[static_cast<std::size_t>(inputs_[a][0])], out,
                ws.b_->scratch.data());
      continue;
    }
    const Mat<Scalar>& Xm = cache.acts[static_cast<std::size_t>(in)];
    ConstMatMap<Scalar> X(Xm.data() + col0 * layer.input_size(), layer.input_size(), n);
    if (const auto* s = sched_->saves[l]) {
      s->jvp_saved(X, cache.saved[l].data() + col0 * s->saved_per_sample(),
                   ws.b_->values[static_cast<std::size_t>(in)], MatMap<Scalar>(out, layer.output_size(), n),
                   scratch_for(l, ws));
      continue;
    }
    const Scalar* dX = ws.b_->values[static_cast<std::size_t>(in)];
    if (const auto* ops = packed ? packed->p_->of(l) : nullptr;
        ops && (!dX || (*ops)[Products::weight].data)) {
      sched_->packs[l]->jvp_packed(v + offsets_[l], X, dX, MatMap<Scalar>(out, layer.output_size(), n),
                                   (*ops)[Products::tangent], dX ? &(*ops)[Products::weight] : nullptr,
                                   scratch_for(l, ws));
      continue;
    }
    ConstMatMap<Scalar> Y(cache.acts[l + 1].data() + col0 * layer.output_size(), layer.output_size(), n);
    const int32_t* aux = layer.aux_per_sample() ? cache.aux[l].data() + col0 * layer.aux_per_sample() : nullptr;
    layer.jvp(theta + offsets_[l], v + offsets_[l], X, Y, aux, ws.b_->values[static_cast<std::size_t>(in)],
              MatMap<Scalar>(out, layer.output_size(), n), scratch_for(l, ws));
  }
  const Scalar* result = ws.b_->values[layers_.size()];
  if (!result) {  // the output does not depend on the parameters: J = 0
    Scalar* out = ws.b_->slots.empty() ? nullptr : ws.b_->slots[0].data();
    NATGRAD_CHECK(out != nullptr);
    std::fill(out, out + output_size() * n, Scalar(0));
    result = out;
  }
  ws.b_->result = result;
}

// Backpropagates gZ from the output to every node that depends on the parameters, calling
// `at_layer(l, X, Y, aux, gY, gX)` at each with its output cotangent gY; gX is where its input cotangent
// goes (nullptr when nobody needs it; for a merge node always nullptr: its operands are handled here). A
// fused activation and max-pool pair runs as one vjp_fused step at the pool.
template <typename Scalar>
template <typename AtLayer>
void Network<Scalar>::backprop(const ForwardCache<Scalar>& cache, Index col0, Index n, ConstMatMap<Scalar> gZ,
                               Workspace<Scalar>& ws, AtLayer at_layer) const {
  NATGRAD_CHECK(n <= ws.max_cols() && col0 >= 0 && col0 + n <= cache.acts[0].cols() && gZ.cols() == n);
  const std::size_t L = layers_.size();
  auto target = [&](int v) {
    return ws.b_->slots[static_cast<std::size_t>(sched_->cotangent_slot[static_cast<std::size_t>(v)])].data();
  };
  // Adds the contribution in ws.b_->sum to value v's cotangent (fan-out), in a fixed order.
  auto add_sum = [&](int v, Index rows) {
    MatMap<Scalar>(target(v), rows, n) += ConstMatMap<Scalar>(ws.b_->sum.data(), rows, n);
  };
  for (std::size_t l = L; l-- > 0;) {
    if (!sched_->needs_grad[l] || sched_->fused[l] || sched_->shares_cotangent[l]) continue;
    const detail::NodeTimer timer(ws.b_->timing, l);
    const Layer<Scalar>& layer = *layers_[l];
    const Scalar* g = l + 1 == L ? gZ.data() : target(static_cast<int>(l) + 1);
    ConstMatMap<Scalar> gY(g, layer.output_size(), n);
    ConstMatMap<Scalar> Y(cache.acts[l + 1].data() + col0 * layer.output_size(), layer.output_size(), n);
    const Mat<Scalar>& Xm = input_act(cache, l);
    ConstMatMap<Scalar> X(Xm.data() + col0 * Xm.rows(), Xm.rows(), n);
    const int32_t* aux = layer.aux_per_sample() ? cache.aux[l].data() + col0 * layer.aux_per_sample() : nullptr;
    if (const auto* merge = sched_->merge[l]) {
      at_layer(l, X, Y, aux, gY, static_cast<Scalar*>(nullptr));
      for (std::size_t i = 0; i < inputs_[l].size(); ++i) {
        const Mat<Scalar>& Xi = cache.acts[static_cast<std::size_t>(inputs_[l][i])];
        ws.b_->operand_values[i] = Xi.data() + col0 * Xi.rows();
      }
      for (std::size_t i = 0; i < inputs_[l].size(); ++i) {
        const int v = inputs_[l][i];
        if (v == 0 || !sched_->needs_grad[static_cast<std::size_t>(v - 1)]) continue;
        merge->vjp_operand(i, ws.b_->operand_values.data(), g, n, target(v), sched_->accumulate[l][i]);
      }
      continue;
    }
    const int in = inputs_[l][0];
    if (sched_->fused_act[l]) {
      const auto a = static_cast<std::size_t>(in - 1);
      const int w = inputs_[a][0];  // the activation's input: needs a cotangent (the activation has no parameters)
      const FusedPair<Scalar> f{*sched_->fused_act[l], input_act(cache, a), cache.acts[l + 1], cache.aux[l]};
      Scalar* gx = sched_->accumulate[l][0] ? ws.b_->sum.data() : target(w);
      vjp_fused(f, col0, n, g, gx, ws.b_->scratch.data(), ws.b_->scratch.data() + layer.output_size());
      if (sched_->accumulate[l][0]) add_sum(w, layers_[a]->input_size());
      continue;
    }
    const bool wanted = in > 0 && sched_->needs_grad[static_cast<std::size_t>(in - 1)];
    Scalar* gX = !wanted ? nullptr : sched_->accumulate[l][0] ? ws.b_->sum.data() : target(in);
    if (const auto* s = sched_->saves[l]) {  // no parameters: only the input cotangent
      if (gX)
        s->vjp_saved(X, cache.saved[l].data() + col0 * s->saved_per_sample(), gY, gX, scratch_for(l, ws));
    } else {
      at_layer(l, X, Y, aux, gY, gX);
    }
    if (wanted && sched_->accumulate[l][0]) add_sum(in, layer.input_size());
  }
}

template <typename Scalar>
void Network<Scalar>::vjp(const Scalar* theta, const ForwardCache<Scalar>& cache, Index col0, Index n,
                          ConstMatMap<Scalar> gZ, Scalar* gtheta, Workspace<Scalar>& ws) const {
  backprop(cache, col0, n, gZ, ws,
           [&](std::size_t l, ConstMatMap<Scalar> X, ConstMatMap<Scalar> Y, const int32_t* aux, ConstMatMap<Scalar> gY,
               Scalar* gX) {
             const Layer<Scalar>& layer = *layers_[l];
             if (gX || layer.num_params())
               layer.vjp(theta + offsets_[l], X, Y, aux, gY, gX,
                         layer.num_params() ? gtheta + offsets_[l] : nullptr, scratch_for(l, ws));
           });
}

template <typename Scalar>
CotangentCache<Scalar> Network<Scalar>::make_cotangents(Index N) const {
  CotangentCache<Scalar> cot;
  cot.g.resize(layers_.size());
  for (std::size_t l = 0; l < layers_.size(); ++l)
    if (layers_[l]->num_params() > 0) cot.g[l].resize(layers_[l]->output_size(), N);
  return cot;
}

template <typename Scalar>
void Network<Scalar>::backprop_cotangents(const Scalar* theta, const ForwardCache<Scalar>& cache, Index col0,
                                          Index n, ConstMatMap<Scalar> gZ, CotangentCache<Scalar>& cot,
                                          Workspace<Scalar>& ws, const PackedWeights<Scalar>* packed) const {
  using Products = detail::PackedWeightProducts<Scalar>;
  NATGRAD_CHECK(cot.g.size() == layers_.size());
  backprop(cache, col0, n, gZ, ws,
           [&](std::size_t l, ConstMatMap<Scalar> X, ConstMatMap<Scalar> Y, const int32_t* aux, ConstMatMap<Scalar> gY,
               Scalar* gX) {
             const Layer<Scalar>& layer = *layers_[l];
             if (layer.num_params()) cot.g[l].middleCols(col0, n) = gY;
             const auto* ops = packed && gX ? packed->p_->of(l) : nullptr;
             if (ops && (*ops)[Products::transposed].data)
               sched_->packs[l]->input_cotangent_packed(gY, gX, (*ops)[Products::transposed],
                                                        scratch_for(l, ws));
             else if (gX)
               layer.vjp(theta + offsets_[l], X, Y, aux, gY, gX, nullptr, scratch_for(l, ws));
           });
}

template <typename Scalar>
Mat<Scalar> Network<Scalar>::predict(const Scalar* theta, const Mat<Scalar>& inputs) const {
  ForwardCache<Scalar> cache = make_cache(inputs);
  forward(theta, cache, 0, inputs.cols());
  return cache.acts.back();
}

template class Workspace<float>;
template class Workspace<double>;
template class Network<float>;
template class Network<double>;

}  // namespace natgrad
