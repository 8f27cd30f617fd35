/// \file deflation_preconditioner.h
/// \brief CG preconditioned by known eigenpairs of F: the spectrum a solve computes anyway, reused.
///
/// With V (n × k, orthonormal columns) and θ₁ ≥ … ≥ θ_k the top eigenpairs of F, and λ the damping,
/// \f[ M^{-1} = V(\Theta + \lambda I)^{-1}V^\top + (I - VV^\top)/(\theta_c + \lambda), \f]
/// θ_c the smallest of the θ (an upper bound of the next one). M⁻¹(F + λI) is then the identity on span V
/// and has eigenvalues (θ_j + λ)/(θ_c + λ) ≤ 1 on the rest: the k largest eigenvalues, which set CG's
/// iteration count on a Fisher (a few large eigenvalues over a long tail), leave the iteration. The starting
/// guess x₀ = V(Θ + λI)⁻¹Vᵀb solves the system on span V.
///
/// apply() costs two passes over V (Vᵀr, then V t), in parallel over fixed row blocks whose partial sums are
/// added in block order: bit-identical for any thread count. V is kept in the solve's precision.
///
/// \code
/// natgrad::SpectrumOptions so;
/// so.num_eigenvalues = 10;
/// so.compute_eigenvectors = true;
/// natgrad::SpectrumResult s = natgrad::top_eigenvalues(F0, so);        // F without damping
/// natgrad::DeflationPreconditioner<float> M(s.eigenvectors, s.eigenvalues, 1e-3);
/// M.initial_guess(g.data(), x.data());                                 // then CG with warm_start
/// \endcode
#pragma once

#include <natgrad/core/types.h>


namespace natgrad {

template <typename Scalar>
class DeflationPreconditioner {
 public:
  /// V: n × k eigenvectors (orthonormal columns), theta: their k eigenvalues (≥ 0), damping λ ≥ 0 with
  /// θ_c + λ > 0. Throws std::invalid_argument otherwise.
  DeflationPreconditioner(const Mat<double>& V, const Vec<double>& theta, double damping);

  /// z = M⁻¹ r.
  void apply(const Scalar* r, Scalar* z) const;
  /// x = V (Θ + λI)⁻¹ Vᵀ b.
  void initial_guess(const Scalar* b, Scalar* x) const;
  Index rank() const { return V_.cols(); }

 private:
  // t = Vᵀ r (per row block, the blocks summed in order in double); then z = c r + V (w ∘ t).
  void project(const Scalar* r, double* t) const;
  void expand(const Scalar* r, Scalar c, const Vec<double>& w, const double* t, Scalar* z) const;

  Mat<Scalar> V_;
  Vec<double> inverse_;  // 1/(θ_i + λ)
  double complement_;    // 1/(θ_c + λ)
  Vec<double> w_;         // 1/(θ_i + λ) − 1/(θ_c + λ)
  mutable Vec<double> t_;
  mutable Vec<Scalar> coef_;
  mutable Vec<Scalar> block_parts_;  // per row block: its part of Vᵀ r
};

}  // namespace natgrad
