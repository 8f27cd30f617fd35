// 2-D max and average pooling (no padding, floor mode, as PyTorch's defaults).
#include <algorithm>
#include <cmath>

#include "model/layers.h"

namespace natgrad {
namespace detail {
namespace {

template <typename Scalar>
class Pool2d final : public Layer<Scalar> {
 public:
  Pool2d(LayerType type, const LayerSpec& s, const Shape& in, const Shape& out)
      : Layer<Scalar>(in, out),
        type_(type),
        C_(in[0]),
        H_(in[1]),
        W_(in[2]),
        kh_(s.kernel_h),
        kw_(s.kernel_w),
        sh_(s.stride_h),
        sw_(s.stride_w),
        Ho_(out[1]),
        Wo_(out[2]) {}

  LayerType type() const override { return type_; }
  // Max-pooling keeps, per output, the input index of its maximum: J is then a selection.
  Index aux_per_sample() const override { return type_ == LayerType::maxpool2d ? this->output_size() : 0; }
  bool is_selection() const override { return type_ == LayerType::maxpool2d; }

  void forward(const Scalar*, ConstMatMap<Scalar> X, MatMap<Scalar> Y, int32_t* aux) const override {
    const Scalar inv_area = Scalar(1) / Scalar(kh_ * kw_);
    for (Index n = 0; n < X.cols(); ++n) {
      const Scalar* x = X.col(n).data();
      Scalar* y = Y.col(n).data();
      int32_t* arg = aux ? aux + n * this->output_size() : nullptr;
      for (Index c = 0; c < C_; ++c)
        for (Index oh = 0; oh < Ho_; ++oh)
          for (Index ow = 0; ow < Wo_; ++ow) {
            const Index o = (c * Ho_ + oh) * Wo_ + ow;
            if (type_ == LayerType::maxpool2d) {
              // The first maximum wins, and a NaN wins over numbers, as in PyTorch (max_pool2d propagates
              // NaN).
              Index best = (c * H_ + oh * sh_) * W_ + ow * sw_;
              Scalar m = x[best];
              for (Index i = 0; i < kh_; ++i) {
                const Scalar* row = x + (c * H_ + oh * sh_ + i) * W_ + ow * sw_;
                for (Index j = 0; j < kw_; ++j) {
                  const Scalar v = row[j];
                  if (v > m || (v != v && m == m)) {
                    m = v;
                    best = (c * H_ + oh * sh_ + i) * W_ + ow * sw_ + j;
                  }
                }
              }
              y[o] = m;
              arg[o] = static_cast<int32_t>(best);
            } else {
              Scalar s = 0;
              for (Index i = 0; i < kh_; ++i)
                for (Index j = 0; j < kw_; ++j) s += x[(c * H_ + oh * sh_ + i) * W_ + ow * sw_ + j];
              y[o] = s * inv_area;
            }
          }
    }
  }

  // Pooling is linear in its input given the argmax: dY = P dX with P a selection or averaging matrix.
  void jvp(const Scalar*, const Scalar*, ConstMatMap<Scalar> X, ConstMatMap<Scalar>, const int32_t* aux,
           const Scalar* dX, MatMap<Scalar> dY, Scalar*) const override {
    if (!dX) {
      dY.setZero();
      return;
    }
    const Scalar inv_area = Scalar(1) / Scalar(kh_ * kw_);
    const Index in_size = this->input_size(), out_size = this->output_size();
    for (Index n = 0; n < X.cols(); ++n) {
      const Scalar* dx = dX + n * in_size;
      Scalar* dy = dY.col(n).data();
      if (type_ == LayerType::maxpool2d) {
        const int32_t* arg = aux + n * out_size;
        for (Index o = 0; o < out_size; ++o) dy[o] = dx[arg[o]];
      } else {
        for (Index c = 0; c < C_; ++c)
          for (Index oh = 0; oh < Ho_; ++oh)
            for (Index ow = 0; ow < Wo_; ++ow) {
              Scalar s = 0;
              for (Index i = 0; i < kh_; ++i)
                for (Index j = 0; j < kw_; ++j) s += dx[(c * H_ + oh * sh_ + i) * W_ + ow * sw_ + j];
              dy[(c * Ho_ + oh) * Wo_ + ow] = s * inv_area;
            }
      }
    }
  }

  // gX = Pᵀ gY: scatter each output cotangent back to the input(s) it was taken from.
  void vjp(const Scalar*, ConstMatMap<Scalar> X, ConstMatMap<Scalar>, const int32_t* aux,
           ConstMatMap<Scalar> gY, Scalar* gX, Scalar*, Scalar*) const override {
    if (!gX) return;
    const Scalar inv_area = Scalar(1) / Scalar(kh_ * kw_);
    const Index in_size = this->input_size(), out_size = this->output_size();
    for (Index n = 0; n < X.cols(); ++n) {
      Scalar* gx = gX + n * in_size;
      const Scalar* gy = gY.col(n).data();
      std::fill(gx, gx + in_size, Scalar(0));
      if (type_ == LayerType::maxpool2d) {
        const int32_t* arg = aux + n * out_size;
        for (Index o = 0; o < out_size; ++o) gx[arg[o]] += gy[o];
      } else {
        for (Index c = 0; c < C_; ++c)
          for (Index oh = 0; oh < Ho_; ++oh)
            for (Index ow = 0; ow < Wo_; ++ow) {
              const Scalar g = gy[(c * Ho_ + oh) * Wo_ + ow] * inv_area;
              for (Index i = 0; i < kh_; ++i)
                for (Index j = 0; j < kw_; ++j) gx[(c * H_ + oh * sh_ + i) * W_ + ow * sw_ + j] += g;
            }
      }
    }
  }

 private:
  LayerType type_;
  Index C_, H_, W_, kh_, kw_, sh_, sw_, Ho_, Wo_;
};

}  // namespace

template <typename Scalar>
std::unique_ptr<Layer<Scalar>> make_pool2d(const LayerSpec& spec, const Shape& in, const std::string& where) {
  LayerSpec s = spec;
  if (s.stride_h == 0) s.stride_h = s.kernel_h;
  if (s.stride_w == 0) s.stride_w = s.kernel_w;
  if (s.kernel_h <= 0 || s.kernel_w <= 0 || s.stride_h <= 0 || s.stride_w <= 0)
    fail(where, std::string(to_string(s.type)) + " needs a positive kernel_size and stride");
  if (in.size() != 3)
    fail(where, std::string(to_string(s.type)) + " expects input shape [C, H, W] but receives " +
                    shape_to_string(in));
  if (in[1] < s.kernel_h || in[2] < s.kernel_w)
    fail(where, std::string(to_string(s.type)) + " kernel " + std::to_string(s.kernel_h) + "x" +
                    std::to_string(s.kernel_w) + " is larger than its input " + shape_to_string(in));
  const Shape out{in[0], (in[1] - s.kernel_h) / s.stride_h + 1, (in[2] - s.kernel_w) / s.stride_w + 1};
  return std::make_unique<Pool2d<Scalar>>(s.type, s, in, out);
}

template std::unique_ptr<Layer<float>> make_pool2d<float>(const LayerSpec&, const Shape&, const std::string&);
template std::unique_ptr<Layer<double>> make_pool2d<double>(const LayerSpec&, const Shape&,
                                                            const std::string&);

}  // namespace detail
}  // namespace natgrad
