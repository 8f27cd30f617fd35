// Network's passes over a chunk of samples: forward, the R-op (J v) in topological order, and backprop
// (Jᵀ u) in reverse, following the buffer plan made at construction (network_build.cpp).
#include <natgrad/model/network.h>

#include "model/node_timer.h"

#include <algorithm>
#include <stdexcept>

#include "core/check.h"
#include "core/fail.h"
#include "model/layers.h"

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
    if (inputs_[l][0] == 0 && tokens_[l]) {
      try {
        tokens_[l]->check_input(ConstMatMap<Scalar>(inputs.data(), inputs.rows(), inputs.cols()));
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
    if (saves_[l]) cache.saved[l].resize(saves_[l]->saved_per_sample(), n);
  return cache;
}

template <typename Scalar>
Index Network<Scalar>::workspace_width() const {
  Index w = has_fan_out_ ? sum_width_ : 0;
  for (Index s : slot_width_) w += s;
  return w;
}

template <typename Scalar>
Index Network<Scalar>::saved_per_sample() const {
  Index total = 0;
  for (const auto* s : saves_)
    if (s) total += s->saved_per_sample();
  return total;
}

template <typename Scalar>
Workspace<Scalar> Network<Scalar>::make_workspace(Index max_cols) const {
  Workspace<Scalar> ws;
  ws.max_cols = max_cols;
  ws.slots.resize(static_cast<std::size_t>(num_slots_));
  for (std::size_t k = 0; k < ws.slots.size(); ++k) ws.slots[k].resize(static_cast<std::size_t>(slot_width_[k] * max_cols));
  if (has_fan_out_) ws.sum.resize(static_cast<std::size_t>(sum_width_ * max_cols));
  ws.scratch.resize(static_cast<std::size_t>(scratch_size(max_cols)));
  ws.values.assign(layers_.size() + 1, nullptr);
  ws.operands.assign(max_operands_, nullptr);
  return ws;
}

template <typename Scalar>
Index Network<Scalar>::scratch_size(Index max_cols) const {
  Index scratch = 0;
  for (const auto& l : layers_) scratch = std::max(scratch, l->scratch_size(max_cols));
  for (std::size_t p = 0; p < layers_.size(); ++p)  // the fused passes' two one-sample buffers
    if (fused_act_[p])
      scratch = std::max(scratch, 2 * layers_[p]->output_size());
  return scratch;
}

template <typename Scalar>
Index Network<Scalar>::squared_scratch_size(Index max_cols) const {
  Index scratch = scratch_size(max_cols);  // a layer without the capability runs vjp per sample
  for (const auto* sq : squared_)
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
                              double* timing) const {
  NATGRAD_CHECK(cache.acts.size() == layers_.size() + 1 && col0 >= 0 && n >= 0 && col0 + n <= cache.acts[0].cols());
  std::vector<const Scalar*> operands(max_operands_);
  for (std::size_t l = 0; l < layers_.size(); ++l) {
    const detail::NodeTimer timer(timing, l);
    const Layer<Scalar>& layer = *layers_[l];
    MatMap<Scalar> Y(cache.acts[l + 1].data() + col0 * layer.output_size(), layer.output_size(), n);
    if (const auto* merge = merge_[l]) {
      for (std::size_t i = 0; i < inputs_[l].size(); ++i) {
        const Mat<Scalar>& X = cache.acts[static_cast<std::size_t>(inputs_[l][i])];
        operands[i] = X.data() + col0 * X.rows();
      }
      merge->forward_multi(operands.data(), theta + offsets_[l], n, Y.data());
      continue;
    }
    const Mat<Scalar>& in = input_act(cache, l);
    ConstMatMap<Scalar> X(in.data() + col0 * layer.input_size(), layer.input_size(), n);
    if (const auto* s = saves_[l]) {
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
                          Index n, Workspace<Scalar>& ws) const {
  NATGRAD_CHECK(n <= ws.max_cols && col0 >= 0 && col0 + n <= cache.acts[0].cols());
  std::fill(ws.values.begin(), ws.values.end(), nullptr);  // nullptr: an exactly zero tangent
  for (std::size_t l = 0; l < layers_.size(); ++l) {
    if (!needs_grad_[l] || fused_[l]) continue;
    const detail::NodeTimer timer(ws.timing, l);
    const Layer<Scalar>& layer = *layers_[l];
    Scalar* out = ws.slots[static_cast<std::size_t>(tangent_slot_[l])].data();
    ws.values[l + 1] = out;
    if (const auto* merge = merge_[l]) {
      for (std::size_t i = 0; i < inputs_[l].size(); ++i) ws.operands[i] = ws.values[static_cast<std::size_t>(inputs_[l][i])];
      merge->jvp_multi(ws.operands.data(), layer.num_params() ? v + offsets_[l] : nullptr, n, out);
      continue;
    }
    const int in = inputs_[l][0];
    if (fused_act_[l]) {
      const auto a = static_cast<std::size_t>(in - 1);
      const FusedPair<Scalar> f{*fused_act_[l], input_act(cache, a), cache.acts[l + 1], cache.aux[l]};
      jvp_fused(f, col0, n, ws.values[static_cast<std::size_t>(inputs_[a][0])], out, ws.scratch.data());
      continue;
    }
    const Mat<Scalar>& Xm = cache.acts[static_cast<std::size_t>(in)];
    ConstMatMap<Scalar> X(Xm.data() + col0 * layer.input_size(), layer.input_size(), n);
    if (const auto* s = saves_[l]) {
      s->jvp_saved(X, cache.saved[l].data() + col0 * s->saved_per_sample(),
                   ws.values[static_cast<std::size_t>(in)], MatMap<Scalar>(out, layer.output_size(), n),
                   scratch_for(l, ws));
      continue;
    }
    ConstMatMap<Scalar> Y(cache.acts[l + 1].data() + col0 * layer.output_size(), layer.output_size(), n);
    const int32_t* aux = layer.aux_per_sample() ? cache.aux[l].data() + col0 * layer.aux_per_sample() : nullptr;
    layer.jvp(theta + offsets_[l], v + offsets_[l], X, Y, aux, ws.values[static_cast<std::size_t>(in)],
              MatMap<Scalar>(out, layer.output_size(), n), scratch_for(l, ws));
  }
  const Scalar* result = ws.values[layers_.size()];
  if (!result) {  // the output does not depend on the parameters: J = 0
    Scalar* out = ws.slots.empty() ? nullptr : ws.slots[0].data();
    NATGRAD_CHECK(out != nullptr);
    std::fill(out, out + output_size() * n, Scalar(0));
    result = out;
  }
  ws.result = result;
}

// Backpropagates gZ from the output to every node that depends on the parameters, calling
// `at_layer(l, X, Y, aux, gY, gX)` at each with its output cotangent gY; gX is where its input cotangent
// goes (nullptr when nobody needs it; for a merge node always nullptr: its operands are handled here). A
// fused activation and max-pool pair runs as one vjp_fused step at the pool.
template <typename Scalar>
template <typename AtLayer>
void Network<Scalar>::backprop(const ForwardCache<Scalar>& cache, Index col0, Index n, ConstMatMap<Scalar> gZ,
                               Workspace<Scalar>& ws, AtLayer at_layer) const {
  NATGRAD_CHECK(n <= ws.max_cols && col0 >= 0 && col0 + n <= cache.acts[0].cols() && gZ.cols() == n);
  const std::size_t L = layers_.size();
  auto target = [&](int v) { return ws.slots[static_cast<std::size_t>(cotangent_slot_[static_cast<std::size_t>(v)])].data(); };
  // Adds the contribution in ws.sum to value v's cotangent (fan-out), in a fixed order.
  auto add_sum = [&](int v, Index rows) {
    MatMap<Scalar>(target(v), rows, n) += ConstMatMap<Scalar>(ws.sum.data(), rows, n);
  };
  for (std::size_t l = L; l-- > 0;) {
    if (!needs_grad_[l] || fused_[l]) continue;
    const detail::NodeTimer timer(ws.timing, l);
    const Layer<Scalar>& layer = *layers_[l];
    const Scalar* g = l + 1 == L ? gZ.data() : target(static_cast<int>(l) + 1);
    ConstMatMap<Scalar> gY(g, layer.output_size(), n);
    ConstMatMap<Scalar> Y(cache.acts[l + 1].data() + col0 * layer.output_size(), layer.output_size(), n);
    const Mat<Scalar>& Xm = input_act(cache, l);
    ConstMatMap<Scalar> X(Xm.data() + col0 * Xm.rows(), Xm.rows(), n);
    const int32_t* aux = layer.aux_per_sample() ? cache.aux[l].data() + col0 * layer.aux_per_sample() : nullptr;
    if (const auto* merge = merge_[l]) {
      at_layer(l, X, Y, aux, gY, static_cast<Scalar*>(nullptr));
      for (std::size_t i = 0; i < inputs_[l].size(); ++i) {
        const int v = inputs_[l][i];
        if (v == 0 || !needs_grad_[static_cast<std::size_t>(v - 1)]) continue;
        merge->vjp_operand(i, g, n, target(v), accumulate_[l][i]);
      }
      continue;
    }
    const int in = inputs_[l][0];
    if (fused_act_[l]) {
      const auto a = static_cast<std::size_t>(in - 1);
      const int w = inputs_[a][0];  // the activation's input: needs a cotangent (the activation has no parameters)
      const FusedPair<Scalar> f{*fused_act_[l], input_act(cache, a), cache.acts[l + 1], cache.aux[l]};
      Scalar* gx = accumulate_[l][0] ? ws.sum.data() : target(w);
      vjp_fused(f, col0, n, g, gx, ws.scratch.data(), ws.scratch.data() + layer.output_size());
      if (accumulate_[l][0]) add_sum(w, layers_[a]->input_size());
      continue;
    }
    const bool wanted = in > 0 && needs_grad_[static_cast<std::size_t>(in - 1)];
    Scalar* gX = !wanted ? nullptr : accumulate_[l][0] ? ws.sum.data() : target(in);
    if (const auto* s = saves_[l]) {  // no parameters: only the input cotangent
      if (gX)
        s->vjp_saved(X, cache.saved[l].data() + col0 * s->saved_per_sample(), gY, gX, scratch_for(l, ws));
    } else {
      at_layer(l, X, Y, aux, gY, gX);
    }
    if (wanted && accumulate_[l][0]) add_sum(in, layer.input_size());
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
                                          Workspace<Scalar>& ws) const {
  NATGRAD_CHECK(cot.g.size() == layers_.size());
  backprop(cache, col0, n, gZ, ws,
           [&](std::size_t l, ConstMatMap<Scalar> X, ConstMatMap<Scalar> Y, const int32_t* aux, ConstMatMap<Scalar> gY,
               Scalar* gX) {
             const Layer<Scalar>& layer = *layers_[l];
             if (layer.num_params()) cot.g[l].middleCols(col0, n) = gY;
             if (gX) layer.vjp(theta + offsets_[l], X, Y, aux, gY, gX, nullptr, scratch_for(l, ws));
           });
}

template <typename Scalar>
Mat<Scalar> Network<Scalar>::predict(const Scalar* theta, const Mat<Scalar>& inputs) const {
  ForwardCache<Scalar> cache = make_cache(inputs);
  forward(theta, cache, 0, inputs.cols());
  return cache.acts.back();
}

template class Network<float>;
template class Network<double>;

}  // namespace natgrad
