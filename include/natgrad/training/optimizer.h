/// \file optimizer.h
/// \brief Optimizers that update a model's parameters from minibatches: Adam and SGD (PyTorch's, exactly) and
/// the natural-gradient (Hessian-free) optimizer on the library's damped solves.
///
/// An optimizer holds its state (moments, momentum buffer, damping, the previous direction and update) and
/// updates θ in place from one minibatch per step():
///   - AdamOptimizer is torch.optim.Adam (β 0.9, 0.999, ε 1e-8 added outside the square root, bias
///     correction, no weight decay), in the same order of operations;
///   - SgdOptimizer is torch.optim.SGD (momentum buffer b ← μb + g, b = g on the first step, θ ← θ − ηb;
///     no dampening, no Nesterov);
///   - NaturalGradientOptimizer takes d = (F + λI)⁻¹g on the step's batch (curvature on its first
///     curvature_batch samples) by CG warm-started from 0.95 × the previous d, or by the exact Gram solve
///     (curvature/fisher_gram.h), and the update s = −η d + μ s_prev (momentum μ, s_prev the previous
///     accepted update), with three safeguards, each optional: CG backtracking (Martens 2010: the earlier CG
///     iterate whose update lowers the loss on the curvature batch more than the later ones), an Armijo line
///     search on η, and λ adapted by the Levenberg–Marquardt rule on ρ = (L(θ + s) − L(θ)) / (gᵀs + ½ sᵀFs)
///     at the taken update; a step whose loss is not finite or rises is rejected (θ unchanged). With
///     adapt_damping and line_search false and momentum 0 a step is exactly θ ← θ − η(F + λI)⁻¹g to the
///     solver's tolerance (no backtracking either). NaturalGradientStepOptions says what each costs.
///
/// Every draw of a step (Monte-Carlo labels) is keyed by (seed, step, sample, position, draw), so results are
/// bit-identical for any thread count and no two steps repeat their draws.
///
/// **Several processes.** With a communicator of K > 1 ranks (FisherOptions::communicator of the natural
/// gradient's and K-FAC's options, AdamOptions::communicator, SgdOptions::communicator), every rank calls
/// step() with the whole minibatch and computes on its contiguous share of it (share_of; of the curvature
/// batch, its share of the first curvature_batch samples); a share may be empty (a batch smaller than K). The
/// loss, the gradient, every Fisher product, K-FAC's factors and the Gram are sums over the ranks in rank
/// order, and every decision (the Levenberg–Marquardt rule, the line search, CG and its backtracking, K-FAC's
/// α and μ) is taken from those sums, so every rank holds the same θ and state, bit for bit, from run to run
/// for a given K, and equal to the one-process step to rounding. step() is then collective.
///
/// \code
/// natgrad::NaturalGradientStepOptions o;  // backtracking, the line search and the damping rule on
/// o.momentum = 0.5;
/// natgrad::NaturalGradientOptimizer<float> opt(model.num_params(), o);
/// for (natgrad::Index k = 0; k < steps; ++k) opt.step(model, lk, theta, batch_k, k);
/// \endcode
#pragma once

#include <natgrad/core/dataset.h>
#include <natgrad/curvature/fisher_operator.h>
#include <natgrad/natural_gradient/solve_natural_gradient.h>

#include <limits>
#include <string>
#include <utility>
#include <vector>

namespace natgrad {

/// What one step did.
struct StepResult {
  double loss = 0;           ///< on the step's batch, before the update
  double lr = 0;             ///< η of the update (natgrad: the η taken; a rejected step's: the last tried)
  double damping = 0;        ///< λ the step solved with (natural gradient)
  double damping_after = 0;  ///< λ after the step's adaptation: what the next step solves with
  Index cg_iterations = 0;   ///< CG's iterations (0 for the Gram solve and the first-order optimizers)
  /// The CG iterate the update used: cg_iterations, or an earlier one after CG backtracking (0 for the Gram).
  Index cg_iterate = 0;
  Index line_search_trials = 0;  ///< values of η the line search tried (0 without it)
  /// ρ of the Levenberg–Marquardt rule at the taken update (NaN without the rule or for a rejected step).
  double rho = std::numeric_limits<double>::quiet_NaN();
  bool rejected = false;               ///< the natural-gradient step was rejected: θ is unchanged
  SolverKind solver = SolverKind::cg;  ///< the solver the natural-gradient step used
};

/// An optimizer's state as named vectors (a checkpoint stores them as tensors) and scalars.
struct OptimizerState {
  std::vector<std::pair<std::string, Vec<double>>> vectors;
  std::vector<std::pair<std::string, double>> scalars;
};

template <typename Scalar>
class Optimizer {
 public:
  virtual ~Optimizer() = default;
  /// "adam", "sgd", "natgrad".
  virtual const char* name() const = 0;
  /// Updates theta in place from `batch` (step k of the run, counting from 0); returns the loss before the
  /// update. Throws std::invalid_argument for a theta of the wrong size or targets that do not fit.
  virtual StepResult step(const Network<Scalar>& model, LikelihoodKind likelihood, Vec<Scalar>& theta,
                          const Dataset<Scalar>& batch, Index k) = 0;
  virtual OptimizerState state() const = 0;
  /// Restores a state() of the same optimizer on the same parameter count; throws std::invalid_argument
  /// naming what does not match.
  virtual void load_state(const OptimizerState& s) = 0;
};

struct AdamOptions {
  double lr = 1e-3, beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
  /// The ranks that share each batch (see above); nullptr (default): one process. Must outlive the optimizer.
  const Communicator* communicator = nullptr;
};

/// Adam and SGD: a step is the batch's loss and gradient (one forward and one backward pass), then update().
template <typename Scalar>
class FirstOrderOptimizer : public Optimizer<Scalar> {
 public:
  StepResult step(const Network<Scalar>& model, LikelihoodKind likelihood, Vec<Scalar>& theta,
                  const Dataset<Scalar>& batch, Index k) final;
  /// The update from a given gradient (what step() does after computing it).
  virtual void update(Vec<Scalar>& theta, const Vec<Scalar>& g) = 0;

 protected:
  virtual double lr() const = 0;
  virtual Index size() const = 0;  // parameters
  virtual const Communicator* communicator() const = 0;
};

template <typename Scalar>
class AdamOptimizer final : public FirstOrderOptimizer<Scalar> {
 public:
  AdamOptimizer(Index num_params, const AdamOptions& options);
  const char* name() const override { return "adam"; }
  OptimizerState state() const override;
  void load_state(const OptimizerState& s) override;
  void update(Vec<Scalar>& theta, const Vec<Scalar>& g) override;

 private:
  double lr() const override { return o_.lr; }
  Index size() const override { return m_.size(); }
  const Communicator* communicator() const override { return o_.communicator; }
  AdamOptions o_;
  Vec<Scalar> m_, v_;
  Index t_ = 0;
};

struct SgdOptions {
  double lr = 1e-2, momentum = 0;
  /// The ranks that share each batch (see above); nullptr (default): one process. Must outlive the optimizer.
  const Communicator* communicator = nullptr;
};

template <typename Scalar>
class SgdOptimizer final : public FirstOrderOptimizer<Scalar> {
 public:
  SgdOptimizer(Index num_params, const SgdOptions& options);
  const char* name() const override { return "sgd"; }
  OptimizerState state() const override;
  void load_state(const OptimizerState& s) override;
  void update(Vec<Scalar>& theta, const Vec<Scalar>& g) override;

 private:
  double lr() const override { return o_.lr; }
  Index size() const override { return b_.size(); }
  const Communicator* communicator() const override { return o_.communicator; }
  SgdOptions o_;
  Vec<Scalar> b_;
  bool started_ = false;
};

/// The natural-gradient optimizer's settings. A step costs one forward pass and gradient on the batch, a
/// forward pass on the curvature batch when it is smaller, and the solve; then, when a safeguard is on, the
/// losses it needs (one forward pass each): CG backtracking from 2 (the last iterate and the one before) on
/// the curvature batch, the line search 1 to 1 + line_search_max_shrinks on the step's batch (the first
/// shared with the rule's when the two batches are the same), and the Levenberg–Marquardt rule 1 (the line
/// search's last, when it runs) plus one product for sᵀFs. Trial losses use one more forward cache (of the
/// curvature batch or of the step's, whichever is not already free); backtracking keeps about log(I)/log γ
/// iterates.
struct NaturalGradientStepOptions {
  double lr = 1.0;       ///< η, > 0. Default 1.
  double damping = 1.0;  ///< λ at the first step, > 0. Default 1.
  /// λ × 3/2 when ρ < 1/4, × 2/3 when ρ > 3/4, × 3/2 for a rejected step. Default true.
  bool adapt_damping = true;
  /// Curvature on the first B2 samples of each batch (0: the whole batch).
  Index curvature_batch = 0;
  /// Fisher kind, Monte-Carlo samples, seed (mixed with the step) and threads; its damping is ignored.
  FisherOptions fisher;
  /// cg, smw or automatic (the Gram when it is small enough: NaturalGradientOptions' rule).
  SolverKind solver = SolverKind::automatic;
  Index gram_max_rows = 6400;
  double cg_tolerance = 1e-4;
  Index cg_max_iterations = 100;
  /// CG starts from this multiple of the previous direction (0: from zero), in [0, 1]. The previous direction
  /// is CG's last iterate even when backtracking took an earlier one: it solves the quadratic model better,
  /// and the next solve continues on a nearby model. Default 0.95.
  double warm_start = 0.95;
  /// CG backtracking (Martens 2010, section 4.6): keep CG's iterates at iterations ⌈γ^j⌉ (γ =
  /// backtrack_spacing) and the last; from the last, walk back to the one before while the loss of
  /// θ − η d_j + μ s_prev on the curvature batch (Martens' choice: the cheaper batch) is lower, and take the
  /// iterate reached. CG only (the Gram solve has no iterates), and only when adapt_damping or line_search is
  /// on: with both off a step evaluates no loss. Default true.
  bool backtrack = true;
  double backtrack_spacing = 1.3;  ///< γ > 1. Default 1.3 (Martens).
  /// Armijo line search on η, on the step's batch: η, η/2, … (line_search_shrink, at most
  /// line_search_max_shrinks times) until L(θ + s) ≤ L(θ) + armijo_c · gᵀs with s = −η d + μ s_prev; when no
  /// η passes, the step is rejected. Default true.
  bool line_search = true;
  double armijo_c = 1e-4;             ///< in (0, 1). Default 1e-4.
  double line_search_shrink = 0.5;    ///< in (0, 1). Default 0.5.
  Index line_search_max_shrinks = 8;  ///< ≥ 0. Default 8.
  /// μ ≥ 0: the update is s = −η d + μ s_prev, s_prev the previous accepted update (0 after a rejection and
  /// at the first step). Default 0.
  double momentum = 0;

  /// True if every field is in range; otherwise false with the reason (the field and its value) in *why.
  bool is_valid(std::string* why) const;
};

template <typename Scalar>
class NaturalGradientOptimizer final : public Optimizer<Scalar> {
 public:
  NaturalGradientOptimizer(Index num_params, const NaturalGradientStepOptions& options);
  const char* name() const override { return "natgrad"; }
  StepResult step(const Network<Scalar>& model, LikelihoodKind likelihood, Vec<Scalar>& theta,
                  const Dataset<Scalar>& batch, Index k) override;
  OptimizerState state() const override;
  void load_state(const OptimizerState& s) override;
  double damping() const { return lambda_; }

 private:
  NaturalGradientStepOptions o_;
  Index num_params_;
  double lambda_;
  Vec<Scalar> d_;       // the previous direction, CG's last iterate (empty before the first step)
  Vec<Scalar> update_;  // the previous accepted update s_prev (empty: none, or the last step was rejected)
};

/// The seed of step k's draws: a pure function of (seed, k), so that no two steps share a Monte-Carlo draw.
uint64_t step_seed(uint64_t seed, Index k);

}  // namespace natgrad
