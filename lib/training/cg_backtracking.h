// Private: CG backtracking (Martens 2010, section 4.6). CG minimizes the quadratic model of the loss, not the
// loss: once the model is poor far from θ, a later iterate — longer, closer to the model's minimizer — can
// lower the loss less than an earlier one. So CG's iterates are kept at iterations ⌈γ^j⌉ (j = 0, 1, …; for
// γ = 1.3: 1, 2, 3, 4, 5, 7, 9, 11, 14, 18, 24, …, about log(I)/log γ copies for I iterations) and the last,
// and the step walks back from the last while the loss falls.
#pragma once

#include <natgrad/core/types.h>

#include <cmath>
#include <vector>

#include "core/function_ref.h"

namespace natgrad {
namespace detail {

/// Copies of CG's iterates at iterations ⌈γ^j⌉, taken from CG's x inside its callback (while the callback
/// runs, x holds the iteration's iterate: solvers/conjugate_gradient.h).
template <typename Scalar>
class SavedIterates {
 public:
  /// x: CG's iterate array (n scalars), read at each saved iteration; gamma > 1.
  SavedIterates(double gamma, const Scalar* x, Index n) : gamma_(gamma), x_(x), n_(n) {}

  /// CG's callback: keeps x when `iteration` (1-based) is the next ⌈γ^j⌉.
  void on_iteration(Index iteration) {
    if (double(iteration) < std::ceil(power_)) return;
    iterations_.push_back(iteration);
    iterates_.emplace_back(ConstVecMap<Scalar>(x_, n_));
    while (std::ceil(power_) <= double(iteration)) power_ *= gamma_;  // several j can share an iteration
  }
  const std::vector<Index>& iterations() const { return iterations_; }
  const std::vector<Vec<Scalar>>& iterates() const { return iterates_; }

 private:
  double gamma_, power_ = 1.0;  // power_ = γ^j for the next j
  const Scalar* x_;
  Index n_;
  std::vector<Index> iterations_;
  std::vector<Vec<Scalar>> iterates_;
};

/// Martens' walk back over `count` candidates in CG's order (the last is CG's final iterate): from the last,
/// move to the one before while its loss is lower, and stop at the first that is not (a NaN loss counts as
/// +∞, so a last iterate whose loss is not finite is always walked past). loss(i) is called once for each
/// candidate visited. Returns the index reached: among those visited, the one of least loss.
inline Index walk_back(Index count, FunctionRef<double(Index)> loss, double* reached_loss = nullptr) {
  auto finite_or_inf = [](double v) { return std::isnan(v) ? HUGE_VAL : v; };
  Index at = count - 1;
  double here = finite_or_inf(loss(at));
  while (at > 0) {
    const double before = finite_or_inf(loss(at - 1));
    if (!(before < here)) break;
    --at;
    here = before;
  }
  if (reached_loss) *reached_loss = here;
  return at;
}

}  // namespace detail
}  // namespace natgrad
