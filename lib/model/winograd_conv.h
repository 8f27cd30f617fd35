// Private: Winograd's minimal filtering F(m×m, 3×3) for the 3×3 stride-1 convolutions (Lavin & Gray, "Fast
// Algorithms for Convolutional Neural Networks", 2016), with output tiles of m = 2 or 4, in all four passes a
// Fisher-vector product runs.
//
// The output is cut into m×m tiles; tile t of output channel o reads the α×α input patch d_c(t) (α = m + 2) of
// every input channel c, and
//     y_o(t) = Aᵀ [ Σ_c U_oc ⊙ V_c(t) ] A,   U_oc = G w_oc Gᵀ,   V_c(t) = Bᵀ d_c(t) B        (α×α each)
// is exact in exact arithmetic. For each of the α² positions ξ of the transform domain the channel sum is one
// matrix product, M_ξ (tiles × O) = V_ξ (tiles × C) · U_ξ (C × O): α² multiplications per tile and channel pair
// for m² outputs, against 9 per output directly — 2.25× fewer for m = 2, 4× for m = 4.
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

#include <memory>

namespace natgrad {
namespace detail {

template <typename Scalar>
class WinogradConv3x3 {
 public:
  virtual ~WinogradConv3x3() = default;

  /// Whether a convolution uses this algorithm: a 3×3 kernel, stride 1, and at least kMinChannels input and
  /// output channels. With few channels the transforms (a fixed cost per tile and channel) outweigh the
  /// multiplications saved, and im2col's GEMM is the faster path.
  static constexpr Index kMinChannels = 16;
  static bool applies(Index C, Index O, Index kh, Index kw, Index sh, Index sw) {
    return kh == 3 && kw == 3 && sh == 1 && sw == 1 && C >= kMinChannels && O >= kMinChannels;
  }
  /// The tile size the layers use for an Ho × Wo output (see winograd_conv.cpp).
  static Index default_tile(Index Ho, Index Wo);

  /// C input channels of H × W, O output channels of Ho × Wo, padding (ph, pw), output tiles of `tile` (2 or 4).
  static std::unique_ptr<WinogradConv3x3> make(Index C, Index O, Index H, Index W, Index ph, Index pw, Index Ho,
                                               Index Wo, Index tile);

  virtual Index tile() const = 0;
  /// Scalars of scratch forward, jvp and vjp need for a chunk of up to `ncols` samples.
  virtual Index scratch_size(Index ncols) const = 0;
  /// y = conv(x, w) + bias (bias may be null) for n samples, CHW, sample strides C·H·W and O·Ho·Wo.
  virtual void forward(const Scalar* w, const Scalar* bias, const Scalar* x, Index n, Scalar* y,
                       Scalar* scratch) const = 0;
  /// dy = conv(x, dw) + conv(dx, w) + dbias (dx, dbias may be null).
  virtual void jvp(const Scalar* w, const Scalar* dw, const Scalar* dbias, const Scalar* x, const Scalar* dx,
                   Index n, Scalar* dy, Scalar* scratch) const = 0;
  /// gx = convᵀ(gy, w) (set; skipped when gx is null), gw += Σ_n ∂/∂w ⟨gy, conv(x, w)⟩ and gbias += Σ gy
  /// (skipped when gw is null; gbias may be null).
  virtual void vjp(const Scalar* w, const Scalar* x, const Scalar* gy, Index n, Scalar* gx, Scalar* gw,
                   Scalar* gbias, Scalar* scratch) const = 0;
};

}  // namespace detail
}  // namespace natgrad
