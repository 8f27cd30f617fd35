// Private: sizes computed from numbers a file gives (dimensions, counts) without overflow. A product is
// checked at every step, before anything is compared or allocated with it: 2²⁴ · 2¹⁶ · 2²⁴ = 2⁶⁴ wraps to 0
// in uint64_t, and a signed product that overflows is undefined behaviour.
#pragma once

#include <cstdint>
#include <type_traits>
#include <vector>

namespace natgrad {
namespace detail {

/// a · b into *out; false (and *out untouched) if the product exceeds `limit`.
inline bool checked_mul(uint64_t a, uint64_t b, uint64_t* out, uint64_t limit = UINT64_MAX) {
  uint64_t p;
  if (__builtin_mul_overflow(a, b, &p) || p > limit) return false;
  *out = p;
  return true;
}

/// The product of `dims` into *out; false if it, or the product of the nonzero dimensions, exceeds `limit`.
/// (A zero dimension makes the product 0, but a shape [0, 2⁴⁰, 2⁴⁰] is refused all the same: its sample
/// shape [2⁴⁰, 2⁴⁰] would overflow wherever it is used.)
template <typename Int>
bool checked_product(const std::vector<Int>& dims, uint64_t* out, uint64_t limit = UINT64_MAX) {
  uint64_t nonzero = 1;
  bool zero = false;
  for (Int d : dims) {
    if constexpr (std::is_signed<Int>::value)
      if (d < 0) return false;
    if (d == 0) {
      zero = true;
      continue;
    }
    if (!checked_mul(nonzero, static_cast<uint64_t>(d), &nonzero, limit)) return false;
  }
  *out = zero ? 0 : nonzero;
  return true;
}

}  // namespace detail
}  // namespace natgrad
