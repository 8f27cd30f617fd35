// Private: how a Network runs its passes, fixed when it is built (network_build.cpp) — each node's
// capabilities, asked once, the fused activation + max-pool pairs, and the buffer plan a Workspace follows —
// and what a Workspace holds (workspace_buffers.h).
#pragma once

#include <natgrad/model/network.h>

#include <vector>

#include "model/layers.h"

namespace natgrad {

template <typename Scalar>
struct Network<Scalar>::Schedule {
  std::size_t max_operands = 1;
  // needs_grad[l]: node l has parameters or reads a value that depends on them (the R-op's tangent and
  // backprop's cotangent are zero or unneeded elsewhere).
  std::vector<bool> needs_grad;
  // Per node, its capabilities (nullptr: it lacks one): the public ones (layer.h) and the network's own
  // (layers.h): merge nodes (add, cat), layers that keep values from their forward pass (attention; only
  // when they keep some), and layers whose chunk GEMMs can run on weights packed once per pass (linear).
  std::vector<const BlockGradient<Scalar>*> block;
  std::vector<const KroneckerFactors<Scalar>*> kronecker;
  std::vector<const SquaredGradients<Scalar>*> squared;
  std::vector<const TokenInput<Scalar>*> tokens;
  std::vector<Buffers<Scalar>*> buffers;
  std::vector<const detail::MultiInput<Scalar>*> merge;
  std::vector<const detail::SavesForward<Scalar>*> saves;
  std::vector<const detail::PackedWeightProducts<Scalar>*> packs;
  // Whether node l declared scratch (if not, its passes get nullptr).
  std::vector<bool> uses_scratch;
  // fused[l]: node l is element-wise and read only by a max-pool; jvp and vjp run the pair as one pass at
  // the pool that touches only the selected inputs (see jvp_fused / vjp_fused in network.cpp).
  // fused_act[p]: for that pool p, the activation it runs with, else nullptr.
  std::vector<bool> fused;
  std::vector<const detail::ElementwiseDerivative<Scalar>*> fused_act;
  // The buffer plan: the workspace slot of node l's tangent (jvp), of value v's cotangent (backprop), and
  // whether node l's contribution to its input i's cotangent is added to one already there (fan-out) rather
  // than written.
  std::vector<int> tangent_slot, cotangent_slot;
  // view[l]: node l is a ValueView: in the R-op its output's tangent is its input's (no slot, no copy).
  // shares_cotangent[l]: in backprop its input's cotangent is its output's slot (the view is the input's only
  // contribution so far in reverse order), so the node is skipped.
  std::vector<bool> view, shares_cotangent;
  std::vector<std::vector<bool>> accumulate;
  int num_slots = 0;
  std::vector<Index> slot_width;  // per slot, the widest value it holds
  Index sum_width = 0;            // the widest cotangent added at fan-out
  bool has_fan_out = false;
};

}  // namespace natgrad
