/// \file initialization.h
/// \brief Parameters initialized as PyTorch initializes the same modules.
///
/// nn.Linear and nn.Conv2d draw weights and biases uniformly in ±1/√fan_in (kaiming_uniform with a = √5
/// gives exactly that bound for the weights), fan_in = in_features or in_channels·kh·kw. Draws come from
/// the counter-based generator keyed by (seed, parameter index), so the values are reproducible; they are
/// not PyTorch's own random stream. Layer norm and batch norm start at weight 1 and bias 0, embeddings and a
/// parameter operand of an add at standard normal entries, as PyTorch's modules (and the usual nn.Parameter
/// tables) do.
///
/// \code
/// natgrad::Vec<float> theta = natgrad::init_parameters<float>(model, /*seed=*/0);
/// \endcode
#pragma once

#include <natgrad/model/network.h>

#include <cstdint>

namespace natgrad {

template <typename Scalar>
Vec<Scalar> init_parameters(const Network<Scalar>& model, uint64_t seed);

}  // namespace natgrad
