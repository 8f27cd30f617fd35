/// \file solve_natural_gradient.h
/// \brief One call from (model, parameters, data) to the natural gradient d = (F + λI)⁻¹ g with diagnostics.
///
/// The gradient g and the loss use the first `batch` samples; the curvature F uses the first
/// `curvature_batch` of those (Martens 2010: curvature on fewer samples than the gradient). CG solves the
/// damped system, optionally preconditioned with (diag(F̂_emp) + λ)^α, and the top-k spectrum of F (without
/// damping) and the condition number of F + λI are computed on request.
///
/// \code
/// natgrad::NaturalGradientOptions opt;
/// opt.fisher.damping = 1e-3;
/// opt.spectrum_top_k = 10;
/// auto r = natgrad::solve_natural_gradient(model, theta, natgrad::LikelihoodKind::categorical, data, opt);
/// theta -= 0.1f * r.direction;
/// std::cout << r.cg.brief_report() << "\n";
/// \endcode
#pragma once

#include <natgrad/curvature/fisher_operator.h>
#include <natgrad/natural_gradient/compare_approximations.h>
#include <natgrad/solvers/conjugate_gradient.h>
#include <natgrad/solvers/preconditioner.h>
#include <natgrad/solvers/spectrum.h>

#include <cstddef>
#include <functional>
#include <string>
#include <vector>

namespace natgrad {

/// How the damped system is solved.
///   - cg: conjugate gradient on the matrix-free products (any batch, any damping ≥ 0, preconditioners,
///     deflation, several processes);
///   - smw: exactly, through the Gram G = UUᵀ of the curvature batch's rows (curvature/fisher_gram.h: the
///     Woodbury identity, one Cholesky factorization of G + λI per damping); every damping must be > 0, one
///     process, and no preconditioner or deflation (an exact solve makes them moot); a spectrum asked for is
///     then the exact one from G's eigendecomposition;
///   - automatic: smw when the Gram's rows are at most gram_max_rows and it fits in gram_max_bytes (and it
///     may run: every damping > 0, no preconditioner or deflation asked), else cg. Under MPI every rank holds
///     the whole G (the rows are gathered).
enum class SolverKind { cg, smw, automatic };
const char* to_string(SolverKind kind);
/// "cg", "smw" or "auto"; throws std::invalid_argument otherwise.
SolverKind solver_from_string(const std::string& name);

struct NaturalGradientOptions {
  /// cg (default), smw or automatic (SolverKind).
  SolverKind solver = SolverKind::cg;
  /// automatic: the most rows of U (N·C for the exact Fisher on a single-position output) for which the Gram
  /// is chosen; above it, CG. Default 6400: on the default MLP at λ = 1e-3 the Gram is 1.1x faster than CG to
  /// 1e-10 at 6400 rows and 0.8x at 7680 (its Cholesky factorization, O(R³), takes over; docs/solvers.md).
  Index gram_max_rows = 6400;
  /// automatic and smw: the bytes the Gram may take (G, its factor, the kept cotangents and the rows it forms
  /// explicitly; FisherGram::required_bytes); smw refuses beyond it, automatic runs CG. 0: no limit.
  std::size_t gram_max_bytes = 0;
  /// Fisher kind, Monte-Carlo samples, damping λ, seed, chunking, threads.
  FisherOptions fisher;
  /// Samples for the gradient and loss: the first `batch` (0 = all). Default 0.
  Index batch = 0;
  /// Samples for the curvature: the first `curvature_batch` of the batch (0 = the whole batch). Default 0.
  Index curvature_batch = 0;
  /// CG settings (tolerance, iterations, warm start, relative-progress stop, callback). Default: CgOptions().
  CgOptions cg;
  /// none (default), diagonal (Martens) or kfac (K-FAC's π-split damped inverse, curvature/kfac.h, built from
  /// the curvature batch).
  PreconditionerKind preconditioner = PreconditionerKind::none;
  /// α of the diagonal preconditioner, in [0, 1]. Default 0.75.
  double preconditioner_exponent = 0.75;
  /// Top-k eigenvalues of F to report (0 = none; skipped, with the condition number, when the CG callback
  /// stopped the solve). Default 0.
  Index spectrum_top_k = 0;
  /// Deflate CG with the top-`deflate` eigenpairs of F (DeflationPreconditioner), computed before CG.
  /// 0 (default): only those of the spectrum, when reuse_spectrum. Not with the diagonal preconditioner.
  Index deflate = 0;
  /// With spectrum_top_k > 0 and no diagonal preconditioner, compute the spectrum first and deflate CG with
  /// its eigenpairs (fewer products for the same direction). Default true.
  bool reuse_spectrum = true;
  /// Lanczos settings for the spectrum (num_eigenvalues is taken from spectrum_top_k).
  SpectrumOptions spectrum;
  /// Also estimate the condition number of F + λI. Default false.
  bool condition_number = false;
  /// Several dampings solved together (two or more, each finite, ≥ 0, distinct): multi-shift CG on
  /// F + λ_min I gives every (F + λ_j I) d_j = g for the products of the smallest λ alone
  /// (multi_shift_cg.h), reported in NaturalGradientResult::solves in this order. fisher.damping is then
  /// not used, and neither deflation nor the diagonal preconditioner combines with it (the shifted systems
  /// would share no Krylov space); a spectrum is computed after CG. Default empty: fisher.damping alone.
  std::vector<double> dampings;
  /// Approximations to compare with F after the solve (compare_approximations.h): needs one damping > 0 and
  /// spectrum_top_k > 0 (their products are compared on F's top eigenvectors). Default empty.
  std::vector<ApproximationKind> compare;
  /// Called once the loss and the gradient norm are known and finite, before anything else (the spectrum,
  /// CG) starts: progress for long jobs. Optional.
  std::function<void(double loss, double gradient_norm)> on_gradient;

  /// Whether the options make a solve: every rule about them that does not depend on the model (the ranges
  /// above, what combines with what). false with the reason in *why, which names the fields with their
  /// values ("deflate 4 and preconditioner diagonal do not combine: choose one").
  bool is_valid(std::string* why) const;
  /// The same, and the rules that depend on the model's parameter count P: spectrum_top_k < P and
  /// deflate < P (Lanczos finds at most P − 1 eigenpairs). solve_natural_gradient checks this one.
  bool is_valid(Index num_params, std::string* why) const;
};

/// How a natural-gradient solve ended.
enum class NaturalGradientTermination {
  solved,             ///< CG met its tolerance (or its relative-progress rule)
  not_converged,      ///< CG stopped early (iteration limit, stagnation, breakdown on a singular operator,
                      ///< the callback): the direction is CG's returned iterate (CgSummary::returned_iterate)
  numerical_failure,  ///< NaN or Inf: the direction is not usable (see failure)
};
const char* to_string(NaturalGradientTermination t);

/// One damping's solution in a solve over several dampings (NaturalGradientOptions::dampings).
template <typename Scalar>
struct DampedSolution {
  double damping = 0;
  Vec<Scalar> direction;  ///< (F + damping·I)⁻¹ g
  CgSummary cg;           ///< its share of the multi-shift CG
  bool has_condition = false;
  ConditionEstimate condition;  ///< of F + damping·I, if asked
};

/// Everything a solve found, Summary-style: termination(), the message (failure, or CG's), brief_report()
/// and full_report(), and every part's own summary.
template <typename Scalar>
struct NaturalGradientResult {
  /// Empty on success; otherwise the numerical failure that stopped the solve (NaN or Inf in the forward
  /// pass, with where it first appeared, or in the loss or the gradient: checked first, so nothing else ran
  /// and cg.breakdown is problem_not_finite or rhs_not_finite; or a CG breakdown on non-finite values). The
  /// direction is then not usable.
  std::string failure;
  bool ok() const { return failure.empty(); }
  /// Empty unless a stop request (natgrad::Interrupted thrown by a product, core/interrupted.h) cut the solve
  /// short outside CG: where, and what it said. Before CG started (in the spectrum computed for deflation or
  /// a preconditioner's construction) the direction is 0 and cg.termination user_stop after 0 iterations;
  /// after CG the direction is CG's and the diagnostics not finished are skipped. A stop request during CG
  /// is CG's own: cg.termination user_stop with the last completed iterate (conjugate_gradient.h).
  std::string interrupted;
  NaturalGradientTermination termination() const {
    return !ok() ? NaturalGradientTermination::numerical_failure
           : cg.is_converged() ? NaturalGradientTermination::solved
                               : NaturalGradientTermination::not_converged;
  }
  /// One line: termination, loss, gradient norm, CG iterations and residual, total time.
  std::string brief_report() const;
  /// Several lines: the above and the CG, spectrum and condition summaries, the timings.
  std::string full_report() const;
  Vec<Scalar> direction;   ///< d = (F + λI)⁻¹ g
  Vec<Scalar> gradient;    ///< g, mean over the batch
  double loss = 0;         ///< mean negative log-likelihood over the batch
  double gradient_norm = 0;
  Index samples = 0;       ///< gradient batch size
  Index curvature_samples = 0;
  CgSummary cg;
  SpectrumResult spectrum;          ///< empty unless spectrum_top_k > 0
  Index deflated = 0;               ///< eigenpairs CG was deflated with (0: none)
  bool has_condition = false;
  ConditionEstimate condition;      ///< of F + λI, if asked
  /// With several dampings: each one's solution, in the order asked; direction, cg and condition above are
  /// then those of the smallest damping.
  std::vector<DampedSolution<Scalar>> solves;
  Index multi_shift_products = 0;  ///< products of the multi-shift CG over all of them
  /// Each approximation asked for (NaturalGradientOptions::compare) against F, in the order asked.
  std::vector<ApproximationComparison> compare;
  double time_compare_s = 0;
  /// The solver that ran (never automatic), and why automatic chose it ("automatic: 1280 rows, Gram 26 MB").
  SolverKind solver = SolverKind::cg;
  std::string solver_reason;
  /// With the Gram solver: its rows R, the time to form G, to factor G + λI (summed over the dampings) and to
  /// apply the solution (Uᵀw, and Ug outside the push-through form), whether the push-through form served,
  /// and the true relative residual ‖g − (F + λI)d‖/‖g‖ of each damping (one product each; also in
  /// cg.relative_residual and each solves[j].cg).
  Index gram_rows = 0;
  double time_gram_form_s = 0, time_gram_factor_s = 0, time_gram_apply_s = 0;
  bool gram_push_through = false;
  /// With the Gram solver and a spectrum: every nonzero eigenvalue of F (descending), tr F and the mass at
  /// zero, exactly (spectrum holds the top spectrum_top_k of them).
  Vec<double> exact_eigenvalues;
  double exact_trace = 0;
  Index exact_zero_count = 0;
  double time_forward_s = 0, time_gradient_s = 0, time_cg_s = 0, time_spectrum_s = 0, time_total_s = 0;
};

/// Throws std::invalid_argument for invalid options, sizes or targets, and for a fisher.communicator of more
/// than one rank (a whole Dataset is one process's batch: use the BatchShare overload); numerical trouble in
/// CG is reported in result.cg (termination breakdown) rather than thrown. A natgrad::Interrupted from the
/// forward pass or the gradient (nothing computed yet) propagates; one after them is caught (see
/// NaturalGradientResult::interrupted). θ is taken by value: pass std::move(theta) when the caller does not
/// need it afterwards, and the operator keeps the only copy.
template <typename Scalar>
NaturalGradientResult<Scalar> solve_natural_gradient(const Network<Scalar>& model, Vec<Scalar> theta,
                                                     LikelihoodKind likelihood, const Dataset<Scalar>& data,
                                                     const NaturalGradientOptions& options);

/// This process's part of a batch shared by the ranks of FisherOptions::communicator (see share_of()).
template <typename Scalar>
struct BatchShare {
  const Dataset<Scalar>* data = nullptr;  ///< this rank's samples
  Index first = 0;                        ///< the global index of data's first sample
  Index total = 0;                        ///< samples over all ranks (0: data's own count)
};

/// The same solve over a batch that the ranks of options.fisher.communicator share: `batch` is this rank's
/// share of the gradient batch, `curvature` its share of the curvature batch (the same share, or its own
/// samples). options.batch and options.curvature_batch must be 0. Collective: every rank calls it with
/// the same options and gets the same result (gradient, direction and spectrum replicated; sums over the
/// ranks in rank order); the CG callback's stop is rank 0's decision, taken on every rank at the same
/// iteration. With no communicator (or one rank) it is the one-process solve.
template <typename Scalar>
NaturalGradientResult<Scalar> solve_natural_gradient(const Network<Scalar>& model, Vec<Scalar> theta,
                                                     LikelihoodKind likelihood, const BatchShare<Scalar>& batch,
                                                     const BatchShare<Scalar>& curvature,
                                                     const NaturalGradientOptions& options);

}  // namespace natgrad
