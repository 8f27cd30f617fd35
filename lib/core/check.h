// Private: internal invariants, checked in every build (a few comparisons per chunk, never per element).
// A violated invariant is a bug in natgrad, not bad input: it prints where and aborts, instead of reading or
// writing out of bounds.
#pragma once

#include <cstdio>
#include <cstdlib>

namespace natgrad {
namespace detail {

[[noreturn]] inline void check_failed(const char* condition, const char* file, int line) {
  std::fprintf(stderr, "natgrad: internal error: %s failed at %s:%d\n", condition, file, line);
  std::abort();
}

}  // namespace detail
}  // namespace natgrad

#define NATGRAD_CHECK(condition) \
  ((condition) ? static_cast<void>(0) : ::natgrad::detail::check_failed(#condition, __FILE__, __LINE__))
