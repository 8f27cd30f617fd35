/// \file compare_approximations.h
/// \brief How far the usual approximations of the Fisher are from the Fisher itself, on one problem.
///
/// For each approximation F̃ (the empirical Fisher, the Monte-Carlo Fisher with the operator's draws, the
/// diagonal of the empirical Fisher that the diagonal preconditioner uses, K-FAC), against the reference
/// operator F (the run's Fisher, exact by default):
///   - product_relative_error = max_i ‖F̃ u_i − θ_i u_i‖ / θ_i over the top-k eigenpairs (θ_i, u_i) of F:
///     how well F̃ acts on the directions where F is largest;
///   - direction_cosine = cos(d̃, d) between F̃'s damped natural-gradient direction d̃ = (F̃ + λI)⁻¹ g
///     (CG to the same tolerance for empirical and mc, a division for diagonal, K-FAC's π-split damped
///     inverse) and the reference direction d = (F + λI)⁻¹ g;
///   - time_s: what building F̃, its products and its direction took; products: its operator products.
///
/// \code
/// auto rows = natgrad::compare_approximations(F, g, d, spectrum.eigenvectors, spectrum.eigenvalues,
///                                             {natgrad::ApproximationKind::kfac}, cg_options);
/// \endcode
#pragma once

#include <natgrad/curvature/fisher_operator.h>
#include <natgrad/solvers/conjugate_gradient.h>

#include <string>
#include <vector>

namespace natgrad {

enum class ApproximationKind { empirical, mc, diagonal, kfac };
const char* to_string(ApproximationKind kind);
/// "empirical", "mc", "diagonal" or "kfac"; throws std::invalid_argument otherwise.
ApproximationKind approximation_from_string(const std::string& name);

struct ApproximationComparison {
  ApproximationKind kind = ApproximationKind::empirical;
  double product_relative_error = 0;
  double direction_cosine = 0;
  double time_s = 0;
  Index products = 0;       ///< products of F̃ (the empirical and mc operators; 0 for diagonal and K-FAC)
  CgSummary cg;             ///< the CG solve for d̃ (empirical and mc; empty otherwise)
};

/// F: the reference operator at damping λ = F.damping() > 0 (restored on return); gradient g and reference
/// direction d; eigenvectors (n × k, orthonormal) and eigenvalues (k, > 0) of F without damping. Collective
/// over F's communicator. Throws std::invalid_argument for λ ≤ 0, mismatched sizes or no eigenpairs.
template <typename Scalar>
std::vector<ApproximationComparison> compare_approximations(const FisherOperator<Scalar>& F, const Vec<Scalar>& gradient,
                                                            const Vec<Scalar>& direction, const Mat<double>& eigenvectors,
                                                            const Vec<double>& eigenvalues,
                                                            const std::vector<ApproximationKind>& kinds,
                                                            const CgOptions& cg);

}  // namespace natgrad
