// Private: the Cholesky factorization of a dense symmetric positive definite matrix on several threads, in
// tiles, for the Gram solver (curvature/fisher_gram.h). Eigen's LLT runs on one thread here
// (EIGEN_DONT_PARALLELIZE); the O(n³) factorization of a Gram of thousands of rows is most of an exact solve.
#pragma once

#include <Eigen/Core>

namespace natgrad {
namespace detail {

/// Overwrites the lower triangle of A with L, A = LLᵀ (the strict upper triangle is left as it was), by the
/// right-looking tiled algorithm: for each diagonal tile, its factorization, the triangular solves of the tiles
/// below it, then the update of every trailing tile, each tile by one thread. Every entry is computed by the
/// same operations in the same order for any thread count. Returns false when A is not positive definite
/// (a diagonal tile's factorization failed).
bool tiled_cholesky(Eigen::MatrixXd& A, int threads, Eigen::Index tile = 256);

/// x = (LLᵀ)⁻¹ b for the L tiled_cholesky left in the lower triangle of A.
Eigen::VectorXd cholesky_solve(const Eigen::MatrixXd& A, const Eigen::VectorXd& b);

}  // namespace detail
}  // namespace natgrad
