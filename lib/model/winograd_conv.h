// Private: Winograd's minimal filtering F(2×2, 3×3) for the 3×3 stride-1 convolutions (Lavin & Gray, "Fast
// Algorithms for Convolutional Neural Networks", 2016), in all four passes a Fisher-vector product runs.
//
// The output is cut into 2×2 tiles; tile t of output channel o reads the 4×4 input patch d_c(t) of every
// input channel c, and
//     y_o(t) = Aᵀ [ Σ_c U_oc ⊙ V_c(t) ] A,   U_oc = G w_oc Gᵀ,   V_c(t) = Bᵀ d_c(t) B        (4×4 each)
// is exact in exact arithmetic. For each of the 16 positions ξ of the 4×4 transform domain the channel sum is
// one matrix product, M_ξ (tiles × O) = V_ξ (tiles × C) · U_ξ (C × O): 16 products of depth C per tile instead
// of im2col's 36 (four outputs times nine taps), 2.25× fewer multiplications.
//
// Every pass is this map or its adjoint:
//   forward   M_ξ = V_ξ(x) U_ξ(w)                        then y = Aᵀ M A (+ bias)
//   R-op      M_ξ = [V_ξ(x) V_ξ(dx)] [U_ξ(dw); U_ξ(w)]     one product of depth 2C, as the im2col R-op
//   backprop  Ŷ_ξ = (A gy Aᵀ)_ξ, the adjoint of the output transform, then
//             input cotangent   X_ξ = Ŷ_ξ U_ξᵀ,  gx = Σ_t B X(t) Bᵀ   (the adjoint of the input transform)
//             weight gradient   Z_ξ = Σ_t V_ξᵀ Ŷ_ξ,  gw_oc += Gᵀ Z_oc G  (the adjoint of the weight transform)
// so the backprop is the exact transpose of the forward map (the adjoint identity holds to rounding), and the
// weight gradient is accumulated in the transform domain over a call's samples, transformed once at the end.
//
// Samples are processed in blocks of b whose tiles are stacked as the rows of each V_ξ, so each product has
// b·tiles rows. Everything runs in a fixed order inside a call: results do not depend on the thread count.
#pragma once

#include <natgrad/core/types.h>

namespace natgrad {
namespace detail {

template <typename Scalar>
class WinogradConv3x3 {
 public:
  /// Whether a convolution uses this algorithm: a 3×3 kernel, stride 1, and at least kMinChannels input and
  /// output channels. With few channels the transforms (a fixed cost per tile and channel) outweigh the
  /// multiplications saved, and im2col's GEMM is the faster path.
  static constexpr Index kMinChannels = 16;
  static bool applies(Index C, Index O, Index kh, Index kw, Index sh, Index sw) {
    return kh == 3 && kw == 3 && sh == 1 && sw == 1 && C >= kMinChannels && O >= kMinChannels;
  }

  /// C input channels of H × W, O output channels of Ho × Wo, padding (ph, pw).
  WinogradConv3x3(Index C, Index O, Index H, Index W, Index ph, Index pw, Index Ho, Index Wo);

  /// Scalars of scratch forward, jvp and vjp need for a chunk of up to `ncols` samples.
  Index scratch_size(Index ncols) const;

  /// y = conv(x, w) + bias (bias may be null) for n samples, CHW, sample strides C·H·W and O·Ho·Wo.
  void forward(const Scalar* w, const Scalar* bias, const Scalar* x, Index n, Scalar* y, Scalar* scratch) const;
  /// dy = conv(x, dw) + conv(dx, w) + dbias (dx, dbias may be null).
  void jvp(const Scalar* w, const Scalar* dw, const Scalar* dbias, const Scalar* x, const Scalar* dx, Index n,
           Scalar* dy, Scalar* scratch) const;
  /// gx = convᵀ(gy, w) (set; skipped when gx is null), gw += Σ_n ∂/∂w ⟨gy, conv(x, w)⟩ and gbias += Σ gy
  /// (skipped when gw is null; gbias may be null).
  void vjp(const Scalar* w, const Scalar* x, const Scalar* gy, Index n, Scalar* gx, Scalar* gw, Scalar* gbias,
           Scalar* scratch) const;

 private:
  Index block(Index ncols) const;
  // The scratch layout of a block of b samples with `width` stacked input tensors (2 for the R-op).
  struct Layout {
    Index rows;       // b·T, the rows of every transform-domain matrix
    Index u, v, m;    // offsets of U (16 × width·C × O), V (16 × rows × width·C), M or Ŷ (16 × rows × O)
    Index z, plane;   // Z (16 × C × O, backprop), a padded plane
    Index pack, end;  // the GEMM packing space, and the total
  };
  Layout layout(Index b, Index width) const;

  // The transforms: rows is the leading dimension of every transform-domain matrix and xs / ms / ys the
  // distance between its 16 matrices; plane is scratch for one padded channel plane.
  void transform_weights(const Scalar* w, Index c0, Index ldu, Scalar* U) const;
  void input_transform(const Scalar* x, Index b, Index c0, Index rows, Index xs, Scalar* V, Scalar* plane) const;
  void output_transform(const Scalar* M, Index b, Index rows, Index ms, const Scalar* bias, Scalar* y,
                        Scalar* plane) const;
  void output_adjoint(const Scalar* gy, Index b, Index rows, Index ys, Scalar* Yhat, Scalar* plane) const;
  void input_adjoint(const Scalar* X, Index b, Index rows, Index xs, Scalar* gx, Scalar* plane) const;
  void weight_adjoint(const Scalar* Z, Scalar* gw) const;
  // M_ξ = V_ξ U_ξ for the 16 ξ, depth `depth`.
  void products(const Layout& L, Index depth, Scalar* s) const;

  Index C_, O_, H_, W_, ph_, pw_, Ho_, Wo_;
  // Tiles: TH rows of TW, T = TH·TW per sample.
  Index TH_, TW_, T_;
  // Scalars of one polyphase plane: (TH + 1) × TW, rounded up.
  Index phase_size() const { return ((TH_ + 1) * TW_ + 15) / 16 * 16; }
  // Writes the h × w map x, offset by (oh, ow), into its polyphase planes (rows of TW), and their shifted copies
  // if `shifted`.
  void split(const Scalar* x, Index h, Index w, Index oh, Index ow, bool shifted, Scalar* P) const;
};

}  // namespace detail
}  // namespace natgrad
