// Private: the logistic sigmoid, softmax and categorical sampling, written once and used by the likelihoods
// and the activation layers.
#pragma once

#include <natgrad/core/types.h>

#include <algorithm>
#include <cmath>

namespace natgrad {
namespace detail {

/// σ(z) = 1 / (1 + e^{−z}): relatively accurate for every z (it is 1 − σ that loses small values), and 0
/// rather than NaN once e^{−z} overflows.
template <typename Scalar>
Scalar sigmoid(Scalar z) {
  return Scalar(1) / (Scalar(1) + std::exp(-z));
}

/// σ(z)(1 − σ(z)) = σ(z) σ(−z): the product of two accurately computed factors (1 − σ(z) loses everything
/// once σ(z) rounds to 1, near z = 17 in float32).
template <typename Scalar>
Scalar sigmoid_derivative(Scalar z) {
  return sigmoid(z) * sigmoid(-z);
}

/// p = softmax(z) over C entries, computed as exp(z − max z) / Σ: every p_c has full relative accuracy,
/// however small. Returns log Σ_c exp(z_c).
template <typename Scalar>
Scalar softmax(const Scalar* z, Index C, Scalar* p) {
  const Scalar m = *std::max_element(z, z + C);
  Scalar s = 0;
  for (Index c = 0; c < C; ++c) s += (p[c] = std::exp(z[c] - m));
  const Scalar inv = Scalar(1) / s;
  for (Index c = 0; c < C; ++c) p[c] *= inv;
  return m + std::log(s);
}

/// The class y with u·Σp ∈ [cdf_{y−1}, cdf_y) for u ∈ [0, 1): inverse-CDF sampling from p. Scaling u by the
/// computed total (rather than assuming Σp = 1) means the chosen class always has p_y > 0, however the
/// probabilities round.
template <typename Scalar>
Index sample_categorical(const Scalar* p, Index C, double u) {
  double total = 0;
  for (Index c = 0; c < C; ++c) total += double(p[c]);
  const double target = u * total;
  double cdf = 0;
  Index last_positive = 0;
  for (Index c = 0; c < C; ++c) {
    if (!(p[c] > Scalar(0))) continue;
    cdf += double(p[c]);
    last_positive = c;
    if (target < cdf) return c;
  }
  return last_positive;  // reached only if u·total rounds up to total: the last class with p > 0
}

}  // namespace detail
}  // namespace natgrad
