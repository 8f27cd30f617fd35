/// \file optimizer.h
/// \brief Optimizers that update a model's parameters from minibatches: Adam and SGD (PyTorch's, exactly) and
/// the natural-gradient (Hessian-free) optimizer on the library's damped solves.
///
/// An optimizer holds its state (moments, momentum buffer, damping, the previous direction) and updates θ in
/// place from one minibatch per step():
///   - AdamOptimizer is torch.optim.Adam (β 0.9, 0.999, ε 1e-8 added outside the square root, bias
///     correction, no weight decay), in the same order of operations;
///   - SgdOptimizer is torch.optim.SGD (momentum buffer b ← μb + g, b = g on the first step, θ ← θ − ηb;
///     no dampening, no Nesterov);
///   - NaturalGradientOptimizer takes d = (F + λI)⁻¹g on the step's batch (curvature on its first
///     curvature_batch samples) by CG warm-started from 0.95 × the previous d, or by the exact Gram solve
///     (curvature/fisher_gram.h), and θ ← θ − η d; with adapt_damping, λ follows the Levenberg–Marquardt rule
///     on ρ = (L(θ_new) − L(θ)) / (gᵀs + ½ sᵀFs), s = −η d, measured on the step's batch: λ × 3/2 when
///     ρ < 1/4, × 2/3 when ρ > 3/4, and a step whose loss is not finite or rises is rejected (θ unchanged, λ
///     × 3/2). With adapt_damping false a step is exactly θ ← θ − η(F + λI)⁻¹g to the solver's tolerance.
///
/// Every draw of a step (Monte-Carlo labels) is keyed by (seed, step, sample, position, draw), so results are
/// bit-identical for any thread count and no two steps repeat their draws.
///
/// \code
/// natgrad::AdamOptimizer<float> opt(model.num_params(), {1e-3});
/// for (natgrad::Index k = 0; k < steps; ++k) opt.step(model, lk, theta, batch_k, k);
/// \endcode
#pragma once

#include <natgrad/core/dataset.h>
#include <natgrad/curvature/fisher_operator.h>
#include <natgrad/natural_gradient/solve_natural_gradient.h>

#include <string>
#include <utility>
#include <vector>

namespace natgrad {

/// What one step did.
struct StepResult {
  double loss = 0;          ///< on the step's batch, before the update
  double lr = 0;            ///< η of the update
  double damping = 0;       ///< λ the step solved with (natural gradient)
  Index cg_iterations = 0;  ///< CG's iterations (0 for the Gram solve and the first-order optimizers)
  bool rejected = false;    ///< the natural-gradient step was rejected: θ is unchanged
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
};

template <typename Scalar>
class AdamOptimizer final : public Optimizer<Scalar> {
 public:
  AdamOptimizer(Index num_params, const AdamOptions& options);
  const char* name() const override { return "adam"; }
  StepResult step(const Network<Scalar>& model, LikelihoodKind likelihood, Vec<Scalar>& theta,
                  const Dataset<Scalar>& batch, Index k) override;
  OptimizerState state() const override;
  void load_state(const OptimizerState& s) override;
  /// The update from a given gradient (what step() does after computing it).
  void update(Vec<Scalar>& theta, const Vec<Scalar>& g);

 private:
  AdamOptions o_;
  Vec<Scalar> m_, v_;
  Index t_ = 0;
};

struct SgdOptions {
  double lr = 1e-2, momentum = 0;
};

template <typename Scalar>
class SgdOptimizer final : public Optimizer<Scalar> {
 public:
  SgdOptimizer(Index num_params, const SgdOptions& options);
  const char* name() const override { return "sgd"; }
  StepResult step(const Network<Scalar>& model, LikelihoodKind likelihood, Vec<Scalar>& theta,
                  const Dataset<Scalar>& batch, Index k) override;
  OptimizerState state() const override;
  void load_state(const OptimizerState& s) override;
  void update(Vec<Scalar>& theta, const Vec<Scalar>& g);

 private:
  SgdOptions o_;
  Vec<Scalar> b_;
  bool started_ = false;
};

struct NaturalGradientStepOptions {
  double lr = 1.0;       ///< η
  double damping = 1.0;  ///< λ at the first step
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
  /// CG starts from this multiple of the previous direction (0: from zero).
  double warm_start = 0.95;
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
  double lambda_;
  Vec<Scalar> d_;  // the previous direction (empty before the first step)
};

/// The seed of step k's draws: a pure function of (seed, k), so that no two steps share a Monte-Carlo draw.
uint64_t step_seed(uint64_t seed, Index k);

}  // namespace natgrad
