#include <natgrad/model/network.h>

#include <algorithm>
#include <map>
#include <set>
#include <stdexcept>

#include "core/check.h"
#include "core/fail.h"
#include "model/layers.h"

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
    case LayerType::identity:
    case LayerType::dropout:
      return detail::make_identity<Scalar>(spec, in, where);
    case LayerType::global_avgpool:
      return detail::make_global_avgpool<Scalar>(spec, in, where);
    case LayerType::layer_norm:
      return detail::make_layer_norm<Scalar>(spec, in, where);
    case LayerType::batch_norm:
      return detail::make_batch_norm<Scalar>(spec, in, where);
    case LayerType::embedding:
      return detail::make_embedding<Scalar>(spec, in, where);
    case LayerType::add:
    case LayerType::cat:
      return detail::make_merge<Scalar>(spec, {in}, where);
    default:
      return detail::make_elementwise<Scalar>(spec, in, where);
  }
}

namespace {
bool is_merge(LayerType t) { return t == LayerType::add || t == LayerType::cat; }

// The smallest slot not in use.
int take_slot(std::vector<bool>& used) {
  for (std::size_t s = 0; s < used.size(); ++s)
    if (!used[s]) {
      used[s] = true;
      return static_cast<int>(s);
    }
  used.push_back(true);
  return static_cast<int>(used.size() - 1);
}
}  // namespace

template <typename Scalar>
Network<Scalar>::Network(const ModelSpec& spec) : spec_(spec) {
  using detail::fail;
  if (spec.input_shape.empty()) fail("model: input_shape is empty");
  double elements = 1;
  for (Index d : spec.input_shape) {
    if (d <= 0) fail("model: input_shape " + shape_to_string(spec.input_shape) + " has a non-positive dimension");
    elements *= double(d);
  }
  if (elements > detail::kMaxElements)
    fail("model: input_shape " + shape_to_string(spec.input_shape) + " has more than 2^40 elements");

  // Ids, and each layer's inputs as file indices (-1: the model input).
  const std::size_t L = spec.layers.size();
  auto where_of = [&](std::size_t i) {
    const std::string id = natgrad::node_id(spec, i);
    return "layer " + std::to_string(i) + (id == std::to_string(i) ? "" : " \"" + id + "\"") + " (" +
           to_string(spec.layers[i].type) + ")";
  };
  std::map<std::string, std::size_t> by_id;
  for (std::size_t i = 0; i < L; ++i) {
    const std::string id = natgrad::node_id(spec, i);
    if (id == kModelInputId) fail(where_of(i) + ": the id \"input\" is reserved for the model input");
    if (!by_id.emplace(id, i).second)
      fail(where_of(i) + ": the id \"" + id + "\" is already used by layer " + std::to_string(by_id[id]));
  }
  std::vector<std::vector<long>> reads(L);
  std::vector<int> consumers(L, 0);
  for (std::size_t i = 0; i < L; ++i) {
    const LayerSpec& s = spec.layers[i];
    if (s.inputs.empty()) {
      reads[i].push_back(long(i) - 1);
    } else {
      for (const std::string& name : s.inputs) {
        if (name == kModelInputId) {
          reads[i].push_back(-1);
          continue;
        }
        const auto it = by_id.find(name);
        if (it == by_id.end()) fail(where_of(i) + ": input \"" + name + "\" names no node");
        reads[i].push_back(long(it->second));
      }
    }
    if (!is_merge(s.type) && reads[i].size() != 1)
      fail(where_of(i) + ": takes one input, given " + std::to_string(reads[i].size()));
    if (s.type == LayerType::cat && reads[i].size() < 1) fail(where_of(i) + ": needs at least one input");
    if (s.type == LayerType::add && reads[i].size() + (s.parameter.empty() ? 0 : 1) < 2)
      fail(where_of(i) + ": needs at least two operands");
    for (long r : reads[i])
      if (r >= 0) ++consumers[static_cast<std::size_t>(r)];
  }
  std::size_t output = L == 0 ? 0 : L - 1;
  if (!spec.output.empty()) {
    const auto it = by_id.find(spec.output);
    if (it == by_id.end()) fail("model: the output \"" + spec.output + "\" names no node");
    output = it->second;
  }
  for (std::size_t i = 0; i < L; ++i)
    if (i != output && consumers[i] == 0)
      fail(where_of(i) + ": its output is never used (the model's output is \"" + natgrad::node_id(spec, output) +
           "\")");

  // Topological order: Kahn's algorithm, always taking the ready layer that comes first in the file, so a
  // chain keeps its order.
  {
    std::vector<int> missing(L, 0);
    std::vector<std::vector<std::size_t>> readers(L);
    for (std::size_t i = 0; i < L; ++i)
      for (long r : reads[i])
        if (r >= 0) {
          ++missing[i];
          readers[static_cast<std::size_t>(r)].push_back(i);
        }
    std::set<std::size_t> ready;
    for (std::size_t i = 0; i < L; ++i)
      if (missing[i] == 0) ready.insert(i);
    while (!ready.empty()) {
      const std::size_t i = *ready.begin();
      ready.erase(ready.begin());
      order_.push_back(i);
      for (std::size_t r : readers[i])
        if (--missing[r] == 0) ready.insert(r);
    }
    if (order_.size() != L)
      for (std::size_t i = 0; i < L; ++i)
        if (missing[i] > 0) fail(where_of(i) + ": is on a cycle (a node reads its own output)");
  }
  std::vector<int> value_of(L, 0);  // file index -> value id (node position + 1)
  for (std::size_t l = 0; l < L; ++l) value_of[order_[l]] = static_cast<int>(l) + 1;

  // The layers, in topological order.
  max_width_ = shape_size(spec.input_shape);
  std::vector<Shape> shapes{spec.input_shape};  // per value
  struct Tensor {
    std::string name;
    Shape shape;
    std::size_t node;
  };
  std::vector<Tensor> tensors;
  for (std::size_t l = 0; l < L; ++l) {
    const std::size_t i = order_[l];
    const LayerSpec& s = spec.layers[i];
    const std::string where = where_of(i);
    ids_.push_back(natgrad::node_id(spec, i));
    inputs_.emplace_back();
    std::vector<Shape> in;
    for (long r : reads[i]) {
      const int v = r < 0 ? 0 : value_of[static_cast<std::size_t>(r)];
      inputs_.back().push_back(v);
      in.push_back(shapes[static_cast<std::size_t>(v)]);
    }
    if (is_merge(s.type))
      layers_.push_back(detail::make_merge<Scalar>(s, in, where));
    else
      layers_.push_back(make_layer<Scalar>(s, in[0], where));
    const Layer<Scalar>& layer = *layers_.back();
    max_operands_ = std::max(max_operands_, in.size());
    shapes.push_back(layer.output_shape());
    max_width_ = std::max(max_width_, layer.output_size());
    const std::string module = natgrad::module_name(spec, i);
    for (const ParamTensor& t : layer.param_tensors()) {
      const std::string name = s.type == LayerType::add ? s.parameter : module + "." + t.name;
      for (const Tensor& other : tensors)
        if (other.name == name)
          fail(where + ": the parameter \"" + name + "\" is already used by node \"" + ids_[other.node] +
               "\" (shared parameters are not supported)");
      tensors.push_back({name, t.shape, l});
    }
    const std::vector<ParamTensor> buffers = layer.buffer_tensors();
    for (std::size_t b = 0; b < buffers.size(); ++b) named_buffers_.push_back({module + "." + buffers[b].name, buffers[b].shape, l, b});
    for (const std::string& name : layer.ignored_buffers()) ignored_buffers_.push_back(module + "." + name);
    needs_grad_.push_back(layer.num_params() > 0);
    for (int v : inputs_.back())
      if (v > 0 && needs_grad_[static_cast<std::size_t>(v - 1)]) {
        if (!layer.differentiable_input())
          fail(where + ": reads token indices, but its input \"" + ids_[static_cast<std::size_t>(v - 1)] +
               "\" depends on the parameters");
        needs_grad_.back() = true;
      }
  }
  for (std::size_t a = 0; a < named_buffers_.size(); ++a)
    for (std::size_t b = 0; b < a; ++b)
      if (named_buffers_[a].name == named_buffers_[b].name)
        fail("model: the buffer \"" + named_buffers_[a].name + "\" belongs to two nodes (a module used twice)");

  // Offsets: the parameter tensors in `parameter_order`, or in file order of their layers; a node's tensors
  // must be consecutive, in its own order.
  std::vector<std::size_t> tensor_order(tensors.size());
  if (spec.parameter_order.empty()) {
    std::vector<std::size_t> file_rank(tensors.size());
    for (std::size_t k = 0; k < tensors.size(); ++k) {
      tensor_order[k] = k;
      file_rank[k] = order_[tensors[k].node];
    }
    std::stable_sort(tensor_order.begin(), tensor_order.end(),
                     [&](std::size_t a, std::size_t b) { return file_rank[a] < file_rank[b]; });
  } else {
    if (spec.parameter_order.size() != tensors.size())
      fail("model: \"parameters\" lists " + std::to_string(spec.parameter_order.size()) +
           " tensors but the nodes have " + std::to_string(tensors.size()));
    for (std::size_t k = 0; k < spec.parameter_order.size(); ++k) {
      const std::string& name = spec.parameter_order[k];
      std::size_t found = tensors.size();
      for (std::size_t t = 0; t < tensors.size(); ++t)
        if (tensors[t].name == name) found = t;
      if (found == tensors.size()) fail("model: \"parameters\" names \"" + name + "\", which no node has");
      for (std::size_t j = 0; j < k; ++j)
        if (tensor_order[j] == found) fail("model: \"parameters\" lists \"" + name + "\" twice");
      tensor_order[k] = found;
    }
  }
  offsets_.assign(L, 0);
  std::vector<std::vector<std::size_t>> own(L);  // each node's tensors, in its own order
  for (std::size_t t = 0; t < tensors.size(); ++t) own[tensors[t].node].push_back(t);
  std::vector<bool> placed(L, false);
  for (std::size_t k = 0; k < tensor_order.size();) {
    const std::size_t node = tensors[tensor_order[k]].node;
    bool in_order = !placed[node] && k + own[node].size() <= tensor_order.size();
    for (std::size_t j = 0; in_order && j < own[node].size(); ++j) in_order = tensor_order[k + j] == own[node][j];
    if (!in_order)
      fail("model: \"parameters\" must list node \"" + ids_[node] + "\"'s tensors together and in their order");
    placed[node] = true;
    offsets_[node] = num_params_;
    for (std::size_t t : own[node]) {
      named_params_.push_back({tensors[t].name, tensors[t].shape, num_params_, shape_size(tensors[t].shape)});
      num_params_ += shape_size(tensors[t].shape);
    }
    k += own[node].size();
  }

  // The fused activation + max-pool pairs.
  std::vector<int> readers(L + 1, 0);
  for (const auto& in : inputs_)
    for (int v : in) ++readers[static_cast<std::size_t>(v)];
  fused_.assign(L, false);
  for (std::size_t p = 0; p < L; ++p) {
    if (is_merge(layers_[p]->type()) || inputs_[p][0] == 0) continue;
    const auto a = static_cast<std::size_t>(inputs_[p][0] - 1);
    const auto* act = dynamic_cast<const detail::ElementwiseDerivative<Scalar>*>(layers_[a].get());
    const auto* pool = dynamic_cast<const detail::SelectionJacobian*>(layers_[p].get());
    fused_[a] = act != nullptr && pool != nullptr && pool->is_selection() && needs_grad_[a] &&
                readers[a + 1] == 1 && !is_merge(layers_[a]->type());
  }

  // The buffer plan. R-op: node l's tangent takes the lowest free slot; a slot is freed after the last node
  // that reads its value (a fused pool reads its activation's input).
  auto reads_of = [&](std::size_t l) {
    std::vector<int> r = inputs_[l];
    if (!is_merge(layers_[l]->type()) && r[0] > 0 && fused_[static_cast<std::size_t>(r[0] - 1)])
      r = inputs_[static_cast<std::size_t>(r[0] - 1)];
    return r;
  };
  tangent_slot_.assign(L, -1);
  cotangent_slot_.assign(L + 1, -1);
  accumulate_.assign(L, {});
  {
    std::vector<std::size_t> last_read(L + 1, 0);
    for (std::size_t l = 0; l < L; ++l)
      if (needs_grad_[l] && !fused_[l])
        for (int v : reads_of(l)) last_read[static_cast<std::size_t>(v)] = l;
    std::vector<bool> used;
    for (std::size_t l = 0; l < L; ++l) {
      if (!needs_grad_[l] || fused_[l]) continue;
      tangent_slot_[l] = take_slot(used);
      for (int v : reads_of(l))
        if (v > 0 && last_read[static_cast<std::size_t>(v)] == l && tangent_slot_[static_cast<std::size_t>(v - 1)] >= 0 &&
            static_cast<std::size_t>(v) != L)
          used[static_cast<std::size_t>(tangent_slot_[static_cast<std::size_t>(v - 1)])] = false;
    }
    num_slots_ = static_cast<int>(used.size());
  }
  // Backprop, in reverse: the first contribution to a value's cotangent takes the lowest free slot, later
  // ones are added; the slot is freed once the node that produced the value has used it.
  {
    std::vector<bool> used;
    for (std::size_t l = L; l-- > 0;) {
      if (!needs_grad_[l] || fused_[l]) continue;
      const std::vector<int> r = reads_of(l);
      for (int v : r) {
        const bool wanted = v > 0 && needs_grad_[static_cast<std::size_t>(v - 1)];
        if (!wanted) {
          accumulate_[l].push_back(false);
          continue;
        }
        int& slot = cotangent_slot_[static_cast<std::size_t>(v)];
        accumulate_[l].push_back(slot >= 0);
        if (slot >= 0) has_fan_out_ = true;
        else slot = take_slot(used);
      }
      if (l + 1 < L + 1 && cotangent_slot_[l + 1] >= 0) used[static_cast<std::size_t>(cotangent_slot_[l + 1])] = false;
    }
    num_slots_ = std::max({1, num_slots_, static_cast<int>(used.size())});
  }
}

template <typename Scalar>
void Network<Scalar>::set_buffer(std::size_t k, const Scalar* values) {
  NATGRAD_CHECK(k < named_buffers_.size());
  const NamedBuffer& b = named_buffers_[k];
  try {
    layers_[b.node]->set_buffer(b.index, values);
  } catch (const std::invalid_argument& e) {
    detail::fail(b.name + ": " + e.what());
  }
}

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
    if (inputs_[l][0] == 0) {
      try {
        layers_[l]->check_input(ConstMatMap<Scalar>(inputs.data(), inputs.rows(), inputs.cols()));
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
  return cache;
}

template <typename Scalar>
Workspace<Scalar> Network<Scalar>::make_workspace(Index max_cols) const {
  Workspace<Scalar> ws;
  ws.max_cols = max_cols;
  ws.slots.resize(static_cast<std::size_t>(num_slots_));
  for (auto& s : ws.slots) s.resize(static_cast<std::size_t>(max_width_ * max_cols));
  if (has_fan_out_) ws.sum.resize(static_cast<std::size_t>(max_width_ * max_cols));
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
    if (!is_merge(layers_[p]->type()) && inputs_[p][0] > 0 && fused_[static_cast<std::size_t>(inputs_[p][0] - 1)])
      scratch = std::max(scratch, 2 * layers_[p]->output_size());
  return scratch;
}

template <typename Scalar>
Index Network<Scalar>::forward_scratch_size(Index max_cols) const {
  Index scratch = 0;
  for (const auto& l : layers_) scratch = std::max(scratch, l->forward_scratch_size(max_cols));
  return scratch;
}

template <typename Scalar>
void Network<Scalar>::forward(const Scalar* theta, ForwardCache<Scalar>& cache, Index col0, Index n) const {
  NATGRAD_CHECK(cache.acts.size() == layers_.size() + 1 && col0 >= 0 && n >= 0 && col0 + n <= cache.acts[0].cols());
  std::vector<const Scalar*> operands(max_operands_);
  for (std::size_t l = 0; l < layers_.size(); ++l) {
    const Layer<Scalar>& layer = *layers_[l];
    MatMap<Scalar> Y(cache.acts[l + 1].data() + col0 * layer.output_size(), layer.output_size(), n);
    if (const auto* merge = dynamic_cast<const detail::MultiInput<Scalar>*>(&layer)) {
      for (std::size_t i = 0; i < inputs_[l].size(); ++i) {
        const Mat<Scalar>& X = cache.acts[static_cast<std::size_t>(inputs_[l][i])];
        operands[i] = X.data() + col0 * X.rows();
      }
      merge->forward_multi(operands.data(), theta + offsets_[l], n, Y.data());
      continue;
    }
    const Mat<Scalar>& in = input_act(cache, l);
    ConstMatMap<Scalar> X(in.data() + col0 * layer.input_size(), layer.input_size(), n);
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
    const Layer<Scalar>& layer = *layers_[l];
    Scalar* out = ws.slots[static_cast<std::size_t>(tangent_slot_[l])].data();
    ws.values[l + 1] = out;
    if (const auto* merge = dynamic_cast<const detail::MultiInput<Scalar>*>(&layer)) {
      for (std::size_t i = 0; i < inputs_[l].size(); ++i) ws.operands[i] = ws.values[static_cast<std::size_t>(inputs_[l][i])];
      merge->jvp_multi(ws.operands.data(), layer.num_params() ? v + offsets_[l] : nullptr, n, out);
      continue;
    }
    const int in = inputs_[l][0];
    if (in > 0 && fused_[static_cast<std::size_t>(in - 1)]) {
      const auto a = static_cast<std::size_t>(in - 1);
      const FusedPair<Scalar> f{dynamic_cast<const detail::ElementwiseDerivative<Scalar>&>(*layers_[a]),
                                input_act(cache, a), cache.acts[l + 1], cache.aux[l]};
      jvp_fused(f, col0, n, ws.values[static_cast<std::size_t>(inputs_[a][0])], out, ws.scratch.data());
      continue;
    }
    const Mat<Scalar>& Xm = cache.acts[static_cast<std::size_t>(in)];
    ConstMatMap<Scalar> X(Xm.data() + col0 * layer.input_size(), layer.input_size(), n);
    ConstMatMap<Scalar> Y(cache.acts[l + 1].data() + col0 * layer.output_size(), layer.output_size(), n);
    const int32_t* aux = layer.aux_per_sample() ? cache.aux[l].data() + col0 * layer.aux_per_sample() : nullptr;
    layer.jvp(theta + offsets_[l], v + offsets_[l], X, Y, aux, ws.values[static_cast<std::size_t>(in)],
              MatMap<Scalar>(out, layer.output_size(), n), ws.scratch.data());
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
    const Layer<Scalar>& layer = *layers_[l];
    const Scalar* g = l + 1 == L ? gZ.data() : target(static_cast<int>(l) + 1);
    ConstMatMap<Scalar> gY(g, layer.output_size(), n);
    ConstMatMap<Scalar> Y(cache.acts[l + 1].data() + col0 * layer.output_size(), layer.output_size(), n);
    const Mat<Scalar>& Xm = input_act(cache, l);
    ConstMatMap<Scalar> X(Xm.data() + col0 * Xm.rows(), Xm.rows(), n);
    const int32_t* aux = layer.aux_per_sample() ? cache.aux[l].data() + col0 * layer.aux_per_sample() : nullptr;
    if (const auto* merge = dynamic_cast<const detail::MultiInput<Scalar>*>(&layer)) {
      at_layer(l, X, Y, aux, gY, static_cast<Scalar*>(nullptr));
      for (std::size_t i = 0; i < inputs_[l].size(); ++i) {
        const int v = inputs_[l][i];
        if (v == 0 || !needs_grad_[static_cast<std::size_t>(v - 1)]) continue;
        merge->vjp_operand(i, g, n, target(v), accumulate_[l][i]);
      }
      continue;
    }
    const int in = inputs_[l][0];
    if (in > 0 && fused_[static_cast<std::size_t>(in - 1)]) {
      const auto a = static_cast<std::size_t>(in - 1);
      const int w = inputs_[a][0];  // the activation's input: needs a cotangent (the activation has no parameters)
      const FusedPair<Scalar> f{dynamic_cast<const detail::ElementwiseDerivative<Scalar>&>(*layers_[a]),
                                input_act(cache, a), cache.acts[l + 1], cache.aux[l]};
      Scalar* gx = accumulate_[l][0] ? ws.sum.data() : target(w);
      vjp_fused(f, col0, n, g, gx, ws.scratch.data(), ws.scratch.data() + layer.output_size());
      if (accumulate_[l][0]) add_sum(w, layers_[a]->input_size());
      continue;
    }
    const bool wanted = in > 0 && needs_grad_[static_cast<std::size_t>(in - 1)];
    Scalar* gX = !wanted ? nullptr : accumulate_[l][0] ? ws.sum.data() : target(in);
    at_layer(l, X, Y, aux, gY, gX);
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
               layer.vjp(theta + offsets_[l], X, Y, aux, gY, gX, layer.num_params() ? gtheta + offsets_[l] : nullptr,
                         ws.scratch.data());
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
             if (gX) layer.vjp(theta + offsets_[l], X, Y, aux, gY, gX, nullptr, ws.scratch.data());
           });
}

template <typename Scalar>
void Network<Scalar>::squared_vjp(const Scalar* theta, const ForwardCache<Scalar>& cache, Index col0, Index n,
                                  ConstMatMap<Scalar> gZ, Scalar* gsq, Workspace<Scalar>& ws) const {
  backprop(cache, col0, n, gZ, ws,
           [&](std::size_t l, ConstMatMap<Scalar> X, ConstMatMap<Scalar> Y, const int32_t* aux, ConstMatMap<Scalar> gY,
               Scalar* gX) {
             const Layer<Scalar>& layer = *layers_[l];
             if (layer.num_params())
               layer.accumulate_squared_grads(theta + offsets_[l], X, gY, gsq + offsets_[l], ws.scratch.data());
             if (gX) layer.vjp(theta + offsets_[l], X, Y, aux, gY, gX, nullptr, ws.scratch.data());
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
template std::unique_ptr<Layer<float>> make_layer<float>(const LayerSpec&, const Shape&, const std::string&);
template std::unique_ptr<Layer<double>> make_layer<double>(const LayerSpec&, const Shape&, const std::string&);

}  // namespace natgrad
