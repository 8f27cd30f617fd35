// The benchmark models of docs/performance.md, shared by natgrad-bench and natgrad-plan.
#pragma once

#include <natgrad/model/layer_spec.h>

namespace natgrad {
namespace bench {

/// MLP 784 → `hidden` tanh layers of `width` → `classes` (784-1024-1024-10 by default).
inline ModelSpec mlp(Index classes = 10, Index width = 1024, int hidden = 2) {
  ModelSpec s;
  s.input_shape = {784};
  Index in = 784;
  for (int h = 0; h < hidden; ++h) {
    s.layers.push_back(LayerSpec::linear(in, width));
    s.layers.push_back(LayerSpec::activation(LayerType::tanh));
    in = width;
  }
  s.layers.push_back(LayerSpec::linear(in, classes));
  return s;
}

/// The Fashion-MNIST CNN: conv 1→32, relu, pool; conv 32→64, relu, pool; linear 3136→128, relu, →10.
inline ModelSpec cnn() {
  ModelSpec s;
  s.input_shape = {1, 28, 28};
  s.layers = {LayerSpec::conv2d(1, 32, 3, 1, 1), LayerSpec::activation(LayerType::relu), LayerSpec::maxpool2d(2),
              LayerSpec::conv2d(32, 64, 3, 1, 1), LayerSpec::activation(LayerType::relu), LayerSpec::maxpool2d(2),
              LayerSpec::flatten(), LayerSpec::linear(3136, 128), LayerSpec::activation(LayerType::relu),
              LayerSpec::linear(128, 10)};
  return s;
}

}  // namespace bench
}  // namespace natgrad
