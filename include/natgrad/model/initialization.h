/// \file initialization.h
/// \brief Parameters initialized as PyTorch initializes the same modules.
///
/// nn.Linear and nn.Conv2d draw weights and biases uniformly in ±1/√fan_in (kaiming_uniform with a = √5
/// gives exactly that bound for the weights), fan_in = in_features or in_channels·kh·kw. Draws come from
/// the counter-based generator keyed by (seed, parameter index), so the values are reproducible; they are
/// not PyTorch's own random stream.
///
/// \code
/// natgrad::Vec<float> theta = natgrad::init_parameters<float>(model, /*seed=*/0);
/// \endcode
#pragma once

#include <natgrad/model/sequential.h>

#include <cstdint>

namespace natgrad {

template <typename Scalar>
Vec<Scalar> init_parameters(const Sequential<Scalar>& model, uint64_t seed);

}  // namespace natgrad
