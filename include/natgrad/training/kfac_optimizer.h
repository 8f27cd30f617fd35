/// \file kfac_optimizer.h
/// \brief The K-FAC optimizer (Martens & Grosse 2015) on the library's K-FAC blocks (curvature/kfac.h).
///
/// Step k on a minibatch:
///   1. the loss and gradient g on the batch;
///   2. every `factor_every` steps (by default 2, or 16 when the factors take more than one backprop), the
///      factors A, G (and the diagonal outside the blocks) of the curvature
///      batch (its first curvature_batch samples) under the Fisher kind of `fisher`, blended into running
///      averages: A ← ε A + (1 − ε) A_k with ε = min(1 − 1/(j + 1), factor_decay), j the number of updates so
///      far (the first update takes A_k alone);
///   3. every `inverse_every` steps (and at the first), the averages' factors, damped with the λ of that step,
///      are inverted (Cholesky, KfacApproximation::invert); those inverses serve until the next refresh,
///      whatever λ does meanwhile (Martens & Grosse likewise change the factors' damping γ only every T₂ steps);
///   4. the proposal Δ = −F̂⁻¹ g with the factored Tikhonov damping of kfac.h (γ = √λ of the last refresh, π-split),
///      through the gradient's low rank for a layer wider than the batch (KfacApproximation::apply_gradient);
///   5. the update δ = η (α Δ + μ δ₀), δ₀ the previous update, with α and μ minimizing the damped quadratic
///      model gᵀδ + ½ δᵀ(F + λI)δ under the Fisher (of `fisher`'s kind) of the curvature batch, not its K-FAC
///      approximation (ΔᵀFΔ, ΔᵀFδ₀ and δ₀ᵀFδ₀ by FisherOperator::quadratic_forms: R-op passes, no backprop;
///      μ = 0 at the first step or with momentum off) — the step-size rule of Martens & Grosse §6.4 and §7;
///   6. on the last step of each window of `damping_every` steps, the loss at θ + δ on the step's batch (one
///      forward pass a window, as Martens & Grosse measure ρ every T₁ steps): a step whose loss is not finite or
///      rises is rejected (θ unchanged, λ / ω, no momentum at the next step). The window's other updates are
///      taken unmeasured; should the next step's loss be not finite, that update is taken back as if rejected
///      (the θ before it, λ / ω) and the step starts again from there;
///   7. with adapt_damping, every `damping_every` steps λ follows a Levenberg–Marquardt rule on two reduction
///      ratios, each measured / predicted against the change q(δ) = gᵀδ + ½ δᵀFδ the undamped model of δ's
///      batch predicted: ρ_own, the window's last update's, measured on its own batch (step 6), and ρ_next,
///      the previous update's, measured on the batch of the window's last step, which δ was not fitted to
///      (L'(θ + δ) − L'(θ): one more forward pass a window, not one a step; the window's other steps measure
///      nothing). λ / ω when ρ_own < 1/4 (the model overrates
///      even the batch it was fitted to); else λ × ω when ρ_next > 3/4 (not below min_damping), ω =
///      (19/20)^damping_every. ρ_own alone drives λ down until the steps overfit each batch; ρ_next alone drives
///      it up without end once the gradient's noise dominates (docs/training.md).
///
/// Draws are keyed by (seed, step) as for the natural-gradient optimizer: bit-identical for any thread count.
#pragma once

#include <natgrad/curvature/kfac.h>
#include <natgrad/training/optimizer.h>

#include <memory>

namespace natgrad {

struct KfacStepOptions {
  /// η, a multiple of the quadratic model's update: 0.5, chosen across the classifier, the autoencoder and the
  /// byte-level GPT (docs/training.md: per step better than 1 on all three; 0.25 better on the classifier only).
  double lr = 0.5;
  /// λ at the first step: 0.01, chosen on Fashion-MNIST's classifier and autoencoder (docs/training.md).
  double damping = 0.01;
  bool adapt_damping = true;
  bool momentum = true;   ///< μ from the quadratic model (false: μ = 0)
  Index curvature_batch = 0;  ///< factors and products on the first B2 samples (0: the whole batch)
  /// Factor updates every this many steps; 0 (the default): by their cost, every 2 steps when they take one
  /// backprop (sampled labels, the empirical kind), every 16 when they take more (the exact kind's closed form,
  /// C backprops) — chosen across the three problems of docs/training.md (16 against 8: the classifier's steps
  /// to 88% the same, 470, 517 and 517, at half the factors' cost).
  Index factor_every = 0;
  Index inverse_every = 20;   ///< the averaged factors inverted every this many steps
  Index damping_every = 5;    ///< the Levenberg–Marquardt rule every this many steps
  double factor_decay = 0.95; ///< the running average's largest weight on the past
  double min_damping = 1e-6;  ///< the Levenberg–Marquardt rule lowers λ no further
  /// Fisher kind, Monte-Carlo samples, seed (mixed with the step) and threads; its damping is ignored.
  FisherOptions fisher;
};

template <typename Scalar>
class KfacOptimizer final : public Optimizer<Scalar> {
 public:
  KfacOptimizer(const Network<Scalar>& model, const KfacStepOptions& options);
  const char* name() const override { return "kfac"; }
  StepResult step(const Network<Scalar>& model, LikelihoodKind likelihood, Vec<Scalar>& theta,
                  const Dataset<Scalar>& batch, Index k) override;
  /// The running factors, the factors last inverted, the previous update, the θ before it while it is
  /// unmeasured, λ, the count of factor updates and the reduction ratio's pending sums.
  OptimizerState state() const override;
  void load_state(const OptimizerState& s) override;
  double damping() const { return lambda_; }
  /// The steps between factor updates: factor_every, or what its 0 chose.
  Index factor_every() const { return factor_every_; }

 private:
  void refresh_inverse();

  KfacStepOptions o_;
  int threads_ = 1;
  Index factor_every_;
  double lambda_;
  Index updates_ = 0;  // factor updates so far
  std::unique_ptr<KfacApproximation<Scalar>> running_;  // the averages
  std::unique_ptr<KfacApproximation<Scalar>> inverse_;  // the averages at the last decomposition
  Vec<Scalar> previous_;                                // δ₀ (empty before the first accepted step)
  Vec<Scalar> unmeasured_from_;  // θ before the last update, while its loss is unmeasured (empty otherwise)
  double pending_predicted_ = 0;  // the model's change for the last accepted update, not yet measured
  double actual_sum_ = 0, predicted_sum_ = 0;  // changes measured on later batches and predicted, since the last λ update
  double own_actual_sum_ = 0, own_predicted_sum_ = 0;  // the same on the updates' own batches
};

}  // namespace natgrad
