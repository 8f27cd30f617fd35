#include <natgrad/model/sequential.h>

#include <algorithm>
#include <stdexcept>

#include "core/check.h"
#include "model/layers.h"
#include "core/fail.h"

namespace natgrad {

template <typename Scalar>
std::unique_ptr<Layer<Scalar>> make_layer(const LayerSpec& spec, const Shape& in, const std::string& where) {
  switch (spec.type) {
    case LayerType::linear:
      return detail::make_linear<Scalar>(spec, in, where);
    case LayerType::conv2d:
      return detail::make_conv2d<Scalar>(spec, in, where);
    case LayerType::flatten:
      return detail::make_flatten<Scalar>(spec, in, where);
    case LayerType::maxpool2d:
    case LayerType::avgpool2d:
      return detail::make_pool2d<Scalar>(spec, in, where);
    default:
      return detail::make_elementwise<Scalar>(spec, in, where);
  }
}

template <typename Scalar>
Sequential<Scalar>::Sequential(const ModelSpec& spec) : spec_(spec) {
  if (spec.input_shape.empty()) detail::fail("model: input_shape is empty");
  double elements = 1;
  for (Index d : spec.input_shape) {
    if (d <= 0)
      detail::fail("model: input_shape " + shape_to_string(spec.input_shape) +
                                  " has a non-positive dimension");
    elements *= double(d);
  }
  if (elements > detail::kMaxElements)
    detail::fail("model: input_shape " + shape_to_string(spec.input_shape) +
                                " has more than 2^40 elements");
  Shape shape = spec.input_shape;
  max_width_ = shape_size(shape);
  bool seen_params = false;
  for (std::size_t i = 0; i < spec.layers.size(); ++i) {
    const std::string where = "layer " + std::to_string(i) + " (" + to_string(spec.layers[i].type) + ")";
    layers_.push_back(make_layer<Scalar>(spec.layers[i], shape, where));
    const Layer<Scalar>& l = *layers_.back();
    offsets_.push_back(num_params_);
    Index off = num_params_;
    for (const ParamTensor& t : l.param_tensors()) {
      const Index size = shape_size(t.shape);
      const std::string module = spec.layers[i].name.empty() ? std::to_string(i) : spec.layers[i].name;
      named_params_.push_back({module + "." + t.name, t.shape, off, size});
      off += size;
    }
    num_params_ += l.num_params();
    if (!seen_params && l.num_params() > 0) {
      first_param_layer_ = i;
      seen_params = true;
    }
    shape = l.output_shape();
    max_width_ = std::max(max_width_, shape_size(shape));
  }
  if (!seen_params) first_param_layer_ = layers_.size();
  fused_.assign(layers_.size(), false);
  for (std::size_t l = first_param_layer_; l + 1 < layers_.size(); ++l) {
    const auto* act = dynamic_cast<const detail::ElementwiseDerivative<Scalar>*>(layers_[l].get());
    const auto* pool = dynamic_cast<const detail::SelectionJacobian*>(layers_[l + 1].get());
    fused_[l] = act != nullptr && pool != nullptr && pool->is_selection();
  }
}

template <typename Scalar>
void Sequential<Scalar>::check_params(Index size) const {
  if (size != num_params_)
    detail::fail("parameter vector has " + std::to_string(size) +
                                " entries but the model has " + std::to_string(num_params_) + " parameters");
}

template <typename Scalar>
ForwardCache<Scalar> Sequential<Scalar>::make_cache(const Mat<Scalar>& inputs) const {
  if (inputs.rows() != input_size())
    detail::fail("inputs have " + std::to_string(inputs.rows()) +
                                " features per sample but the model's input_shape " +
                                shape_to_string(input_shape()) + " has " + std::to_string(input_size()));
  ForwardCache<Scalar> cache;
  const Index n = inputs.cols();
  cache.acts.reserve(layers_.size() + 1);
  cache.acts.push_back(inputs);
  for (const auto& l : layers_) {
    cache.acts.emplace_back(l->output_size(), n);
    cache.aux.emplace_back(static_cast<std::size_t>(l->aux_per_sample() * n));
  }
  return cache;
}

template <typename Scalar>
Workspace<Scalar> Sequential<Scalar>::make_workspace(Index max_cols) const {
  Workspace<Scalar> ws;
  ws.max_cols = max_cols;
  ws.a.resize(static_cast<std::size_t>(max_width_ * max_cols));
  ws.b.resize(ws.a.size());
  ws.scratch.resize(static_cast<std::size_t>(scratch_size(max_cols)));
  return ws;
}

template <typename Scalar>
Index Sequential<Scalar>::scratch_size(Index max_cols) const {
  Index scratch = 0;
  for (const auto& l : layers_) scratch = std::max(scratch, l->scratch_size(max_cols));
  for (std::size_t l = 0; l < layers_.size(); ++l)  // the fused passes' two one-sample buffers
    if (fused_[l]) scratch = std::max(scratch, 2 * layers_[l + 1]->output_size());
  return scratch;
}

template <typename Scalar>
void Sequential<Scalar>::forward(const Scalar* theta, ForwardCache<Scalar>& cache, Index col0,
                                 Index n) const {
  NATGRAD_CHECK(cache.acts.size() == layers_.size() + 1 && col0 >= 0 && n >= 0 && col0 + n <= cache.acts[0].cols());
  for (std::size_t l = 0; l < layers_.size(); ++l) {
    const Layer<Scalar>& layer = *layers_[l];
    ConstMatMap<Scalar> X(cache.acts[l].data() + col0 * layer.input_size(), layer.input_size(), n);
    MatMap<Scalar> Y(cache.acts[l + 1].data() + col0 * layer.output_size(), layer.output_size(), n);
    int32_t* aux = layer.aux_per_sample() ? cache.aux[l].data() + col0 * layer.aux_per_sample() : nullptr;
    layer.forward(theta + offsets_[l], X, Y, aux);
  }
}

namespace {
// An element-wise layer φ (index a) followed by a max-pool (a + 1), as one pass. The pool's Jacobian selects
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
const detail::ElementwiseDerivative<Scalar>& derivative_of(const Layer<Scalar>& layer) {
  return dynamic_cast<const detail::ElementwiseDerivative<Scalar>&>(layer);  // checked when fused_ was set
}

template <typename Scalar>
void jvp_fused(const Layer<Scalar>& layer, const ForwardCache<Scalar>& cache, std::size_t a, Index col0,
               Index n, const Scalar* dx, Scalar* dy, Scalar* xg) {
  const detail::ElementwiseDerivative<Scalar>& act = derivative_of(layer);
  const Index in = layer.input_size(), out = cache.acts[a + 2].rows();
  const bool gather_x = act.derivative_needs_input();
  if (!dx) {
    std::fill(dy, dy + out * n, Scalar(0));
    return;
  }
  for (Index j = 0; j < n; ++j) {
    const int32_t* arg = cache.aux[a + 1].data() + (col0 + j) * out;
    const Scalar* x = cache.acts[a].data() + (col0 + j) * in;
    const Scalar* t = dx + j * in;
    Scalar* o = dy + j * out;
    for (Index k = 0; k < out; ++k) o[k] = t[arg[k]];
    if (gather_x)
      for (Index k = 0; k < out; ++k) xg[k] = x[arg[k]];
    act.scale_by_derivative(gather_x ? xg : nullptr, cache.acts[a + 2].data() + (col0 + j) * out, o, o, out);
  }
}

template <typename Scalar>
void vjp_fused(const Layer<Scalar>& layer, const ForwardCache<Scalar>& cache, std::size_t a, Index col0,
               Index n, const Scalar* gy, Scalar* gx, Scalar* xg, Scalar* tmp) {
  const detail::ElementwiseDerivative<Scalar>& act = derivative_of(layer);
  const Index in = layer.input_size(), out = cache.acts[a + 2].rows();
  const bool gather_x = act.derivative_needs_input();
  for (Index j = 0; j < n; ++j) {
    const int32_t* arg = cache.aux[a + 1].data() + (col0 + j) * out;
    const Scalar* x = cache.acts[a].data() + (col0 + j) * in;
    if (gather_x)
      for (Index k = 0; k < out; ++k) xg[k] = x[arg[k]];
    act.scale_by_derivative(gather_x ? xg : nullptr, cache.acts[a + 2].data() + (col0 + j) * out,
                            gy + j * out, tmp, out);
    Scalar* g = gx + j * in;
    std::fill(g, g + in, Scalar(0));
    for (Index k = 0; k < out; ++k) g[arg[k]] += tmp[k];
  }
}
}  // namespace

template <typename Scalar>
void Sequential<Scalar>::jvp(const Scalar* theta, const Scalar* v, const ForwardCache<Scalar>& cache,
                             Index col0, Index n, Workspace<Scalar>& ws) const {
  NATGRAD_CHECK(n <= ws.max_cols && col0 >= 0 && col0 + n <= cache.acts[0].cols());
  Scalar* bufs[2] = {ws.a.data(), ws.b.data()};
  int cur = 0;
  const Scalar* tangent = nullptr;  // nullptr: the tangent is exactly zero (before the first parameter)
  for (std::size_t l = first_param_layer_; l < layers_.size(); ++l) {
    if (fused_[l]) continue;  // runs with the max-pool after it
    const Layer<Scalar>& layer = *layers_[l];
    ConstMatMap<Scalar> X(cache.acts[l].data() + col0 * layer.input_size(), layer.input_size(), n);
    ConstMatMap<Scalar> Y(cache.acts[l + 1].data() + col0 * layer.output_size(), layer.output_size(), n);
    const int32_t* aux =
        layer.aux_per_sample() ? cache.aux[l].data() + col0 * layer.aux_per_sample() : nullptr;
    MatMap<Scalar> out(bufs[cur], layer.output_size(), n);
    if (l > 0 && fused_[l - 1])
      jvp_fused(*layers_[l - 1], cache, l - 1, col0, n, tangent, out.data(), ws.scratch.data());
    else
      layer.jvp(theta + offsets_[l], v + offsets_[l], X, Y, aux, tangent, out, ws.scratch.data());
    tangent = bufs[cur];
    cur ^= 1;
  }
  if (!tangent) {  // a model without parameters: J = 0
    std::fill(bufs[cur], bufs[cur] + output_size() * n, Scalar(0));
    tangent = bufs[cur];
  }
  ws.result = tangent;
}

namespace {
// Shared by vjp and squared_vjp: backpropagate gZ from the output to the first layer with parameters,
// calling `at_layer(l, X, gY, gX)` at each layer with the layer's output cotangent. A fused activation and
// max-pool pair (neither has parameters) runs as one vjp_fused step.
template <typename Scalar, typename Layers, typename AtLayer>
void backprop(const Layers& layers, const std::vector<bool>& fused, std::size_t first,
              const ForwardCache<Scalar>& cache, Index col0, Index n, ConstMatMap<Scalar> gZ,
              Workspace<Scalar>& ws, AtLayer at_layer) {
  NATGRAD_CHECK(n <= ws.max_cols && col0 >= 0 && col0 + n <= cache.acts[0].cols() && gZ.cols() == n);
  Scalar* bufs[2] = {ws.a.data(), ws.b.data()};
  int cur = 0;
  const Scalar* g = gZ.data();
  for (std::size_t l = layers.size(); l-- > first;) {
    if (l > first && fused[l - 1]) {  // the pool l and the activation l - 1 below it (l - 1 > first)
      --l;
      vjp_fused(*layers[l], cache, l, col0, n, g, bufs[cur], ws.scratch.data(),
                ws.scratch.data() + layers[l + 1]->output_size());
      g = bufs[cur];
      cur ^= 1;
      continue;
    }
    const auto& layer = *layers[l];
    ConstMatMap<Scalar> X(cache.acts[l].data() + col0 * layer.input_size(), layer.input_size(), n);
    ConstMatMap<Scalar> Y(cache.acts[l + 1].data() + col0 * layer.output_size(), layer.output_size(), n);
    ConstMatMap<Scalar> gY(g, layer.output_size(), n);
    const int32_t* aux =
        layer.aux_per_sample() ? cache.aux[l].data() + col0 * layer.aux_per_sample() : nullptr;
    Scalar* gX = l > first ? bufs[cur] : nullptr;  // nothing below the first parameter needs a cotangent
    at_layer(l, X, Y, aux, gY, gX);
    g = gX;
    cur ^= 1;
  }
}
}  // namespace

template <typename Scalar>
void Sequential<Scalar>::vjp(const Scalar* theta, const ForwardCache<Scalar>& cache, Index col0, Index n,
                             ConstMatMap<Scalar> gZ, Scalar* gtheta, Workspace<Scalar>& ws) const {
  backprop<Scalar>(layers_, fused_, first_param_layer_, cache, col0, n, gZ, ws,
                   [&](std::size_t l, ConstMatMap<Scalar> X, ConstMatMap<Scalar> Y, const int32_t* aux,
                       ConstMatMap<Scalar> gY, Scalar* gX) {
                     const Layer<Scalar>& layer = *layers_[l];
                     layer.vjp(theta + offsets_[l], X, Y, aux, gY, gX,
                               layer.num_params() ? gtheta + offsets_[l] : nullptr, ws.scratch.data());
                   });
}

template <typename Scalar>
CotangentCache<Scalar> Sequential<Scalar>::make_cotangents(Index N) const {
  CotangentCache<Scalar> cot;
  cot.g.resize(layers_.size());
  for (std::size_t l = 0; l < layers_.size(); ++l)
    if (layers_[l]->num_params() > 0) cot.g[l].resize(layers_[l]->output_size(), N);
  return cot;
}

template <typename Scalar>
void Sequential<Scalar>::backprop_cotangents(const Scalar* theta, const ForwardCache<Scalar>& cache, Index col0,
                                             Index n, ConstMatMap<Scalar> gZ, CotangentCache<Scalar>& cot,
                                             Workspace<Scalar>& ws) const {
  NATGRAD_CHECK(cot.g.size() == layers_.size());
  backprop<Scalar>(layers_, fused_, first_param_layer_, cache, col0, n, gZ, ws,
                   [&](std::size_t l, ConstMatMap<Scalar> X, ConstMatMap<Scalar> Y, const int32_t* aux,
                       ConstMatMap<Scalar> gY, Scalar* gX) {
                     const Layer<Scalar>& layer = *layers_[l];
                     if (layer.num_params()) cot.g[l].middleCols(col0, n) = gY;
                     if (gX) layer.vjp(theta + offsets_[l], X, Y, aux, gY, gX, nullptr, ws.scratch.data());
                   });
}

template <typename Scalar>
void Sequential<Scalar>::squared_vjp(const Scalar* theta, const ForwardCache<Scalar>& cache, Index col0,
                                     Index n, ConstMatMap<Scalar> gZ, Scalar* gsq,
                                     Workspace<Scalar>& ws) const {
  backprop<Scalar>(layers_, fused_, first_param_layer_, cache, col0, n, gZ, ws,
                   [&](std::size_t l, ConstMatMap<Scalar> X, ConstMatMap<Scalar> Y, const int32_t* aux,
                       ConstMatMap<Scalar> gY, Scalar* gX) {
                     const Layer<Scalar>& layer = *layers_[l];
                     if (layer.num_params())
                       layer.accumulate_squared_grads(theta + offsets_[l], X, gY, gsq + offsets_[l],
                                                      ws.scratch.data());
                     layer.vjp(theta + offsets_[l], X, Y, aux, gY, gX, nullptr, ws.scratch.data());
                   });
}

template <typename Scalar>
Mat<Scalar> Sequential<Scalar>::predict(const Scalar* theta, const Mat<Scalar>& inputs) const {
  ForwardCache<Scalar> cache = make_cache(inputs);
  forward(theta, cache, 0, inputs.cols());
  return cache.acts.back();
}

template class Sequential<float>;
template class Sequential<double>;
template std::unique_ptr<Layer<float>> make_layer<float>(const LayerSpec&, const Shape&, const std::string&);
template std::unique_ptr<Layer<double>> make_layer<double>(const LayerSpec&, const Shape&,
                                                           const std::string&);

}  // namespace natgrad
