/// \file sequential.h
/// \brief The former name of Network (a chain is the simplest graph); kept for code written against it.
#pragma once

#include <natgrad/model/network.h>

namespace natgrad {

template <typename Scalar>
using Sequential = Network<Scalar>;

}  // namespace natgrad
