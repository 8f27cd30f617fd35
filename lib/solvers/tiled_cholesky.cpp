// The tiled Cholesky factorization (tiled_cholesky.h).
#include "solvers/tiled_cholesky.h"

#include <Eigen/Cholesky>
#include <algorithm>
#include <atomic>
#include <utility>
#include <vector>

namespace natgrad {
namespace detail {

bool tiled_cholesky(Eigen::MatrixXd& A, int threads, Eigen::Index tile) {
  using Eigen::Index;
  const Index n = A.rows();
  for (Index k0 = 0; k0 < n; k0 += tile) {
    const Index bk = std::min(tile, n - k0);
    // 1. The diagonal tile: A_kk = L_kk L_kkᵀ.
    Eigen::Ref<Eigen::MatrixXd> Akk = A.block(k0, k0, bk, bk);
    Eigen::LLT<Eigen::Ref<Eigen::MatrixXd>> llt(Akk);  // in place
    if (llt.info() != Eigen::Success) return false;
    const Index below = n - k0 - bk;
    if (below == 0) break;
    // 2. The tiles below it: A_ik ← A_ik L_kk⁻ᵀ.
    const auto L = A.block(k0, k0, bk, bk).triangularView<Eigen::Lower>();
    const long panels = static_cast<long>((below + tile - 1) / tile);
#pragma omp parallel for schedule(static) num_threads(threads)
    for (long p = 0; p < panels; ++p) {
      const Index i0 = k0 + bk + Index(p) * tile, bi = std::min(tile, n - i0);
      auto Aik = A.block(i0, k0, bi, bk);
      L.transpose().template solveInPlace<Eigen::OnTheRight>(Aik);
    }
    // 3. The trailing tiles (lower triangle): A_ij ← A_ij − A_ik A_jkᵀ.
    std::vector<std::pair<Index, Index>> tiles;
    for (Index i0 = k0 + bk; i0 < n; i0 += tile)
      for (Index j0 = k0 + bk; j0 <= i0; j0 += tile) tiles.emplace_back(i0, j0);
#pragma omp parallel for schedule(dynamic) num_threads(threads)
    for (long t = 0; t < static_cast<long>(tiles.size()); ++t) {
      const Index i0 = tiles[static_cast<std::size_t>(t)].first, j0 = tiles[static_cast<std::size_t>(t)].second;
      const Index bi = std::min(tile, n - i0), bj = std::min(tile, n - j0);
      A.block(i0, j0, bi, bj).noalias() -= A.block(i0, k0, bi, bk) * A.block(j0, k0, bj, bk).transpose();
    }
  }
  return true;
}

Eigen::VectorXd cholesky_solve(const Eigen::MatrixXd& A, const Eigen::VectorXd& b) {
  const auto L = A.triangularView<Eigen::Lower>();
  Eigen::VectorXd x = L.solve(b);
  L.transpose().solveInPlace(x);
  return x;
}

}  // namespace detail
}  // namespace natgrad
