/// \file likelihood.h
/// \brief Output distributions p(y | z): negative log-likelihood, its gradient, the exact output Fisher,
/// and sampling.
///
/// | likelihood    | −log p(y|z)          | ∇_z(−log p)         | exact H = E_y[s sᵀ]      |
/// |---------------|----------------------|---------------------|--------------------------|
/// | categorical   | −log softmax(z)_y    | p − onehot(y)        | diag(p) − p pᵀ           |
/// | gaussian      | ½‖y − z‖²            | z − y                | I                        |
/// | bernoulli     | Σ_c BCE-with-logits  | σ(z) − y             | diag(σ(z)(1 − σ(z)))     |
///
/// All functions work on blocks of outputs with one column per sample. A model whose output is [T, C] (a
/// sequence) has a likelihood per position: a column holds T blocks of C outputs, `positions` = T, the labels
/// are [N, T] row-major (N·T class indices) and real targets (T·C) × N. The loss and the Fisher are then means
/// over the N·T positions (docs/math.md); with T = 1 (the default) this is one likelihood per sample.
///
/// A categorical label equal to kIgnoreIndex (−100, PyTorch's `cross_entropy(ignore_index=-100)`) marks a
/// position that carries no loss: its −log p is not added, its gradient and scores are zero, and the means
/// are over the positions that count (FisherOperator::counted_positions()).
///
/// \code
/// using namespace natgrad;
/// Scalar loss = nll_sum<double>(LikelihoodKind::categorical, logits, data, 0) / logits.cols();
/// \endcode
#pragma once

#include <natgrad/core/dataset.h>
#include <natgrad/core/types.h>

#include <cstdint>
#include <string>
#include <vector>

namespace natgrad {

enum class LikelihoodKind { categorical, gaussian, bernoulli };

/// The categorical label of a position that counts for nothing (PyTorch's default ignore_index).
constexpr int64_t kIgnoreIndex = -100;

/// The positions that count among N·T categorical labels: those not equal to kIgnoreIndex.
Index counted_labels(const std::vector<int64_t>& labels);
/// Which H_n the Fisher uses (docs/math.md): the closed form, a Monte-Carlo estimate with labels sampled
/// from the model, or the outer product of the true-label score (the empirical Fisher, not a Fisher).
enum class FisherKind { exact, mc, empirical };

const char* to_string(LikelihoodKind kind);
const char* to_string(FisherKind kind);
/// Parse "categorical" / "gaussian" / "bernoulli"; throws std::invalid_argument otherwise.
LikelihoodKind likelihood_from_string(const std::string& name);
/// Parse "exact" / "mc" / "empirical"; throws std::invalid_argument otherwise.
FisherKind fisher_kind_from_string(const std::string& name);

/// Throws std::invalid_argument unless `data` holds targets for this likelihood with C outputs per position:
/// N·T class indices in [0, C) or kIgnoreIndex for categorical, a (T·C) × N matrix (entries in [0, 1] for
/// bernoulli) otherwise. (That some label counts is checked per batch, over all ranks, by FisherOperator.)
template <typename Scalar>
void check_targets(LikelihoodKind kind, const Dataset<Scalar>& data, Index num_outputs, Index positions = 1);

/// Σ_j Σ_t −log p(y_{col0+j, t} | Z_{j, t}) over the columns of Z (T·C rows), ignored positions left out.
template <typename Scalar>
double nll_sum(LikelihoodKind kind, ConstMatMap<Scalar> Z, const Dataset<Scalar>& data, Index col0,
               Index positions = 1);

/// G_j = ∇_z(−Σ_t log p(y_{col0+j, t} | z_t)) at z = Z_j (each position's block is its own gradient; zero at
/// an ignored position).
template <typename Scalar>
void nll_gradient(LikelihoodKind kind, ConstMatMap<Scalar> Z, const Dataset<Scalar>& data, Index col0,
                  MatMap<Scalar> G, Index positions = 1);

/// Scores of sampled labels: for each column j, draw s < S and position t < T, y ~ p(y | Z_{j, t}) drawn from
/// the counter-based generator keyed by (seed, sample index sample0 + j, counter s·T + t), and
/// S(:, j·S + s) stacks the positions' scores ∇_z log p(y_t | z_t). With `labels` (categorical: the labels
/// of Z's columns, T per column, from labels[0]) the score of a position whose label is kIgnoreIndex is zero
/// and no label is drawn there; every other position keeps its key, so its draw does not change.
template <typename Scalar>
void sample_scores(LikelihoodKind kind, ConstMatMap<Scalar> Z, uint64_t seed, Index sample0, int draws,
                   MatMap<Scalar> S, Index positions = 1, const int64_t* labels = nullptr);

/// Targets drawn from the model, y_j ~ p(y | Z_j): draw 0 of each sample's stream, the same labels whose
/// scores sample_scores(…, sample0 = 0, …) returns in column j·S. Class labels always have p_y > 0 and
/// bernoulli targets are exactly 0 or 1, so check_targets accepts them.
template <typename Scalar>
Dataset<Scalar> sample_targets(LikelihoodKind kind, ConstMatMap<Scalar> Z, uint64_t seed, Index positions = 1);

}  // namespace natgrad
