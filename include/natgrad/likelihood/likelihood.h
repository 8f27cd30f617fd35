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
/// All functions work on C × n blocks of outputs, one column per sample.
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

namespace natgrad {

enum class LikelihoodKind { categorical, gaussian, bernoulli };
/// Which H_n the Fisher uses (docs/math.md): the closed form, a Monte-Carlo estimate with labels sampled
/// from the model, or the outer product of the true-label score (the empirical Fisher, not a Fisher).
enum class FisherKind { exact, mc, empirical };

const char* to_string(LikelihoodKind kind);
const char* to_string(FisherKind kind);
/// Parse "categorical" / "gaussian" / "bernoulli"; throws std::invalid_argument otherwise.
LikelihoodKind likelihood_from_string(const std::string& name);
/// Parse "exact" / "mc" / "empirical"; throws std::invalid_argument otherwise.
FisherKind fisher_kind_from_string(const std::string& name);

/// Throws std::invalid_argument unless `data` holds targets for this likelihood with C outputs: class
/// indices in [0, C) for categorical, a C × N matrix (entries in [0, 1] for bernoulli) otherwise.
template <typename Scalar>
void check_targets(LikelihoodKind kind, const Dataset<Scalar>& data, Index num_outputs);

/// Σ_j −log p(y_{col0+j} | Z_j) over the columns of Z.
template <typename Scalar>
double nll_sum(LikelihoodKind kind, ConstMatMap<Scalar> Z, const Dataset<Scalar>& data, Index col0);

/// G_j = ∇_z(−log p(y_{col0+j} | z)) at z = Z_j.
template <typename Scalar>
void nll_gradient(LikelihoodKind kind, ConstMatMap<Scalar> Z, const Dataset<Scalar>& data, Index col0,
                  MatMap<Scalar> G);

/// Scores of sampled labels: for each column j and draw s < S, y ~ p(y | Z_j) drawn from the counter-based
/// generator keyed by (seed, sample index sample0 + j, draw s), and S(:, j·S + s) = ∇_z log p(y | Z_j).
template <typename Scalar>
void sample_scores(LikelihoodKind kind, ConstMatMap<Scalar> Z, uint64_t seed, Index sample0, int draws,
                   MatMap<Scalar> S);

/// Targets drawn from the model, y_j ~ p(y | Z_j): draw 0 of each sample's stream, the same labels whose
/// scores sample_scores(…, sample0 = 0, …) returns in column j·S. Class labels always have p_y > 0 and
/// bernoulli targets are exactly 0 or 1, so check_targets accepts them.
template <typename Scalar>
Dataset<Scalar> sample_targets(LikelihoodKind kind, ConstMatMap<Scalar> Z, uint64_t seed);

}  // namespace natgrad
