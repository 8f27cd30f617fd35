// Internal: the fixed blocks that make the library's parallel vector reductions independent of the thread
// count. [0, n) is cut into at most kMaxBlocks blocks of at least kMinBlock scalars (their size depends on n
// only, a multiple of 64 so every block starts with the vector's own alignment and Eigen peels it the same
// way); the blocks run in parallel and their partial results are combined in block order by the caller.
#pragma once

#include <natgrad/core/threads.h>
#include <natgrad/core/types.h>

#ifdef NATGRAD_HAVE_OPENMP
#include <omp.h>
#endif

#include <algorithm>

namespace natgrad {
namespace detail {

constexpr Index kMinBlock = 16384;
constexpr int kMaxBlocks = 1024;

inline Index block_size(Index n) {
  const Index b = std::max<Index>(kMinBlock, (n + kMaxBlocks - 1) / kMaxBlocks);
  return (b + 63) / 64 * 64;
}

inline int block_count(Index n) {
  const Index bs = block_size(n);
  return static_cast<int>((n + bs - 1) / bs);
}

/// Runs f(k, i0, len) for every block k of [0, n) on num_threads() threads; returns the team's size.
template <typename F>
int for_each_block(Index n, F f) {
  const Index bs = block_size(n);
  const int blocks = block_count(n);
  int team = 1;
#ifdef NATGRAD_HAVE_OPENMP
#pragma omp parallel num_threads(num_threads()) if (blocks > 1)
  {
#pragma omp single nowait
    team = omp_get_num_threads();
#pragma omp for schedule(static)
    for (int k = 0; k < blocks; ++k) {
      const Index i0 = k * bs;
      f(k, i0, std::min(bs, n - i0));
    }
  }
#else
  for (int k = 0; k < blocks; ++k) {
    const Index i0 = k * bs;
    f(k, i0, std::min(bs, n - i0));
  }
#endif
  return team;
}

}  // namespace detail
}  // namespace natgrad
