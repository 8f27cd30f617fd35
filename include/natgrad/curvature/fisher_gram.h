/// \file fisher_gram.h
/// \brief F = UᵀU on a minibatch, through the Gram G = UUᵀ of its rows: exact damped solves (Woodbury) and
/// the exact nonzero spectrum.
///
/// On a batch the Fisher of a FisherOperator is F = UᵀU, U the R × P matrix whose rows are
/// M^(-1/2)·J_nᵀ f_nk, H_n = Σ_k f_nk f_nkᵀ a factor of the output Fisher and M the positions that count:
///   - exact:     k = (position t, class c), f = the exact per-position factor's column c at position t
///                (categorical √p_c (e_c − p), gaussian e_c, bernoulli √(σ_c(1 − σ_c)) e_c): R = N·T·C;
///   - mc:        k = draw s, f = the sampled score s_s / √S, the same draws as the operator's: R = N·S;
///   - empirical: k = 0, f = the true-label score: R = N.
/// An ignored position (label −100) has f = 0. With R ≪ P the R × R Gram is cheap to form, to factor and to
/// decompose, and gives what Krylov methods approximate:
///   - (F + λI)⁻¹g = Uᵀ(G + λI)⁻¹r when g = Uᵀr (the push-through form, exact and empirical kinds on the
///     operator's own gradient: no cancellation however small λ), else (g − Uᵀ(G + λI)⁻¹Ug)/λ; each λ one
///     Cholesky factorization of G + λI and one backprop (Uᵀw), the second form one R-op (Ug) more;
///   - F's nonzero eigenvalues are G's, its eigenvectors Uᵀq/√μ (one backprop each).
///
/// **Forming G.** The cotangents of every node with parameters are backpropagated once per factor column k
/// (K = R/N passes over the batch) and kept. A linear layer on single-position inputs whose weight is not tied
/// then contributes (ÃÃᵀ ⊗ 1) ∘ (BBᵀ) — Ã its inputs with a 1 for the bias, B its output cotangents, one row
/// per row of U — in (N² · inputs + R² · outputs) multiply-adds instead of R² times its parameters; every
/// other node with parameters (convolutions, sequence layers, normalizations, embeddings, tied weights: a
/// tied tensor's uses summed first) contributes U_l U_lᵀ from its explicit per-row gradients U_l (R × P_l,
/// one node at a time, so memory is bounded by the largest such node). Everything is accumulated in double,
/// in tiles of G each one thread computes in a fixed order: G is bit-identical for any thread count.
///
/// **Several processes.** On an operator with a communicator of K > 1 ranks each rank forms its own rows, and
/// the rows (Ã and B, or U_l) are gathered by sums into which every other rank puts zeros, so every rank holds
/// the same G, bit for bit, and factors it itself; Ug gathers the rows' values the same way and Uᵀw sums the
/// ranks' backprops. The constructor, times(), transpose_times(), solve() and eigenvectors() are collective.
/// G equals one process's to rounding (the per-sample cotangents are computed in other chunks).
#pragma once

#include <natgrad/curvature/fisher_operator.h>

#include <Eigen/Core>
#include <cstddef>
#include <vector>

namespace natgrad {

/// Memory a FisherGram takes, in bytes, by part.
struct GramFootprint {
  std::size_t gram = 0;        ///< G and the Cholesky factor (or the eigenvectors) of G + λI, R² doubles each
  std::size_t cotangents = 0;  ///< the kept cotangents: K copies of the operator's stored cotangents
  std::size_t rows = 0;        ///< the largest explicit U_l (R × P_l doubles) or Kronecker operands
  std::size_t total() const { return gram + cotangents + rows; }
};

/// The exact solution for one damping.
template <typename Scalar>
struct GramSolution {
  double damping = 0;
  Vec<Scalar> direction;  ///< (F + λI)⁻¹ g
  double factor_s = 0;    ///< the Cholesky factorization of G + λI
  double apply_s = 0;     ///< the triangular solves and Uᵀw (and Ug)
};

/// F's nonzero spectrum from G.
struct GramSpectrum {
  Eigen::VectorXd eigenvalues;  ///< every eigenvalue of G above 1e-12 × the largest, descending
  Eigen::MatrixXd q;            ///< G's unit eigenvectors of the first `vectors` eigenvalues (R × k)
  double trace = 0;             ///< tr F = tr G, exactly
  Index zero_count = 0;         ///< P minus the nonzero eigenvalues: the mass at zero
  double seconds = 0;           ///< the eigendecomposition
};

template <typename Scalar>
class FisherGram {
 public:
  /// Forms G on the operator's batch (its cached forward pass, its Fisher kind and draws; under MPI the whole
  /// batch's rows on every rank). The operator must outlive this object; the stored cotangents it holds are
  /// overwritten.
  explicit FisherGram(const FisherOperator<Scalar>& F);

  /// Rows of U for `num_samples` samples of a model: N·T·C (exact), N·S (mc) or N (empirical).
  static Index rows_for(const Network<Scalar>& model, Index num_samples, FisherKind kind, int mc_samples);
  /// What forming G and factoring it take for such a batch (the plan of the constructor).
  static GramFootprint required_bytes(const Network<Scalar>& model, Index num_samples, const FisherOptions& options);

  Index rows() const { return R_; }
  /// G = UUᵀ (R × R, double, symmetric).
  const Eigen::MatrixXd& matrix() const { return G_; }
  /// Seconds to form G (the K backprops and the products).
  double form_seconds() const { return form_s_; }

  /// U v: one R-op over the batch.
  Eigen::VectorXd times(const Vec<Scalar>& v) const;
  /// Uᵀw: one backprop over the batch.
  Vec<Scalar> transpose_times(const Eigen::VectorXd& w) const;
  /// r with Uᵀr = the operator's gradient, when it has one (exact kind with every coefficient finite,
  /// empirical); empty otherwise (mc: the sampled scores do not span the true-label ones).
  const Eigen::VectorXd& gradient_coefficients() const { return r_; }

  /// (F + λI)⁻¹g for each λ > 0 of `dampings`, in order. `g_is_gradient`: g is the operator's own gradient,
  /// so the push-through form applies when gradient_coefficients() is not empty. Throws
  /// std::invalid_argument for λ ≤ 0 or a g of the wrong size.
  std::vector<GramSolution<Scalar>> solve(const Vec<Scalar>& g, const std::vector<double>& dampings,
                                          bool g_is_gradient) const;
  /// Whether solve() uses the push-through form for the operator's gradient.
  bool push_through() const { return r_.size() > 0; }
  /// Every nonzero eigenvalue of F, with G's eigenvectors of the first `vectors`.
  GramSpectrum spectrum(Index vectors) const;
  /// F's unit eigenvectors Uᵀq/√μ for the first k eigenpairs of s (P × k).
  Mat<Scalar> eigenvectors(const GramSpectrum& s, Index k) const;

 private:
  // Column k of H_n's factor f_nk (T·C scalars) of this rank's sample n, unscaled by M.
  void factor(Index k, Index n, Scalar* f) const;
  // The row of U of factor column k and this rank's sample n: k·N_total + the sample's global index.
  Index row(Index k, Index n) const { return k * Nt_ + first_ + n; }
  void form();

  const FisherOperator<Scalar>& F_;
  const Communicator* comm_ = nullptr;  // only with more than one rank
  Index N_ = 0, Nt_ = 0, first_ = 0, K_ = 0, R_ = 0, TC_ = 0, T_ = 1;
  double M_ = 1;
  Mat<Scalar> scores_;  // mc: the sampled scores (T·C × N·S); empirical: the true-label scores (T·C × N)
  Eigen::MatrixXd G_;
  Eigen::VectorXd r_;
  double form_s_ = 0;
};

}  // namespace natgrad
