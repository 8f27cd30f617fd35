// Reductions over a sample's dimensions: mean and sum (a token mean x.mean(1), x.sum(dim=1)). Output entry
// dest[i] receives scale · x[i] for every input entry i (scale = 1 for sum, 1 / the reduced count for mean):
// forward and R-op add in input order (fixed, so the sums do not depend on the thread count), backprop
// copies gx[i] = scale · gy[dest[i]].
#include <algorithm>
#include <cstdint>
#include <utility>
#include <vector>

#include "core/fail.h"
#include "model/gather.h"
#include "model/layers.h"

namespace natgrad {
namespace detail {
namespace {

template <typename Scalar>
class Reduce final : public Layer<Scalar> {
 public:
  Reduce(LayerType type, const Shape& in, const Shape& out, std::vector<int32_t> dest, Scalar scale)
      : Layer<Scalar>(in, out), type_(type), dest_(std::move(dest)), scale_(scale) {}
  LayerType type() const override { return type_; }

  void forward(const Scalar*, ConstMatMap<Scalar> X, MatMap<Scalar> Y, int32_t*) const override {
    reduce(X.data(), Y.data(), X.cols());
  }
  void jvp(const Scalar*, const Scalar*, ConstMatMap<Scalar> X, ConstMatMap<Scalar>, const int32_t*,
           const Scalar* dX, MatMap<Scalar> dY, Scalar*) const override {
    if (dX)
      reduce(dX, dY.data(), X.cols());
    else
      dY.setZero();
  }
  void vjp(const Scalar*, ConstMatMap<Scalar> X, ConstMatMap<Scalar>, const int32_t*, ConstMatMap<Scalar> gY,
           Scalar* gX, Scalar*, Scalar*) const override {
    if (!gX) return;
    const Index in = this->input_size(), out = this->output_size();
    for (Index n = 0; n < X.cols(); ++n) {
      const Scalar* gy = gY.data() + n * out;
      Scalar* g = gX + n * in;
      for (Index i = 0; i < in; ++i) g[i] = scale_ * gy[dest_[static_cast<std::size_t>(i)]];
    }
  }

 private:
  void reduce(const Scalar* x, Scalar* y, Index cols) const {
    const Index in = this->input_size(), out = this->output_size();
    for (Index n = 0; n < cols; ++n) {
      Scalar* yn = y + n * out;
      const Scalar* xn = x + n * in;
      std::fill(yn, yn + out, Scalar(0));
      for (Index i = 0; i < in; ++i) yn[dest_[static_cast<std::size_t>(i)]] += xn[i];
      if (type_ == LayerType::mean)
        for (Index o = 0; o < out; ++o) yn[o] *= scale_;
    }
  }

  LayerType type_;
  std::vector<int32_t> dest_;
  Scalar scale_;
};

}  // namespace

template <typename Scalar>
std::unique_ptr<Layer<Scalar>> make_reduction(const LayerSpec& spec, const Shape& in, const std::string& where) {
  const char* op = to_string(spec.type);
  std::vector<Index> dims = spec.dims;
  std::sort(dims.begin(), dims.end());
  if (dims.empty() || std::adjacent_find(dims.begin(), dims.end()) != dims.end())
    fail(where, std::string(op) + ": \"dim\" must name distinct dimensions");
  if (dims.front() == 0)
    fail(where, std::string(op) + " over the batch dimension (0): natgrad keeps one sample per column");
  if (dims.back() > Index(in.size()))
    fail(where, std::string(op) + ": dimension " + std::to_string(dims.back()) + " does not exist in [N, " +
                    shape_to_string(in).substr(1));
  if (double(shape_size(in)) >= 2147483647.0) fail(where, std::string(op) + ": a sample of more than 2^31 values");
  std::vector<bool> reduced(in.size(), false);
  for (Index d : dims) reduced[static_cast<std::size_t>(d - 1)] = true;
  Shape out;
  double count = 1;
  for (std::size_t k = 0; k < in.size(); ++k) {
    if (reduced[k]) count *= double(in[k]);
    if (!reduced[k] || spec.keepdim) out.push_back(reduced[k] ? 1 : in[k]);
  }
  if (out.empty()) out = {1};  // every dimension of a sample: one value per sample
  Shape kept;  // the output's shape without the reduced dimensions
  for (std::size_t k = 0; k < in.size(); ++k)
    if (!reduced[k]) kept.push_back(in[k]);
  const std::vector<Index> kept_stride = strides_of(kept);
  std::vector<int32_t> dest(static_cast<std::size_t>(shape_size(in)));
  for_each_index(in, [&](Index i, const std::vector<Index>& idx) {
    Index o = 0;
    for (std::size_t k = 0, j = 0; k < in.size(); ++k)
      if (!reduced[k]) o += idx[k] * kept_stride[j++];
    dest[static_cast<std::size_t>(i)] = static_cast<int32_t>(o);
  });
  const Scalar scale = spec.type == LayerType::mean ? Scalar(1 / count) : Scalar(1);
  return std::make_unique<Reduce<Scalar>>(spec.type, in, out, std::move(dest), scale);
}

template std::unique_ptr<Layer<float>> make_reduction<float>(const LayerSpec&, const Shape&, const std::string&);
template std::unique_ptr<Layer<double>> make_reduction<double>(const LayerSpec&, const Shape&, const std::string&);

}  // namespace detail
}  // namespace natgrad
