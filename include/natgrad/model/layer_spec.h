/// \file layer_spec.h
/// \brief The description of a network: a graph of PyTorch modules and functions with their arguments.
///
/// A chain (an `nn.Sequential`) is the simplest graph: each layer takes the previous layer's output. A graph
/// names its inputs: a layer's `inputs` are the ids of the nodes it reads (`"input"` is the model input), and
/// the output is the node named by `ModelSpec::output` (by default the last layer).
///
/// \code
/// natgrad::ModelSpec spec;
/// spec.input_shape = {784};
/// spec.layers = {natgrad::LayerSpec::linear(784, 256), natgrad::LayerSpec::activation(natgrad::LayerType::tanh),
///                natgrad::LayerSpec::linear(256, 10)};
/// \endcode
#pragma once

#include <natgrad/core/types.h>

#include <string>
#include <vector>

namespace natgrad {

enum class LayerType {
  linear, conv2d, relu, tanh, sigmoid, gelu, softplus, leaky_relu, flatten, maxpool2d, avgpool2d,
  silu, identity, dropout, global_avgpool, layer_norm, batch_norm, embedding, add, cat,
  multihead_attention, attention, elu, mish, scalar_affine, reshape, permute, mean, sum, mul, upsample,
  group_norm, conv1d
};

/// The type's name in a model spec ("linear", "conv2d", "layer_norm", ...).
const char* to_string(LayerType type);
/// Parses a type name; throws std::invalid_argument naming the unknown type.
LayerType layer_type_from_string(const std::string& name);

/// The id of the model input in a layer's `inputs`.
inline const char* kModelInputId = "input";

/// One node. Only the fields of its type are read; the others keep their defaults.
struct LayerSpec {
  LayerType type = LayerType::linear;
  /// The module's path (`state_dict` prefix: "fc1" for fc1.weight, "layer1.0.conv1"); empty means the
  /// layer's index, as in an nn.Sequential built from a list.
  std::string name;
  /// The node's id, which other layers' `inputs` name; empty means `name`, or the index if that is empty too.
  std::string id;
  /// Ids of the nodes this one reads; empty means the previous layer (the model input for the first).
  std::vector<std::string> inputs;
  /// Where the node comes from in the PyTorch model, as tools/export_torch.py writes it ("conv1 (nn.Conv2d)
  /// at net.py:12", "F.relu at net.py:20"); shown by `natgrad info`, empty when the spec has none.
  std::string origin;
  // linear
  Index in_features = 0;
  Index out_features = 0;
  // linear and conv2d
  bool bias = true;
  // conv2d and conv1d (conv1d's kernel, stride and padding are the width's; its height fields are unused)
  Index in_channels = 0;
  Index out_channels = 0;
  Index groups = 1;                   ///< in_channels and out_channels are multiples (depthwise: in_channels)
  // conv2d and pooling: kernel, stride and padding per spatial dimension (height, width)
  Index kernel_h = 0, kernel_w = 0;
  Index stride_h = 1, stride_w = 1;   ///< pooling: 0 means "equal to the kernel size" (PyTorch's default)
  Index padding_h = 0, padding_w = 0;
  bool padding_same = false;          ///< conv2d, conv1d padding="same" (stride 1, odd kernels)
  // leaky_relu
  double negative_slope = 0.01;
  // gelu: PyTorch's approximate="tanh" form instead of the exact (erf) one
  bool tanh_approximation = false;
  // elu: α in x > 0 ? x : α (eˣ − 1)
  double alpha = 1.0;
  // scalar_affine: y = scale · x + shift (x * 0.5, x - 1.0, h / 2, -x, 2.0 - x)
  double scale = 1.0;
  double shift = 0.0;
  /// reshape: the sample's new shape (the batch not included; the same number of elements, row-major order
  /// kept, so the values do not move).
  Shape shape;
  /// permute: the order of the dimensions counting the batch as 0, which stays first (dims[0] == 0): output
  /// dimension k is input dimension dims[k]. mean and sum: the dimensions reduced, counting the batch as 0
  /// (never reduced), ascending.
  std::vector<Index> dims;
  /// upsample (nearest): the integer factor of each spatial dimension (the sample's dimensions after the
  /// first, the channels); one value applies to all of them.
  Shape scale_factor;
  // add: a parameter operand read in forward (get_attr), under its full state_dict name, broadcast over the
  // leading dimensions of the other operands
  std::string parameter;
  Shape parameter_shape;
  // cat: the dimension, counting the batch as 0 (only 1, the channel or feature dimension, is supported)
  Index dim = 1;
  // layer_norm and batch_norm
  double eps = 1e-5;
  bool affine = true;                 ///< layer_norm's elementwise_affine, batch_norm's affine
  Shape normalized_shape;             ///< layer_norm: the trailing dimensions normalized
  Index num_features = 0;             ///< batch_norm: channels
  bool training = false;              ///< batch_norm, dropout: a module in training mode (refused)
  // group_norm (eps and affine above): channel blocks of num_channels / num_groups normalized together
  Index num_groups = 0;
  Index num_channels = 0;             ///< the input's first dimension
  // embedding
  Index num_embeddings = 0;
  Index embedding_dim = 0;
  Index padding_idx = -1;             ///< -1: none
  // global_avgpool, mean and sum
  bool keepdim = false;               ///< keep the reduced dimensions with size 1 ([C, 1, 1] instead of [C])
  // multihead_attention: nn.MultiheadAttention(embed_dim, num_heads, bias, batch_first=True) called as
  // self-attention on [T, embed_dim]; the network runs it as three nodes: the input projection (a linear
  // layer to [T, 3 embed_dim]), `attention` (softmax(q kᵀ/√d + mask) v per head) and the output projection.
  Index embed_dim = 0;
  Index num_heads = 0;
  /// multihead_attention and attention: the full state_dict name of the attn_mask buffer, which must be
  /// causal ([T, T], −inf or True above the diagonal, 0 or False elsewhere); empty means no mask.
  std::string attn_mask;
  bool attn_mask_bool = false;        ///< the mask is boolean (True: not attended), else additive float
  /// linear: the full names of its weight and bias when they are not "<name>.weight" and "<name>.bias"
  /// (attention's input projection, "<name>.in_proj_weight"); empty means the usual names.
  std::vector<std::string> param_names;

  static LayerSpec linear(Index in, Index out, bool bias = true);
  static LayerSpec conv2d(Index in_channels, Index out_channels, Index kernel, Index stride = 1, Index padding = 0,
                          bool bias = true);
  /// nn.Conv1d on [in_channels, L].
  static LayerSpec conv1d(Index in_channels, Index out_channels, Index kernel, Index stride = 1, Index padding = 0,
                          bool bias = true);
  static LayerSpec activation(LayerType type);
  static LayerSpec leaky_relu(double negative_slope = 0.01);
  static LayerSpec flatten();
  static LayerSpec maxpool2d(Index kernel, Index stride = 0);
  static LayerSpec avgpool2d(Index kernel, Index stride = 0);
  static LayerSpec layer_norm(const Shape& normalized_shape, double eps = 1e-5, bool affine = true);
  static LayerSpec batch_norm(Index num_features, double eps = 1e-5, bool affine = true);
  static LayerSpec group_norm(Index num_groups, Index num_channels, double eps = 1e-5, bool affine = true);
  static LayerSpec embedding(Index num_embeddings, Index embedding_dim);
  static LayerSpec global_avgpool(bool keepdim = false);
  static LayerSpec add(std::vector<std::string> inputs);
  static LayerSpec cat(std::vector<std::string> inputs);
  /// The element-wise product of two values, broadcast as PyTorch broadcasts (a gate: a * sigmoid(b)).
  static LayerSpec mul(std::vector<std::string> inputs);
  static LayerSpec elu(double alpha = 1.0);
  static LayerSpec scalar_affine(double scale, double shift);
  static LayerSpec reshape(const Shape& sample_shape);
  /// `dims` counts the batch as 0 and starts with it.
  static LayerSpec permute(std::vector<Index> dims);
  /// mean (or, with `sum`, the sum) over `dims`, counting the batch as 0.
  static LayerSpec mean(std::vector<Index> dims, bool keepdim = false, bool sum = false);
  static LayerSpec upsample(Shape scale_factor);
  /// Causal self-attention reading mask buffer `attn_mask` (empty: no mask).
  static LayerSpec multihead_attention(Index embed_dim, Index num_heads, std::string attn_mask = "",
                                       bool bias = true);
  /// The same spec with its id and inputs set (for graphs built in code).
  LayerSpec& node(std::string node_id, std::vector<std::string> node_inputs = {});
};

/// A network: the shape of one input sample (NCHW without N, or [T] token indices) and its nodes.
struct ModelSpec {
  Shape input_shape;
  std::vector<LayerSpec> layers;
  /// The id of the output node; empty means the last layer.
  std::string output;
  /// The order of the parameter tensors in the flat vector (`model.parameters()` order, full names); empty
  /// means the layers' order.
  std::vector<std::string> parameter_order;
};

/// The node id of layer i of `spec` (its id, else its name, else its index).
std::string node_id(const ModelSpec& spec, std::size_t i);
/// The module path of layer i (its name, else its index).
std::string module_name(const ModelSpec& spec, std::size_t i);

}  // namespace natgrad
