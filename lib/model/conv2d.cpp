// 2-D convolution (PyTorch's nn.Conv2d, groups = 1, dilation = 1) through im2col.
//
// Per sample, the input x (C × H × W) is unfolded into colsᵀ, an (Ho·Wo) × (C·kh·kw) matrix whose column
// (c, i, j) holds the input pixels seen by kernel tap (c, i, j) at every output position. The weight
// [O, C, kh, kw] row-major is, read column-major, the (C·kh·kw) × O matrix Wᵀ, so
//     yᵀ = colsᵀ Wᵀ + 1 bᵀ                      ((Ho·Wo) × O: column o is output channel o, i.e. CHW order)
// and every pass is a GEMM of that shape, on a block of samples stacked vertically.
//
// 3×3 stride-1 convolutions with at least 16 input and output channels run Winograd's F(m×m, 3×3) instead
// (winograd_conv.h) in the forward pass, the R-op and the backprop; the other passes (squared gradients,
// K-FAC's patches) keep im2col.
#include <algorithm>

#include "core/gemm.h"
#include "model/layers.h"
#include "model/window2d.h"
#include "model/winograd_conv.h"

namespace natgrad {
namespace detail {
namespace {

template <typename Scalar>
class Conv2d final : public Layer<Scalar>, public KroneckerFactors<Scalar>, public SquaredGradients<Scalar> {
  using MutB = Eigen::Map<Eigen::Matrix<Scalar, 1, Eigen::Dynamic>>;

 public:
  Conv2d(const LayerSpec& s, const Shape& in, const Shape& out)
      : Layer<Scalar>(in, out, tensors(s, in[0]), ParamInit::fan_in_uniform),
        C_(in[0]),
        H_(in[1]),
        W_(in[2]),
        O_(s.out_channels),
        kh_(s.kernel_h),
        kw_(s.kernel_w),
        sh_(s.stride_h),
        sw_(s.stride_w),
        ph_(s.padding_h),
        pw_(s.padding_w),
        Ho_(out[1]),
        Wo_(out[2]),
        bias_(s.bias),
        K_(C_ * kh_ * kw_),
        P_(Ho_ * Wo_),
        win_{{H_, kh_, sh_, ph_, Ho_}, {W_, kw_, sw_, pw_, Wo_}} {
    if (WinogradConv3x3<Scalar>::applies(C_, O_, kh_, kw_, sh_, sw_))
      winograd_ = WinogradConv3x3<Scalar>::make(C_, O_, H_, W_, ph_, pw_, Ho_, Wo_,
                                                WinogradConv3x3<Scalar>::default_tile(Ho_, Wo_));
  }

  LayerType type() const override { return LayerType::conv2d; }
  double macs_per_sample() const override { return double(O_) * double(K_) * double(P_); }

  // Samples are processed in blocks of b_ whose unfolded inputs are stacked into one (b·Ho·Wo) × K matrix,
  // so each pass is one GEMM per block rather than per sample (the weights are packed once per block, and
  // the weight gradient's inner dimension is b·Ho·Wo). b keeps a block's im2col buffer near 32K scalars, so
  // it stays in L2: measured on the benchmark CNN, 16K–64K was fastest and 1M (4 MB) 30–50% slower.
  Index block() const { return std::max<Index>(1, (Index(1) << 15) / (P_ * K_)); }
  // jvp's stacked weights, a block's cols, dcols (or gcols) and yᵀ, then the products' packing space
  // (core/gemm.h) for any block of up to b samples; or Winograd's scratch.
  Index scratch_size(Index ncols) const override {
    if (winograd_) return winograd_->scratch_size(ncols);
    const Index b = std::min(block(), std::max<Index>(ncols, 1));
    Index pack = 0;
    for (Index c = 1; c <= b; ++c)
      pack =
          std::max({pack, gemm_pack_size<Scalar>(c * P_, O_, K_), gemm_pack_size<Scalar>(c * P_, O_, 2 * K_),
                    gemm_pack_size<Scalar>(K_, O_, c * P_), gemm_pack_size<Scalar>(c * P_, K_, O_)});
    return stacked_size() + b * P_ * (2 * K_ + O_) + pack;
  }
  // accumulate_squared_grads': one sample's cols (P × K), its K × O gradient and their product's packing.
  Index squared_grads_scratch_size(Index) const override {
    return P_ * K_ + K_ * O_ + gemm_pack_size<Scalar>(K_, O_, P_);
  }

  Index forward_scratch_size(Index ncols) const override { return scratch_size(ncols); }

  void forward(const Scalar* theta, ConstMatMap<Scalar> X, MatMap<Scalar> Y, int32_t*) const override {
    // Forward runs once per batch, outside the hot path; a per-call buffer keeps the signature scratch-free.
    std::vector<Scalar, Eigen::aligned_allocator<Scalar>> buf(
        static_cast<std::size_t>(scratch_size(X.cols())));
    if (winograd_)
      return winograd_->forward(theta, bias_ ? theta + O_ * K_ : nullptr, X.data(), X.cols(), Y.data(), buf.data());
    for (Index n0 = 0; n0 < X.cols(); n0 += block()) {
      const Index b = std::min(block(), X.cols() - n0);
      MatMap<Scalar> cols(buf.data(), b * P_, K_);
      Scalar* yt = output_block(b, Y.col(n0).data(), buf.data());
      im2col_block(X.col(n0).data(), b, cols);
      gemm(b * P_, O_, K_, col_major(cols.data(), b * P_), weight_t(theta), yt, b * P_, false,
           buf.data() + pack_offset(b));
      scatter(yt, b, bias_ ? theta + O_ * K_ : nullptr, Y.col(n0).data());
    }
  }

  // dyᵀ = colsᵀ(x) dWᵀ + colsᵀ(dx) Wᵀ + 1 dbᵀ = [colsᵀ(x) colsᵀ(dx)] [dWᵀ; Wᵀ] + 1 dbᵀ: one GEMM of depth
  // 2K per block (the unfolded x and dx sit side by side in the scratch, the two weights are stacked once
  // per call), so the output is written once.
  void jvp(const Scalar* theta, const Scalar* dtheta, ConstMatMap<Scalar> X, ConstMatMap<Scalar>,
           const int32_t*, const Scalar* dX, MatMap<Scalar> dY, Scalar* scratch) const override {
    if (winograd_)
      return winograd_->jvp(theta, dtheta, bias_ ? dtheta + O_ * K_ : nullptr, X.data(), dX, X.cols(), dY.data(),
                            scratch);
    Scalar* stacked = scratch;
    if (dX)
      for (Index o = 0; o < O_; ++o) {
        std::copy(dtheta + o * K_, dtheta + (o + 1) * K_, stacked + o * 2 * K_);
        std::copy(theta + o * K_, theta + (o + 1) * K_, stacked + o * 2 * K_ + K_);
      }
    Scalar* base = scratch + stacked_size();
    for (Index n0 = 0; n0 < X.cols(); n0 += block()) {
      const Index b = std::min(block(), X.cols() - n0);
      MatMap<Scalar> cols(base, b * P_, K_), dcols(base + b * P_ * K_, b * P_, K_);
      Scalar* dyt = output_block(b, dY.col(n0).data(), base);
      im2col_block(X.col(n0).data(), b, cols);
      if (dX) {
        im2col_block(dX + n0 * this->input_size(), b, dcols);
        gemm(b * P_, O_, 2 * K_, col_major(cols.data(), b * P_), col_major<Scalar>(stacked, 2 * K_), dyt,
             b * P_, false, base + pack_offset(b));
      } else {
        gemm(b * P_, O_, K_, col_major(cols.data(), b * P_), weight_t(dtheta), dyt, b * P_, false,
             base + pack_offset(b));
      }
      scatter(dyt, b, bias_ ? dtheta + O_ * K_ : nullptr, dY.col(n0).data());
    }
  }

  // gWᵀ += colsᵀ(x)ᵀ gyᵀ;  gb += column sums of gyᵀ;  gx = col2im(gyᵀ W)
  void vjp(const Scalar* theta, ConstMatMap<Scalar> X, ConstMatMap<Scalar>, const int32_t*,
           ConstMatMap<Scalar> gY, Scalar* gX, Scalar* gtheta, Scalar* scratch) const override {
    if (winograd_)
      return winograd_->vjp(theta, X.data(), gY.data(), X.cols(), gX, gtheta,
                            gtheta && bias_ ? gtheta + O_ * K_ : nullptr, scratch);
    for (Index n0 = 0; n0 < X.cols(); n0 += block()) {
      const Index b = std::min(block(), X.cols() - n0);
      MatMap<Scalar> cols(scratch, b * P_, K_), gcols(scratch + b * P_ * K_, b * P_, K_);
      // One sample's CHW cotangent already is its gyᵀ (P × O, column-major); a block's is gathered.
      const Scalar* gyt = gY.col(n0).data();
      if (b > 1) {
        MatMap<Scalar> stacked(scratch + 2 * b * P_ * K_, b * P_, O_);
        gather(gY.col(n0).data(), b, stacked);
        gyt = stacked.data();
      }
      if (gtheta) {
        im2col_block(X.col(n0).data(), b, cols);
        gemm(K_, O_, b * P_, row_major(cols.data(), b * P_), col_major(gyt, b * P_), gtheta, K_, true,
             scratch + pack_offset(b));
        if (bias_) MutB(gtheta + O_ * K_, O_) += ConstMatMap<Scalar>(gyt, b * P_, O_).colwise().sum();
      }
      if (gX) {
        gemm(b * P_, K_, O_, col_major(gyt, b * P_), row_major(theta, K_), gcols.data(), b * P_, false,
             scratch + pack_offset(b));
        for (Index k = 0; k < b; ++k)
          col2im(gcols.data() + k * P_, b * P_, gX + (n0 + k) * this->input_size());
      }
    }
  }

  // K-FAC: a sample's gradient is Σ_p gY_p a_pᵀ over its output pixels p, a_p the patch im2col unfolds.
  typename KroneckerFactors<Scalar>::KroneckerShape kronecker_shape() const override { return {P_, O_, K_}; }
  void kronecker_inputs(ConstMatMap<Scalar> X, Scalar* A, Index lda) const override {
    for (Index n = 0; n < X.cols(); ++n) im2col(X.col(n).data(), lda, A + n * P_);
  }
  void kronecker_cotangents(ConstMatMap<Scalar> gY, Scalar* G, Index ldg) const override {
    for (Index n = 0; n < gY.cols(); ++n)  // a sample's cotangent [O, Ho, Wo] is P × O column-major
      for (Index o = 0; o < O_; ++o) std::copy(gY.col(n).data() + o * P_, gY.col(n).data() + (o + 1) * P_, G + o * ldg + n * P_);
  }

  // A conv's per-sample weight gradient sums over positions, so it does not factor like a linear layer's:
  // form it per sample (one GEMM, as in vjp) and square it.
  void accumulate_squared_grads(const Scalar*, ConstMatMap<Scalar> X, ConstMatMap<Scalar> gY, Scalar* gsq,
                                Scalar* scratch) const override {
    MatMap<Scalar> cols(scratch, P_, K_), g(scratch + P_ * K_, K_, O_);
    MatMap<Scalar> gsqW(gsq, K_, O_);
    for (Index n = 0; n < X.cols(); ++n) {
      ConstMatMap<Scalar> gyt(gY.col(n).data(), P_, O_);
      im2col(X.col(n).data(), P_, cols.data());
      gemm(K_, O_, P_, row_major(cols.data(), P_), col_major(gyt.data(), P_), g.data(), K_, false,
           scratch + P_ * K_ + K_ * O_);
      gsqW += g.array().square().matrix();
      if (bias_) MutB(gsq + O_ * K_, O_) += gyt.colwise().sum().array().square().matrix();
    }
  }

 private:
  static std::vector<ParamTensor> tensors(const LayerSpec& s, Index channels) {
    std::vector<ParamTensor> t{{"weight", {s.out_channels, channels, s.kernel_h, s.kernel_w}}};
    if (s.bias) t.push_back({"bias", {s.out_channels}});
    return t;
  }
  // The weight [O, C, kh, kw] row-major, read column-major: Wᵀ, K × O.
  GemmOperand<Scalar> weight_t(const Scalar* w) const { return col_major(w, K_); }
  // Where a block of b samples' packing space starts in its scratch (after cols, dcols and yᵀ).
  Index pack_offset(Index b) const { return b * P_ * (2 * K_ + O_); }
  // jvp's stacked [dWᵀ; Wᵀ] (2K × O) ahead of the block buffers, rounded to keep them 64-byte aligned.
  Index stacked_size() const { return (2 * K_ * O_ + 15) / 16 * 16; }

  // The output columns ow whose input column ow·sw − pw + j lies inside [0, W): [lo, hi).
  void valid_range(Index j, Index& lo, Index& hi) const { win_.w.outputs_inside(j, lo, hi); }

  // cols(p, (c, i, j)) = x(c, oh·sh − ph + i, ow·sw − pw + j), zero outside the image (im2col below).
  // The unfolded inputs of b consecutive samples, stacked: sample k fills rows [k·P, (k+1)·P).
  void im2col_block(const Scalar* x, Index b, MatMap<Scalar>& cols) const {
    for (Index k = 0; k < b; ++k) im2col(x + k * this->input_size(), b * P_, cols.data() + k * P_);
  }
  // Where a block's GEMM writes yᵀ: one sample's yᵀ (P × O, column-major) is its CHW output, so in place;
  // a block's goes to the scratch after cols and dcols, and scatter() spreads it.
  Scalar* output_block(Index b, Scalar* y, Scalar* base) const { return b == 1 ? y : base + 2 * b * P_ * K_; }
  // y (CHW, sample stride output_size) from the stacked yᵀ blocks, plus the bias if given; in place when yt
  // is output_block's in-place y.
  void scatter(const Scalar* yt, Index b, const Scalar* bias, Scalar* y) const {
    if (yt == y && !bias) return;
    for (Index k = 0; k < b; ++k)
      for (Index o = 0; o < O_; ++o) {
        const Scalar* src = yt + o * b * P_ + k * P_;
        Scalar* dst = y + k * this->output_size() + o * P_;
        const Scalar add = bias ? bias[o] : Scalar(0);
        for (Index q = 0; q < P_; ++q) dst[q] = src[q] + add;
      }
  }
  // The stacked gyᵀ blocks from per-sample cotangents (CHW, sample stride output_size).
  void gather(const Scalar* gy, Index b, MatMap<Scalar>& gyt) const {
    for (Index k = 0; k < b; ++k)
      for (Index o = 0; o < O_; ++o)
        std::copy(gy + k * this->output_size() + o * P_, gy + k * this->output_size() + (o + 1) * P_,
                  gyt.data() + o * b * P_ + k * P_);
  }

  // ld is the leading dimension of cols (P for one sample, b·P inside a stacked block).
  void im2col(const Scalar* x, Index ld, Scalar* cols) const {
    for (Index c = 0; c < C_; ++c)
      for (Index i = 0; i < kh_; ++i)
        for (Index j = 0; j < kw_; ++j) {
          Scalar* col = cols + ((c * kh_ + i) * kw_ + j) * ld;
          if (contiguous_rows())
            im2col_tap_contiguous(x + c * H_ * W_, i, j, col);
          else
            im2col_tap(x + c * H_ * W_, i, j, col);
        }
  }

  // Stride 1 with "same" width (Wo = W): output row oh of a tap reads input row oh − ph + i at the same row
  // stride, so the tap's whole valid band is one shifted copy of the input plane. The entries that copy
  // wraps across a row edge (ow < lo or ow ≥ hi) are padding and are zeroed afterwards. One memcpy per tap
  // instead of one per output row: the rows here are 7–28 scalars, where a call costs as much as the copy.
  bool contiguous_rows() const { return sh_ == 1 && sw_ == 1 && Wo_ == W_; }
  // Tap (i, j) of a contiguous-rows convolution: col[d] = plane[d + shift] for d in [d_lo, d_hi), the output
  // rows [oh_lo, oh_hi) that read inside the image and, in each, the columns [lo, hi) that do.
  struct Band {
    Index oh_lo, oh_hi, lo, hi, shift, d_lo, d_hi;
  };
  Band band(Index i, Index j) const {
    Band t;
    valid_range(j, t.lo, t.hi);
    win_.h.outputs_inside(i, t.oh_lo, t.oh_hi);
    t.shift = (i - ph_) * W_ + (j - pw_);
    t.d_lo = std::clamp(-t.shift, t.oh_lo * W_, t.oh_hi * W_);  // inside the band, reading inside the plane
    t.d_hi = std::clamp(H_ * W_ - t.shift, t.d_lo, t.oh_hi * W_);
    return t;
  }
  // Zeroes the entries of the band's rows that the shifted run wrapped across a row edge (padding).
  void zero_wrapped(const Band& t, Scalar* col) const {
    for (Index oh = t.oh_lo; oh < t.oh_hi; ++oh) {
      Scalar* row = col + oh * W_;
      for (Index ow = 0; ow < t.lo; ++ow) row[ow] = Scalar(0);
      for (Index ow = t.hi; ow < W_; ++ow) row[ow] = Scalar(0);
    }
  }
  void im2col_tap_contiguous(const Scalar* plane, Index i, Index j, Scalar* col) const {
    const Band t = band(i, j);
    std::fill(col, col + t.d_lo, Scalar(0));
    std::copy(plane + t.d_lo + t.shift, plane + t.d_hi + t.shift, col + t.d_lo);
    std::fill(col + t.d_hi, col + P_, Scalar(0));
    zero_wrapped(t, col);
  }
  // The general case, row by row: a zero prefix, one (strided) copy and a zero suffix, no per-element branch.
  void im2col_tap(const Scalar* plane, Index i, Index j, Scalar* col) const {
    Index lo, hi;
    valid_range(j, lo, hi);
    for (Index oh = 0; oh < Ho_; ++oh) {
      const Index ih = win_.h.input(oh, i);
      Scalar* row = col + oh * Wo_;
      if (ih < 0 || ih >= H_) {
        std::fill(row, row + Wo_, Scalar(0));
        continue;
      }
      std::fill(row, row + lo, Scalar(0));
      const Scalar* src = plane + ih * W_ + lo * sw_ - pw_ + j;
      if (sw_ == 1)
        std::copy(src, src + (hi - lo), row + lo);
      else
        for (Index ow = lo; ow < hi; ++ow) row[ow] = src[(ow - lo) * sw_];
      std::fill(row + hi, row + Wo_, Scalar(0));
    }
  }

  // The adjoint of im2col: gx = 0, then every cols entry is added back to the pixel it was read from. With
  // contiguous rows a tap's band is added as one shifted run, after zeroing its padding entries in `cols`
  // (scratch): the adjoint of im2col_tap_contiguous, adding each pixel's terms in the same tap order.
  void col2im(Scalar* cols, Index ld, Scalar* gx) const {
    std::fill(gx, gx + C_ * H_ * W_, Scalar(0));
    for (Index c = 0; c < C_; ++c)
      for (Index i = 0; i < kh_; ++i)
        for (Index j = 0; j < kw_; ++j) {
          Scalar* col = cols + ((c * kh_ + i) * kw_ + j) * ld;
          Scalar* plane = gx + c * H_ * W_;
          if (contiguous_rows()) {
            const Band t = band(i, j);
            zero_wrapped(t, col);
            Scalar* dst = plane + t.shift;
            for (Index d = t.d_lo; d < t.d_hi; ++d) dst[d] += col[d];
            continue;
          }
          Index lo, hi;
          valid_range(j, lo, hi);
          for (Index oh = 0; oh < Ho_; ++oh) {
            const Index ih = win_.h.input(oh, i);
            if (ih < 0 || ih >= H_) continue;
            Scalar* dst = plane + ih * W_ + lo * sw_ - pw_ + j;
            const Scalar* row = col + oh * Wo_;
            if (sw_ == 1)
              for (Index ow = lo; ow < hi; ++ow) dst[ow - lo] += row[ow];
            else
              for (Index ow = lo; ow < hi; ++ow) dst[(ow - lo) * sw_] += row[ow];
          }
        }
  }

  Index C_, H_, W_, O_, kh_, kw_, sh_, sw_, ph_, pw_, Ho_, Wo_;
  bool bias_;
  Index K_, P_;
  Window2d win_;                                       // the geometry, per axis (window2d.h)
  std::unique_ptr<WinogradConv3x3<Scalar>> winograd_;  // set when the convolution qualifies
};

}  // namespace

template <typename Scalar>
std::unique_ptr<Layer<Scalar>> make_conv2d(const LayerSpec& spec, const Shape& in, const std::string& where) {
  LayerSpec s = spec;
  if (s.padding_same) {
    // PyTorch pads (k - 1)/2 on each side for odd kernels; even kernels need one more on one side than on the
    // other, which this convolution's symmetric padding cannot express.
    if (s.stride_h != 1 || s.stride_w != 1)
      fail(where, "conv2d padding=\"same\" needs stride 1 (PyTorch refuses it too)");
    if (s.kernel_h % 2 == 0 || s.kernel_w % 2 == 0)
      fail(where, "conv2d padding=\"same\" with an even kernel (" + std::to_string(s.kernel_h) + "x" +
                      std::to_string(s.kernel_w) + ") pads asymmetrically, which natgrad does not support: use an odd "
                      "kernel or explicit padding");
    s.padding_h = (s.kernel_h - 1) / 2;
    s.padding_w = (s.kernel_w - 1) / 2;
  }
  if (s.in_channels <= 0 || s.out_channels <= 0 || s.kernel_h <= 0 || s.kernel_w <= 0 || s.stride_h <= 0 ||
      s.stride_w <= 0 || s.padding_h < 0 || s.padding_w < 0)
    fail(where, "conv2d needs positive in_channels, out_channels, kernel_size, stride and padding >= 0");
  if (in.size() != 3 || in[0] != s.in_channels)
    fail(where, "conv2d expects input shape [" + std::to_string(s.in_channels) + ", H, W] but receives " +
                    shape_to_string(in));
  if (double(s.out_channels) * double(s.in_channels) * double(s.kernel_h) * double(s.kernel_w) >
          kMaxElements ||
      double(s.padding_h) + double(in[1]) > kMaxElements ||
      double(s.padding_w) + double(in[2]) > kMaxElements ||
      double(s.kernel_h) * double(s.kernel_w) * double(in[1] + 2 * s.padding_h) *
              double(in[2] + 2 * s.padding_w) * double(s.in_channels) >
          kMaxElements)
    fail(where, "conv2d sizes are absurdly large");
  const WindowAxis h = WindowAxis::make(in[1], s.kernel_h, s.stride_h, s.padding_h),
                   w = WindowAxis::make(in[2], s.kernel_w, s.stride_w, s.padding_w);
  if (!h.fits() || !w.fits())
    fail(where, "conv2d kernel " + std::to_string(s.kernel_h) + "x" + std::to_string(s.kernel_w) +
                    " is larger than its padded input " + shape_to_string(in));
  const Index ho = h.out, wo = w.out;
  if (double(s.out_channels) * double(ho) * double(wo) > kMaxElements)
    fail(where, "conv2d output is absurdly large");
  return std::make_unique<Conv2d<Scalar>>(s, in, Shape{s.out_channels, ho, wo});
}

template std::unique_ptr<Layer<float>> make_conv2d<float>(const LayerSpec&, const Shape&, const std::string&);
template std::unique_ptr<Layer<double>> make_conv2d<double>(const LayerSpec&, const Shape&,
                                                            const std::string&);

}  // namespace detail
}  // namespace natgrad
