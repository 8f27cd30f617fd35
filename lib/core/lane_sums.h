// Private: sums over i < n in a fixed order that vectorizes. A plain `s += f(i)` loop is one dependency chain
// the compiler may not reorder (IEEE addition is not associative), so it runs at one addition per FP latency;
// here 16 interleaved partial sums are kept (lane l holds the terms i ≡ l mod 16 of the full blocks), added in
// lane order, then the tail. The order depends on n only, never on threads or alignment.
#pragma once

#include <natgrad/core/types.h>

namespace natgrad {
namespace detail {

/// out[k] = Σ_{i<n} t_k(i) for k < K, where term(i, t) sets t[0 … K−1].
template <int K, typename Scalar, typename Term>
inline void lane_sums(Index n, Term term, Scalar* out) {
  constexpr int L = 16;
  Scalar acc[K][L] = {};
  Index i = 0;
  for (; i + L <= n; i += L)
    for (int l = 0; l < L; ++l) {
      Scalar t[K];
      term(i + l, t);
      for (int k = 0; k < K; ++k) acc[k][l] += t[k];
    }
  for (int k = 0; k < K; ++k) {
    Scalar s = Scalar(0);
    for (int l = 0; l < L; ++l) s += acc[k][l];
    out[k] = s;
  }
  for (; i < n; ++i) {
    Scalar t[K];
    term(i, t);
    for (int k = 0; k < K; ++k) out[k] += t[k];
  }
}

}  // namespace detail
}  // namespace natgrad
