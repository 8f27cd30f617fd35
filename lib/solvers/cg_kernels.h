// Private: the vector work of conjugate_gradient: fused, OpenMP-parallel passes with thread-count-independent
// reductions.
//
// Each CG iteration touches several parameter-sized vectors, which one Eigen expression at a time would
// read and write about 20 times, single-threaded (a quarter of an iteration next to one product on a
// 1.86M-parameter MLP; docs/performance.md). These kernels fuse the passes that read the same vectors and
// split them over threads (natgrad::num_threads() of them). A reduction cuts [0, n) into fixed blocks (their
// size depends on n only), sums each block in Scalar with Eigen and the block sums in double in block order,
// so the result is bit-identical for any number of threads.
//
//   const double rr = natgrad::detail::cg_update_residual(r.data(), Ap.data(), alpha, n);  // r -= α Ap; ‖r‖²
#pragma once

#include <natgrad/core/types.h>

namespace natgrad {
namespace detail {

/// Σ a_i b_i.
template <typename Scalar>
double cg_dot(const Scalar* a, const Scalar* b, Index n);

/// r −= α Ap; returns ‖r‖² (of the updated r).
template <typename Scalar>
double cg_update_residual(Scalar* r, const Scalar* Ap, Scalar alpha, Index n);

/// x += α p; returns xᵀ(b + r) (of the updated x), i.e. −2 φ(x) when r = b − A x.
template <typename Scalar>
double cg_update_solution(Scalar* x, const Scalar* p, Scalar alpha, const Scalar* b, const Scalar* r,
                          Index n);

/// p = z + β p.
template <typename Scalar>
void cg_update_direction(Scalar* p, const Scalar* z, Scalar beta, Index n);

/// dst = src.
template <typename Scalar>
void cg_copy(Scalar* dst, const Scalar* src, Index n);

/// Threads in the team of the last kernel that ran in parallel (for tests: the kernels use num_threads()).
int cg_last_team_size();

}  // namespace detail
}  // namespace natgrad
