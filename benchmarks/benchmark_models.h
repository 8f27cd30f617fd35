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

/// A depthwise-separable CNN (MobileNet-style) on [32, 16, 16]: two blocks of depthwise 3×3 conv (groups =
/// channels) + relu + pointwise 1×1 conv + relu — 32 → 64 channels at 16×16, then 64 (stride 2) → 128 at
/// 8×8 — global average pool, linear 128 → 10.
inline ModelSpec separable_cnn() {
  auto depthwise = [](Index channels, Index stride) {
    LayerSpec s = LayerSpec::conv2d(channels, channels, 3, stride, 1);
    s.groups = channels;
    return s;
  };
  const LayerSpec relu = LayerSpec::activation(LayerType::relu);
  ModelSpec s;
  s.input_shape = {32, 16, 16};
  s.layers = {depthwise(32, 1), relu, LayerSpec::conv2d(32, 64, 1), relu,
              depthwise(64, 2), relu, LayerSpec::conv2d(64, 128, 1), relu,
              LayerSpec::global_avgpool(), LayerSpec::linear(128, 10)};
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

/// The small GPT: token embedding 4096 × 256 plus a learned 128 × 256 position table; 4 pre-norm blocks
/// (layer norm, 4-head causal self-attention, residual; layer norm, linear 256→1024, GELU, linear 1024→256,
/// residual); final layer norm; linear 256→4096 at every position. `width`, `blocks`, `heads`, `T` and
/// `vocab` scale it (GPT-2 small is gpt(50257, 768, 12, 12, 1024, true), its head tied to the embedding).
inline ModelSpec gpt(Index vocab = 4096, Index width = 256, int blocks = 4, Index heads = 4, Index T = 128,
                     bool tied = false) {
  ModelSpec s;
  s.input_shape = {T};
  auto node = [&](LayerSpec l, const std::string& id, std::vector<std::string> inputs) {
    l.node(id, std::move(inputs));
    l.name = id;
    s.layers.push_back(l);
  };
  node(LayerSpec::embedding(vocab, width), "tok", {"input"});
  LayerSpec pos = LayerSpec::add({"tok"});
  pos.parameter = "pos";
  pos.parameter_shape = {T, width};
  node(pos, "h0", {});
  std::string x = "h0";
  for (int b = 0; b < blocks; ++b) {
    const std::string p = "blocks." + std::to_string(b) + ".";
    node(LayerSpec::layer_norm({width}), p + "ln1", {x});
    node(LayerSpec::multihead_attention(width, heads, p + "mask"), p + "attn", {p + "ln1"});
    node(LayerSpec::add({x, p + "attn"}), p + "res1", {});
    node(LayerSpec::layer_norm({width}), p + "ln2", {p + "res1"});
    node(LayerSpec::linear(width, 4 * width), p + "fc", {p + "ln2"});
    node(LayerSpec::activation(LayerType::gelu), p + "act", {p + "fc"});
    node(LayerSpec::linear(4 * width, width), p + "proj", {p + "act"});
    node(LayerSpec::add({p + "res1", p + "proj"}), p + "res2", {});
    x = p + "res2";
  }
  node(LayerSpec::layer_norm({width}), "ln", {x});
  node(LayerSpec::linear(width, vocab, !tied), "head", {"ln"});
  if (tied) s.layers.back().param_names = {"tok.weight"};
  return s;
}

}  // namespace bench
}  // namespace natgrad
