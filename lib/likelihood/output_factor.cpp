// The closed-form factor of the exact output Fisher, one column at a time (K-FAC's output side).
#include <natgrad/core/random.h>
#include <natgrad/likelihood/output_curvature.h>

#include "core/link_functions.h"

#include <cmath>
#include <vector>

namespace natgrad {

template <typename Scalar>
void exact_fisher_factor(LikelihoodKind likelihood, ConstMatMap<Scalar> Z, Index c, uint64_t seed, Index sample0,
                         MatMap<Scalar> S, Index positions, const int64_t* labels) {
  const Index T = positions, C = Z.rows() / T;
  std::vector<Scalar> p(static_cast<std::size_t>(C));
  S.setZero();
  for (Index j = 0; j < Z.cols(); ++j) {
    const CounterRng rng(seed, rng_stream(RngDomain::kfac_signs, static_cast<uint64_t>(sample0 + j)));
    for (Index t = 0; t < T; ++t) {
      if (labels && likelihood == LikelihoodKind::categorical && labels[j * T + t] == kIgnoreIndex)
        continue;  // an ignored position: its block stays zero
      const Scalar sign = T > 1 ? Scalar(rng.rademacher(static_cast<uint64_t>(c * T + t))) : Scalar(1);
      const Scalar* z = Z.col(j).data() + t * C;
      Scalar* s = S.col(j).data() + t * C;
      switch (likelihood) {
        case LikelihoodKind::categorical: {
          // √p_c (e_c − p); 1 − p_c summed from the other classes, which does not cancel when p_c ≈ 1.
          detail::softmax(z, C, p.data());
          const Scalar root = std::sqrt(p[static_cast<std::size_t>(c)]);
          Scalar others = 0;
          for (Index i = 0; i < C; ++i)
            if (i != c) {
              s[i] = -sign * root * p[static_cast<std::size_t>(i)];
              others += p[static_cast<std::size_t>(i)];
            }
          s[c] = sign * root * others;
          break;
        }
        case LikelihoodKind::bernoulli:
          s[c] = sign * std::sqrt(detail::sigmoid_derivative(z[c]));
          break;
        case LikelihoodKind::gaussian:
          s[c] = sign;
          break;
      }
    }
  }
}

template void exact_fisher_factor<float>(LikelihoodKind, ConstMatMap<float>, Index, uint64_t, Index, MatMap<float>,
                                         Index, const int64_t*);
template void exact_fisher_factor<double>(LikelihoodKind, ConstMatMap<double>, Index, uint64_t, Index,
                                          MatMap<double>, Index, const int64_t*);

}  // namespace natgrad
