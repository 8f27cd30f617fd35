/// \file damped_condition.h
/// \brief The condition number of F + λI for a Fisher operator, with what is known of F's null space.
///
/// λ_min(F) = 0 is known without Lanczos when F is provably singular: softmax ignores a common shift of the
/// logits, so for a categorical likelihood behind a final linear layer the directions ΔW = 1aᵀ, Δb = 1c
/// change no prediction; and rank F ≤ N·C in general (N the samples over all ranks; with a likelihood per
/// position, M·C/T over the M positions that count, FisherOperator::counted_positions(): ignored targets
/// shrink the bound). Otherwise λ_min comes
/// from Lanczos (condition_number()); if that fails and λ > 0, (λ_max + λ)/λ is reported as an upper bound,
/// and the method says so.
///
/// \code
/// F.set_damping(0);
/// natgrad::ConditionEstimate c = natgrad::damped_condition_number(F, 1e-3, top.eigenvalues[0]);
/// \endcode
#pragma once

#include <natgrad/curvature/fisher_operator.h>
#include <natgrad/solvers/condition_number.h>

#include <limits>

namespace natgrad {

/// F must have damping 0 (the condition number is of F + `damping`·I). `known_lambda_max`: λ_max(F) when a
/// spectrum already found it (no Lanczos for it then). Collective when F's batch is shared by ranks.
template <typename Scalar>
ConditionEstimate damped_condition_number(const FisherOperator<Scalar>& F, double damping,
                                          double known_lambda_max = std::numeric_limits<double>::quiet_NaN());

}  // namespace natgrad
