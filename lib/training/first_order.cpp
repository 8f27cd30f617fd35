// Adam and SGD as PyTorch defines them (torch.optim.Adam, torch.optim.SGD), in PyTorch's order of operations:
// the gradient from the operator's cached forward pass, then the update.
#include <natgrad/training/optimizer.h>

#include <cmath>

#include "core/fail.h"
#include "training/batch_share.h"

namespace natgrad {

namespace {

// The batch's mean loss gradient at theta, and its loss (one forward and one backward pass; under a
// communicator on this rank's share, summed over the ranks).
template <typename Scalar>
Vec<Scalar> batch_gradient(const Network<Scalar>& model, LikelihoodKind likelihood, const Vec<Scalar>& theta,
                           const Dataset<Scalar>& batch, const Communicator* comm, double* loss) {
  FisherOptions fo;
  fo.kind = FisherKind::empirical;  // (no Monte-Carlo draws; the gradient does not depend on the kind)
  fo.communicator = comm;
  const detail::BatchShare<Scalar> mine(batch, batch.size(), fo);
  FisherOperator<Scalar> F(model, theta, likelihood, mine.data(), mine.options());
  if (!F.forward_error().empty()) detail::fail("forward pass: " + F.forward_error());
  *loss = F.loss();
  return F.take_gradient();
}

void expect_size(const char* what, Index got, Index want) {
  if (got != want)
    detail::fail(std::string(what) + " has " + std::to_string(got) + " entries but the model has " +
                 std::to_string(want) + " parameters");
}

template <typename Scalar>
const Vec<double>* find_vector(const OptimizerState& s, const std::string& name) {
  for (const auto& [n, v] : s.vectors)
    if (n == name) return &v;
  return nullptr;
}

const double* find_scalar(const OptimizerState& s, const std::string& name) {
  for (const auto& [n, v] : s.scalars)
    if (n == name) return &v;
  return nullptr;
}

}  // namespace

template <typename Scalar>
StepResult FirstOrderOptimizer<Scalar>::step(const Network<Scalar>& model, LikelihoodKind likelihood,
                                             Vec<Scalar>& theta, const Dataset<Scalar>& batch, Index) {
  expect_size((std::string(this->name()) + ": the parameter vector").c_str(), theta.size(), size());
  StepResult r;
  update(theta, batch_gradient(model, likelihood, theta, batch, communicator(), &r.loss));
  r.lr = lr();
  return r;
}

template <typename Scalar>
AdamOptimizer<Scalar>::AdamOptimizer(Index num_params, const AdamOptions& options)
    : o_(options), m_(Vec<Scalar>::Zero(num_params)), v_(Vec<Scalar>::Zero(num_params)) {
  if (!(o_.lr > 0) || !(o_.beta1 >= 0 && o_.beta1 < 1) || !(o_.beta2 >= 0 && o_.beta2 < 1) || !(o_.eps >= 0))
    detail::fail("adam: lr must be > 0, betas in [0, 1) and eps >= 0");
}

template <typename Scalar>
void AdamOptimizer<Scalar>::update(Vec<Scalar>& theta, const Vec<Scalar>& g) {
  expect_size("adam: the gradient", g.size(), m_.size());
  ++t_;
  const Scalar b1 = Scalar(o_.beta1), b2 = Scalar(o_.beta2);
  // exp_avg.mul_(β1).add_(g, alpha=1 − β1); exp_avg_sq.mul_(β2).addcmul_(g, g, value=1 − β2)
  m_ = m_ * b1 + g * Scalar(1 - o_.beta1);
  v_ = v_ * b2 + (g.array() * g.array()).matrix() * Scalar(1 - o_.beta2);
  // bias corrections; denom = (√v / √bc2) + ε; θ ← θ − (η / bc1) m / denom
  const double bc1 = 1 - std::pow(o_.beta1, double(t_)), bc2 = 1 - std::pow(o_.beta2, double(t_));
  const Scalar step_size = Scalar(o_.lr / bc1), bc2_sqrt = Scalar(std::sqrt(bc2));
  theta.array() -= step_size * (m_.array() / (v_.array().sqrt() / bc2_sqrt + Scalar(o_.eps)));
}

template <typename Scalar>
OptimizerState AdamOptimizer<Scalar>::state() const {
  OptimizerState s;
  s.vectors = {{"exp_avg", m_.template cast<double>()}, {"exp_avg_sq", v_.template cast<double>()}};
  s.scalars = {{"step", double(t_)}};
  return s;
}

template <typename Scalar>
void AdamOptimizer<Scalar>::load_state(const OptimizerState& s) {
  const Vec<double>* m = find_vector<Scalar>(s, "exp_avg");
  const Vec<double>* v = find_vector<Scalar>(s, "exp_avg_sq");
  const double* t = find_scalar(s, "step");
  if (!m || !v || !t) detail::fail("adam: the state lacks exp_avg, exp_avg_sq or step (another optimizer's?)");
  expect_size("adam: the state's exp_avg", m->size(), m_.size());
  expect_size("adam: the state's exp_avg_sq", v->size(), v_.size());
  m_ = m->template cast<Scalar>();
  v_ = v->template cast<Scalar>();
  t_ = static_cast<Index>(*t);
}

template <typename Scalar>
SgdOptimizer<Scalar>::SgdOptimizer(Index num_params, const SgdOptions& options)
    : o_(options), b_(Vec<Scalar>::Zero(num_params)) {
  if (!(o_.lr > 0) || !(o_.momentum >= 0)) detail::fail("sgd: lr must be > 0 and momentum >= 0");
}

template <typename Scalar>
void SgdOptimizer<Scalar>::update(Vec<Scalar>& theta, const Vec<Scalar>& g) {
  expect_size("sgd: the gradient", g.size(), b_.size());
  if (o_.momentum == 0) {
    theta -= Scalar(o_.lr) * g;
    return;
  }
  if (!started_)
    b_ = g;  // torch: buf = clone(g) on the first step
  else
    b_ = b_ * Scalar(o_.momentum) + g;
  started_ = true;
  theta -= Scalar(o_.lr) * b_;
}

template <typename Scalar>
OptimizerState SgdOptimizer<Scalar>::state() const {
  OptimizerState s;
  s.vectors = {{"momentum_buffer", b_.template cast<double>()}};
  s.scalars = {{"started", started_ ? 1.0 : 0.0}};
  return s;
}

template <typename Scalar>
void SgdOptimizer<Scalar>::load_state(const OptimizerState& s) {
  const Vec<double>* b = find_vector<Scalar>(s, "momentum_buffer");
  const double* started = find_scalar(s, "started");
  if (!b || !started) detail::fail("sgd: the state lacks momentum_buffer or started (another optimizer's?)");
  expect_size("sgd: the state's momentum_buffer", b->size(), b_.size());
  b_ = b->template cast<Scalar>();
  started_ = *started != 0;
}

template class FirstOrderOptimizer<float>;
template class FirstOrderOptimizer<double>;
template class AdamOptimizer<float>;
template class AdamOptimizer<double>;
template class SgdOptimizer<float>;
template class SgdOptimizer<double>;

}  // namespace natgrad
