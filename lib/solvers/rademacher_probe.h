// Private: the Rademacher probe vectors of the stochastic estimators (hutchinson_trace, slq_density and the
// per-module traces of module_spectrum), from the counter-based generator: probe p of a run with seed s is
// keyed by (s, p), so the first m' probes of a run are those of a run with m' probes.
#pragma once

#include <natgrad/core/random.h>
#include <natgrad/core/types.h>

#include <cstdint>

namespace natgrad {
namespace detail {

/// The n entries ±1 of probe `probe` for `seed`.
inline Vec<double> rademacher(Index n, uint64_t seed, uint64_t probe) {
  const CounterRng rng(seed, rng_stream(RngDomain::probes, probe));
  Vec<double> v(n);
  for (Index i = 0; i < n; ++i) v[i] = rng.rademacher(static_cast<uint64_t>(i));
  return v;
}

}  // namespace detail
}  // namespace natgrad
