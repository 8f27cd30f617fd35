/// \file layer_spec.h
/// \brief The description of a network: PyTorch `nn.Sequential` modules with their constructor arguments.
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

enum class LayerType { linear, conv2d, relu, tanh, sigmoid, gelu, softplus, leaky_relu, flatten, maxpool2d, avgpool2d };

/// PyTorch's module name for the type ("linear", "conv2d", ...).
const char* to_string(LayerType type);
/// Parses a module name; throws std::invalid_argument naming the unknown type.
LayerType layer_type_from_string(const std::string& name);

/// One module. Only the fields of its type are read; the others keep their defaults.
struct LayerSpec {
  LayerType type = LayerType::linear;
  /// The module's name in its nn.Sequential (`state_dict` prefix: "fc1" for fc1.weight); empty means its
  /// index, as in a Sequential built from a list.
  std::string name;
  // linear
  Index in_features = 0;
  Index out_features = 0;
  // linear and conv2d
  bool bias = true;
  // conv2d
  Index in_channels = 0;
  Index out_channels = 0;
  // conv2d and pooling: kernel, stride and padding per spatial dimension (height, width)
  Index kernel_h = 0, kernel_w = 0;
  Index stride_h = 1, stride_w = 1;   ///< pooling: 0 means "equal to the kernel size" (PyTorch's default)
  Index padding_h = 0, padding_w = 0;
  // leaky_relu
  double negative_slope = 0.01;

  static LayerSpec linear(Index in, Index out, bool bias = true);
  static LayerSpec conv2d(Index in_channels, Index out_channels, Index kernel, Index stride = 1, Index padding = 0,
                          bool bias = true);
  static LayerSpec activation(LayerType type);
  static LayerSpec leaky_relu(double negative_slope = 0.01);
  static LayerSpec flatten();
  static LayerSpec maxpool2d(Index kernel, Index stride = 0);
  static LayerSpec avgpool2d(Index kernel, Index stride = 0);
};

/// A sequential network: the shape of one input sample (NCHW without N) and its modules in order.
struct ModelSpec {
  Shape input_shape;
  std::vector<LayerSpec> layers;
};

}  // namespace natgrad
