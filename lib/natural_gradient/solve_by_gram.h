// Private: the Gram solver inside solve_natural_gradient (SolverKind::smw, or automatic's choice).
#pragma once

#include <natgrad/natural_gradient/solve_natural_gradient.h>

#include <string>

namespace natgrad {
namespace detail {

/// Why the options rule the Gram solver out, whatever the batch ("" if they do not): a damping ≤ 0, a
/// preconditioner, deflation.
std::string gram_ruled_out(const NaturalGradientOptions& o);

/// Whether the Gram of `curvature_samples` samples is small enough for automatic (rows and bytes) or, for
/// smw, within gram_max_bytes; *why says so in words either way ("1280 rows, 26.6 MB").
template <typename Scalar>
bool gram_fits(const Network<Scalar>& model, Index curvature_samples, const NaturalGradientOptions& o,
               bool automatic, std::string* why);

/// The direction(s) by the Gram of F's batch, with the true residual of each (one product each), and, when
/// asked, the exact spectrum, the condition numbers and the comparisons. `own_gradient`: r.gradient is F's
/// own gradient (the push-through form applies).
template <typename Scalar>
void solve_by_gram(FisherOperator<Scalar>& F, bool own_gradient, const NaturalGradientOptions& o,
                   NaturalGradientResult<Scalar>& r);

}  // namespace detail
}  // namespace natgrad
