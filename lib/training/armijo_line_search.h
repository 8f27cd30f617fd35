// Private: the backtracking (Armijo) line search on the step size η of an update s(η) (Nocedal & Wright,
// Algorithm 3.1): try η, shrink·η, shrink²·η, … and take the first whose loss shows sufficient decrease,
// L(θ + s(η)) ≤ L(θ) + c·gᵀs(η).
#pragma once

#include <natgrad/core/types.h>

#include <cmath>

#include "core/function_ref.h"

namespace natgrad {
namespace detail {

struct ArmijoRule {
  double c = 1e-4;        ///< sufficient-decrease constant, in (0, 1)
  double shrink = 0.5;    ///< η ← shrink·η after a failed trial, in (0, 1)
  Index max_shrinks = 8;  ///< trials: at most 1 + max_shrinks
};

struct ArmijoResult {
  double eta = 0;         ///< the η accepted, or the last one tried
  double loss = 0;        ///< L(θ + s(eta)) (NaN when not finite)
  Index trials = 0;       ///< values of η tried
  bool accepted = false;  ///< eta satisfies the sufficient decrease with a finite loss
};

/// loss(η) = L(θ + s(η)), slope(η) = gᵀs(η); loss0 = L(θ). `first_loss`, when not null, is loss(eta) known
/// already (not evaluated again).
inline ArmijoResult armijo_search(double loss0, double eta, const ArmijoRule& rule,
                                  FunctionRef<double(double)> loss, FunctionRef<double(double)> slope,
                                  const double* first_loss = nullptr) {
  ArmijoResult r;
  for (Index t = 0; t <= rule.max_shrinks; ++t, eta *= rule.shrink) {
    r.eta = eta;
    r.loss = t == 0 && first_loss ? *first_loss : loss(eta);
    ++r.trials;
    if (std::isfinite(r.loss) && r.loss <= loss0 + rule.c * slope(eta)) {
      r.accepted = true;
      break;
    }
  }
  return r;
}

}  // namespace detail
}  // namespace natgrad
