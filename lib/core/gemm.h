// Private: a matrix product whose packing buffers live in caller memory, so the Fisher-vector product on the
// hot path allocates nothing.
//
// Eigen's `C.noalias() = A * B` packs panels of A and B into contiguous buffers before running its kernel;
// once those panels exceed EIGEN_STACK_ALLOCATION_LIMIT (128 KiB) it allocates them on the heap for every
// call. Here the same kernel (`general_matrix_matrix_product`, the routine Eigen's own product calls) runs
// with a blocking object whose buffers point into the layer's scratch. The block sizes come from the same
// `computeProductBlockingSizes` call Eigen makes, so the summation order and therefore every bit of C are
// what `C.noalias() (+)= A * B` would give for the same shapes.
#pragma once

#include <natgrad/core/types.h>

#include "core/check.h"

#include <Eigen/Core>
#include <algorithm>
#include <cstddef>
#include <cstdint>

namespace natgrad {
namespace detail {

/// A read-only operand: its data, storage order and outer stride (a column-major map, or a transposed one).
template <typename Scalar>
struct GemmOperand {
  const Scalar* data;
  Index outer_stride;
  bool row_major;
};

/// Column-major storage with leading dimension ld (a ConstMatMap), and row-major storage with row stride ld
/// (a PyTorch weight, or the transpose of a ConstMatMap read in place).
template <typename Scalar>
GemmOperand<Scalar> col_major(const Scalar* data, Index ld) {
  return {data, ld, false};
}
template <typename Scalar>
GemmOperand<Scalar> row_major(const Scalar* data, Index ld) {
  return {data, ld, true};
}

namespace gemm_internal {

// Scalars kept between the two packed panels so that each starts on Eigen's maximal alignment (the kernel
// reads them with aligned packet loads).
// (EIGEN_MAX_ALIGN_BYTES is 64 with AVX-512, 16 with SSE, 0 when Eigen's alignment is switched off.)
constexpr std::size_t kAlignBytes = EIGEN_MAX_ALIGN_BYTES > 0 ? EIGEN_MAX_ALIGN_BYTES : 1;
template <typename Scalar>
constexpr Index kAlign = kAlignBytes / sizeof(Scalar) > 0 ? kAlignBytes / sizeof(Scalar) : 1;

template <typename Scalar>
Index round_up(Index n) {
  return (n + kAlign<Scalar> - 1) / kAlign<Scalar> * kAlign<Scalar>;
}

template <typename Scalar>
Scalar* align(Scalar* p) {
  const auto a = static_cast<std::uintptr_t>(std::max(kAlignBytes, alignof(Scalar)));
  return reinterpret_cast<Scalar*>((reinterpret_cast<std::uintptr_t>(p) + a - 1) / a * a);
}

// The blocking of Eigen's default product for an m × k times k × n product, single-threaded: kc, mc, nc.
template <typename Scalar>
void blocking_sizes(Index m, Index n, Index k, Index& kc, Index& mc, Index& nc) {
  kc = k;
  mc = m;
  nc = n;
  Eigen::internal::computeProductBlockingSizes<Scalar, Scalar>(kc, mc, nc, Index(1));
}

template <typename Scalar>
class CallerBlocking : public Eigen::internal::level3_blocking<Scalar, Scalar> {
 public:
  CallerBlocking(Index m, Index n, Index k, Scalar* pack) {
    blocking_sizes<Scalar>(m, n, k, this->m_kc, this->m_mc, this->m_nc);
    this->m_blockA = align(pack);
    this->m_blockB = align(this->m_blockA + this->m_mc * this->m_kc);
  }
};

template <typename Scalar, int LhsOrder, int RhsOrder>
void run(Index m, Index n, Index k, const GemmOperand<Scalar>& A, const GemmOperand<Scalar>& B, Scalar* C,
         Index ldc, Scalar* pack) {
  CallerBlocking<Scalar> blocking(m, n, k, pack);
  Eigen::internal::general_matrix_matrix_product<Index, Scalar, LhsOrder, false, Scalar, RhsOrder, false,
                                                 Eigen::ColMajor, 1>::run(m, n, k, A.data, A.outer_stride,
                                                                          B.data, B.outer_stride, C, 1, ldc,
                                                                          Scalar(1), blocking);
}

}  // namespace gemm_internal

/// Scalars of packing space an m × k times k × n product needs (exactly what Eigen would allocate, plus
/// alignment slack). Eigen's blocking is not monotone in the sizes, so a layer that must serve chunks of up
/// to c columns takes the maximum over every column count 1 … c (a few nanoseconds each, once per workspace).
template <typename Scalar>
Index gemm_pack_size(Index m, Index n, Index k) {
  if (m <= 0 || n <= 0 || k <= 0) return 0;
  Index kc, mc, nc;
  gemm_internal::blocking_sizes<Scalar>(m, n, k, kc, mc, nc);
  return gemm_internal::round_up<Scalar>(mc * kc) + gemm_internal::round_up<Scalar>(kc * nc) +
         gemm_internal::kAlign<Scalar>;
}

/// C = A B (accumulate == false) or C += A B (accumulate == true), C m × n column-major with leading
/// dimension ldc, A m × k, B k × n. `pack` holds at least gemm_pack_size(m, n, k) scalars; nothing is
/// allocated.
template <typename Scalar>
void gemm(Index m, Index n, Index k, const GemmOperand<Scalar>& A, const GemmOperand<Scalar>& B, Scalar* C,
          Index ldc, bool accumulate, Scalar* pack) {
  NATGRAD_CHECK(ldc >= m && pack != nullptr);
  if (m <= 0 || n <= 0) return;
  if (!accumulate)
    for (Index j = 0; j < n; ++j) std::fill(C + j * ldc, C + j * ldc + m, Scalar(0));
  if (k <= 0) return;
  using Eigen::ColMajor;
  using Eigen::RowMajor;
  if (!A.row_major && !B.row_major)
    gemm_internal::run<Scalar, ColMajor, ColMajor>(m, n, k, A, B, C, ldc, pack);
  else if (!A.row_major)
    gemm_internal::run<Scalar, ColMajor, RowMajor>(m, n, k, A, B, C, ldc, pack);
  else if (!B.row_major)
    gemm_internal::run<Scalar, RowMajor, ColMajor>(m, n, k, A, B, C, ldc, pack);
  else
    gemm_internal::run<Scalar, RowMajor, RowMajor>(m, n, k, A, B, C, ldc, pack);
}

}  // namespace detail
}  // namespace natgrad
