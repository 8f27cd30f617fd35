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
    {LayerType::maxpool2d, "maxpool2d"},   {LayerType::avgpool2d, "avgpool2d"},
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

}  // namespace natgrad
