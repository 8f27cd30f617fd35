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

/// No tensor or activation may exceed 2^40 scalars: sizes are checked in floating point before they are
/// multiplied in integers, so a hostile spec cannot overflow.
constexpr double kMaxElements = 1099511627776.0;

}  // namespace detail
}  // namespace natgrad
