// The K-FAC optimizer (kfac_optimizer.h): running averages of the Kronecker factors, inverses refreshed every
// few steps, the update's size and momentum from the exact Fisher's quadratic model, λ by Levenberg–Marquardt.
#include <natgrad/core/threads.h>
#include <natgrad/training/kfac_optimizer.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "core/fail.h"
#include "core/format_number.h"
#include "training/batch_share.h"

namespace natgrad {

template <typename Scalar>
KfacOptimizer<Scalar>::KfacOptimizer(const Network<Scalar>& model, const KfacStepOptions& options)
    : o_(options), threads_(resolve_threads(options.fisher.num_threads)), lambda_(options.damping) {
  if (!(o_.lr > 0) || !std::isfinite(o_.lr)) detail::fail("kfac: lr must be > 0");
  if (!(o_.damping > 0) || !std::isfinite(o_.damping))
    detail::fail("kfac: damping must be > 0 (damping " + detail::format_number(o_.damping) + ")");
  if (o_.factor_every < 0 || o_.inverse_every < 1 || o_.damping_every < 1)
    detail::fail("kfac: factor_every must be >= 0 (0: by the factors' cost), inverse_every and damping_every >= 1");
  if (!(o_.factor_decay >= 0 && o_.factor_decay < 1)) detail::fail("kfac: factor_decay must be in [0, 1)");
  if (o_.curvature_batch < 0) detail::fail("kfac: curvature_batch must be >= 0");
  running_ = std::make_unique<KfacApproximation<Scalar>>(model, threads_);
  factor_every_ = o_.factor_every > 0 ? o_.factor_every
                  : KfacApproximation<Scalar>::backprops_for(model, o_.fisher) > 1 ? 16 : 2;
}

template <typename Scalar>
void KfacOptimizer<Scalar>::refresh_inverse() {
  inverse_ = std::make_unique<KfacApproximation<Scalar>>(*running_);
  inverse_->invert(lambda_);
}

namespace {

// The dot products vᵢᵀvⱼ (i ≤ j) of a few vectors in one pass over them: each accumulated in double over fixed
// blocks of 512 entries, a block's dot in the working precision while the block is in cache — vectorized, one
// read of each vector, and independent of the thread count.
template <typename Scalar>
Eigen::MatrixXd blocked_dots(const std::vector<const Vec<Scalar>*>& v) {
  constexpr Index kBlock = 512;
  const Index k = static_cast<Index>(v.size()), n = v.front()->size();
  Eigen::MatrixXd out = Eigen::MatrixXd::Zero(k, k);
  for (Index i = 0; i < n; i += kBlock) {
    const Index m = std::min(kBlock, n - i);
    for (Index a = 0; a < k; ++a)
      for (Index b = a; b < k; ++b) out(a, b) += double(v[a]->segment(i, m).dot(v[b]->segment(i, m)));
  }
  out.triangularView<Eigen::StrictlyLower>() = out.transpose();
  return out;
}

}  // namespace

template <typename Scalar>
StepResult KfacOptimizer<Scalar>::step(const Network<Scalar>& model, LikelihoodKind likelihood, Vec<Scalar>& theta,
                                       const Dataset<Scalar>& batch, Index k) {
  const Index P = model.num_params();
  if (theta.size() != P || running_->rows() != P)
    detail::fail("kfac: the parameter vector has " + std::to_string(theta.size()) + " entries but the model has " +
                 std::to_string(P) + " parameters");
  StepResult r;
  r.damping = lambda_;
  FisherOptions fo = o_.fisher;
  fo.damping = 0;
  fo.seed = step_seed(o_.fisher.seed, k);
  const Index n = batch.size();
  const Index nc = o_.curvature_batch > 0 ? std::min(o_.curvature_batch, n) : n;
  // This rank's shares (one process: the batch and its head) of the batch and of the curvature batch.
  const detail::BatchShare<Scalar> on(batch, n, fo);
  // On the last step of each damping window, the previous update's reduction ratio, measured on this batch
  // (which it was not fitted to): the loss at θ − δ₀ first, then the operator is moved to θ. One forward pass
  // a window, not one a step.
  const bool closes_window = (k + 1) % o_.damping_every == 0;
  const bool measuring = o_.adapt_damping && closes_window && pending_predicted_ < 0 && previous_.size() == P;
  FisherOperator<Scalar> G(model, measuring ? Vec<Scalar>(theta - previous_) : theta, likelihood, on.data(),
                           on.options());
  double before = 0;
  if (measuring) {
    before = G.forward_error().empty() ? G.loss() : std::numeric_limits<double>::quiet_NaN();
    G.rebind(theta);
  }
  const auto loss_at = [&G] {  // (NaN where the forward pass failed: outputs not finite, say)
    return G.forward_error().empty() ? G.loss() : std::numeric_limits<double>::quiet_NaN();
  };
  r.loss = loss_at();
  const double omega = std::pow(19.0 / 20.0, double(o_.damping_every));
  const bool take_back = !std::isfinite(r.loss) && unmeasured_from_.size() == P;
  if (take_back) {
    // The last update's loss was not measured on its own batch (step 6 measures a window's last step only),
    // and here it is not finite: it is taken back as step 6 would have rejected it (θ before it, λ / ω, no
    // momentum at this step), and this step starts again from there.
    theta.swap(unmeasured_from_);
    previous_.resize(0);
    lambda_ /= omega;
    r.damping = lambda_;
    G.rebind(theta);
    r.loss = loss_at();
  }
  if (!G.forward_error().empty()) detail::fail("forward pass: " + G.forward_error());
  unmeasured_from_.resize(0);
  if (measuring && !take_back && std::isfinite(before)) {
    actual_sum_ += r.loss - before;
    predicted_sum_ += pending_predicted_;
  }
  pending_predicted_ = 0;
  if (!std::isfinite(r.loss)) detail::fail("the loss is NaN or Inf at step " + std::to_string(k));
  std::unique_ptr<FisherOperator<Scalar>> own;
  if (nc < n) {
    const detail::BatchShare<Scalar> head(batch, nc, fo);
    own = std::make_unique<FisherOperator<Scalar>>(model, theta, likelihood, head.data(), head.options());
  }
  FisherOperator<Scalar>& F = own ? *own : G;

  if (k % factor_every_ == 0 || updates_ == 0) {
    KfacOptions ko;
    ko.decompose = false;
    const KfacApproximation<Scalar> fresh(F, ko);
    const double keep = std::min(1.0 - 1.0 / double(updates_ + 1), o_.factor_decay);
    running_->blend(fresh, keep);
    ++updates_;
  }
  // The factors are damped with the λ of their inversion until the next refresh (re-inverting at every
  // change of λ cost a decomposition every few steps); the quadratic model below uses the current λ.
  if (!inverse_ || k % o_.inverse_every == 0) refresh_inverse();

  // The gradient after the factors (whose backprop would replace its cotangents), then the proposal through
  // its low rank where that is cheaper (KfacApproximation::apply_gradient), and the quadratic model along it
  // and the previous update: ΔᵀFΔ, ΔᵀFδ₀ and δ₀ᵀFδ₀ from the R-op alone (FisherOperator::quadratic_forms).
  const Vec<Scalar>& g = G.gradient();
  if (!g.allFinite()) detail::fail("the gradient is NaN or Inf at step " + std::to_string(k));
  Vec<Scalar> delta(P);
  inverse_->apply_gradient(G, g.data(), delta.data());
  delta = -delta;
  const bool with_previous = o_.momentum && previous_.size() == P;
  const Eigen::MatrixXd Q = with_previous ? F.quadratic_forms({delta.data(), previous_.data()})
                                          : F.quadratic_forms({delta.data()});
  // gᵀΔ, ΔᵀΔ, and with the previous update gᵀδ₀, Δᵀδ₀, δ₀ᵀδ₀, in one pass.
  const Eigen::MatrixXd dots = with_previous ? blocked_dots<Scalar>({&g, &delta, &previous_})
                                             : blocked_dots<Scalar>({&g, &delta});
  const double dFd = Q(0, 0), dd = dots(1, 1), gd = dots(0, 1), gp = with_previous ? dots(0, 2) : 0.0;
  double alpha = 0, mu = 0, dFp = 0, pFp = 0;
  if (with_previous) {
    dFp = Q(0, 1);
    pFp = Q(1, 1);
    const double a = dFd + lambda_ * dd, b = dFp + lambda_ * dots(1, 2), c = pFp + lambda_ * dots(2, 2);
    const double det = a * c - b * b;
    if (det > 1e-12 * a * c) {
      alpha = (-gd * c + gp * b) / det;
      mu = (-gp * a + gd * b) / det;
    }
  }
  if (alpha == 0 && mu == 0) alpha = -gd / (dFd + lambda_ * dd);
  if (!std::isfinite(alpha) || !std::isfinite(mu))
    detail::fail("kfac: the quadratic model's step is not finite at step " + std::to_string(k) + " (gᵀΔ " +
                 detail::format_number(gd) + ", ΔᵀFΔ " + detail::format_number(dFd) + ", ΔᵀΔ " +
                 detail::format_number(dd) + ", λ " + detail::format_number(lambda_) + ")");
  alpha *= o_.lr;
  mu *= o_.lr;
  Vec<Scalar> update = Scalar(alpha) * delta;
  if (mu != 0) update += Scalar(mu) * previous_;
  r.lr = alpha;
  // The undamped model's change at the update, from the products above.
  const double predicted = alpha * gd + (mu != 0 ? mu * gp : 0.0) +
                           0.5 * (alpha * alpha * dFd + 2 * alpha * mu * dFp + mu * mu * pFp);
  // On the window's last step, the loss at the update on the step's batch: a step whose loss is not finite or
  // rises is rejected; then λ follows the two reduction ratios (kfac_optimizer.h, step 7): up on ρ_own, this
  // update's own batch, else down on ρ_next, the batch after the previous one. One forward pass a window.
  Vec<Scalar> trial = theta + update;
  double after = std::numeric_limits<double>::quiet_NaN();
  if (closes_window) {
    G.rebind(trial);
    if (G.forward_error().empty()) after = G.loss();
  }
  if (closes_window && (!std::isfinite(after) || after > r.loss)) {
    r.rejected = true;
    lambda_ /= omega;
    previous_.resize(0);
  } else {
    theta.swap(trial);  // (the buffers trade places: trial now holds the θ before the update)
    previous_.swap(update);
    pending_predicted_ = predicted;
    if (closes_window) {
      own_actual_sum_ += after - r.loss;
      own_predicted_sum_ += predicted;
    } else {
      unmeasured_from_.swap(trial);  // until the next step's loss shows the update did no harm
    }
  }
  if (o_.adapt_damping && closes_window) {
    if (own_predicted_sum_ < 0 && own_actual_sum_ / own_predicted_sum_ < 0.25)
      lambda_ /= omega;
    else if (predicted_sum_ < 0 && actual_sum_ / predicted_sum_ > 0.75)
      lambda_ = std::max(lambda_ * omega, o_.min_damping);
    actual_sum_ = predicted_sum_ = own_actual_sum_ = own_predicted_sum_ = 0;
  }
  r.damping_after = lambda_;
  return r;
}

template <typename Scalar>
OptimizerState KfacOptimizer<Scalar>::state() const {
  OptimizerState s;
  s.vectors = {{"running_factors", running_->packed_factors()},
               {"inverse_factors", inverse_ ? inverse_->packed_factors() : Vec<double>()},
               {"previous_update", previous_.template cast<double>()},
               {"theta_before_unmeasured_update", unmeasured_from_.template cast<double>()}};
  s.scalars = {{"damping", lambda_},
               {"factor_updates", double(updates_)},
               {"pending_predicted", pending_predicted_},
               {"actual_sum", actual_sum_},
               {"predicted_sum", predicted_sum_},
               {"own_actual_sum", own_actual_sum_},
               {"own_predicted_sum", own_predicted_sum_},
               {"inverse_damping", inverse_ ? inverse_->damping() : lambda_}};
  return s;
}

template <typename Scalar>
void KfacOptimizer<Scalar>::load_state(const OptimizerState& s) {
  const Vec<double>*running = nullptr, *inverse = nullptr, *previous = nullptr, *unmeasured_from = nullptr;
  const double *lambda = nullptr, *updates = nullptr, *pending = nullptr, *actual = nullptr, *predicted = nullptr,
               *own_actual = nullptr, *own_predicted = nullptr, *inverse_lambda = nullptr;
  for (const auto& [n, v] : s.vectors) {
    if (n == "running_factors") running = &v;
    if (n == "inverse_factors") inverse = &v;
    if (n == "previous_update") previous = &v;
    if (n == "theta_before_unmeasured_update") unmeasured_from = &v;
  }
  for (const auto& [n, v] : s.scalars) {
    if (n == "damping") lambda = &v;
    if (n == "factor_updates") updates = &v;
    if (n == "pending_predicted") pending = &v;
    if (n == "actual_sum") actual = &v;
    if (n == "predicted_sum") predicted = &v;
    if (n == "own_actual_sum") own_actual = &v;
    if (n == "own_predicted_sum") own_predicted = &v;
    if (n == "inverse_damping") inverse_lambda = &v;
  }
  if (!running || !inverse || !previous || !lambda || !updates || !pending || !actual || !predicted ||
      !own_actual || !own_predicted)
    detail::fail("kfac: the state lacks K-FAC's factors, update or damping (another optimizer's?)");
  if (!inverse_lambda || !unmeasured_from)  // a checkpoint from before the inverses kept their own λ, or from
    // before only a window's last update was measured on its own batch
    detail::fail(std::string("kfac: the state lacks ") +
                 (!inverse_lambda ? "the inverses' damping (inverse_damping)"
                                  : "the parameters before an unmeasured update (theta_before_unmeasured_update)") +
                 ": a checkpoint from an older natgrad, whose steps this one would not repeat; start the run again");
  for (const Vec<double>* v : {previous, unmeasured_from})
    if (v->size() != 0 && v->size() != running_->rows())
      detail::fail("kfac: the stored " + std::string(v == previous ? "update has " : "parameters have ") +
                   std::to_string(v->size()) + " entries, the model " + std::to_string(running_->rows()));
  running_->load_factors(*running);
  lambda_ = *lambda;
  updates_ = static_cast<Index>(*updates);
  pending_predicted_ = *pending;
  actual_sum_ = *actual;
  predicted_sum_ = *predicted;
  own_actual_sum_ = *own_actual;
  own_predicted_sum_ = *own_predicted;
  previous_ = previous->template cast<Scalar>();
  unmeasured_from_ = unmeasured_from->template cast<Scalar>();
  inverse_.reset();
  if (inverse->size() > 0) {
    inverse_ = std::make_unique<KfacApproximation<Scalar>>(*running_);
    inverse_->load_factors(*inverse);
    inverse_->invert(*inverse_lambda);
  }
}

template class KfacOptimizer<float>;
template class KfacOptimizer<double>;

}  // namespace natgrad
