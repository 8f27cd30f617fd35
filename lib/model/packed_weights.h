// Private: what a PackedWeights holds (network.h) — per node with packed weights its three operands in one
// aligned buffer, and the pieces of packing work — made by Network::make_packed_weights
// (packed_weights.cpp) and read by the R-op and backprop (network.cpp).
#pragma once

#include <natgrad/model/network.h>

#include <array>
#include <vector>

#include "model/layers.h"

namespace natgrad {

template <typename Scalar>
struct PackedWeights<Scalar>::Parts {
  using Products = detail::PackedWeightProducts<Scalar>;
  // Per node, its operands indexed by Products::Operand (data == nullptr: not packed).
  std::vector<std::array<detail::PackedLhs<Scalar>, 3>> operands;
  struct Piece {
    std::size_t node;
    int operand;
    Index piece;  // of that operand's PackedLhs::pieces()
  };
  std::vector<Piece> pieces;
  typename Workspace<Scalar>::Buffer data;

  /// Node l's operands when its dW is packed, else nullptr.
  const std::array<detail::PackedLhs<Scalar>, 3>* of(std::size_t l) const {
    return l < operands.size() && operands[l][Products::tangent].data ? &operands[l] : nullptr;
  }
};

}  // namespace natgrad
