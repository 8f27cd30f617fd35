// Private: the factories of the concrete layers, one per file in lib/model/.
#pragma once

#include <natgrad/model/layer.h>

#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "core/fail.h"
#include "core/gemm.h"

namespace natgrad {
namespace detail {

template <typename Scalar>
std::unique_ptr<Layer<Scalar>> make_linear(const LayerSpec& spec, const Shape& in, const std::string& where);
template <typename Scalar>
std::unique_ptr<Layer<Scalar>> make_conv2d(const LayerSpec& spec, const Shape& in, const std::string& where);
/// nn.Conv1d on [C, L] (conv2d.cpp).
template <typename Scalar>
std::unique_ptr<Layer<Scalar>> make_conv1d(const LayerSpec& spec, const Shape& in, const std::string& where);
template <typename Scalar>
std::unique_ptr<Layer<Scalar>> make_elementwise(const LayerSpec& spec, const Shape& in, const std::string& where);
template <typename Scalar>
std::unique_ptr<Layer<Scalar>> make_flatten(const LayerSpec& spec, const Shape& in, const std::string& where);
template <typename Scalar>
std::unique_ptr<Layer<Scalar>> make_pool2d(const LayerSpec& spec, const Shape& in, const std::string& where);

template <typename Scalar>
std::unique_ptr<Layer<Scalar>> make_identity(const LayerSpec& spec, const Shape& in, const std::string& where);
template <typename Scalar>
std::unique_ptr<Layer<Scalar>> make_global_avgpool(const LayerSpec& spec, const Shape& in, const std::string& where);
template <typename Scalar>
std::unique_ptr<Layer<Scalar>> make_layer_norm(const LayerSpec& spec, const Shape& in, const std::string& where);
template <typename Scalar>
std::unique_ptr<Layer<Scalar>> make_batch_norm(const LayerSpec& spec, const Shape& in, const std::string& where);
template <typename Scalar>
std::unique_ptr<Layer<Scalar>> make_group_norm(const LayerSpec& spec, const Shape& in, const std::string& where);
template <typename Scalar>
std::unique_ptr<Layer<Scalar>> make_embedding(const LayerSpec& spec, const Shape& in, const std::string& where);
/// The core of multihead attention: [T, 3E] projections to [T, E] (attention.cpp).
template <typename Scalar>
std::unique_ptr<Layer<Scalar>> make_attention(const LayerSpec& spec, const Shape& in, const std::string& where);
/// The spec with each multihead_attention node replaced by the three nodes the network runs: "<id>/in_proj"
/// (linear E → 3E with tensors "<name>.in_proj_weight", "<name>.in_proj_bias"), "<id>/attention" and "<id>"
/// (the output projection, module "<name>.out_proj"). Every node gets its id, module name and inputs
/// explicitly, since indices shift. A spec without attention is returned as it is.
ModelSpec expand_attention(const ModelSpec& spec);
/// add, cat (structural.cpp) and mul (product.cpp), which read several values (`in`, one shape per input).
template <typename Scalar>
std::unique_ptr<Layer<Scalar>> make_mul(const std::vector<Shape>& in, const std::string& where);
template <typename Scalar>
std::unique_ptr<Layer<Scalar>> make_reshape(const LayerSpec& spec, const Shape& in, const std::string& where);
template <typename Scalar>
std::unique_ptr<Layer<Scalar>> make_permute(const LayerSpec& spec, const Shape& in, const std::string& where);
/// mean and sum over a sample's dimensions (reduction.cpp).
template <typename Scalar>
std::unique_ptr<Layer<Scalar>> make_reduction(const LayerSpec& spec, const Shape& in, const std::string& where);
template <typename Scalar>
std::unique_ptr<Layer<Scalar>> make_upsample(const LayerSpec& spec, const Shape& in, const std::string& where);
template <typename Scalar>
std::unique_ptr<Layer<Scalar>> make_merge(const LayerSpec& spec, const std::vector<Shape>& in,
                                          const std::string& where);

/// A node that reads several values (add, cat). Its Layer methods see the first input only; Network calls
/// these for the operands, and Layer::vjp (with gX == nullptr) for the parameter gradient of an add with a
/// parameter operand.
template <typename Scalar>
class MultiInput {
 public:
  virtual ~MultiInput() = default;
  /// Y = op(X_0, …, X_{k-1}) on n columns; theta is the node's slice (an add's parameter operand).
  virtual void forward_multi(const Scalar* const* X, const Scalar* theta, Index n, Scalar* Y) const = 0;
  /// dY from the operands' values X and tangents dX (a null entry is zero) and the parameter tangent (null:
  /// zero).
  virtual void jvp_multi(const Scalar* const* X, const Scalar* const* dX, const Scalar* dtheta, Index n,
                         Scalar* dY) const = 0;
  /// gX_i = (∂Y/∂X_i)ᵀ gY on n columns, at the operands' values X, written or (accumulate) added.
  virtual void vjp_operand(std::size_t i, const Scalar* const* X, const Scalar* gY, Index n, Scalar* gX,
                           bool accumulate) const = 0;
};

/// A merge node's Layer: Network runs it through MultiInput, so its single-input passes do nothing (an add
/// with a parameter operand overrides vjp for the parameter gradient).
template <typename Scalar>
class MergeLayer : public Layer<Scalar>, public MultiInput<Scalar> {
 public:
  using Layer<Scalar>::Layer;
  void forward(const Scalar*, ConstMatMap<Scalar>, MatMap<Scalar>, int32_t*) const override {}
  void jvp(const Scalar*, const Scalar*, ConstMatMap<Scalar>, ConstMatMap<Scalar>, const int32_t*, const Scalar*,
           MatMap<Scalar>, Scalar*) const override {}
  void vjp(const Scalar*, ConstMatMap<Scalar>, ConstMatMap<Scalar>, const int32_t*, ConstMatMap<Scalar>, Scalar*,
           Scalar*, Scalar*) const override {}
};

/// The hooks of the fused activation + max-pool pass (Network): an element-wise layer y = φ(x) that scales
/// by φ' at given entries, and a layer whose Jacobian selects one input per output. Internal to the model
/// layer; the concrete layers implement them beside Layer.
template <typename Scalar>
class ElementwiseDerivative {
 public:
  virtual ~ElementwiseDerivative() = default;
  /// out = φ'(x) ∘ in on n scalars, where y = φ(x) (in and out may alias). x may be null unless
  /// derivative_needs_input(): relu, leaky relu (slope ≥ 0), tanh and sigmoid read φ' off y alone.
  virtual void scale_by_derivative(const Scalar* x, const Scalar* y, const Scalar* in, Scalar* out,
                                   Index n) const = 0;
  virtual bool derivative_needs_input() const = 0;
};

/// A parameter-free layer whose R-op and backprop read values its forward pass computed beyond its input
/// and output (attention's probabilities, GELU's derivative). A Network keeps them per sample in
/// ForwardCache::saved and calls these when saved_per_sample() > 0; the plain Layer methods, which have no
/// such cache, recompute them.
template <typename Scalar>
class SavesForward {
 public:
  virtual ~SavesForward() = default;
  /// Scalars kept per sample.
  virtual Index saved_per_sample() const = 0;
  virtual void forward_saving(ConstMatMap<Scalar> X, MatMap<Scalar> Y, Scalar* saved) const = 0;
  virtual void jvp_saved(ConstMatMap<Scalar> X, const Scalar* saved, const Scalar* dX, MatMap<Scalar> dY,
                         Scalar* scratch) const = 0;
  virtual void vjp_saved(ConstMatMap<Scalar> X, const Scalar* saved, ConstMatMap<Scalar> gY, Scalar* gX,
                         Scalar* scratch) const = 0;
};

/// A layer whose GEMMs on a chunk read a weight matrix as their left operand (linear: the R-op's dW X and
/// W dX, backprop's Wᵀ gY). jvp and vjp pack that operand into Eigen's panel format on every call, so a pass
/// over K chunks packs each weight K times; a Network packs it once per pass instead (PackedWeights,
/// Network::pack_weights) and runs these products on the packed operands. Both give the same bits
/// (core/gemm.h: gemm_packed is gemm without the packing).
template <typename Scalar>
class PackedWeightProducts {
 public:
  /// The three operands: the parameter tangent's dW (R-op), W (R-op, when the input has a tangent) and Wᵀ
  /// (backprop's input cotangent).
  enum Operand { tangent = 0, weight = 1, transposed = 2 };
  virtual ~PackedWeightProducts() = default;
  /// Operand `op` as stored in the layer's slice p of a parameter vector (θ, or v for `tangent`), with its
  /// rows m and depth k.
  virtual GemmOperand<Scalar> weight_operand(Operand op, const Scalar* p, Index& m, Index& k) const = 0;
  /// GEMM columns per sample (the rows of a sequence sample).
  virtual Index columns_per_sample() const = 0;
  /// jvp on the packed dW and, when dX is not null, the packed W.
  virtual void jvp_packed(const Scalar* dtheta, ConstMatMap<Scalar> X, const Scalar* dX, MatMap<Scalar> dY,
                          const PackedLhs<Scalar>& dW, const PackedLhs<Scalar>* W, Scalar* scratch) const = 0;
  /// vjp's input cotangent gX = Wᵀ gY on the packed Wᵀ.
  virtual void input_cotangent_packed(ConstMatMap<Scalar> gY, Scalar* gX, const PackedLhs<Scalar>& Wt,
                                      Scalar* scratch) const = 0;
};

/// A layer whose output is its input's values in the same order (flatten, reshape, identity, dropout in
/// evaluation mode). Its forward pass copies once per θ; a Network's R-op and backprop copy nothing for it:
/// the tangent of its output is its input's tangent, and its input's cotangent is its output's where no other
/// reader adds to it (network_build.cpp's buffer plan).
class ValueView {
 public:
  virtual ~ValueView() = default;
};

class SelectionJacobian {
 public:
  virtual ~SelectionJacobian() = default;
  /// True when output o of a sample is its input aux[o] (max-pooling), with aux_per_sample() == output_size().
  virtual bool is_selection() const = 0;
};

/// add, cat and mul read several values (MultiInput); every other node reads one.
inline bool is_merge(LayerType t) { return t == LayerType::add || t == LayerType::cat || t == LayerType::mul; }

/// No tensor or activation may exceed 2^40 scalars: sizes are checked in floating point before they are
/// multiplied in integers, so a hostile spec cannot overflow.
constexpr double kMaxElements = 1099511627776.0;

}  // namespace detail
}  // namespace natgrad
