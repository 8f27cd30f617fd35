// Private: one row of a map split into its m column phases, and back (the polyphase planes of the Winograd
// transforms, winograd_conv.cpp).
//
// Column m·k + e of a row is entry k of phase e, which lives at dst[e] + k of a row of phase planes; only the
// k < hi[e] are moved (the rest of a phase row is padding, or a column the caller handles itself). The rows of
// the benchmark maps are short (28 columns: 7 per phase for m = 4), too short for the compiler to vectorize a
// loop over k, so with AVX-512 a row moves 32 columns at a time: two masked loads, one two-source permute per
// phase and one masked store per phase (to_phases), or the reverse (from_phases). Elsewhere, and for double,
// the same moves run as scalar loops. Both move the same values: the results are bit-identical.
#pragma once

#include <natgrad/core/types.h>

#include <cstdint>

#if defined(__AVX512F__) && defined(__AVX512VL__) && defined(__AVX512DQ__) && defined(__BMI2__)
#include <immintrin.h>
#define NATGRAD_PHASE_ROWS_AVX512 1
#endif

namespace natgrad {
namespace detail {

/// Where a row's columns go: columns m·k + e, k < hi[e], are entries dst[e] + k of the phase rows.
template <int m>
struct PhaseColumns {
  Index dst[m], hi[m];
};

/// row[dst[e] + k] = src[m·k + e] for k < hi[e].
template <int m, typename Scalar>
inline void to_phases(const PhaseColumns<m>& pc, const Scalar* src, Scalar* row) {
  for (int e = 0; e < m; ++e) {
    Scalar* d = row + pc.dst[e];
    for (Index k = 0; k < pc.hi[e]; ++k) d[k] = src[m * k + e];
  }
}
/// out[m·k + e] = row[dst[e] + k] + add for k < hi[e].
template <int m, typename Scalar>
inline void from_phases(const PhaseColumns<m>& pc, const Scalar* row, Scalar add, Scalar* out) {
  for (int e = 0; e < m; ++e) {
    const Scalar* d = row + pc.dst[e];
    for (Index k = 0; k < pc.hi[e]; ++k) out[m * k + e] = d[k] + add;
  }
}

#ifdef NATGRAD_PHASE_ROWS_AVX512
namespace phase_rows_internal {

// A window of 32 columns holds K = 32/m entries of each phase. kmask(e): the entries k0 + j, j < K, of phase e
// that are moved; column_mask: the window's columns they come from (bit m·j + e), via a bit deposit.
template <int m>
struct Window {
  static constexpr int K = 32 / m;
  __mmask16 kmask[m];
  std::uint32_t columns = 0;
  Window(const PhaseColumns<m>& pc, Index k0) {
    for (int e = 0; e < m; ++e) {
      const Index n = pc.hi[e] - k0;
      const std::uint32_t bits = n <= 0 ? 0u : n >= K ? (1u << K) - 1 : (1u << n) - 1;
      kmask[e] = static_cast<__mmask16>(bits);
      columns |= _pdep_u32(bits, spread() << e);
    }
  }
  // Bit m·j set for j < K.
  static constexpr std::uint32_t spread() {
    std::uint32_t s = 0;
    for (int j = 0; j < K; ++j) s |= 1u << (m * j);
    return s;
  }
};

template <int m>
Index max_hi(const PhaseColumns<m>& pc) {
  Index h = 0;
  for (int e = 0; e < m; ++e) h = pc.hi[e] > h ? pc.hi[e] : h;
  return h;
}

// Lane j of the gather for phase e: column m·j + e of the 32-column window (indices 16 … 31 select the second
// source of a two-source permute).
template <int m>
inline __m512i gather_index(int e) {
  alignas(64) int idx[16];
  for (int j = 0; j < 16; ++j) idx[j] = (m * j + e) & 31;
  return _mm512_load_si512(idx);
}
// Lane j of output window half h (columns 16·h + j): entry (16·h + j)/m of phase (j mod m), where the phases'
// entries of the window sit at lane K·e + k of the pair (a, b) of sources: phases 0 … m/2 − 1 in a, the rest in
// b (for m = 2 one phase per source; for m = 4 two, 8 lanes each).
template <int m>
inline __m512i scatter_index(int h) {
  constexpr int K = 32 / m;
  alignas(64) int idx[16];
  for (int j = 0; j < 16; ++j) {
    const int e = j % m, k = (16 * h + j) / m;
    idx[j] = K * e + k;
  }
  return _mm512_load_si512(idx);
}

// The entries k0 … k0 + K − 1 of phases e0 … e0 + m/2 − 1, K lanes each: the sources a (e0 = 0) and b (e0 = m/2)
// of scatter_index.
template <int m>
inline __m512 load_phases(const Window<m>& w, const PhaseColumns<m>& pc, const float* row, Index k0, int e0) {
  if constexpr (m == 2) {
    return _mm512_maskz_loadu_ps(w.kmask[e0], row + pc.dst[e0] + k0);
  } else {
    const auto half = [&](int e) {
      return _mm256_maskz_loadu_ps(static_cast<__mmask8>(w.kmask[e]), row + pc.dst[e] + k0);
    };
    return _mm512_insertf32x8(_mm512_castps256_ps512(half(e0)), half(e0 + 1), 1);
  }
}

template <int m>
inline void to_phases_avx512(const PhaseColumns<m>& pc, const float* src, float* row) {
  constexpr int K = Window<m>::K;
  __m512i idx[m];
  for (int e = 0; e < m; ++e) idx[e] = gather_index<m>(e);
  const Index end = max_hi(pc);
  for (Index k0 = 0; k0 < end; k0 += K) {
    const Window<m> w(pc, k0);
    const __m512 a = _mm512_maskz_loadu_ps(static_cast<__mmask16>(w.columns), src + m * k0);
    const __m512 b = _mm512_maskz_loadu_ps(static_cast<__mmask16>(w.columns >> 16), src + m * k0 + 16);
    for (int e = 0; e < m; ++e)
      _mm512_mask_storeu_ps(row + pc.dst[e] + k0, w.kmask[e], _mm512_permutex2var_ps(a, idx[e], b));
  }
}

template <int m>
inline void from_phases_avx512(const PhaseColumns<m>& pc, const float* row, float add, float* out) {
  constexpr int K = Window<m>::K;
  const __m512i s0 = scatter_index<m>(0), s1 = scatter_index<m>(1);
  const __m512 v = _mm512_set1_ps(add);
  const Index end = max_hi(pc);
  for (Index k0 = 0; k0 < end; k0 += K) {
    const Window<m> w(pc, k0);
    const __m512 a = load_phases(w, pc, row, k0, 0), b = load_phases(w, pc, row, k0, m / 2);
    _mm512_mask_storeu_ps(out + m * k0, static_cast<__mmask16>(w.columns),
                          _mm512_add_ps(_mm512_permutex2var_ps(a, s0, b), v));
    _mm512_mask_storeu_ps(out + m * k0 + 16, static_cast<__mmask16>(w.columns >> 16),
                          _mm512_add_ps(_mm512_permutex2var_ps(a, s1, b), v));
  }
}

}  // namespace phase_rows_internal

template <>
inline void to_phases<2, float>(const PhaseColumns<2>& pc, const float* src, float* row) {
  phase_rows_internal::to_phases_avx512(pc, src, row);
}
template <>
inline void to_phases<4, float>(const PhaseColumns<4>& pc, const float* src, float* row) {
  phase_rows_internal::to_phases_avx512(pc, src, row);
}
template <>
inline void from_phases<2, float>(const PhaseColumns<2>& pc, const float* row, float add, float* out) {
  phase_rows_internal::from_phases_avx512(pc, row, add, out);
}
template <>
inline void from_phases<4, float>(const PhaseColumns<4>& pc, const float* row, float add, float* out) {
  phase_rows_internal::from_phases_avx512(pc, row, add, out);
}
#endif

}  // namespace detail
}  // namespace natgrad
