/// \file kfac.h
/// \brief K-FAC: the Fisher approximated by one Kronecker product A ⊗ G per linear or convolutional layer,
/// and by its diagonal elsewhere.
///
/// A layer whose weight W (rows × cols, with an optional bias as one more column) has, for one sample and
/// one output direction k, the gradient D = Σ_r g_r ã_rᵀ over R positions r (ã_r = [a_r; 1] with a bias)
/// gets the block (Martens & Grosse 2015 for linear layers, Grosse & Martens 2016 "KFC" for convolutions,
/// the "expand" variant of Eschenhagen et al. 2023 for linear layers on sequences, which counts positions
/// like samples):
/// \f[ F_{WW} \approx A \otimes G, \quad A = \frac{1}{N R} \sum_{n,r} \tilde a_{nr} \tilde a_{nr}^\top, \quad
///     G = \frac{1}{N T} \sum_{n,k,r} w_k\, g_{nkr} g_{nkr}^\top, \f]
/// so that F̂ vec(V) = vec(G V A) for V the layer's slice of a vector as a rows × (cols + 1) matrix. The
/// output directions k with weights w_k, whose outer products sum to the operator's H_n, are
///   - exact kind, C ≤ max_closed_form_outputs: the closed-form factor of H_n, C backprops per sample
///     (categorical √p_c (e_c − p), bernoulli √(σ(1 − σ))_c e_c, gaussian e_c; with T > 1 positions each
///     direction c is taken at every position with a Rademacher sign per position, so cross-position terms
///     vanish in expectation);
///   - exact kind above that, and mc: the scores of labels sampled from the model (the operator's seed and
///     Monte-Carlo draws, w = 1/draws; C backprops per sample are prohibitive at 10,000 classes);
///   - empirical: the true-label scores.
///
/// Every other parameter tensor (biases of normalization layers, embeddings, tied weights, add's parameter
/// operands) gets the diagonal of the same Fisher, Σ_k w_k (J_nᵀ s_k)² per sample.
///
/// **Ignored targets** (categorical labels of kIgnoreIndex, −100): A is the mean over the kept rows only — a
/// block with R = T rows per sample (a layer applied per output position) drops the rows of ignored positions,
/// any other block the samples none of whose positions counts — and G and the diagonal divide by the M
/// positions that count (FisherOperator::counted_positions()) instead of N·T; the ignored positions' output
/// directions are zero. Over several ranks the kept rows are counted over all of them (docs/math.md).
///
/// **Damping and inversion** (factored Tikhonov damping with the π-split, Martens & Grosse §6.3):
/// (A + π√λ I) ⊗ (G + √λ/π I) with π = √((tr A / dim A) / (tr G / dim G)), inverted through each factor's
/// eigendecomposition (computed once, at construction); d + λ on the diagonal part.
///
/// Factors are accumulated in double in a fixed order (sample blocks in order, output columns split across
/// threads), so they are bit-identical for any thread count; over several ranks they are summed in rank
/// order. apply() has the preconditioner interface of conjugate_gradient.
///
/// \code
/// natgrad::KfacApproximation<float> K(F);          // the factors of F's batch and kind
/// K.set_damping(1e-3);
/// auto s = natgrad::conjugate_gradient(F, K, g.data(), d.data(), cg_options, ws);   // K-FAC-preconditioned
/// \endcode
#pragma once

#include <natgrad/curvature/fisher_operator.h>

#include <cstddef>
#include <vector>

namespace natgrad {

struct KfacOptions {
  /// The exact kind uses H_n's closed-form factor (C backprops per sample) up to this many classes per
  /// position, sampled labels above. Default 100.
  Index max_closed_form_outputs = 100;
  /// Eigendecompose the factors in the constructor (false: the factors only, for averaging them before
  /// decompose(); set_damping and apply need a decomposition).
  bool decompose = true;
};

template <typename Scalar>
class KfacApproximation {
 public:
  /// One Kronecker block: node `node`'s weight (rows × cols row-major, then `rows` bias entries if `bias`)
  /// at [offset, offset + size) of the parameter vector.
  struct Block {
    std::size_t node = 0;
    Index offset = 0, rows = 0, cols = 0, positions = 0;
    bool bias = false;
    Mat<double> A;  ///< (cols + bias) square
    Mat<double> G;  ///< rows square
    Index size() const { return rows * cols + (bias ? rows : 0); }
  };

  /// The factors of F's batch, parameters and Fisher kind (F's damping is not used). Collective over F's
  /// communicator. Throws std::invalid_argument for an empirical F without targets.
  explicit KfacApproximation(const FisherOperator<Scalar>& F, const KfacOptions& options = KfacOptions());
  /// The blocks of `model` with zero factors (to load_factors into), on `threads` threads (0: all cores).
  KfacApproximation(const Network<Scalar>& model, int threads);

  /// What K-FAC allocates at its peak — in the constructor, set_damping, apply, and multiply when
  /// `multiplies` (the comparison with F does; a preconditioner does not) — for an operator
  /// F on `num_samples` samples of `model` under `fisher` (its threads, chunk size and Fisher kind): what it
  /// keeps (per block A, G and their eigenvectors in double, the damped inverses in Scalar; the diagonal and
  /// its inverse; a flag per parameter) as far as it exists at each step, plus that step's transient
  /// buffers: a block of unfolded inputs or cotangents (in Scalar and in double) with the Gram products'
  /// packing space, the sampled scores, the squared gradients of the tensors outside the blocks beside their
  /// sum in double, a symmetrized factor, the eigensolvers' copies of the factors they decompose at once, a
  /// damped inverse's products in double, and the per-block matrices of apply (or multiply) on every thread.
  /// Shapes only: no operator is built. The constructor's out-of-memory error quotes it.
  static std::size_t required_bytes(const Network<Scalar>& model, Index num_samples, const FisherOptions& fisher,
                                    const KfacOptions& options = KfacOptions(), bool multiplies = false);

  Index rows() const { return num_params_; }
  Index cols() const { return num_params_; }
  const std::vector<Block>& blocks() const { return blocks_; }
  /// The Fisher's diagonal on the entries no block covers (zero on the blocks' entries).
  const Vec<Scalar>& diagonal() const { return diagonal_; }
  /// Output directions backpropagated over the batch to build the factors.
  Index backprops() const { return backprops_; }
  /// The backprops() the constructor takes for this model and Fisher: C for the exact kind's closed form, the
  /// Monte-Carlo draws for sampled labels, 1 for the empirical kind.
  static Index backprops_for(const Network<Scalar>& model, const FisherOptions& fisher,
                             const KfacOptions& options = KfacOptions());

  /// Blends another approximation's factors into this one's: A ← keep·A + (1 − keep)·A', likewise G and the
  /// diagonal (K-FAC's running averages). The decomposition is not touched: apply() keeps using the factors
  /// of the last decompose(). Throws std::invalid_argument for another model's blocks or keep outside [0, 1].
  void blend(const KfacApproximation& newer, double keep);
  /// Eigendecomposes the current factors (the constructor does it unless KfacOptions::decompose is false);
  /// set_damping must follow before apply().
  void decompose();
  /// Whether the factors have been decomposed at least once.
  bool decomposed() const { return !factored_.empty(); }
  /// The factors (each block's A then G, column-major, then the diagonal's entries outside the blocks) in one
  /// vector, and back: a checkpoint's copy. load_factors throws std::invalid_argument for a vector of another
  /// length; it leaves the decomposition alone.
  Vec<double> packed_factors() const;
  void load_factors(const Vec<double>& packed);

  /// y = F̂ x, undamped (blocks G V A, the diagonal elsewhere). x and y must not overlap.
  void multiply(const Scalar* x, Scalar* y) const;
  /// Sets λ ≥ 0 for apply(): the π-split damped factors' inverses. Throws std::invalid_argument for λ < 0,
  /// and for λ = 0 when a factor or the diagonal is singular.
  void set_damping(double lambda);
  /// Sets λ ≥ 0 for apply() as set_damping does, the same π-split damped factors, but inverts them by Cholesky
  /// (no eigendecomposition; π from the factors' traces, which are their eigenvalues' sums): a refresh costs
  /// a factorization per factor instead of an eigensolver's work. Throws std::invalid_argument when a damped
  /// factor is not positive definite.
  void invert(double lambda);
  double damping() const { return damping_; }
  /// z = F̂_λ⁻¹ r, F̂_λ the damped approximation (after set_damping; r and z must not overlap).
  void apply(const Scalar* r, Scalar* z) const;
  /// z = F̂_λ⁻¹ g for g = F.gradient(), through the gradient's low rank where that is cheaper. A block's slice
  /// of g is s·DᵀÃ (Ã its R·N unfolded inputs with the bias's ones, D their output cotangents, s = 1/M), so
  ///   G⁻¹ (s DᵀÃ) A⁻¹ = s (D G⁻¹)ᵀ (Ã A⁻¹):   R·N·(a² + g² + g·a) multiply-adds instead of g·a·(g + a),
  /// taken for the blocks where that is fewer (low_rank_cheaper: a minibatch smaller than the layer's widths;
  /// the others as apply does). F's stored cotangents must be its gradient's: call it after F.gradient() with no
  /// product, backprop_outputs or K-FAC factors of F in between (quadratic_forms and loss() store none). With
  /// a communicator of several ranks (a rank holds its share of the cotangents) it is apply(g). Equal to
  /// apply(g) to rounding. Returns the blocks taken through the low rank.
  Index apply_gradient(const FisherOperator<Scalar>& F, const Scalar* g, Scalar* z) const;
  /// Whether apply_gradient takes block b through the low rank for a batch of num_samples.
  static bool low_rank_cheaper(const Block& b, Index num_samples);

 private:
  struct Factored {  // one block's eigendecompositions and damped inverses
    Mat<double> QA, QG;
    Vec<double> eA, eG;
    Mat<Scalar> inverse_A, inverse_G;
  };
  // V: the block's slice of x as a rows × (cols + bias) matrix, and back.
  void gather(const Block& b, const Scalar* x, Mat<Scalar>& V) const;
  void scatter(const Block& b, const Mat<Scalar>& V, Scalar* y) const;
  void invert_diagonal(double lambda);  // 1 / (d + λ) outside the blocks
  // z's blocks = G⁻¹ V A⁻¹ for r's blocks V, except those with (*skip)[b] (nullptr: none).
  void apply_blocks(const Scalar* r, Scalar* z, const std::vector<bool>* skip) const;

  Index num_params_ = 0;
  int num_threads_ = 1;
  std::vector<Block> blocks_;
  std::vector<Factored> factored_;
  Vec<Scalar> diagonal_;
  Vec<Scalar> inverse_diagonal_;
  std::vector<bool> covered_;  // per entry of the parameter vector
  Index backprops_ = 0;
  double damping_ = -1;
};

}  // namespace natgrad
