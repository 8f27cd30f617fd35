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

// A row-major right operand whose rows lie a multiple of 4 KiB apart (a 1024-wide float cotangent read as
// the transpose of its rows: phase B's weight-gradient blocks) maps every row to the same sets of the L1
// cache. Eigen packs such an operand four columns at a time down the whole depth, so each cache line is
// fetched again for each group of four columns it holds: on the 784-1024-1024-10 MLP's phase-B blocks that
// packing took a sixth of the kernel's time (perf, AMD Zen 5). This is Eigen's sequential product
// (GeneralMatrixMatrix.h) with that packing done in bands of kRhsBand rows (Eigen's own routine in its panel
// mode, which writes the same layout): the same blocks and kernel calls in the same order, so the same bits.
// A 256 × 256 block of depth 1000 ran 8–16% faster so (one thread, interleaved runs on a shared host).
constexpr Index kRhsBand = 8;
inline bool rhs_rows_alias(Index outer_stride, std::size_t scalar_bytes) {
  return (static_cast<std::size_t>(outer_stride) * scalar_bytes) % 4096 == 0;
}

template <typename Scalar, int LhsOrder>
void run_banded_rhs(Index m, Index n, Index k, const GemmOperand<Scalar>& A, const GemmOperand<Scalar>& B,
                    Scalar* C, Index ldc, Scalar* pack) {
  namespace ei = Eigen::internal;
  using Traits = ei::gebp_traits<Scalar, Scalar>;
  using LhsMapper = ei::const_blas_data_mapper<Scalar, Index, LhsOrder>;
  using RhsMapper = ei::const_blas_data_mapper<Scalar, Index, Eigen::RowMajor>;
  using ResMapper = ei::blas_data_mapper<Scalar, Index, Eigen::ColMajor, Eigen::Unaligned, 1>;
  ei::gemm_pack_lhs<Scalar, Index, LhsMapper, Traits::mr, Traits::LhsProgress,
                    typename Traits::LhsPacket4Packing, LhsOrder>
      pack_lhs;
  ei::gemm_pack_rhs<Scalar, Index, RhsMapper, Traits::nr, Eigen::RowMajor, false, true> pack_rhs_band;
  ei::gebp_kernel<Scalar, Scalar, Index, ResMapper, Traits::mr, Traits::nr, false, false> gebp;
  CallerBlocking<Scalar> blocking(m, n, k, pack);
  const Index kc = blocking.kc(), mc = std::min(m, blocking.mc()), nc = std::min(n, blocking.nc());
  Scalar* const blockA = blocking.blockA();
  Scalar* const blockB = blocking.blockB();
  const LhsMapper lhs(A.data, A.outer_stride);
  const RhsMapper rhs(B.data, B.outer_stride);
  const ResMapper res(C, ldc, 1);
  const bool pack_rhs_once = mc != m && kc == k && nc == n;
  for (Index i2 = 0; i2 < m; i2 += mc) {
    const Index amc = std::min(i2 + mc, m) - i2;
    for (Index k2 = 0; k2 < k; k2 += kc) {
      const Index akc = std::min(k2 + kc, k) - k2;
      pack_lhs(blockA, lhs.getSubMapper(i2, k2), akc, amc);
      for (Index j2 = 0; j2 < n; j2 += nc) {
        const Index anc = std::min(j2 + nc, n) - j2;
        if (!pack_rhs_once || i2 == 0)
          for (Index b = 0; b < akc; b += kRhsBand)
            pack_rhs_band(blockB, rhs.getSubMapper(k2 + b, j2), std::min(kRhsBand, akc - b), anc, akc, b);
        gebp(res.getSubMapper(i2, j2), blockA, blockB, amc, akc, anc, Scalar(1));
      }
    }
  }
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
  NATGRAD_CHECK(ldc >= m);
  if (m <= 0 || n <= 0) return;
  if (!accumulate)
    for (Index j = 0; j < n; ++j) std::fill(C + j * ldc, C + j * ldc + m, Scalar(0));
  if (k <= 0) return;  // (depth 0, as on a rank without samples: no packing, so no pack needed)
  NATGRAD_CHECK(pack != nullptr);
  using Eigen::ColMajor;
  using Eigen::RowMajor;
  if (!A.row_major && !B.row_major)
    gemm_internal::run<Scalar, ColMajor, ColMajor>(m, n, k, A, B, C, ldc, pack);
  else if (!B.row_major)
    gemm_internal::run<Scalar, RowMajor, ColMajor>(m, n, k, A, B, C, ldc, pack);
  else if (gemm_internal::rhs_rows_alias(B.outer_stride, sizeof(Scalar)))
    A.row_major ? gemm_internal::run_banded_rhs<Scalar, RowMajor>(m, n, k, A, B, C, ldc, pack)
                : gemm_internal::run_banded_rhs<Scalar, ColMajor>(m, n, k, A, B, C, ldc, pack);
  else if (!A.row_major)
    gemm_internal::run<Scalar, ColMajor, RowMajor>(m, n, k, A, B, C, ldc, pack);
  else
    gemm_internal::run<Scalar, RowMajor, RowMajor>(m, n, k, A, B, C, ldc, pack);
}

/// A left operand packed once for many products (pack_lhs, gemm_packed): an m × k matrix in the panel format
/// Eigen's kernel reads, as blocks of its depth — block b holds all m rows × columns [b·kc, b·kc + kc) —
/// where kc is the depth block Eigen's own product chooses for depth k (it depends on k and the L1 cache
/// only, not on m or the column count). A layer whose GEMMs take the same weight for every chunk of a pass
/// packs it once instead of once per chunk (`gemm` packs its left operand on every call).
template <typename Scalar>
struct PackedLhs {
  Index m = 0, k = 0, kc = 1;
  Scalar* data = nullptr;  ///< size() scalars (caller memory)

  PackedLhs() = default;
  PackedLhs(Index rows, Index depth) : m(rows), k(depth) {
    Index mc = rows, nc = 1;
    kc = depth;
    if (rows > 0 && depth > 0) gemm_internal::blocking_sizes<Scalar>(rows, nc, depth, kc, mc, nc);
  }
  Index blocks() const { return (k + kc - 1) / kc; }
  Index block_depth(Index b) const { return std::min(kc, k - b * kc); }
  /// Where block b starts, each block on Eigen's maximal alignment (the kernel's aligned packet loads).
  Index offset(Index b) const { return b * gemm_internal::round_up<Scalar>(m * kc); }
  /// Scalars of the packed operand, from an aligned start.
  Index size() const { return blocks() * gemm_internal::round_up<Scalar>(m * kc); }
  /// Rows per packing piece (pack_lhs): a multiple of the kernel's row panel, so that pieces packed apart
  /// give the bytes of one packing of the whole block.
  static Index piece_rows() {
    constexpr Index mr = Eigen::internal::gebp_traits<Scalar, Scalar>::mr;
    return std::max<Index>(mr, 256 / mr * mr);
  }
  Index pieces_per_block() const { return (m + piece_rows() - 1) / piece_rows(); }
  /// Packing work in pieces that threads may share: rows [p·piece_rows(), …) of one depth block each.
  Index pieces() const { return blocks() * pieces_per_block(); }
};

/// Packs piece `piece` (PackedLhs::pieces) of the m × k operand A into `out`.
template <typename Scalar>
void pack_lhs(const GemmOperand<Scalar>& A, const PackedLhs<Scalar>& out, Index piece) {
  using Traits = Eigen::internal::gebp_traits<Scalar, Scalar>;
  const Index b = piece / out.pieces_per_block(), r0 = piece % out.pieces_per_block() * out.piece_rows();
  const Index rows = std::min(out.piece_rows(), out.m - r0), k0 = b * out.kc, depth = out.block_depth(b);
  Scalar* dst = out.data + out.offset(b) + r0 * depth;
  if (A.row_major) {
    using Mapper = Eigen::internal::const_blas_data_mapper<Scalar, Index, Eigen::RowMajor>;
    Eigen::internal::gemm_pack_lhs<Scalar, Index, Mapper, Traits::mr, Traits::LhsProgress,
                                   typename Traits::LhsPacket4Packing, Eigen::RowMajor>
        pack;
    pack(dst, Mapper(A.data, A.outer_stride).getSubMapper(r0, k0), depth, rows);
  } else {
    using Mapper = Eigen::internal::const_blas_data_mapper<Scalar, Index, Eigen::ColMajor>;
    Eigen::internal::gemm_pack_lhs<Scalar, Index, Mapper, Traits::mr, Traits::LhsProgress,
                                   typename Traits::LhsPacket4Packing, Eigen::ColMajor>
        pack;
    pack(dst, Mapper(A.data, A.outer_stride).getSubMapper(r0, k0), depth, rows);
  }
}

/// Scalars of packing space gemm_packed needs for the right operand of a product with n columns.
template <typename Scalar>
Index gemm_packed_rhs_size(const PackedLhs<Scalar>& A, Index n) {
  if (n <= 0 || A.m <= 0 || A.k <= 0) return 0;
  Index kc, mc, nc;
  gemm_internal::blocking_sizes<Scalar>(A.m, n, A.k, kc, mc, nc);
  return gemm_internal::round_up<Scalar>(kc * std::min(n, nc)) + gemm_internal::kAlign<Scalar>;
}

/// C = A B (accumulate == false) or C += A B, as `gemm` with A packed by pack_lhs: the same kernel on the
/// same blocks of depth, added in the same order, so C is bit for bit what `gemm` gives. `pack` holds
/// gemm_packed_rhs_size(A, n) scalars (at most gemm_pack_size(A.m, n, A.k)).
template <typename Scalar>
void gemm_packed(Index n, const PackedLhs<Scalar>& A, const GemmOperand<Scalar>& B, Scalar* C, Index ldc,
                 bool accumulate, Scalar* pack) {
  NATGRAD_CHECK(ldc >= A.m && pack != nullptr && A.data != nullptr);
  if (A.m <= 0 || n <= 0) return;
  if (!accumulate)
    for (Index j = 0; j < n; ++j) std::fill(C + j * ldc, C + j * ldc + A.m, Scalar(0));
  if (A.k <= 0) return;
  Index kc, mc, nc;
  gemm_internal::blocking_sizes<Scalar>(A.m, n, A.k, kc, mc, nc);
  NATGRAD_CHECK(kc == A.kc);  // the depth blocks, hence the order of the sums, are `gemm`'s
  nc = std::min(n, nc);
  using Traits = Eigen::internal::gebp_traits<Scalar, Scalar>;
  using ResMapper = Eigen::internal::blas_data_mapper<Scalar, Index, Eigen::ColMajor, Eigen::Unaligned, 1>;
  Eigen::internal::gebp_kernel<Scalar, Scalar, Index, ResMapper, Traits::mr, Traits::nr, false, false> gebp;
  Scalar* blockB = gemm_internal::align(pack);
  const ResMapper res(C, ldc, 1);
  // Per block of depth (in order: each entry of C sums its blocks in `gemm`'s order) and of columns, the
  // right operand's block is packed once and serves all m rows.
  for (Index b = 0; b < A.blocks(); ++b) {
    const Index k0 = b * A.kc, depth = A.block_depth(b);
    for (Index j0 = 0; j0 < n; j0 += nc) {
      const Index cols = std::min(nc, n - j0);
      if (B.row_major) {
        using Mapper = Eigen::internal::const_blas_data_mapper<Scalar, Index, Eigen::RowMajor>;
        Eigen::internal::gemm_pack_rhs<Scalar, Index, Mapper, Traits::nr, Eigen::RowMajor> pack_rhs;
        pack_rhs(blockB, Mapper(B.data, B.outer_stride).getSubMapper(k0, j0), depth, cols);
      } else {
        using Mapper = Eigen::internal::const_blas_data_mapper<Scalar, Index, Eigen::ColMajor>;
        Eigen::internal::gemm_pack_rhs<Scalar, Index, Mapper, Traits::nr, Eigen::ColMajor> pack_rhs;
        pack_rhs(blockB, Mapper(B.data, B.outer_stride).getSubMapper(k0, j0), depth, cols);
      }
      gebp(res.getSubMapper(0, j0), A.data + A.offset(b), blockB, A.m, depth, cols, Scalar(1));
    }
  }
}

}  // namespace detail
}  // namespace natgrad
