// Weights packed once per pass (PackedWeights, network.h): which operands each node packs, their place in
// one buffer, and the packing, piece by piece.
#include "model/packed_weights.h"

#include <natgrad/model/network.h>

#include "core/check.h"
#include "model/network_schedule.h"
#include "model/node_timer.h"

namespace natgrad {

template <typename Scalar>
PackedWeights<Scalar>::PackedWeights() : p_(std::make_unique<Parts>()) {}
template <typename Scalar>
PackedWeights<Scalar>::~PackedWeights() = default;
template <typename Scalar>
PackedWeights<Scalar>::PackedWeights(PackedWeights&&) noexcept = default;
template <typename Scalar>
PackedWeights<Scalar>& PackedWeights<Scalar>::operator=(PackedWeights&&) noexcept = default;
template <typename Scalar>
Index PackedWeights<Scalar>::pieces() const {
  return static_cast<Index>(p_->pieces.size());
}

template <typename Scalar>
bool Network<Scalar>::packs_weights(std::size_t l) const {
  return sched_->packs[l] != nullptr;
}

template <typename Scalar>
Index Network<Scalar>::packed_columns_per_sample(std::size_t l) const {
  return sched_->packs[l] ? sched_->packs[l]->columns_per_sample() : 0;
}

namespace {
// The operands node l packs, as PackedLhs shapes (data unset): dW always; W and Wᵀ when its input has a
// tangent (the R-op's W dX) and so wants a cotangent (backprop's Wᵀ gY).
template <typename Scalar>
std::array<detail::PackedLhs<Scalar>, 3> operand_shapes(const detail::PackedWeightProducts<Scalar>& products,
                                                        bool input_has_tangent) {
  using Products = detail::PackedWeightProducts<Scalar>;
  std::array<detail::PackedLhs<Scalar>, 3> shapes;
  for (int op : {Products::tangent, Products::weight, Products::transposed}) {
    if (op != Products::tangent && !input_has_tangent) continue;
    Index m = 0, k = 0;
    products.weight_operand(static_cast<typename Products::Operand>(op), nullptr, m, k);
    shapes[static_cast<std::size_t>(op)] = detail::PackedLhs<Scalar>(m, k);
  }
  return shapes;
}
}  // namespace

template <typename Scalar>
Index Network<Scalar>::packed_weights_size(const std::vector<bool>& nodes) const {
  Index total = 0;
  for (std::size_t l = 0; l < layers_.size(); ++l) {
    if (!nodes[l] || !sched_->packs[l]) continue;
    const int in = inputs_[l][0];
    for (const auto& op :
         operand_shapes(*sched_->packs[l], in > 0 && sched_->needs_grad[static_cast<std::size_t>(in - 1)]))
      total += op.m > 0 ? op.size() : 0;
  }
  return total;
}

template <typename Scalar>
PackedWeights<Scalar> Network<Scalar>::make_packed_weights(const std::vector<bool>& nodes) const {
  PackedWeights<Scalar> packed;
  typename PackedWeights<Scalar>::Parts& p = *packed.p_;
  p.data.resize(static_cast<std::size_t>(packed_weights_size(nodes)));
  p.operands.resize(layers_.size());
  Scalar* next = p.data.data();  // each operand's size is a multiple of the alignment
  for (std::size_t l = 0; l < layers_.size(); ++l) {
    if (!nodes[l] || !sched_->packs[l]) continue;
    const int in = inputs_[l][0];
    p.operands[l] =
        operand_shapes(*sched_->packs[l], in > 0 && sched_->needs_grad[static_cast<std::size_t>(in - 1)]);
    for (int op = 0; op < 3; ++op) {
      detail::PackedLhs<Scalar>& A = p.operands[l][static_cast<std::size_t>(op)];
      if (A.m == 0) continue;
      A.data = next;
      next += A.size();
      for (Index i = 0; i < A.pieces(); ++i) p.pieces.push_back({l, op, i});
    }
  }
  return packed;
}

template <typename Scalar>
void Network<Scalar>::pack_weights(const Scalar* theta, const Scalar* v, Index piece,
                                   PackedWeights<Scalar>& packed, std::vector<double>* seconds) const {
  using Products = detail::PackedWeightProducts<Scalar>;
  const auto& pc = packed.p_->pieces[static_cast<std::size_t>(piece)];
  const bool tangent = pc.operand == Products::tangent;
  if (tangent ? !v : !theta) return;
  const detail::NodeTimer timer(seconds, pc.node);
  Index m = 0, k = 0;
  const detail::GemmOperand<Scalar> A = sched_->packs[pc.node]->weight_operand(
      static_cast<typename Products::Operand>(pc.operand), (tangent ? v : theta) + offsets_[pc.node], m, k);
  detail::pack_lhs(A, packed.p_->operands[pc.node][static_cast<std::size_t>(pc.operand)], pc.piece);
}

#define NATGRAD_INSTANTIATE(S)                                                                               \
  template class PackedWeights<S>;                                                                           \
  template bool Network<S>::packs_weights(std::size_t) const;                                                \
  template Index Network<S>::packed_columns_per_sample(std::size_t) const;                                   \
  template Index Network<S>::packed_weights_size(const std::vector<bool>&) const;                            \
  template PackedWeights<S> Network<S>::make_packed_weights(const std::vector<bool>&) const;                 \
  template void Network<S>::pack_weights(const S*, const S*, Index, PackedWeights<S>&, std::vector<double>*) \
      const;
NATGRAD_INSTANTIATE(float)
NATGRAD_INSTANTIATE(double)
#undef NATGRAD_INSTANTIATE

}  // namespace natgrad
