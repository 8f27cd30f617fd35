// Private (benchmarks and `natgrad profile`): the machine's reference rate, a float GEMM split over the
// threads' column blocks as Eigen's own parallel GEMM would split it (Eigen's threading is off in natgrad).
// natgrad-bench's `gemm/1024` and `natgrad profile` measure products against it:
//     natgrad::reference_gemm(A, B, C, natgrad::num_threads());   // C = A B
#pragma once

#include <natgrad/core/types.h>

namespace natgrad {

/// C = A B, C's columns split into `threads` contiguous blocks computed in parallel (with OpenMP).
inline void reference_gemm(const Mat<float>& A, const Mat<float>& B, Mat<float>& C, int threads) {
  const Index n = B.cols();
#ifdef NATGRAD_HAVE_OPENMP
#pragma omp parallel for num_threads(threads) schedule(static)
#endif
  for (int t = 0; t < threads; ++t) {
    const Index c0 = n * t / threads, c1 = n * (t + 1) / threads;
    C.middleCols(c0, c1 - c0).noalias() = A * B.middleCols(c0, c1 - c0);
  }
}

}  // namespace natgrad
