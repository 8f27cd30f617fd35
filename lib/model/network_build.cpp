// Network's construction: the graph from a spec — ids and inputs, the topological order, the layers and
// their shapes, the parameter offsets in model.parameters() order, the fused activation + max-pool pairs —
// and the buffer plan the passes (network.cpp) follow.
#include <natgrad/model/network.h>

#include <algorithm>
#include <map>
#include <set>
#include <stdexcept>

#include "core/check.h"
#include "core/fail.h"
#include "model/layers.h"
#include "model/network_schedule.h"

namespace natgrad {

using detail::is_merge;

template <typename Scalar>
std::unique_ptr<Layer<Scalar>> make_layer(const LayerSpec& spec, const Shape& in, const std::string& where) {
  switch (spec.type) {
    case LayerType::linear:
      return detail::make_linear<Scalar>(spec, in, where);
    case LayerType::conv2d:
      return detail::make_conv2d<Scalar>(spec, in, where);
    case LayerType::conv1d:
      return detail::make_conv1d<Scalar>(spec, in, where);
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
    case LayerType::group_norm:
      return detail::make_group_norm<Scalar>(spec, in, where);
    case LayerType::embedding:
      return detail::make_embedding<Scalar>(spec, in, where);
    case LayerType::add:
    case LayerType::cat:
    case LayerType::mul:
      return detail::make_merge<Scalar>(spec, {in}, where);
    case LayerType::attention:
      return detail::make_attention<Scalar>(spec, in, where);
    case LayerType::reshape:
      return detail::make_reshape<Scalar>(spec, in, where);
    case LayerType::permute:
      return detail::make_permute<Scalar>(spec, in, where);
    case LayerType::mean:
    case LayerType::sum:
      return detail::make_reduction<Scalar>(spec, in, where);
    case LayerType::upsample:
      return detail::make_upsample<Scalar>(spec, in, where);
    case LayerType::multihead_attention:
      detail::fail(where + ": is expanded by the network into its projections and attention; build a Network");
    default:
      return detail::make_elementwise<Scalar>(spec, in, where);
  }
}

namespace {
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
Network<Scalar>::Network(const ModelSpec& given)
    : spec_(given), graph_(detail::expand_attention(given)), sched_(std::make_unique<Schedule>()) {
  using detail::fail;
  const ModelSpec& spec = graph_;
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
    if (s.type == LayerType::add && reads[i].size() + (s.parameter.empty() ? 0 : 1) < 2)
      fail(where_of(i) + ": needs at least two operands");
    if (s.type == LayerType::mul && reads[i].size() != 2)
      fail(where_of(i) + ": multiplies two operands, given " + std::to_string(reads[i].size()));
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
    Layer<Scalar>& layer = *layers_.back();
    // The capabilities, asked once.
    sched_->merge.push_back(layer.template as<detail::MultiInput<Scalar>>());
    const auto* saves = layer.template as<detail::SavesForward<Scalar>>();
    sched_->saves.push_back(saves && saves->saved_per_sample() > 0 ? saves : nullptr);
    sched_->packs.push_back(layer.template as<detail::PackedWeightProducts<Scalar>>());
    sched_->block.push_back(layer.template as<BlockGradient<Scalar>>());
    sched_->kronecker.push_back(layer.template as<KroneckerFactors<Scalar>>());
    sched_->squared.push_back(layer.template as<SquaredGradients<Scalar>>());
    sched_->tokens.push_back(layer.template as<TokenInput<Scalar>>());
    sched_->view.push_back(layer.template as<detail::ValueView>() != nullptr);
    sched_->buffers.push_back(layer.template as<Buffers<Scalar>>());
    sched_->uses_scratch.push_back(layer.scratch_size(1) > 0);
    sched_->max_operands = std::max(sched_->max_operands, in.size());
    shapes.push_back(layer.output_shape());
    max_width_ = std::max(max_width_, layer.output_size());
    const std::string module = natgrad::module_name(spec, i);
    const std::vector<ParamTensor> own_tensors = layer.param_tensors();
    if (!s.param_names.empty() && s.param_names.size() != own_tensors.size())
      fail(where + ": \"parameter_names\" names " + std::to_string(s.param_names.size()) + " tensors but the node has " +
           std::to_string(own_tensors.size()));
    // A node whose parameter_names are all another node's tensors shares them (tied weights); naming a
    // module twice without them is an error.
    std::size_t owner = l, tied = 0;
    for (std::size_t k = 0; k < own_tensors.size(); ++k) {
      const ParamTensor& t = own_tensors[k];
      const std::string name = s.type == LayerType::add    ? s.parameter
                               : !s.param_names.empty()    ? s.param_names[k]
                                                           : module + "." + t.name;
      const auto other = std::find_if(tensors.begin(), tensors.end(), [&](const Tensor& o) { return o.name == name; });
      if (other == tensors.end()) {
        tensors.push_back({name, t.shape, l});
        continue;
      }
      if (s.param_names.empty())
        fail(where + ": the parameter \"" + name + "\" is already used by node \"" + ids_[other->node] +
             "\" (to share a tensor, name it in \"parameter_names\")");
      if (other->shape != t.shape)
        fail(where + ": its " + t.name + " " + shape_to_string(t.shape) + " cannot be \"" + name + "\", which has shape " +
             shape_to_string(other->shape));
      if (tied > 0 && other->node != owner)
        fail(where + ": shares tensors of two nodes; natgrad ties a node's tensors to one other node's");
      owner = other->node;
      ++tied;
    }
    if (tied > 0) {
      std::size_t owned = 0;
      for (const Tensor& t : tensors) owned += t.node == owner ? 1 : 0;
      if (tied != own_tensors.size() || owned != own_tensors.size())
        fail(where + ": shares only some tensors with node \"" + ids_[owner] +
             "\"; natgrad ties all of a node's tensors to all of another's (a head without bias to an embedding)");
      for (std::size_t k = 0; k < own_tensors.size(); ++k)
        tied_names_.push_back({module + "." + own_tensors[k].name, s.param_names[k]});
    }
    tied_to_.push_back(owner);
    if (sched_->buffers.back()) {
      const std::vector<ParamTensor> buffers = sched_->buffers.back()->buffer_tensors();
      for (std::size_t b = 0; b < buffers.size(); ++b)  // an attention mask is a buffer of another module
        named_buffers_.push_back(
            {s.type == LayerType::attention ? s.attn_mask : module + "." + buffers[b].name, buffers[b].shape,
             l, b});
      for (const std::string& name : sched_->buffers.back()->ignored_buffers())
        ignored_buffers_.push_back(module + "." + name);
    }
    sched_->needs_grad.push_back(layer.num_params() > 0);
    for (int v : inputs_.back())
      if (v > 0 && sched_->needs_grad[static_cast<std::size_t>(v - 1)]) {
        if (sched_->tokens.back())
          fail(where + ": reads token indices, but its input \"" + ids_[static_cast<std::size_t>(v - 1)] +
               "\" depends on the parameters");
        sched_->needs_grad.back() = true;
      }
  }
  for (std::size_t a = 0; a < named_buffers_.size(); ++a)
    for (std::size_t b = 0; b < a; ++b)
      if (named_buffers_[a].name == named_buffers_[b].name &&
          !(layers_[named_buffers_[a].node]->type() == LayerType::attention &&
            layers_[named_buffers_[b].node]->type() == LayerType::attention))  // one mask for every block
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
  aliases_.assign(L, {});
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
  for (std::size_t l = 0; l < L; ++l)  // a tied node reads and writes its owner's slice
    if (tied_to_[l] != l) {
      offsets_[l] = offsets_[tied_to_[l]];
      aliases_[tied_to_[l]].push_back(l);
    }

  // The fused activation + max-pool pairs.
  std::vector<int> readers(L + 1, 0);
  for (const auto& in : inputs_)
    for (int v : in) ++readers[static_cast<std::size_t>(v)];
  sched_->fused.assign(L, false);
  sched_->fused_act.assign(L, nullptr);
  for (std::size_t p = 0; p < L; ++p) {
    if (sched_->merge[p] || inputs_[p][0] == 0) continue;
    const auto a = static_cast<std::size_t>(inputs_[p][0] - 1);
    const auto* act = dynamic_cast<const detail::ElementwiseDerivative<Scalar>*>(layers_[a].get());
    const auto* pool = dynamic_cast<const detail::SelectionJacobian*>(layers_[p].get());
    if (act && pool && pool->is_selection() && sched_->needs_grad[a] && readers[a + 1] == 1) {
      sched_->fused[a] = true;
      sched_->fused_act[p] = act;
    }
  }

  // The buffer plan. R-op: node l's tangent takes the lowest free slot; a slot is freed after the last node
  // that reads its value (a fused pool reads its activation's input). A view takes no slot: its tangent is
  // its source's (the value its chain of views starts from), so reading a view reads the source, and the
  // output's source is never freed.
  auto reads_of = [&](std::size_t l) {
    return sched_->fused_act[l] ? inputs_[static_cast<std::size_t>(inputs_[l][0] - 1)] : inputs_[l];
  };
  std::vector<int> source(L + 1);
  for (std::size_t v = 0; v <= L; ++v)
    source[v] = v > 0 && sched_->view[v - 1] ? source[static_cast<std::size_t>(inputs_[v - 1][0])] : int(v);
  sched_->tangent_slot.assign(L, -1);
  sched_->cotangent_slot.assign(L + 1, -1);
  sched_->accumulate.assign(L, {});
  sched_->shares_cotangent.assign(L, false);
  {
    std::vector<std::size_t> last_read(L + 1, 0);
    for (std::size_t l = 0; l < L; ++l)
      if (sched_->needs_grad[l] && !sched_->fused[l] && !sched_->view[l])
        for (int v : reads_of(l)) last_read[static_cast<std::size_t>(source[static_cast<std::size_t>(v)])] = l;
    last_read[static_cast<std::size_t>(source[L])] = L;
    std::vector<bool> used;
    for (std::size_t l = 0; l < L; ++l) {
      if (!sched_->needs_grad[l] || sched_->fused[l] || sched_->view[l]) continue;
      sched_->tangent_slot[l] = take_slot(used);
      for (int v : reads_of(l)) {
        const auto s = static_cast<std::size_t>(source[static_cast<std::size_t>(v)]);
        if (s > 0 && last_read[s] == l && sched_->tangent_slot[s - 1] >= 0)
          used[static_cast<std::size_t>(sched_->tangent_slot[s - 1])] = false;
      }
    }
    sched_->num_slots = static_cast<int>(used.size());
  }
  // Backprop, in reverse: the first contribution to a value's cotangent takes the lowest free slot, later
  // ones are added; the slot is freed once the node that produced the value has used it.
  {
    std::vector<bool> used;
    for (std::size_t l = L; l-- > 0;) {
      if (!sched_->needs_grad[l] || sched_->fused[l]) continue;
      const std::vector<int> r = reads_of(l);
      for (int v : r) {
        const bool wanted = v > 0 && sched_->needs_grad[static_cast<std::size_t>(v - 1)];
        if (!wanted) {
          sched_->accumulate[l].push_back(false);
          continue;
        }
        int& slot = sched_->cotangent_slot[static_cast<std::size_t>(v)];
        sched_->accumulate[l].push_back(slot >= 0);
        if (slot >= 0) {
          sched_->has_fan_out = true;
        } else if (sched_->view[l] && l + 1 < L && sched_->cotangent_slot[l + 1] >= 0) {
          slot = sched_->cotangent_slot[l + 1];  // the view's input takes over its output's cotangent
          sched_->shares_cotangent[l] = true;
        } else {
          slot = take_slot(used);
        }
      }
      if (sched_->cotangent_slot[l + 1] >= 0 && !sched_->shares_cotangent[l])
        used[static_cast<std::size_t>(sched_->cotangent_slot[l + 1])] = false;
    }
    sched_->num_slots = std::max({1, sched_->num_slots, static_cast<int>(used.size())});
  }
  // Each slot as wide as the widest value placed in it (slot 0 at least the output: a constant output's
  // zero tangent is written there).
  auto width_of = [&](int v) { return v == 0 ? shape_size(spec.input_shape) : layers_[static_cast<std::size_t>(v - 1)]->output_size(); };
  sched_->slot_width.assign(static_cast<std::size_t>(sched_->num_slots), 0);
  sched_->slot_width[0] = L > 0 ? layers_.back()->output_size() : 0;
  for (std::size_t l = 0; l < L; ++l) {
    if (sched_->tangent_slot[l] >= 0) {
      Index& w = sched_->slot_width[static_cast<std::size_t>(sched_->tangent_slot[l])];
      w = std::max(w, layers_[l]->output_size());
    }
    const std::vector<int> r = reads_of(l);
    for (std::size_t i = 0; i < sched_->accumulate[l].size(); ++i)
      if (sched_->accumulate[l][i]) sched_->sum_width = std::max(sched_->sum_width, width_of(r[i]));
  }
  for (std::size_t v = 0; v <= L; ++v)
    if (sched_->cotangent_slot[v] >= 0) {
      Index& w = sched_->slot_width[static_cast<std::size_t>(sched_->cotangent_slot[v])];
      w = std::max(w, width_of(static_cast<int>(v)));
    }
}

template <typename Scalar>
void Network<Scalar>::set_buffer(std::size_t k, const Scalar* values) {
  NATGRAD_CHECK(k < named_buffers_.size());
  const NamedBuffer& b = named_buffers_[k];
  try {
    sched_->buffers[b.node]->set_buffer(b.index, values);
  } catch (const std::invalid_argument& e) {
    detail::fail(b.name + ": " + e.what());
  }
}

template <typename Scalar>
std::vector<Scalar> Network<Scalar>::buffer(std::size_t k) const {
  NATGRAD_CHECK(k < named_buffers_.size());
  return sched_->buffers[named_buffers_[k].node]->buffer(named_buffers_[k].index);
}

template Network<float>::Network(const ModelSpec&);
template Network<double>::Network(const ModelSpec&);
template void Network<float>::set_buffer(std::size_t, const float*);
template void Network<double>::set_buffer(std::size_t, const double*);
template std::vector<float> Network<float>::buffer(std::size_t) const;
template std::vector<double> Network<double>::buffer(std::size_t) const;
template std::unique_ptr<Layer<float>> make_layer<float>(const LayerSpec&, const Shape&, const std::string&);
template std::unique_ptr<Layer<double>> make_layer<double>(const LayerSpec&, const Shape&, const std::string&);

}  // namespace natgrad
