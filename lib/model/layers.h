// Private: the factories of the concrete layers, one per file in lib/model/.
#pragma once

#include <natgrad/model/layer.h>

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

[[noreturn]] inline void fail(const std::string& where, const std::string& what) {
  throw std::invalid_argument(where + ": " + what);
}

}  // namespace detail
}  // namespace natgrad
