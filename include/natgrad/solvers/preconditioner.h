/// \file preconditioner.h
/// \brief Preconditioners for conjugate_gradient: identity, and Martens' diagonal (diag(F̂) + λ)^α.
///
/// Martens (2010, "Deep learning via Hessian-free optimization", §4.7) preconditions CG with
/// M = (diag(F̂) + λ I)^α, F̂ the empirical Fisher's diagonal 1/N Σ_n (∇θ ℓ_n)², α = 0.75. The diagonal comes
/// from per-sample squared gradients: for a linear layer Σ_n (g_n x_nᵀ)² = (G∘G)(X∘X)ᵀ, one extra GEMM
/// (FisherOperator::empirical_fisher_diagonal).
///
/// \code
/// natgrad::DiagonalPreconditioner<float> M(F.empirical_fisher_diagonal(), /*damping=*/1e-3, /*alpha=*/0.75);
/// auto summary = natgrad::conjugate_gradient(F, M, b.data(), x.data(), options, workspace);
/// \endcode
#pragma once

#include <natgrad/core/types.h>

#include <algorithm>
#include <cstddef>
#include <string>

namespace natgrad {

/// none, Martens' diagonal (below), or K-FAC's damped inverse (curvature/kfac.h, KfacApproximation).
enum class PreconditionerKind { none, diagonal, kfac };
const char* to_string(PreconditionerKind kind);
/// "none", "diagonal" or "kfac"; throws std::invalid_argument otherwise.
PreconditionerKind preconditioner_from_string(const std::string& name);

/// M = I.
template <typename Scalar>
class IdentityPreconditioner {
 public:
  explicit IdentityPreconditioner(Index n) : n_(n) {}
  void apply(const Scalar* r, Scalar* z) const { std::copy(r, r + n_, z); }

 private:
  Index n_;
};

/// M = (d + λ)^α, applied as z = r / M.
template <typename Scalar>
class DiagonalPreconditioner {
 public:
  /// Throws std::invalid_argument if d has negative or non-finite entries, or λ < 0, or α ∉ [0, 1], or
  /// d + λ has a zero entry while α > 0.
  DiagonalPreconditioner(const Vec<Scalar>& d, double damping, double alpha = 0.75);
  /// What the constructor allocates for n unknowns: the inverse diagonal, n scalars; its out-of-memory error
  /// quotes it. (The diagonal d it is built from is the caller's: for the empirical Fisher's,
  /// FisherOperator::empirical_diagonal_required_bytes.)
  static std::size_t required_bytes(Index n) { return static_cast<std::size_t>(n) * sizeof(Scalar); }
  void apply(const Scalar* r, Scalar* z) const;
  const Vec<Scalar>& inverse_diagonal() const { return inv_; }

 private:
  Vec<Scalar> inv_;
};

}  // namespace natgrad
