// Convolutions (PyTorch's nn.Conv2d and nn.Conv1d, any groups, dilation = 1) through im2col.
//
// Per sample, the input x (C × H × W) is unfolded into colsᵀ, an (Ho·Wo) × (C·kh·kw) matrix whose column
// (c, i, j) holds the input pixels seen by kernel tap (c, i, j) at every output position. The weight
// [O, C, kh, kw] row-major is, read column-major, the (C·kh·kw) × O matrix Wᵀ, so
//     yᵀ = colsᵀ Wᵀ + 1 bᵀ                      ((Ho·Wo) × O: column o is output channel o, i.e. CHW order)
// and every pass is a GEMM of that shape, on a block of samples stacked vertically.
//
// With G groups the channels split into G consecutive groups of C/G inputs and O/G outputs, and output group
// g reads input group g only. The weight is [O, C/G, kh, kw]: read column-major it is the (C/G·kh·kw) × O
// matrix whose columns [g·O/G, (g+1)·O/G) are group g's Wᵀ_g, and group g's columns of colsᵀ are the
// consecutive [g·C/G·kh·kw, (g+1)·C/G·kh·kw). So every pass is one GEMM per group, of O/G columns and depth
// C/G·kh·kw, on strided views of the same buffers (depthwise, G = C: depth kh·kw). G = 1 is the one-GEMM case.
//
// Conv1d on [C, L] is this convolution on [C, 1, L] with a 1 × k kernel: its weight [O, C/G, k] has the
// layout of [O, C/G, 1, k], and the CHW buffers are the same.
//
// 3×3 stride-1 convolutions with at least 16 input and output channels and one group run Winograd's
// F(m×m, 3×3) instead (winograd_conv.h) in the forward pass, the R-op and the backprop; the other passes
// (squared gradients, K-FAC's patches) keep im2col.
//
// K-FAC (KroneckerFactors) is offered for one group only. With G > 1 the weight gradient of a sample is
// block-diagonal over the groups, Σ_p g_{p,g} a_{p,g}ᵀ for group g, whose natural Kronecker approximation is
// one A_g ⊗ G_g per group, not the single A ⊗ G the capability describes; so a grouped convolution does not
// offer it, and K-FAC uses the Fisher's diagonal for its parameters.
#include <algorithm>

#include "core/gemm.h"
#include "model/layers.h"
#include "model/window2d.h"
#include "model/winograd_conv.h"

namespace natgrad {
namespace detail {
namespace {

// The convolution with any number of groups (the passes below); Conv2d adds K-FAC's capability for one group.
template <typename Scalar>
class Convolution : public Layer<Scalar>, public SquaredGradients<Scalar> {
  using MutB = Eigen::Map<Eigen::Matrix<Scalar, 1, Eigen::Dynamic>>;

 public:
  // in and out are the layer's shapes ([C, H, W] and [O, Ho, Wo], or conv1d's [C, L] and [O, Lo]); the
  // geometry is read from the spec, with a conv1d's height 1.
  Convolution(const LayerSpec& s, const Shape& in, const Shape& out)
      : Layer<Scalar>(in, out, tensors(s), ParamInit::fan_in_uniform),
        C_(in[0]),
        H_(in.size() == 3 ? in[1] : 1),
        W_(in.back()),
        O_(s.out_channels),
        kh_(s.kernel_h),
        kw_(s.kernel_w),
        sh_(s.stride_h),
        sw_(s.stride_w),
        ph_(s.padding_h),
        pw_(s.padding_w),
        Ho_(out.size() == 3 ? out[1] : 1),
        Wo_(out.back()),
        bias_(s.bias),
        G_(s.groups),
        Og_(O_ / G_),
        Cg_(C_ / G_),
        K_(C_ * kh_ * kw_),
        Kg_(Cg_ * kh_ * kw_),
        P_(Ho_ * Wo_),
        type_(s.type),
        win_{{H_, kh_, sh_, ph_, Ho_}, {W_, kw_, sw_, pw_, Wo_}} {
    if (G_ == 1 && WinogradConv3x3<Scalar>::applies(C_, O_, kh_, kw_, sh_, sw_))
      winograd_ = WinogradConv3x3<Scalar>::make(C_, O_, H_, W_, ph_, pw_, Ho_, Wo_,
                                                WinogradConv3x3<Scalar>::default_tile(Ho_, Wo_));
  }

  LayerType type() const override { return type_; }
  double macs_per_sample() const override { return double(O_) * double(Kg_) * double(P_); }

  // Samples are processed in blocks of b_ whose unfolded inputs are stacked into one (b·Ho·Wo) × K matrix,
  // so each pass is one GEMM per block rather than per sample (the weights are packed once per block, and
  // the weight gradient's inner dimension is b·Ho·Wo). b keeps a block's im2col buffer near 32K scalars, so
  // it stays in L2: measured on the benchmark CNN, 16K–64K was fastest and 1M (4 MB) 30–50% slower.
  Index block() const { return std::max<Index>(1, (Index(1) << 15) / (P_ * K_)); }
  // jvp's stacked weights, a block's cols, dcols (or gcols) and yᵀ, then the products' packing space
  // (core/gemm.h) for any block of up to b samples and any group's GEMM; or Winograd's scratch.
  Index scratch_size(Index ncols) const override {
    if (winograd_) return winograd_->scratch_size(ncols);
    const Index b = std::min(block(), std::max<Index>(ncols, 1));
    Index pack = 0;
    for (Index c = 1; c <= b; ++c)
      pack =
          std::max({pack, gemm_pack_size<Scalar>(c * P_, Og_, Kg_), gemm_pack_size<Scalar>(c * P_, Og_, 2 * Kg_),
                    gemm_pack_size<Scalar>(Kg_, Og_, c * P_), gemm_pack_size<Scalar>(c * P_, Kg_, Og_)});
    return stacked_size() + b * P_ * (2 * K_ + O_) + pack;
  }
  // accumulate_squared_grads': one sample's cols (P × K), its Kg × O gradient and a group's product's packing.
  Index squared_grads_scratch_size(Index) const override {
    return P_ * K_ + Kg_ * O_ + gemm_pack_size<Scalar>(Kg_, Og_, P_);
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
      Scalar* cols = buf.data();
      Scalar* yt = output_block(b, Y.col(n0).data(), buf.data());
      im2col_block(X.col(n0).data(), b, cols, Kg_);
      for (Index g = 0; g < G_; ++g)
        gemm(b * P_, Og_, Kg_, col_major(cols + g * Kg_ * b * P_, b * P_), weight_t(theta, g), yt + g * Og_ * b * P_,
             b * P_, false, buf.data() + pack_offset(b));
      scatter(yt, b, bias_ ? theta + O_ * Kg_ : nullptr, Y.col(n0).data());
    }
  }

  // dyᵀ = colsᵀ(x) dWᵀ + colsᵀ(dx) Wᵀ + 1 dbᵀ = [colsᵀ(x) colsᵀ(dx)] [dWᵀ; Wᵀ] + 1 dbᵀ: one GEMM of depth
  // 2K per block (the unfolded x and dx sit side by side in the scratch, the two weights are stacked once
  // per call), so the output is written once. With groups, per group g: x's and dx's columns of group g sit
  // side by side (x_0 dx_0 x_1 dx_1 …) and [dWᵀ_g; Wᵀ_g] is stacked, one GEMM of depth 2·Kg per group.
  void jvp(const Scalar* theta, const Scalar* dtheta, ConstMatMap<Scalar> X, ConstMatMap<Scalar>,
           const int32_t*, const Scalar* dX, MatMap<Scalar> dY, Scalar* scratch) const override {
    if (winograd_)
      return winograd_->jvp(theta, dtheta, bias_ ? dtheta + O_ * K_ : nullptr, X.data(), dX, X.cols(), dY.data(),
                            scratch);
    Scalar* stacked = scratch;
    if (dX)
      for (Index o = 0; o < O_; ++o) {
        std::copy(dtheta + o * Kg_, dtheta + (o + 1) * Kg_, stacked + o * 2 * Kg_);
        std::copy(theta + o * Kg_, theta + (o + 1) * Kg_, stacked + o * 2 * Kg_ + Kg_);
      }
    Scalar* base = scratch + stacked_size();
    for (Index n0 = 0; n0 < X.cols(); n0 += block()) {
      const Index b = std::min(block(), X.cols() - n0);
      Scalar* dyt = output_block(b, dY.col(n0).data(), base);
      if (dX) {
        im2col_block(X.col(n0).data(), b, base, 2 * Kg_);
        im2col_block(dX + n0 * this->input_size(), b, base + Kg_ * b * P_, 2 * Kg_);
        for (Index g = 0; g < G_; ++g)
          gemm(b * P_, Og_, 2 * Kg_, col_major(base + g * 2 * Kg_ * b * P_, b * P_),
               col_major<Scalar>(stacked + g * Og_ * 2 * Kg_, 2 * Kg_), dyt + g * Og_ * b * P_, b * P_, false,
               base + pack_offset(b));
      } else {
        im2col_block(X.col(n0).data(), b, base, Kg_);
        for (Index g = 0; g < G_; ++g)
          gemm(b * P_, Og_, Kg_, col_major(base + g * Kg_ * b * P_, b * P_), weight_t(dtheta, g),
               dyt + g * Og_ * b * P_, b * P_, false, base + pack_offset(b));
      }
      scatter(dyt, b, bias_ ? dtheta + O_ * Kg_ : nullptr, dY.col(n0).data());
    }
  }

  // gWᵀ += colsᵀ(x)ᵀ gyᵀ;  gb += column sums of gyᵀ;  gx = col2im(gyᵀ W), the GEMMs per group
  void vjp(const Scalar* theta, ConstMatMap<Scalar> X, ConstMatMap<Scalar>, const int32_t*,
           ConstMatMap<Scalar> gY, Scalar* gX, Scalar* gtheta, Scalar* scratch) const override {
    if (winograd_)
      return winograd_->vjp(theta, X.data(), gY.data(), X.cols(), gX, gtheta,
                            gtheta && bias_ ? gtheta + O_ * K_ : nullptr, scratch);
    for (Index n0 = 0; n0 < X.cols(); n0 += block()) {
      const Index b = std::min(block(), X.cols() - n0);
      Scalar *cols = scratch, *gcols = scratch + b * P_ * K_;
      // One sample's CHW cotangent already is its gyᵀ (P × O, column-major); a block's is gathered.
      const Scalar* gyt = gY.col(n0).data();
      if (b > 1) {
        MatMap<Scalar> stacked(scratch + 2 * b * P_ * K_, b * P_, O_);
        gather(gY.col(n0).data(), b, stacked);
        gyt = stacked.data();
      }
      if (gtheta) {
        im2col_block(X.col(n0).data(), b, cols, Kg_);
        for (Index g = 0; g < G_; ++g)
          gemm(Kg_, Og_, b * P_, row_major(cols + g * Kg_ * b * P_, b * P_), col_major(gyt + g * Og_ * b * P_, b * P_),
               gtheta + g * Og_ * Kg_, Kg_, true, scratch + pack_offset(b));
        if (bias_) MutB(gtheta + O_ * Kg_, O_) += ConstMatMap<Scalar>(gyt, b * P_, O_).colwise().sum();
      }
      if (gX) {
        for (Index g = 0; g < G_; ++g)
          gemm(b * P_, Kg_, Og_, col_major(gyt + g * Og_ * b * P_, b * P_), row_major(theta + g * Og_ * Kg_, Kg_),
               gcols + g * Kg_ * b * P_, b * P_, false, scratch + pack_offset(b));
        for (Index k = 0; k < b; ++k)
          col2im(gcols + k * P_, b * P_, gX + (n0 + k) * this->input_size());
      }
    }
  }

  // A conv's per-sample weight gradient sums over positions, so it does not factor like a linear layer's:
  // form it per sample (one GEMM, as in vjp) and square it.
  void accumulate_squared_grads(const Scalar*, ConstMatMap<Scalar> X, ConstMatMap<Scalar> gY, Scalar* gsq,
                                Scalar* scratch) const override {
    MatMap<Scalar> cols(scratch, P_, K_), g(scratch + P_ * K_, Kg_, O_);
    MatMap<Scalar> gsqW(gsq, Kg_, O_);
    for (Index n = 0; n < X.cols(); ++n) {
      ConstMatMap<Scalar> gyt(gY.col(n).data(), P_, O_);
      im2col(X.col(n).data(), P_, cols.data(), Kg_);
      for (Index gr = 0; gr < G_; ++gr)
        gemm(Kg_, Og_, P_, row_major(cols.data() + gr * Kg_ * P_, P_), col_major(gyt.data() + gr * Og_ * P_, P_),
             g.data() + gr * Og_ * Kg_, Kg_, false, scratch + P_ * K_ + Kg_ * O_);
      gsqW += g.array().square().matrix();
      if (bias_) MutB(gsq + O_ * Kg_, O_) += gyt.colwise().sum().array().square().matrix();
    }
  }

 protected:
  // The weight [O, C/G, kh, kw] (conv1d: [O, C/G, k]), then the bias [O].
  static std::vector<ParamTensor> tensors(const LayerSpec& s) {
    const Index cg = s.in_channels / s.groups;
    std::vector<ParamTensor> t{{"weight", s.type == LayerType::conv1d
                                              ? Shape{s.out_channels, cg, s.kernel_w}
                                              : Shape{s.out_channels, cg, s.kernel_h, s.kernel_w}}};
    if (s.bias) t.push_back({"bias", {s.out_channels}});
    return t;
  }
  // Group g's weight rows [g·O/G, (g+1)·O/G) of [O, C/G, kh, kw] row-major, read column-major: Wᵀ_g, Kg × O/G.
  GemmOperand<Scalar> weight_t(const Scalar* w, Index g) const { return col_major(w + g * Og_ * Kg_, Kg_); }
  // Where a block of b samples' packing space starts in its scratch (after cols, dcols and yᵀ).
  Index pack_offset(Index b) const { return b * P_ * (2 * K_ + O_); }
  // jvp's stacked [dWᵀ_g; Wᵀ_g] (2Kg × O/G per group) ahead of the block buffers, rounded to keep them
  // 64-byte aligned.
  Index stacked_size() const { return (2 * Kg_ * O_ + 15) / 16 * 16; }

  // The output columns ow whose input column ow·sw − pw + j lies inside [0, W): [lo, hi).
  void valid_range(Index j, Index& lo, Index& hi) const { win_.w.outputs_inside(j, lo, hi); }

  // cols(p, (c, i, j)) = x(c, oh·sh − ph + i, ow·sw − pw + j), zero outside the image (im2col below).
  // The unfolded inputs of b consecutive samples, stacked: sample k fills rows [k·P, (k+1)·P). Group g's
  // columns start at column g·gstride (gstride = Kg: consecutive, as for one group).
  void im2col_block(const Scalar* x, Index b, Scalar* cols, Index gstride) const {
    for (Index k = 0; k < b; ++k) im2col(x + k * this->input_size(), b * P_, cols + k * P_, gstride);
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

  // ld is the leading dimension of cols (P for one sample, b·P inside a stacked block); channel c of group g
  // (c = g·C/G + cl) has its taps at columns g·gstride + (cl·kh + i)·kw + j.
  void im2col(const Scalar* x, Index ld, Scalar* cols, Index gstride) const {
    for (Index c = 0; c < C_; ++c)
      for (Index i = 0; i < kh_; ++i)
        for (Index j = 0; j < kw_; ++j) {
          Scalar* col = cols + ((c / Cg_) * gstride + ((c % Cg_) * kh_ + i) * kw_ + j) * ld;
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
  Index G_, Og_, Cg_;  // groups, output and input channels per group
  Index K_, Kg_, P_;   // im2col's columns C·kh·kw, a group's Cg·kh·kw, output pixels
  LayerType type_;     // conv2d or conv1d
  Window2d win_;                                       // the geometry, per axis (window2d.h)
  std::unique_ptr<WinogradConv3x3<Scalar>> winograd_;  // set when the convolution qualifies
};

// One group: the convolution with K-FAC's capability. A sample's gradient is Σ_p gY_p a_pᵀ over its output
// pixels p, a_p the patch im2col unfolds.
template <typename Scalar>
class Conv2d final : public Convolution<Scalar>, public KroneckerFactors<Scalar> {
 public:
  using Convolution<Scalar>::Convolution;
  typename KroneckerFactors<Scalar>::KroneckerShape kronecker_shape() const override {
    return {this->P_, this->O_, this->K_};
  }
  void kronecker_inputs(ConstMatMap<Scalar> X, Scalar* A, Index lda) const override {
    for (Index n = 0; n < X.cols(); ++n) this->im2col(X.col(n).data(), lda, A + n * this->P_, this->K_);
  }
  void kronecker_cotangents(ConstMatMap<Scalar> gY, Scalar* G, Index ldg) const override {
    const Index P = this->P_;
    for (Index n = 0; n < gY.cols(); ++n)  // a sample's cotangent [O, Ho, Wo] is P × O column-major
      for (Index o = 0; o < this->O_; ++o)
        std::copy(gY.col(n).data() + o * P, gY.col(n).data() + (o + 1) * P, G + o * ldg + n * P);
  }
};

// Both convolutions: conv1d on [C, L] is checked and built as the conv2d on [C, 1, L] with a 1 × k kernel.
template <typename Scalar>
std::unique_ptr<Layer<Scalar>> make_convolution(const LayerSpec& spec, const Shape& in, const std::string& where) {
  const bool one = spec.type == LayerType::conv1d;
  const std::string op = one ? "conv1d" : "conv2d";
  LayerSpec s = spec;
  if (one) {  // the width carries the 1-D geometry
    s.kernel_h = s.stride_h = 1;
    s.padding_h = 0;
  }
  if (s.padding_same) {
    // PyTorch pads (k - 1)/2 on each side for odd kernels; even kernels need one more on one side than on the
    // other, which this convolution's symmetric padding cannot express.
    if (s.stride_h != 1 || s.stride_w != 1)
      fail(where, op + " padding=\"same\" needs stride 1 (PyTorch refuses it too)");
    if (s.kernel_h % 2 == 0 || s.kernel_w % 2 == 0)
      fail(where, op + " padding=\"same\" with an even kernel (" +
                      (one ? std::to_string(s.kernel_w) : std::to_string(s.kernel_h) + "x" + std::to_string(s.kernel_w)) +
                      ") pads asymmetrically, which natgrad does not support: use an odd kernel or explicit padding");
    s.padding_h = (s.kernel_h - 1) / 2;
    s.padding_w = (s.kernel_w - 1) / 2;
  }
  if (s.in_channels <= 0 || s.out_channels <= 0 || s.kernel_h <= 0 || s.kernel_w <= 0 || s.stride_h <= 0 ||
      s.stride_w <= 0 || s.padding_h < 0 || s.padding_w < 0 || s.groups <= 0)
    fail(where, op + " needs positive in_channels, out_channels, kernel_size, stride, groups and padding >= 0");
  if (s.in_channels % s.groups != 0 || s.out_channels % s.groups != 0)
    fail(where, op + " with groups=" + std::to_string(s.groups) + " needs in_channels (" +
                    std::to_string(s.in_channels) + ") and out_channels (" + std::to_string(s.out_channels) +
                    ") divisible by groups");
  if (one ? (in.size() != 2 || in[0] != s.in_channels) : (in.size() != 3 || in[0] != s.in_channels))
    fail(where, op + " expects input shape [" + std::to_string(s.in_channels) + (one ? ", L]" : ", H, W]") +
                    " but receives " + shape_to_string(in));
  const Index H = one ? 1 : in[1], W = in.back();
  if (double(s.out_channels) * double(s.in_channels) * double(s.kernel_h) * double(s.kernel_w) >
          kMaxElements ||
      double(s.padding_h) + double(H) > kMaxElements ||
      double(s.padding_w) + double(W) > kMaxElements ||
      double(s.kernel_h) * double(s.kernel_w) * double(H + 2 * s.padding_h) *
              double(W + 2 * s.padding_w) * double(s.in_channels) >
          kMaxElements)
    fail(where, op + " sizes are absurdly large");
  const WindowAxis h = WindowAxis::make(H, s.kernel_h, s.stride_h, s.padding_h),
                   w = WindowAxis::make(W, s.kernel_w, s.stride_w, s.padding_w);
  if (!h.fits() || !w.fits())
    fail(where, op + " kernel " + (one ? "" : std::to_string(s.kernel_h) + "x") + std::to_string(s.kernel_w) +
                    " is larger than its padded input " + shape_to_string(in));
  const Index ho = h.out, wo = w.out;
  if (double(s.out_channels) * double(ho) * double(wo) > kMaxElements)
    fail(where, op + " output is absurdly large");
  const Shape out = one ? Shape{s.out_channels, wo} : Shape{s.out_channels, ho, wo};
  if (s.groups == 1) return std::make_unique<Conv2d<Scalar>>(s, in, out);
  return std::make_unique<Convolution<Scalar>>(s, in, out);  // no K-FAC factors (above)
}

}  // namespace

template <typename Scalar>
std::unique_ptr<Layer<Scalar>> make_conv2d(const LayerSpec& spec, const Shape& in, const std::string& where) {
  return make_convolution<Scalar>(spec, in, where);
}
template <typename Scalar>
std::unique_ptr<Layer<Scalar>> make_conv1d(const LayerSpec& spec, const Shape& in, const std::string& where) {
  return make_convolution<Scalar>(spec, in, where);
}

template std::unique_ptr<Layer<float>> make_conv2d<float>(const LayerSpec&, const Shape&, const std::string&);
template std::unique_ptr<Layer<double>> make_conv2d<double>(const LayerSpec&, const Shape&,
                                                            const std::string&);
template std::unique_ptr<Layer<float>> make_conv1d<float>(const LayerSpec&, const Shape&, const std::string&);
template std::unique_ptr<Layer<double>> make_conv1d<double>(const LayerSpec&, const Shape&,
                                                            const std::string&);

}  // namespace detail
}  // namespace natgrad
