// 2-D convolution (PyTorch's nn.Conv2d, groups = 1, dilation = 1) through im2col.
//
// Per sample, the input x (C × H × W) is unfolded into colsᵀ, an (Ho·Wo) × (C·kh·kw) matrix whose column
// (c, i, j) holds the input pixels seen by kernel tap (c, i, j) at every output position. The weight
// [O, C, kh, kw] row-major is, read column-major, the (C·kh·kw) × O matrix Wᵀ, so
//     yᵀ = colsᵀ Wᵀ + 1 bᵀ                      ((Ho·Wo) × O: column o is output channel o, i.e. CHW order)
// and every pass is a GEMM of that shape.
#include "model/layers.h"

#include <algorithm>

namespace natgrad {
namespace detail {
namespace {

template <typename Scalar>
class Conv2d final : public Layer<Scalar> {
  using ConstB = Eigen::Map<const Eigen::Matrix<Scalar, 1, Eigen::Dynamic>>;
  using MutB = Eigen::Map<Eigen::Matrix<Scalar, 1, Eigen::Dynamic>>;

 public:
  Conv2d(const LayerSpec& s, const Shape& in, const Shape& out)
      : Layer<Scalar>(in, out), C_(in[0]), H_(in[1]), W_(in[2]), O_(s.out_channels), kh_(s.kernel_h),
        kw_(s.kernel_w), sh_(s.stride_h), sw_(s.stride_w), ph_(s.padding_h), pw_(s.padding_w), Ho_(out[1]),
        Wo_(out[2]), bias_(s.bias), K_(C_ * kh_ * kw_), P_(Ho_ * Wo_) {}

  LayerType type() const override { return LayerType::conv2d; }
  Index num_params() const override { return O_ * K_ + (bias_ ? O_ : 0); }
  std::vector<ParamTensor> param_tensors() const override {
    std::vector<ParamTensor> t{{"weight", {O_, C_, kh_, kw_}}};
    if (bias_) t.push_back({"bias", {O_}});
    return t;
  }
  Index scratch_size(Index) const override { return 2 * P_ * K_ + K_ * O_; }

  void forward(const Scalar* theta, ConstMatMap<Scalar> X, MatMap<Scalar> Y, int32_t*) const override {
    // Forward runs once per batch, outside the hot path; a per-call buffer keeps the signature scratch-free.
    Mat<Scalar> cols(P_, K_);
    for (Index n = 0; n < X.cols(); ++n) {
      im2col(X.col(n).data(), cols.data());
      MatMap<Scalar> yt(Y.col(n).data(), P_, O_);
      yt.noalias() = cols * weight_t(theta);
      if (bias_) yt.rowwise() += ConstB(theta + O_ * K_, O_);
    }
  }

  // dyᵀ = colsᵀ(x) dWᵀ + colsᵀ(dx) Wᵀ + 1 dbᵀ
  void jvp(const Scalar* theta, const Scalar* dtheta, ConstMatMap<Scalar> X, ConstMatMap<Scalar>, const int32_t*,
           const Scalar* dX, MatMap<Scalar> dY, Scalar* scratch) const override {
    MatMap<Scalar> cols(scratch, P_, K_);
    for (Index n = 0; n < X.cols(); ++n) {
      MatMap<Scalar> dyt(dY.col(n).data(), P_, O_);
      im2col(X.col(n).data(), cols.data());
      dyt.noalias() = cols * weight_t(dtheta);
      if (dX) {
        im2col(dX + n * this->input_size(), cols.data());
        dyt.noalias() += cols * weight_t(theta);
      }
      if (bias_) dyt.rowwise() += ConstB(dtheta + O_ * K_, O_);
    }
  }

  // gWᵀ += colsᵀ(x)ᵀ gyᵀ;  gb += column sums of gyᵀ;  gx = col2im(gyᵀ W)
  void vjp(const Scalar* theta, ConstMatMap<Scalar> X, ConstMatMap<Scalar>, const int32_t*, ConstMatMap<Scalar> gY,
           Scalar* gX, Scalar* gtheta, Scalar* scratch) const override {
    MatMap<Scalar> cols(scratch, P_, K_), gcols(scratch + P_ * K_, P_, K_);
    MatMap<Scalar> gWt(gtheta, K_, gtheta ? O_ : 0);
    for (Index n = 0; n < X.cols(); ++n) {
      ConstMatMap<Scalar> gyt(gY.col(n).data(), P_, O_);
      if (gtheta) {
        im2col(X.col(n).data(), cols.data());
        gWt.noalias() += cols.transpose() * gyt;
        if (bias_) MutB(gtheta + O_ * K_, O_) += gyt.colwise().sum();
      }
      if (gX) {
        gcols.noalias() = gyt * weight_t(theta).transpose();
        col2im(gcols.data(), gX + n * this->input_size());
      }
    }
  }

  // A conv's per-sample weight gradient sums over positions, so it does not factor like a linear layer's:
  // form it per sample (one GEMM, as in vjp) and square it.
  void accumulate_squared_grads(const Scalar*, ConstMatMap<Scalar> X, ConstMatMap<Scalar> gY, Scalar* gsq,
                                Scalar* scratch) const override {
    MatMap<Scalar> cols(scratch, P_, K_), g(scratch + 2 * P_ * K_, K_, O_);
    MatMap<Scalar> gsqW(gsq, K_, O_);
    for (Index n = 0; n < X.cols(); ++n) {
      ConstMatMap<Scalar> gyt(gY.col(n).data(), P_, O_);
      im2col(X.col(n).data(), cols.data());
      g.noalias() = cols.transpose() * gyt;
      gsqW += g.array().square().matrix();
      if (bias_) MutB(gsq + O_ * K_, O_) += gyt.colwise().sum().array().square().matrix();
    }
  }

 private:
  ConstMatMap<Scalar> weight_t(const Scalar* w) const { return ConstMatMap<Scalar>(w, K_, O_); }

  // cols(p, (c, i, j)) = x(c, oh·sh − ph + i, ow·sw − pw + j), zero outside the image.
  void im2col(const Scalar* x, Scalar* cols) const {
    for (Index c = 0; c < C_; ++c)
      for (Index i = 0; i < kh_; ++i)
        for (Index j = 0; j < kw_; ++j) {
          Scalar* col = cols + ((c * kh_ + i) * kw_ + j) * P_;
          for (Index oh = 0; oh < Ho_; ++oh) {
            const Index ih = oh * sh_ - ph_ + i;
            Scalar* row = col + oh * Wo_;
            if (ih < 0 || ih >= H_) {
              std::fill(row, row + Wo_, Scalar(0));
              continue;
            }
            const Scalar* src = x + (c * H_ + ih) * W_;
            for (Index ow = 0; ow < Wo_; ++ow) {
              const Index iw = ow * sw_ - pw_ + j;
              row[ow] = (iw >= 0 && iw < W_) ? src[iw] : Scalar(0);
            }
          }
        }
  }

  // The adjoint of im2col: gx = 0, then every cols entry is added back to the pixel it was read from.
  void col2im(const Scalar* cols, Scalar* gx) const {
    std::fill(gx, gx + C_ * H_ * W_, Scalar(0));
    for (Index c = 0; c < C_; ++c)
      for (Index i = 0; i < kh_; ++i)
        for (Index j = 0; j < kw_; ++j) {
          const Scalar* col = cols + ((c * kh_ + i) * kw_ + j) * P_;
          for (Index oh = 0; oh < Ho_; ++oh) {
            const Index ih = oh * sh_ - ph_ + i;
            if (ih < 0 || ih >= H_) continue;
            Scalar* dst = gx + (c * H_ + ih) * W_;
            const Scalar* row = col + oh * Wo_;
            for (Index ow = 0; ow < Wo_; ++ow) {
              const Index iw = ow * sw_ - pw_ + j;
              if (iw >= 0 && iw < W_) dst[iw] += row[ow];
            }
          }
        }
  }

  Index C_, H_, W_, O_, kh_, kw_, sh_, sw_, ph_, pw_, Ho_, Wo_;
  bool bias_;
  Index K_, P_;
};

}  // namespace

template <typename Scalar>
std::unique_ptr<Layer<Scalar>> make_conv2d(const LayerSpec& s, const Shape& in, const std::string& where) {
  if (s.in_channels <= 0 || s.out_channels <= 0 || s.kernel_h <= 0 || s.kernel_w <= 0 || s.stride_h <= 0 ||
      s.stride_w <= 0 || s.padding_h < 0 || s.padding_w < 0)
    fail(where, "conv2d needs positive in_channels, out_channels, kernel_size, stride and padding >= 0");
  if (in.size() != 3 || in[0] != s.in_channels)
    fail(where, "conv2d expects input shape [" + std::to_string(s.in_channels) + ", H, W] but receives " +
                    shape_to_string(in));
  const Index ho = (in[1] + 2 * s.padding_h - s.kernel_h) / s.stride_h + 1;
  const Index wo = (in[2] + 2 * s.padding_w - s.kernel_w) / s.stride_w + 1;
  if (in[1] + 2 * s.padding_h < s.kernel_h || in[2] + 2 * s.padding_w < s.kernel_w || ho <= 0 || wo <= 0)
    fail(where, "conv2d kernel " + std::to_string(s.kernel_h) + "x" + std::to_string(s.kernel_w) +
                    " is larger than its padded input " + shape_to_string(in));
  return std::make_unique<Conv2d<Scalar>>(s, in, Shape{s.out_channels, ho, wo});
}

template std::unique_ptr<Layer<float>> make_conv2d<float>(const LayerSpec&, const Shape&, const std::string&);
template std::unique_ptr<Layer<double>> make_conv2d<double>(const LayerSpec&, const Shape&, const std::string&);

}  // namespace detail
}  // namespace natgrad
