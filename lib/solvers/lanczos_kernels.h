// Private: the passes over the Lanczos basis that Spectra delegates to its operator wrapper
// (ArnoldiOp's inner products, norms and Vᵀf), run on natgrad::num_threads() threads with
// thread-count-independent reductions.
//
// Spectra reorthogonalizes every new Lanczos vector against the whole basis, and in double precision on a
// 1.86M-parameter model each pass over a 21-column basis reads 300 MB: single-threaded, those passes took
// about half of mlp/spectrum_top10 (docs/solvers.md). The blocks are those of the CG kernels: fixed by n,
// summed in block order.
#pragma once

#include <natgrad/core/types.h>

namespace natgrad {
namespace detail {

/// res = Vᵀ y for the column-major n × cols matrix V with leading dimension ld, accumulated in double.
template <typename B>
void basis_trans_product(const B* V, Index ld, Index n, Index cols, const B* y, B* res);

/// Threads in the team of the last basis_trans_product (for tests).
int basis_last_team_size();

}  // namespace detail
}  // namespace natgrad
