/// \file output_curvature.h
/// \brief H_n for every sample of a batch — exact, Monte-Carlo or empirical — ready to multiply.
///
/// Built once per batch from the cached outputs; apply() is then a cheap C × n product per call:
///   - exact:      categorical keeps p = softmax(z) (or, with keep_probabilities false, recomputes it from
///                 the logits in each apply: the same values, for no memory) and computes
///                 H u = p ∘ u − p (pᵀu) in O(C), arranged so that no entry cancels when one probability
///                 rounds to 1;
///                 bernoulli keeps σ(1 − σ); gaussian keeps nothing (H = I);
///   - mc:         keeps S sampled scores s per sample and computes H u = 1/S Σ_s s (sᵀu);
///   - empirical:  keeps the true-label score s and computes H u = s (sᵀu).
///
/// \code
/// natgrad::OutputCurvature<double> H(LikelihoodKind::categorical, FisherKind::exact, 1, 0, logits, data);
/// H.apply(0, U, HU);
/// \endcode
#pragma once

#include <natgrad/likelihood/likelihood.h>

#include <vector>

namespace natgrad {

template <typename Scalar>
class OutputCurvature {
 public:
  OutputCurvature() = default;
  /// Z is (T·C) × N (the outputs of the whole batch, T = `positions` blocks of C per sample); `data` supplies
  /// the true labels for `empirical`. Exact: H_n is block-diagonal over the positions. Monte-Carlo and
  /// empirical: H_n = s sᵀ averaged over draws, s the stacked scores of all T positions (labels drawn
  /// independently per position, so the exact blocks are its expectation).
  /// With keep_probabilities false (exact categorical only), Z must outlive this object: apply() reads it.
  /// Monte-Carlo labels of column n are keyed by the sample index first_sample + n (a batch shared by
  /// several processes keys them globally). Categorical labels in `data` equal to kIgnoreIndex (when it
  /// holds N·T labels) drop their positions from every kind: H_n's block of an ignored position is zero (no
  /// label drawn there; the other positions keep their draws).
  OutputCurvature(LikelihoodKind likelihood, FisherKind kind, int mc_samples, uint64_t seed, ConstMatMap<Scalar> Z,
                  const Dataset<Scalar>& data, Index positions = 1, bool keep_probabilities = true,
                  Index first_sample = 0);

  /// HU_j = H_{col0 + j} U_j for the columns of U.
  void apply(Index col0, ConstMatMap<Scalar> U, MatMap<Scalar> HU) const;

  /// H_n as a dense C × C matrix (for references and tests).
  Mat<Scalar> dense(Index n) const;

 private:
  LikelihoodKind likelihood_ = LikelihoodKind::categorical;
  FisherKind kind_ = FisherKind::exact;
  int draws_ = 1;
  Index num_outputs_ = 0;  // T·C
  Index positions_ = 1;
  Index num_samples_ = 0;
  Mat<Scalar> stat_;  // exact: p (categorical) or σ(1 − σ) (bernoulli); mc/empirical: scores, C × (draws·N)
  std::vector<Index> dominant_;  // exact categorical: argmax_c p_c of each sample and position
  const Scalar* logits_ = nullptr;  // exact categorical without kept probabilities: Z
  std::vector<unsigned char> ignored_;  // per sample and position (N·T), when some label is kIgnoreIndex
};

/// Column c of a factor of the exact output Fisher, H_n = Σ_c s_c s_cᵀ: for each column j of Z ((T·C) × n,
/// C = Z.rows() / T classes per position), S_j = s_c at every position: categorical √p_c (e_c − p),
/// bernoulli √(σ(1 − σ))_c e_c, gaussian e_c. With T > 1, position t's block is multiplied by a Rademacher
/// sign keyed by (seed, sample0 + j, c·T + t), so Σ_c S Sᵀ is H_n plus cross-position terms of zero mean.
/// K-FAC's output side for the exact Fisher (curvature/kfac.h). With `labels` (categorical: T per column of
/// Z, from labels[0]) an ignored position's block is zero.
template <typename Scalar>
void exact_fisher_factor(LikelihoodKind likelihood, ConstMatMap<Scalar> Z, Index c, uint64_t seed, Index sample0,
                         MatMap<Scalar> S, Index positions = 1, const int64_t* labels = nullptr);

}  // namespace natgrad
