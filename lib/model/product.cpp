// The element-wise product of two computed values, y = a ∘ b, broadcast as PyTorch broadcasts a sample's
// dimensions (aligned from the right, a dimension of size 1 or a missing one repeated): gates a * σ(b),
// squeeze-and-excitation's x * s with s of shape [C, 1, 1]. With the operands' tangents and cotangents:
//   R-op:      dy = da ∘ b + a ∘ db
//   backprop:  ga = Σ_broadcast gy ∘ b,  gb = Σ_broadcast gy ∘ a
// where Σ_broadcast sums the outputs that read one operand entry (in output order: fixed).
#include <algorithm>
#include <array>
#include <cstdint>
#include <vector>

#include "core/fail.h"
#include "model/gather.h"
#include "model/layers.h"

namespace natgrad {
namespace detail {
namespace {

template <typename Scalar>
class Product final : public MergeLayer<Scalar> {
 public:
  // source[i][o]: the entry of operand i that output o reads (empty: the operand has the output's shape).
  Product(const std::vector<Shape>& in, const Shape& out, std::array<std::vector<int32_t>, 2> source)
      : MergeLayer<Scalar>(in[0], out), size_{shape_size(in[0]), shape_size(in[1])}, source_(std::move(source)) {}
  LayerType type() const override { return LayerType::mul; }

  void forward_multi(const Scalar* const* X, const Scalar*, Index n, Scalar* Y) const override {
    const Index out = this->output_size();
    for (Index j = 0; j < n; ++j) {
      const Scalar* a = X[0] + j * size_[0];
      const Scalar* b = X[1] + j * size_[1];
      Scalar* y = Y + j * out;
      for (Index o = 0; o < out; ++o) y[o] = at(0, a, o) * at(1, b, o);
    }
  }
  void jvp_multi(const Scalar* const* X, const Scalar* const* dX, const Scalar*, Index n,
                 Scalar* dY) const override {
    const Index out = this->output_size();
    for (Index j = 0; j < n; ++j) {
      Scalar* y = dY + j * out;
      std::fill(y, y + out, Scalar(0));
      for (std::size_t i = 0; i < 2; ++i) {
        if (!dX[i]) continue;
        const Scalar* d = dX[i] + j * size_[i];
        const Scalar* other = X[1 - i] + j * size_[1 - i];
        for (Index o = 0; o < out; ++o) y[o] += at(i, d, o) * at(1 - i, other, o);
      }
    }
  }
  void vjp_operand(std::size_t i, const Scalar* const* X, const Scalar* gY, Index n, Scalar* gX,
                   bool accumulate) const override {
    const Index out = this->output_size();
    for (Index j = 0; j < n; ++j) {
      const Scalar* g = gY + j * out;
      const Scalar* other = X[1 - i] + j * size_[1 - i];
      Scalar* gx = gX + j * size_[i];
      if (source_[i].empty()) {
        if (accumulate)
          for (Index o = 0; o < out; ++o) gx[o] += g[o] * at(1 - i, other, o);
        else
          for (Index o = 0; o < out; ++o) gx[o] = g[o] * at(1 - i, other, o);
        continue;
      }
      if (!accumulate) std::fill(gx, gx + size_[i], Scalar(0));
      for (Index o = 0; o < out; ++o) gx[source_[i][static_cast<std::size_t>(o)]] += g[o] * at(1 - i, other, o);
    }
  }

 private:
  Scalar at(std::size_t i, const Scalar* x, Index o) const {
    return source_[i].empty() ? x[o] : x[source_[i][static_cast<std::size_t>(o)]];
  }

  std::array<Index, 2> size_;
  std::array<std::vector<int32_t>, 2> source_;
};

}  // namespace

template <typename Scalar>
std::unique_ptr<Layer<Scalar>> make_mul(const std::vector<Shape>& in, const std::string& where) {
  if (in.size() != 2) fail(where, "mul multiplies two values, given " + std::to_string(in.size()));
  const std::size_t r = std::max(in[0].size(), in[1].size());
  // Right-aligned, with missing leading dimensions of size 1.
  auto padded = [r](const Shape& s) {
    Shape p(r - s.size(), 1);
    p.insert(p.end(), s.begin(), s.end());
    return p;
  };
  const Shape a = padded(in[0]), b = padded(in[1]);
  Shape out(r);
  double total = 1;
  for (std::size_t k = 0; k < r; ++k) {
    if (a[k] != b[k] && a[k] != 1 && b[k] != 1)
      fail(where, "mul: shapes " + shape_to_string(in[0]) + " and " + shape_to_string(in[1]) +
                      " do not broadcast (dimension " + std::to_string(k + 1) + " of the sample: " +
                      std::to_string(a[k]) + " vs " + std::to_string(b[k]) + ")");
    out[k] = std::max(a[k], b[k]);
    total *= double(out[k]);
  }
  if (total >= 2147483647.0) fail(where, "mul: an output of more than 2^31 values per sample");
  std::array<std::vector<int32_t>, 2> source;
  const std::array<Shape, 2> ops{a, b};
  for (std::size_t i = 0; i < 2; ++i) {
    if (ops[i] == out) continue;
    const std::vector<Index> stride = strides_of(ops[i]);
    source[i].resize(static_cast<std::size_t>(total));
    for_each_index(out, [&](Index o, const std::vector<Index>& idx) {
      Index s = 0;
      for (std::size_t k = 0; k < r; ++k)
        if (ops[i][k] != 1) s += idx[k] * stride[k];
      source[i][static_cast<std::size_t>(o)] = static_cast<int32_t>(s);
    });
  }
  return std::make_unique<Product<Scalar>>(in, out, std::move(source));
}

template std::unique_ptr<Layer<float>> make_mul<float>(const std::vector<Shape>&, const std::string&);
template std::unique_ptr<Layer<double>> make_mul<double>(const std::vector<Shape>&, const std::string&);

}  // namespace detail
}  // namespace natgrad
