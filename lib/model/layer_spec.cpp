#include <natgrad/model/layer_spec.h>

#include <stdexcept>
#include "core/fail.h"

namespace natgrad {

namespace {
struct TypeName {
  LayerType type;
  const char* name;
};
constexpr TypeName kTypeNames[] = {
    {LayerType::linear, "linear"},         {LayerType::conv2d, "conv2d"},         {LayerType::relu, "relu"},
    {LayerType::tanh, "tanh"},             {LayerType::sigmoid, "sigmoid"},       {LayerType::gelu, "gelu"},
    {LayerType::softplus, "softplus"},     {LayerType::leaky_relu, "leaky_relu"}, {LayerType::flatten, "flatten"},
    {LayerType::maxpool2d, "maxpool2d"},   {LayerType::avgpool2d, "avgpool2d"},   {LayerType::silu, "silu"},
    {LayerType::identity, "identity"},     {LayerType::dropout, "dropout"},
    {LayerType::global_avgpool, "global_avgpool"},                                {LayerType::layer_norm, "layer_norm"},
    {LayerType::batch_norm, "batch_norm"}, {LayerType::embedding, "embedding"},   {LayerType::add, "add"},
    {LayerType::cat, "cat"},               {LayerType::multihead_attention, "multihead_attention"},
    {LayerType::attention, "attention"},   {LayerType::elu, "elu"},               {LayerType::mish, "mish"},
    {LayerType::scalar_affine, "scalar_affine"},                                  {LayerType::reshape, "reshape"},
    {LayerType::permute, "permute"},       {LayerType::mean, "mean"},             {LayerType::sum, "sum"},
    {LayerType::mul, "mul"},               {LayerType::upsample, "upsample"},
    {LayerType::group_norm, "group_norm"},
    {LayerType::conv1d, "conv1d"},
};
}  // namespace

const char* to_string(LayerType type) {
  for (const auto& t : kTypeNames)
    if (t.type == type) return t.name;
  return "unknown";
}

LayerType layer_type_from_string(const std::string& name) {
  for (const auto& t : kTypeNames)
    if (name == t.name) return t.type;
  std::string known;
  for (const auto& t : kTypeNames) known += std::string(known.empty() ? "" : ", ") + t.name;
  detail::fail("unknown layer type \"" + name + "\" (known: " + known + ")");
}

LayerSpec LayerSpec::linear(Index in, Index out, bool bias) {
  LayerSpec s;
  s.type = LayerType::linear;
  s.in_features = in;
  s.out_features = out;
  s.bias = bias;
  return s;
}

LayerSpec LayerSpec::conv2d(Index in_channels, Index out_channels, Index kernel, Index stride, Index padding,
                            bool bias) {
  LayerSpec s;
  s.type = LayerType::conv2d;
  s.in_channels = in_channels;
  s.out_channels = out_channels;
  s.kernel_h = s.kernel_w = kernel;
  s.stride_h = s.stride_w = stride;
  s.padding_h = s.padding_w = padding;
  s.bias = bias;
  return s;
}

LayerSpec LayerSpec::conv1d(Index in_channels, Index out_channels, Index kernel, Index stride, Index padding,
                            bool bias) {
  LayerSpec s = conv2d(in_channels, out_channels, kernel, stride, padding, bias);
  s.type = LayerType::conv1d;
  s.kernel_h = s.stride_h = 1;
  s.padding_h = 0;
  return s;
}

LayerSpec LayerSpec::activation(LayerType type) {
  LayerSpec s;
  s.type = type;
  return s;
}

LayerSpec LayerSpec::leaky_relu(double negative_slope) {
  LayerSpec s;
  s.type = LayerType::leaky_relu;
  s.negative_slope = negative_slope;
  return s;
}

LayerSpec LayerSpec::flatten() { return activation(LayerType::flatten); }

LayerSpec LayerSpec::maxpool2d(Index kernel, Index stride) {
  LayerSpec s;
  s.type = LayerType::maxpool2d;
  s.kernel_h = s.kernel_w = kernel;
  s.stride_h = s.stride_w = stride;
  return s;
}

LayerSpec LayerSpec::avgpool2d(Index kernel, Index stride) {
  LayerSpec s = maxpool2d(kernel, stride);
  s.type = LayerType::avgpool2d;
  return s;
}

LayerSpec LayerSpec::layer_norm(const Shape& normalized_shape, double eps, bool affine) {
  LayerSpec s = activation(LayerType::layer_norm);
  s.normalized_shape = normalized_shape;
  s.eps = eps;
  s.affine = affine;
  return s;
}

LayerSpec LayerSpec::batch_norm(Index num_features, double eps, bool affine) {
  LayerSpec s = activation(LayerType::batch_norm);
  s.num_features = num_features;
  s.eps = eps;
  s.affine = affine;
  return s;
}

LayerSpec LayerSpec::group_norm(Index num_groups, Index num_channels, double eps, bool affine) {
  LayerSpec s = activation(LayerType::group_norm);
  s.num_groups = num_groups;
  s.num_channels = num_channels;
  s.eps = eps;
  s.affine = affine;
  return s;
}

LayerSpec LayerSpec::embedding(Index num_embeddings, Index embedding_dim) {
  LayerSpec s = activation(LayerType::embedding);
  s.num_embeddings = num_embeddings;
  s.embedding_dim = embedding_dim;
  return s;
}

LayerSpec LayerSpec::global_avgpool(bool keepdim) {
  LayerSpec s = activation(LayerType::global_avgpool);
  s.keepdim = keepdim;
  return s;
}

LayerSpec LayerSpec::add(std::vector<std::string> inputs) {
  LayerSpec s = activation(LayerType::add);
  s.inputs = std::move(inputs);
  return s;
}

LayerSpec LayerSpec::cat(std::vector<std::string> inputs) {
  LayerSpec s = activation(LayerType::cat);
  s.inputs = std::move(inputs);
  return s;
}

LayerSpec LayerSpec::mul(std::vector<std::string> inputs) {
  LayerSpec s = activation(LayerType::mul);
  s.inputs = std::move(inputs);
  return s;
}

LayerSpec LayerSpec::elu(double alpha) {
  LayerSpec s = activation(LayerType::elu);
  s.alpha = alpha;
  return s;
}

LayerSpec LayerSpec::scalar_affine(double scale, double shift) {
  LayerSpec s = activation(LayerType::scalar_affine);
  s.scale = scale;
  s.shift = shift;
  return s;
}

LayerSpec LayerSpec::reshape(const Shape& sample_shape) {
  LayerSpec s = activation(LayerType::reshape);
  s.shape = sample_shape;
  return s;
}

LayerSpec LayerSpec::permute(std::vector<Index> dims) {
  LayerSpec s = activation(LayerType::permute);
  s.dims = std::move(dims);
  return s;
}

LayerSpec LayerSpec::mean(std::vector<Index> dims, bool keepdim, bool sum) {
  LayerSpec s = activation(sum ? LayerType::sum : LayerType::mean);
  s.dims = std::move(dims);
  s.keepdim = keepdim;
  return s;
}

LayerSpec LayerSpec::upsample(Shape scale_factor) {
  LayerSpec s = activation(LayerType::upsample);
  s.scale_factor = std::move(scale_factor);
  return s;
}

LayerSpec LayerSpec::multihead_attention(Index embed_dim, Index num_heads, std::string attn_mask, bool bias) {
  LayerSpec s = activation(LayerType::multihead_attention);
  s.embed_dim = embed_dim;
  s.num_heads = num_heads;
  s.attn_mask = std::move(attn_mask);
  s.bias = bias;
  return s;
}

LayerSpec& LayerSpec::node(std::string node_id, std::vector<std::string> node_inputs) {
  id = std::move(node_id);
  if (!node_inputs.empty()) inputs = std::move(node_inputs);
  return *this;
}

std::string node_id(const ModelSpec& spec, std::size_t i) {
  const LayerSpec& s = spec.layers[i];
  return !s.id.empty() ? s.id : !s.name.empty() ? s.name : std::to_string(i);
}

std::string module_name(const ModelSpec& spec, std::size_t i) {
  return spec.layers[i].name.empty() ? std::to_string(i) : spec.layers[i].name;
}

}  // namespace natgrad
