/// \file random.h
/// \brief Counter-based random draws keyed by (seed, sample index, draw index).
///
/// Every random number in natgrad (Monte-Carlo labels, Hutchinson probes, initialization) is a pure
/// function of a key and a counter, computed with the Philox4x32-10 generator of Random123 (Salmon et al.,
/// SC'11). No generator state is shared, so a draw is the same whichever thread or process computes it,
/// and results do not depend on the thread count.
///
/// \code
/// natgrad::CounterRng rng(/*seed=*/42, /*stream=*/7);   // e.g. stream = sample index
/// double u = rng.uniform(0);                           // draw 0 of that stream, in [0, 1)
/// double z = rng.normal(1);                            // draw 1, standard normal
/// \endcode
#pragma once

#include <cstdint>

namespace natgrad {

/// A random stream identified by (seed, stream); draw i is a deterministic function of (seed, stream, i).
class CounterRng {
 public:
  CounterRng(uint64_t seed, uint64_t stream) : seed_(seed), stream_(stream) {}

  /// 64 random bits for draw `counter`.
  uint64_t bits(uint64_t counter) const;
  /// Uniform in [0, 1) with 53 random bits.
  double uniform(uint64_t counter) const;
  /// Standard normal (Box-Muller on the two 32-bit halves' words of one Philox block).
  double normal(uint64_t counter) const;
  /// +1 or −1 with equal probability.
  double rademacher(uint64_t counter) const { return (bits(counter) >> 63) ? 1.0 : -1.0; }

 private:
  uint64_t seed_;
  uint64_t stream_;
};

/// Domain tags mixed into the stream so unrelated uses of one seed never share draws.
enum class RngDomain : uint64_t { mc_labels = 1, probes = 2, init = 3, shuffle = 4, kfac_signs = 5, steps = 6 };

/// The stream for (domain, index): e.g. (mc_labels, sample n).
inline uint64_t rng_stream(RngDomain domain, uint64_t index) {
  return (static_cast<uint64_t>(domain) << 56) ^ index;
}

}  // namespace natgrad
