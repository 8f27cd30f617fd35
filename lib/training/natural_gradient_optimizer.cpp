// The natural-gradient (Hessian-free) optimizer: d = (F + λI)⁻¹g on the step's batch by CG warm-started from
// the previous direction or by the Gram, the update s = −ηd + μ s_prev with CG backtracking, the Armijo line
// search and λ adapted by the Levenberg–Marquardt rule (optimizer.h).
#include <natgrad/core/random.h>
#include <natgrad/curvature/fisher_gram.h>
#include <natgrad/solvers/conjugate_gradient.h>
#include <natgrad/solvers/preconditioner.h>
#include <natgrad/training/optimizer.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "core/fail.h"
#include "core/format_number.h"
#include "training/armijo_line_search.h"
#include "training/batch_share.h"
#include "training/cg_backtracking.h"

namespace natgrad {

uint64_t step_seed(uint64_t seed, Index k) {
  return CounterRng(seed, rng_stream(RngDomain::steps, static_cast<uint64_t>(k))).bits(0);
}

bool NaturalGradientStepOptions::is_valid(std::string* why) const {
  auto bad = [&](const std::string& m) {
    if (why) *why = m;
    return false;
  };
  auto in_open_unit = [](double v) { return v > 0 && v < 1; };
  std::string part;
  if (!(lr > 0) || !std::isfinite(lr))
    return bad("lr must be finite and > 0, got " + detail::format_number(lr));
  if (!(damping > 0) || !std::isfinite(damping))
    return bad("damping must be finite and > 0, got " + detail::format_number(damping));
  if (curvature_batch < 0) return bad("curvature_batch must be >= 0, got " + std::to_string(curvature_batch));
  if (!(cg_tolerance > 0 && cg_tolerance < 1))
    return bad("cg_tolerance must be in (0, 1), got " + detail::format_number(cg_tolerance));
  if (cg_max_iterations < 1)
    return bad("cg_max_iterations must be >= 1, got " + std::to_string(cg_max_iterations));
  if (!(warm_start >= 0 && warm_start <= 1))
    return bad("warm_start must be in [0, 1], got " + detail::format_number(warm_start));
  if (!(backtrack_spacing > 1) || !std::isfinite(backtrack_spacing))
    return bad("backtrack_spacing must be finite and > 1, got " + detail::format_number(backtrack_spacing));
  if (!in_open_unit(armijo_c))
    return bad("armijo_c must be in (0, 1), got " + detail::format_number(armijo_c));
  if (!in_open_unit(line_search_shrink))
    return bad("line_search_shrink must be in (0, 1), got " + detail::format_number(line_search_shrink));
  if (line_search_max_shrinks < 0)
    return bad("line_search_max_shrinks must be >= 0, got " + std::to_string(line_search_max_shrinks));
  if (!(momentum >= 0) || !std::isfinite(momentum))
    return bad("momentum must be finite and >= 0, got " + detail::format_number(momentum));
  return true;
}

template <typename Scalar>
NaturalGradientOptimizer<Scalar>::NaturalGradientOptimizer(Index num_params,
                                                           const NaturalGradientStepOptions& options)
    : o_(options), num_params_(num_params), lambda_(options.damping) {
  std::string why;
  if (!o_.is_valid(&why)) detail::fail("natgrad", why);
}

namespace {

// The loss at trial parameters on one batch, by a forward pass of an operator rebound to them: `op` when the
// caller has one free (bound to the same batch), else one made at the first call and kept. The empirical
// kind: no Monte-Carlo draws, no probabilities kept; the loss does not depend on the kind.
template <typename Scalar>
class TrialLoss {
 public:
  TrialLoss(const Network<Scalar>& model, LikelihoodKind likelihood, const Dataset<Scalar>& data,
            const FisherOptions& fo, FisherOperator<Scalar>* op)
      : model_(model), likelihood_(likelihood), data_(data), fo_(fo), op_(op) {
    fo_.kind = FisherKind::empirical;
    fo_.mc_samples = 1;
    fo_.damping = 0;
  }
  double operator()(const Vec<Scalar>& theta) {
    if (op_) {
      op_->rebind(theta);
    } else {
      own_ = std::make_unique<FisherOperator<Scalar>>(model_, theta, likelihood_, data_, fo_);
      op_ = own_.get();
    }
    return op_->forward_error().empty() ? op_->loss() : std::numeric_limits<double>::quiet_NaN();
  }

 private:
  const Network<Scalar>& model_;
  LikelihoodKind likelihood_;
  const Dataset<Scalar>& data_;
  FisherOptions fo_;
  FisherOperator<Scalar>* op_;
  std::unique_ptr<FisherOperator<Scalar>> own_;
};

}  // namespace

template <typename Scalar>
StepResult NaturalGradientOptimizer<Scalar>::step(const Network<Scalar>& model, LikelihoodKind likelihood,
                                                  Vec<Scalar>& theta, const Dataset<Scalar>& batch, Index k) {
  const Index P = model.num_params();
  if (theta.size() != P || P != num_params_)
    detail::fail("natgrad: the parameter vector has " + std::to_string(theta.size()) +
                 " entries and the model " + std::to_string(P) +
                 " parameters, but the optimizer was made for " + std::to_string(num_params_));
  StepResult r;
  r.lr = o_.lr;
  r.damping = lambda_;
  FisherOptions fo = o_.fisher;
  fo.damping = lambda_;
  fo.seed = step_seed(o_.fisher.seed, k);
  const Index n = batch.size();
  const Index nc = o_.curvature_batch > 0 ? std::min(o_.curvature_batch, n) : n;
  // This rank's shares (one process: the batch and its head) of the batch and of the curvature batch.
  const detail::BatchShare<Scalar> on(batch, n, fo);
  std::unique_ptr<detail::BatchShare<Scalar>> on_curvature_batch;
  if (nc < n) on_curvature_batch = std::make_unique<detail::BatchShare<Scalar>>(batch, nc, fo);
  FisherOperator<Scalar> G(model, theta, likelihood, on.data(), on.options());
  if (!G.forward_error().empty()) detail::fail("forward pass: " + G.forward_error());
  r.loss = G.loss();
  const Vec<Scalar> g = G.take_gradient();
  if (!std::isfinite(r.loss) || !g.allFinite()) detail::fail("the loss or the gradient is NaN or Inf at step " + std::to_string(k));
  std::unique_ptr<FisherOperator<Scalar>> own;
  if (nc < n)
    own = std::make_unique<FisherOperator<Scalar>>(model, theta, likelihood, on_curvature_batch->data(),
                                                   on_curvature_batch->options());
  FisherOperator<Scalar>& F = own ? *own : G;
  // Losses are evaluated only by the safeguards; with neither, the step is the plain update.
  const bool evaluates = o_.adapt_damping || o_.line_search;

  const bool gram = o_.solver == SolverKind::smw ||
                    (o_.solver == SolverKind::automatic &&
                     FisherGram<Scalar>::rows_for(model, nc, fo.kind, fo.mc_samples) <= o_.gram_max_rows);
  Vec<Scalar> d;
  // CG's iterates kept for backtracking, in CG's order, the last being d itself.
  std::vector<const Vec<Scalar>*> candidates;
  std::vector<Index> candidate_iterations;
  std::unique_ptr<detail::SavedIterates<Scalar>> saved;
  if (gram) {
    const FisherGram<Scalar> gr(F);
    d = gr.solve(g, {lambda_}, nc == n)[0].direction;
    r.solver = SolverKind::smw;
  } else {
    const bool warm = d_.size() == P && o_.warm_start > 0;
    d = warm ? Vec<Scalar>(Scalar(o_.warm_start) * d_) : Vec<Scalar>(Vec<Scalar>::Zero(P));
    CgOptions cg;
    cg.relative_tolerance = o_.cg_tolerance;
    cg.max_iterations = o_.cg_max_iterations;
    cg.warm_start = warm;
    cg.recompute_residual_at_exit = false;  // (read by nothing here: one product saved at max_iterations)
    if (o_.backtrack && evaluates) {
      saved = std::make_unique<detail::SavedIterates<Scalar>>(o_.backtrack_spacing, d.data(), P);
      cg.callback = [&saved](const CgIterationInfo& info) {
        saved->on_iteration(info.iteration);
        return CallbackResult::keep_going;
      };
    }
    CgWorkspace<Scalar> ws(P, false);
    F.set_damping(lambda_);
    const CgSummary s = conjugate_gradient(F, IdentityPreconditioner<Scalar>(P), g.data(), d.data(), cg, ws);
    if (s.is_numerical_failure()) detail::fail("conjugate gradient at step " + std::to_string(k) + ": " + s.message);
    r.cg_iterations = s.iterations;
    r.cg_iterate = s.returned_iterate;
    r.solver = SolverKind::cg;
    if (saved) {  // the saved iterates before the one CG returned (the last, or the best after a breakdown)
      for (std::size_t i = 0; i < saved->iterations().size(); ++i)
        if (saved->iterations()[i] < s.returned_iterate) {
          candidates.push_back(&saved->iterates()[i]);
          candidate_iterations.push_back(saved->iterations()[i]);
        }
      candidates.push_back(&d);
      candidate_iterations.push_back(s.returned_iterate);
    }
  }
  d_ = d;

  // The update for a step size η along direction v: s = −η v + μ s_prev.
  const double mu = o_.momentum;
  const Vec<Scalar>* previous = mu > 0 && update_.size() == P ? &update_ : nullptr;
  auto update_of = [&](double eta, const Vec<Scalar>& v) {
    Vec<Scalar> u = Scalar(-eta) * v;
    if (previous) u += Scalar(mu) * *previous;
    return u;
  };
  auto finish = [&](const Vec<Scalar>& u) {
    theta += u;
    if (mu > 0)
      update_ = u;
    else
      update_.resize(0);
    r.damping_after = lambda_;
    return r;
  };
  if (!evaluates) return finish(update_of(o_.lr, d));

  // Trial losses on the step's batch (on G once it is free: its gradient is taken and, when the curvature
  // batch is smaller, F is another operator) and on the curvature batch (the same when the batches are).
  TrialLoss<Scalar> on_batch(model, likelihood, on.data(), on.options(), nc < n ? &G : nullptr);
  std::unique_ptr<TrialLoss<Scalar>> on_head;
  if (nc < n)
    on_head = std::make_unique<TrialLoss<Scalar>>(model, likelihood, on_curvature_batch->data(),
                                                  on_curvature_batch->options(), nullptr);
  TrialLoss<Scalar>& on_curvature = on_head ? *on_head : on_batch;

  // CG backtracking: from the last kept iterate back while the loss on the curvature batch falls.
  const Vec<Scalar>* direction = &d;
  // The step batch's loss at (η, direction), when backtracking measured it already.
  double known = std::numeric_limits<double>::quiet_NaN();
  bool is_known = false;
  if (candidates.size() > 1) {
    double reached = 0;
    const Index j = detail::walk_back(
        static_cast<Index>(candidates.size()),
        [&](Index i) {
          return on_curvature(Vec<Scalar>(theta + update_of(o_.lr, *candidates[std::size_t(i)])));
        },
        &reached);
    direction = candidates[std::size_t(j)];
    r.cg_iterate = candidate_iterations[std::size_t(j)];
    if (nc == n) {  // the step's batch: the first trial below is this loss
      known = std::isfinite(reached) ? reached : std::numeric_limits<double>::quiet_NaN();
      is_known = true;
    }
  }

  // The step size: Armijo's sufficient decrease on the step's batch, or η as given.
  const double gd = double(g.template cast<double>().dot(direction->template cast<double>()));
  const double gp = previous ? double(g.template cast<double>().dot(previous->template cast<double>())) : 0.0;
  auto step_loss = [&](double eta) { return on_batch(Vec<Scalar>(theta + update_of(eta, *direction))); };
  double eta = o_.lr, after = 0;
  bool accepted = true;
  if (o_.line_search) {
    detail::ArmijoRule rule;
    rule.c = o_.armijo_c;
    rule.shrink = o_.line_search_shrink;
    rule.max_shrinks = o_.line_search_max_shrinks;
    const detail::ArmijoResult a = detail::armijo_search(
        r.loss, o_.lr, rule, step_loss, [&](double e) { return -e * gd + mu * gp; },
        is_known ? &known : nullptr);
    eta = a.eta;
    after = a.loss;
    accepted = a.accepted;
    r.line_search_trials = a.trials;
  } else {
    after = is_known ? known : step_loss(eta);
  }
  r.lr = eta;
  const Vec<Scalar> s = update_of(eta, *direction);
  // A rejection: θ stays, λ rises (with the rule), momentum restarts.
  if (!accepted || !std::isfinite(after) || after > r.loss) {
    r.rejected = true;
    if (o_.adapt_damping) lambda_ *= 1.5;
    update_.resize(0);
    r.damping_after = lambda_;
    return r;
  }
  if (o_.adapt_damping) {
    // ρ: the loss's change against the undamped quadratic model's, gᵀs + ½ sᵀFs (F on the curvature batch,
    // still at θ; sᵀFs from the R-op alone).
    const double sFs = F.quadratic_forms({s.data()})(0, 0);
    const double predicted = g.template cast<double>().dot(s.template cast<double>()) + 0.5 * sFs;
    r.rho = (after - r.loss) / predicted;
    if (r.rho < 0.25)
      lambda_ *= 1.5;
    else if (r.rho > 0.75)
      lambda_ *= 2.0 / 3.0;
  }
  return finish(s);
}

// The state: the previous direction (CG's warm start), the previous accepted update (momentum) and λ; an
// empty vector is "none" (before the first step; no update kept without momentum or after a rejection).
template <typename Scalar>
OptimizerState NaturalGradientOptimizer<Scalar>::state() const {
  OptimizerState s;
  s.vectors = {{"direction", d_.template cast<double>()}, {"update", update_.template cast<double>()}};
  s.scalars = {{"damping", lambda_}};
  return s;
}

template <typename Scalar>
void NaturalGradientOptimizer<Scalar>::load_state(const OptimizerState& s) {
  const Vec<double>* d = nullptr;
  const Vec<double>* u = nullptr;
  const double* lambda = nullptr;
  for (const auto& [n, v] : s.vectors) {
    if (n == "direction") d = &v;
    if (n == "update") u = &v;
  }
  for (const auto& [n, v] : s.scalars)
    if (n == "damping") lambda = &v;
  if (!d || !u || !lambda)
    detail::fail("natgrad: the state lacks direction, update or damping (another optimizer's?)");
  for (const Vec<double>* v : {d, u})
    if (v->size() != 0 && v->size() != num_params_)
      detail::fail("natgrad: the state's " + std::string(v == d ? "direction" : "update") + " has " +
                   std::to_string(v->size()) + " entries but the model has " + std::to_string(num_params_) +
                   " parameters");
  if (!(*lambda > 0) || !std::isfinite(*lambda))
    detail::fail("natgrad: the state's damping must be finite and > 0, got " +
                 detail::format_number(*lambda));
  d_ = d->template cast<Scalar>();
  update_ = u->template cast<Scalar>();
  lambda_ = *lambda;
}

template class NaturalGradientOptimizer<float>;
template class NaturalGradientOptimizer<double>;

}  // namespace natgrad
