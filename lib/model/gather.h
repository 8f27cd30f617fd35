// Private: a layer whose output entry o of a sample is input entry source[o] — permute (a bijection) and
// nearest-neighbour upsampling (each input read by several outputs). Forward and R-op gather; backprop
// scatters, adding in output order (a fixed order, so the sums do not depend on the thread count), or
// assigns when the map is a bijection.
#pragma once

#include <algorithm>
#include <cstdint>
#include <utility>
#include <vector>

#include "model/layers.h"

namespace natgrad {
namespace detail {

template <typename Scalar>
class Gather final : public Layer<Scalar> {
 public:
  /// source[o] < shape_size(in) for each of the shape_size(out) outputs; `bijection` when every input is read
  /// exactly once.
  Gather(LayerType type, const Shape& in, const Shape& out, std::vector<int32_t> source, bool bijection)
      : Layer<Scalar>(in, out), type_(type), source_(std::move(source)), bijection_(bijection) {}
  LayerType type() const override { return type_; }

  void forward(const Scalar*, ConstMatMap<Scalar> X, MatMap<Scalar> Y, int32_t*) const override {
    gather(X.data(), Y.data(), X.cols());
  }
  void jvp(const Scalar*, const Scalar*, ConstMatMap<Scalar> X, ConstMatMap<Scalar>, const int32_t*,
           const Scalar* dX, MatMap<Scalar> dY, Scalar*) const override {
    if (dX)
      gather(dX, dY.data(), X.cols());
    else
      dY.setZero();
  }
  void vjp(const Scalar*, ConstMatMap<Scalar> X, ConstMatMap<Scalar>, const int32_t*, ConstMatMap<Scalar> gY,
           Scalar* gX, Scalar*, Scalar*) const override {
    if (!gX) return;
    const Index in = this->input_size(), out = this->output_size();
    for (Index n = 0; n < X.cols(); ++n) {
      Scalar* g = gX + n * in;
      const Scalar* gy = gY.data() + n * out;
      if (bijection_) {
        for (Index o = 0; o < out; ++o) g[source_[o]] = gy[o];
      } else {
        std::fill(g, g + in, Scalar(0));
        for (Index o = 0; o < out; ++o) g[source_[o]] += gy[o];
      }
    }
  }

 private:
  void gather(const Scalar* x, Scalar* y, Index cols) const {
    const Index in = this->input_size(), out = this->output_size();
    for (Index n = 0; n < cols; ++n)
      for (Index o = 0; o < out; ++o) y[n * out + o] = x[n * in + source_[o]];
  }

  LayerType type_;
  std::vector<int32_t> source_;
  bool bijection_;
};

/// Row-major strides of a shape.
inline std::vector<Index> strides_of(const Shape& s) {
  std::vector<Index> st(s.size(), 1);
  for (std::size_t k = s.size(); k-- > 1;) st[k - 1] = st[k] * s[k];
  return st;
}

/// Calls f(flat index, multi-index) for every entry of `shape` in row-major order.
template <typename F>
void for_each_index(const Shape& shape, F f) {
  const Index total = shape_size(shape);
  std::vector<Index> idx(shape.size(), 0);
  for (Index flat = 0; flat < total; ++flat) {
    f(flat, idx);
    for (std::size_t k = shape.size(); k-- > 0;) {
      if (++idx[k] < shape[k]) break;
      idx[k] = 0;
    }
  }
}

}  // namespace detail
}  // namespace natgrad
