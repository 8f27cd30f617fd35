// Private: the factories of the concrete layers, one per file in lib/model/.
#pragma once

#include <natgrad/model/layer.h>

#include "core/fail.h"

#include <memory>
#include <stdexcept>
#include <string>

namespace natgrad {
namespace detail {

template <typename Scalar>
std::unique_ptr<Layer<Scalar>> make_linear(const LayerSpec& spec, const Shape& in, const std::string& where);
template <typename Scalar>
std::unique_ptr<Layer<Scalar>> make_conv2d(const LayerSpec& spec, const Shape& in, const std::string& where);
template <typename Scalar>
std::unique_ptr<Layer<Scalar>> make_elementwise(const LayerSpec& spec, const Shape& in, const std::string& where);
template <typename Scalar>
std::unique_ptr<Layer<Scalar>> make_flatten(const LayerSpec& spec, const Shape& in, const std::string& where);
template <typename Scalar>
std::unique_ptr<Layer<Scalar>> make_pool2d(const LayerSpec& spec, const Shape& in, const std::string& where);

/// The hooks of the fused activation + max-pool pass (Sequential): an element-wise layer y = φ(x) that scales
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

class SelectionJacobian {
 public:
  virtual ~SelectionJacobian() = default;
  /// True when output o of a sample is its input aux[o] (max-pooling), with aux_per_sample() == output_size().
  virtual bool is_selection() const = 0;
};

/// No tensor or activation may exceed 2^40 scalars: sizes are checked in floating point before they are
/// multiplied in integers, so a hostile spec cannot overflow.
constexpr double kMaxElements = 1099511627776.0;

}  // namespace detail
}  // namespace natgrad
