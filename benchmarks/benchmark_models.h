// The benchmark models of docs/performance.md, shared by natgrad-bench and natgrad-plan.
#pragma once

#include <natgrad/model/layer_spec.h>

#include <string>
#include <vector>

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

/// The Fashion-MNIST ResNet: stem conv 1→32 3×3 pad 1 + batch norm + relu; four basic blocks (3×3 conv, batch
/// norm, relu, 3×3 conv, batch norm, add the shortcut, relu; convolutions without bias, as torchvision's) of
/// widths 32, 32, 64 (stride 2, shortcut 1×1 conv + batch norm), 64; global average pool; linear 64→10.
inline ModelSpec resnet() {
  ModelSpec s;
  s.input_shape = {1, 28, 28};
  auto node = [&](LayerSpec l, const std::string& id, std::vector<std::string> inputs) {
    l.node(id, std::move(inputs));
    l.name = id;
    s.layers.push_back(l);
  };
  node(LayerSpec::conv2d(1, 32, 3, 1, 1, false), "stem", {"input"});
  node(LayerSpec::batch_norm(32), "stem_bn", {"stem"});
  node(LayerSpec::activation(LayerType::relu), "stem_relu", {"stem_bn"});
  std::string x = "stem_relu";
  Index width = 32;
  const struct {
    Index out, stride;
  } blocks[] = {{32, 1}, {32, 1}, {64, 2}, {64, 1}};
  for (int b = 0; b < 4; ++b) {
    const std::string p = "block" + std::to_string(b) + ".";
    const Index out = blocks[b].out, stride = blocks[b].stride;
    node(LayerSpec::conv2d(width, out, 3, stride, 1, false), p + "conv1", {x});
    node(LayerSpec::batch_norm(out), p + "bn1", {p + "conv1"});
    node(LayerSpec::activation(LayerType::relu), p + "relu1", {p + "bn1"});
    node(LayerSpec::conv2d(out, out, 3, 1, 1, false), p + "conv2", {p + "relu1"});
    node(LayerSpec::batch_norm(out), p + "bn2", {p + "conv2"});
    std::string shortcut = x;
    if (stride != 1 || out != width) {
      node(LayerSpec::conv2d(width, out, 1, stride, 0, false), p + "shortcut.0", {x});
      node(LayerSpec::batch_norm(out), p + "shortcut.1", {p + "shortcut.0"});
      shortcut = p + "shortcut.1";
    }
    node(LayerSpec::add({p + "bn2", shortcut}), p + "add", {});
    node(LayerSpec::activation(LayerType::relu), p + "relu2", {p + "add"});
    x = p + "relu2";
    width = out;
  }
  node(LayerSpec::global_avgpool(), "pool", {x});
  node(LayerSpec::linear(64, 10), "fc", {"pool"});
  return s;
}

}  // namespace bench
}  // namespace natgrad
