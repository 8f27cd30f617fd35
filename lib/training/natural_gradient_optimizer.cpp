// The natural-gradient (Hessian-free) optimizer: d = (F + λI)⁻¹g on the step's batch by CG warm-started from
// the previous direction or by the Gram, θ ← θ − ηd, and λ adapted by the Levenberg–Marquardt rule.
#include <natgrad/core/random.h>
#include <natgrad/curvature/fisher_gram.h>
#include <natgrad/solvers/conjugate_gradient.h>
#include <natgrad/solvers/preconditioner.h>
#include <natgrad/training/optimizer.h>

#include <cmath>
#include <limits>
#include <memory>

#include "core/fail.h"
#include "core/format_number.h"

namespace natgrad {

uint64_t step_seed(uint64_t seed, Index k) {
  return CounterRng(seed, rng_stream(RngDomain::steps, static_cast<uint64_t>(k))).bits(0);
}

template <typename Scalar>
NaturalGradientOptimizer<Scalar>::NaturalGradientOptimizer(Index num_params, const NaturalGradientStepOptions& options)
    : o_(options), lambda_(options.damping) {
  if (!(o_.lr > 0) || !(o_.damping > 0) || !std::isfinite(o_.damping))
    detail::fail("natgrad: lr and damping must be > 0 (damping " + detail::format_number(o_.damping) + ")");
  if (!(o_.warm_start >= 0 && o_.warm_start <= 1)) detail::fail("natgrad: warm_start must be in [0, 1]");
  if (o_.curvature_batch < 0) detail::fail("natgrad: curvature_batch must be >= 0");
  d_.resize(0);
  (void)num_params;
}

template <typename Scalar>
StepResult NaturalGradientOptimizer<Scalar>::step(const Network<Scalar>& model, LikelihoodKind likelihood,
                                                  Vec<Scalar>& theta, const Dataset<Scalar>& batch, Index k) {
  const Index P = model.num_params();
  if (theta.size() != P)
    detail::fail("natgrad: the parameter vector has " + std::to_string(theta.size()) + " entries but the model has " +
                 std::to_string(P) + " parameters");
  StepResult r;
  r.lr = o_.lr;
  r.damping = lambda_;
  FisherOptions fo = o_.fisher;
  fo.damping = lambda_;
  fo.seed = step_seed(o_.fisher.seed, k);
  const Index n = batch.size();
  const Index nc = o_.curvature_batch > 0 ? std::min(o_.curvature_batch, n) : n;
  FisherOperator<Scalar> G(model, theta, likelihood, batch, fo);
  if (!G.forward_error().empty()) detail::fail("forward pass: " + G.forward_error());
  r.loss = G.loss();
  const Vec<Scalar> g = G.gradient();
  if (!std::isfinite(r.loss) || !g.allFinite()) detail::fail("the loss or the gradient is NaN or Inf at step " + std::to_string(k));
  std::unique_ptr<FisherOperator<Scalar>> own;
  if (nc < n) own = std::make_unique<FisherOperator<Scalar>>(model, theta, likelihood, batch.head(nc), fo);
  FisherOperator<Scalar>& F = own ? *own : G;

  const bool gram = o_.solver == SolverKind::smw ||
                    (o_.solver == SolverKind::automatic &&
                     FisherGram<Scalar>::rows_for(model, nc, fo.kind, fo.mc_samples) <= o_.gram_max_rows);
  Vec<Scalar> d;
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
    CgWorkspace<Scalar> ws(P, false);
    F.set_damping(lambda_);
    const CgSummary s = conjugate_gradient(F, IdentityPreconditioner<Scalar>(P), g.data(), d.data(), cg, ws);
    if (s.is_numerical_failure()) detail::fail("conjugate gradient at step " + std::to_string(k) + ": " + s.message);
    r.cg_iterations = s.iterations;
    r.solver = SolverKind::cg;
  }
  d_ = d;
  const Vec<Scalar> s = Scalar(-o_.lr) * d;
  if (!o_.adapt_damping) {
    theta += s;
    return r;
  }
  // ρ: the loss's change against the undamped quadratic model's, gᵀs + ½ sᵀFs, on the step's batch.
  F.set_damping(0);
  Vec<Scalar> Fs(P);
  F.perform_op(s.data(), Fs.data());
  const Vec<double> sd = s.template cast<double>();
  const double predicted = g.template cast<double>().dot(sd) + 0.5 * sd.dot(Fs.template cast<double>());
  const Vec<Scalar> trial = theta + s;
  G.rebind(trial);
  const double after = G.forward_error().empty() ? G.loss() : std::numeric_limits<double>::quiet_NaN();
  if (!std::isfinite(after) || after > r.loss) {  // rejected: θ stays, λ rises
    r.rejected = true;
    lambda_ *= 1.5;
    return r;
  }
  theta = trial;
  const double rho = (after - r.loss) / predicted;
  if (rho < 0.25)
    lambda_ *= 1.5;
  else if (rho > 0.75)
    lambda_ *= 2.0 / 3.0;
  return r;
}

template <typename Scalar>
OptimizerState NaturalGradientOptimizer<Scalar>::state() const {
  OptimizerState s;
  s.vectors = {{"direction", d_.template cast<double>()}};
  s.scalars = {{"damping", lambda_}};
  return s;
}

template <typename Scalar>
void NaturalGradientOptimizer<Scalar>::load_state(const OptimizerState& s) {
  const Vec<double>* d = nullptr;
  const double* lambda = nullptr;
  for (const auto& [n, v] : s.vectors)
    if (n == "direction") d = &v;
  for (const auto& [n, v] : s.scalars)
    if (n == "damping") lambda = &v;
  if (!d || !lambda) detail::fail("natgrad: the state lacks direction or damping (another optimizer's?)");
  d_ = d->template cast<Scalar>();
  lambda_ = *lambda;
}

template class NaturalGradientOptimizer<float>;
template class NaturalGradientOptimizer<double>;

}  // namespace natgrad
