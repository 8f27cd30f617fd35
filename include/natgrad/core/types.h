/// \file types.h
/// \brief Basic aliases shared by every layer of natgrad: index type, shapes, dense matrix views.
///
/// Batches are stored with **samples as columns**: an activation of a layer with F features on a batch of
/// N samples is an F × N column-major matrix, each column one sample flattened in PyTorch's NCHW order
/// (channel, then row, then column). This makes every layer's work GEMM-shaped.
///
/// \code
/// natgrad::Mat<float> acts(784, 1000);                      // 1000 MNIST images as columns
/// natgrad::ConstMatMap<float> chunk(acts.data() + 784 * 200, 784, 100);  // samples 200..299
/// \endcode
#pragma once

#include <Eigen/Core>
#include <cstdint>
#include <string>
#include <vector>

namespace natgrad {

using Index = Eigen::Index;

template <typename Scalar>
using Mat = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
template <typename Scalar>
using Vec = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;
template <typename Scalar>
using MatMap = Eigen::Map<Mat<Scalar>>;
template <typename Scalar>
using ConstMatMap = Eigen::Map<const Mat<Scalar>>;
template <typename Scalar>
using VecMap = Eigen::Map<Vec<Scalar>>;
template <typename Scalar>
using ConstVecMap = Eigen::Map<const Vec<Scalar>>;

/// The shape of one sample (without the batch dimension), e.g. {1, 28, 28} or {784}.
using Shape = std::vector<Index>;

/// Number of scalars in one sample of the given shape. The product is not checked: a shape read from a
/// file reaches it only after its reader has checked, without overflow, that every partial product of its
/// dimensions fits (safetensors: 2^60 elements, IDX: 2^40 bytes; a model spec's layers: 2^40 scalars).
inline Index shape_size(const Shape& s) {
  Index n = 1;
  for (Index d : s) n *= d;
  return n;
}

/// "[1, 28, 28]" — for error messages.
std::string shape_to_string(const Shape& s);

}  // namespace natgrad
