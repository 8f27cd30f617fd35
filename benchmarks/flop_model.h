// The GEMM flop counts of a gradient and of a Fisher-vector product, per sample, for the benchmarks'
// GFLOP/s counters (natgrad_bench.cpp states the counting rules).
#pragma once

#include <natgrad/model/network.h>

namespace natgrad {
namespace bench {

// 2·(m·k) flops per sample for each linear/conv GEMM of the three kinds: forward (W x), weight (g xᵀ), input (Wᵀ g).
struct FlopModel {
  double forward = 0, weight = 0, input = 0, first_input = 0, attention = 0;  // attention: T² E per sample
};
inline FlopModel flops_per_sample(const Network<float>& m) {
  FlopModel f;
  bool first = true;
  for (std::size_t l = 0; l < m.num_layers(); ++l) {
    const Layer<float>& layer = m.layer(l);
    if (layer.type() == LayerType::attention) {
      const double T = double(layer.input_shape()[0]), E = double(layer.output_shape()[1]);
      f.attention += 2 * T * T * E;
      continue;
    }
    if (layer.type() != LayerType::linear && layer.type() != LayerType::conv2d && layer.type() != LayerType::conv1d)
      continue;
    const double macs = layer.macs_per_sample();
    f.forward += 2 * macs;
    f.weight += 2 * macs;
    if (first) f.first_input = 2 * macs;
    else f.input += 2 * macs;
    first = false;
  }
  return f;
}
inline double gradient_flops(const FlopModel& f) { return f.forward + f.weight + f.input + 6 * f.attention; }
inline double fvp_flops(const FlopModel& f) { return (f.weight + f.input) * 2 + 8 * f.attention; }

}  // namespace bench
}  // namespace natgrad
