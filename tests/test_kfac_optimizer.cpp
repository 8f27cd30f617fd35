// The K-FAC optimizer: its first step against the K-FAC proposal rescaled by the dense Fisher's quadratic model,
// the running average of the factors and the momentum's 2 × 2 solve against dense products, the
// Levenberg–Marquardt rule, state round trips, thread invariance, and lower losses for every likelihood and
// Fisher kind.
#include "test_helpers.h"

#include <natgrad/training/kfac_optimizer.h>
#include <natgrad/training/trainer.h>

#include <Eigen/Dense>
#include <algorithm>
#include <cmath>
#include <tuple>

using namespace natgrad;
using namespace natgrad::test;

namespace {

// −K̂_λ⁻¹ g for the factors `packed` (K-FAC's inverse itself is checked against dense formulas in test_kfac).
Vec<double> proposal(const Network<double>& model, const Vec<double>& packed, double lambda, const Vec<double>& g) {
  KfacApproximation<double> K(model, 1);
  K.load_factors(packed);
  K.decompose();
  K.set_damping(lambda);
  Vec<double> z(g.size());
  K.apply(g.data(), z.data());
  return -z;
}

Vec<double> packed_factors_of(const Network<double>& model, const Vec<double>& theta, const Dataset<double>& batch,
                              LikelihoodKind lk) {
  const FisherOperator<double> F(model, theta, lk, batch);
  return KfacApproximation<double>(F).packed_factors();
}

}  // namespace

TEST(KfacOptimizer, FirstStepIsTheProposalScaledByTheDenseQuadraticModel) {
  Network<double> model(mlp_spec(4, 5, 3));
  const LikelihoodKind lk = LikelihoodKind::categorical;
  const Dataset<double> data = random_dataset(model, 12, lk, 3);
  const Vec<double> theta0 = random_vec<double>(model.num_params(), 4) * 0.5;
  const double lambda = 0.1;
  const Mat<double> Fd = dense_fisher(model, theta0, data, lk, FisherKind::exact);
  const Vec<double> g = FisherOperator<double>(model, theta0, lk, data).gradient();
  const Vec<double> delta = proposal(model, packed_factors_of(model, theta0, data, lk), lambda, g);
  const double alpha = -g.dot(delta) / (delta.dot(Fd * delta) + lambda * delta.squaredNorm());
  KfacStepOptions o;
  o.lr = 1;
  o.damping = lambda;
  o.adapt_damping = false;
  KfacOptimizer<double> opt(model, o);
  Vec<double> theta = theta0;
  const StepResult r = opt.step(model, lk, theta, data, 0);
  EXPECT_LT(rel_err_vec(Vec<double>(theta - theta0), Vec<double>(alpha * delta)), 1e-10);
  EXPECT_NEAR(r.lr, alpha, 1e-10 * std::abs(alpha));
  EXPECT_GT(alpha, 0);
  // lr scales the whole update.
  o.lr = 0.5;
  KfacOptimizer<double> half(model, o);
  theta = theta0;
  half.step(model, lk, theta, data, 0);
  EXPECT_LT(rel_err_vec(Vec<double>(theta - theta0), Vec<double>(0.5 * alpha * delta)), 1e-10);
}

TEST(KfacOptimizer, SecondStepAveragesTheFactorsAndSolvesForStepAndMomentum) {
  Network<double> model(mlp_spec(4, 5, 3));
  const LikelihoodKind lk = LikelihoodKind::gaussian;
  const Dataset<double> b1 = random_dataset(model, 10, lk, 5), b2 = random_dataset(model, 10, lk, 6);
  const Vec<double> theta0 = random_vec<double>(model.num_params(), 7) * 0.5;
  const double lambda = 0.05;
  KfacStepOptions o;
  o.damping = lambda;
  o.adapt_damping = false;
  o.lr = 1;  // the quadratic model's minimizer itself
  o.inverse_every = 1;
  o.factor_every = 1;
  o.factor_decay = 0.3;
  KfacOptimizer<double> opt(model, o);
  Vec<double> theta = theta0;
  opt.step(model, lk, theta, b1, 0);
  const Vec<double> theta1 = theta, step1 = theta1 - theta0;
  opt.step(model, lk, theta, b2, 1);
  // The running factors: keep = min(1 − 1/2, factor_decay) = 0.3 of the first batch's (at θ0), 0.7 of the
  // second's (at θ1).
  const Vec<double> K1 = packed_factors_of(model, theta0, b1, lk), K2 = packed_factors_of(model, theta1, b2, lk);
  const Vec<double> mean = 0.3 * K1 + 0.7 * K2;
  const Vec<double>* running = nullptr;
  const OptimizerState s = opt.state();
  for (const auto& [n, v] : s.vectors)
    if (n == "running_factors") running = &v;
  ASSERT_NE(running, nullptr);
  EXPECT_LT(rel_err_vec(*running, mean), 1e-14);
  // The update minimizes gᵀδ + ½ δᵀ(F + λI)δ over δ = αΔ + μ δ₀: the 2 × 2 normal equations with the dense F.
  const Mat<double> Fd = dense_fisher(model, theta1, b2, lk, FisherKind::exact);
  const Vec<double> g = FisherOperator<double>(model, theta1, lk, b2).gradient();
  const Vec<double> delta = proposal(model, mean, lambda, g);
  Mat<double> M(2, 2);
  Mat<double> D(delta.size(), 2);
  D.col(0) = delta;
  D.col(1) = step1;
  M = D.transpose() * Fd * D + lambda * D.transpose() * D;
  const Vec<double> am = M.lu().solve(Vec<double>(-D.transpose() * g));
  const Vec<double> want = am[0] * delta + am[1] * step1;
  EXPECT_LT(rel_err_vec(Vec<double>(theta - theta1), want), 1e-9);
  EXPECT_GT(std::abs(am[1]), 1e-6);  // the momentum term matters in this case
}

TEST(KfacOptimizer, LevenbergMarquardtFollowsTheReductionRatioMeasuredAtTheNextStep) {
  Network<double> model(mlp_spec(4, 6, 3));
  const LikelihoodKind lk = LikelihoodKind::categorical;
  const Dataset<double> data = random_dataset(model, 16, lk, 8);
  const Vec<double> theta0 = random_vec<double>(model.num_params(), 9);
  const double omega = 19.0 / 20.0;
  KfacStepOptions o;
  o.damping = 1.0;
  o.damping_every = 1;
  // A short step: the model predicts it (ρ near 1), so λ × ω — once its reduction has been measured at the
  // next step (here on the same batch).
  o.lr = 1e-3;
  KfacOptimizer<double> small(model, o);
  Vec<double> theta = theta0;
  const StepResult r = small.step(model, lk, theta, data, 0);
  EXPECT_EQ(small.damping(), 1.0);
  EXPECT_LT(FisherOperator<double>(model, theta, lk, data).loss(), r.loss);
  small.step(model, lk, theta, data, 1);
  EXPECT_DOUBLE_EQ(small.damping(), omega);
  // 1e3 times the model's step: the loss rises, the step is rejected (θ unchanged) and λ / ω at once.
  o.lr = 1e3;
  KfacOptimizer<double> big(model, o);
  theta = theta0;
  EXPECT_TRUE(big.step(model, lk, theta, data, 0).rejected);
  EXPECT_EQ(theta, theta0);
  EXPECT_DOUBLE_EQ(big.damping(), 1.0 / omega);
  // A short step the next batch does not confirm: measured on the same inputs with, for each sample, the
  // label whose log-probability the step lowered most, so the loss rises there (ρ_next < 0) although the
  // model predicted the step's own batch well (ρ_own near 1): λ stays.
  o.lr = 1e-3;
  KfacOptimizer<double> unconfirmed(model, o);
  theta = theta0;
  ASSERT_FALSE(unconfirmed.step(model, lk, theta, data, 0).rejected);
  auto log_probabilities = [&](const Vec<double>& at) {
    Mat<double> Z = FisherOperator<double>(model, at, lk, data).outputs();
    for (Index n = 0; n < Z.cols(); ++n) {
      const double top = Z.col(n).maxCoeff();
      Z.col(n).array() -= top + std::log((Z.col(n).array() - top).exp().sum());
    }
    return Z;
  };
  const Mat<double> lowered = log_probabilities(theta) - log_probabilities(theta0);
  Dataset<double> other = data;
  for (Index n = 0; n < lowered.cols(); ++n) {
    Index c = 0;
    lowered.col(n).minCoeff(&c);
    other.labels[static_cast<std::size_t>(n)] = c;
  }
  ASSERT_GT(FisherOperator<double>(model, theta, lk, other).loss(),
            FisherOperator<double>(model, theta0, lk, other).loss());
  unconfirmed.step(model, lk, theta, other, 1);
  EXPECT_EQ(unconfirmed.damping(), 1.0);
  // Only every damping_every steps, on the ratio summed since the last change.
  o.lr = 1e-3;
  o.damping_every = 5;
  KfacOptimizer<double> sparse(model, o);
  theta = theta0;
  for (Index k = 0; k < 4; ++k) sparse.step(model, lk, theta, data, k);
  EXPECT_EQ(sparse.damping(), 1.0);
  // ρ_next is measured on the window's last step only (step 4, for step 3's update): nothing is pending yet.
  const auto scalar = [](const OptimizerState& s, const std::string& name) {
    for (const auto& [n, v] : s.scalars)
      if (n == name) return v;
    ADD_FAILURE() << name << " not in the state";
    return std::nan("");
  };
  EXPECT_EQ(scalar(sparse.state(), "actual_sum"), 0.0);
  EXPECT_EQ(scalar(sparse.state(), "predicted_sum"), 0.0);
  // ρ_own is measured on the window's last step only (step 4's own update): nothing on steps 0–3.
  EXPECT_EQ(scalar(sparse.state(), "own_actual_sum"), 0.0);
  EXPECT_EQ(scalar(sparse.state(), "own_predicted_sum"), 0.0);
  sparse.step(model, lk, theta, data, 4);
  EXPECT_DOUBLE_EQ(sparse.damping(), std::pow(omega, 5));
}

TEST(KfacOptimizer, AnUnmeasuredUpdateIsTakenBackWhenTheNextLossIsNotFinite) {
  // Windows of 2 steps: step 0's update is taken unmeasured, step 1 measures its own. At lr 1e300 the update's
  // scale overflows float: step 0 leaves parameters (and so a loss) that are not finite for step 1.
  Network<float> model(mlp_spec(4, 6, 3));
  const LikelihoodKind lk = LikelihoodKind::gaussian;
  const Dataset<float> data = random_dataset(model, 16, lk, 12);
  const Vec<float> theta0 = random_vec<float>(model.num_params(), 13) * 0.5f;
  const double omega = std::pow(19.0 / 20.0, 2.0);
  KfacStepOptions o;
  o.damping = 1.0;
  o.damping_every = 2;
  o.lr = 1e300;
  const auto vector = [](const OptimizerState& s, const std::string& name) {
    for (const auto& [n, v] : s.vectors)
      if (n == name) return v;
    ADD_FAILURE() << name << " not in the state";
    return Vec<double>();
  };
  KfacOptimizer<float> opt(model, o);
  Vec<float> theta = theta0;
  const StepResult first = opt.step(model, lk, theta, data, 0);
  EXPECT_FALSE(first.rejected);  // not measured: taken as it is
  EXPECT_NE(theta, theta0);
  EXPECT_EQ(opt.damping(), 1.0);
  EXPECT_EQ(vector(opt.state(), "theta_before_unmeasured_update"), theta0.cast<double>());
  ASSERT_FALSE(std::isfinite(FisherOperator<float>(model, theta, lk, data).loss()));
  // Step 1 takes step 0's update back (λ / ω), starts from θ₀ with its finite loss, and rejects its own update
  // of the same size once measured (λ / ω again).
  const StepResult second = opt.step(model, lk, theta, data, 1);
  EXPECT_EQ(theta, theta0);
  EXPECT_DOUBLE_EQ(second.loss, FisherOperator<float>(model, theta0, lk, data).loss());
  EXPECT_TRUE(second.rejected);
  EXPECT_DOUBLE_EQ(opt.damping(), 1.0 / (omega * omega));
  EXPECT_EQ(vector(opt.state(), "theta_before_unmeasured_update").size(), 0);
  // A sane step 0 stays, and is forgotten once step 1's loss is finite.
  o.lr = 0.5;
  KfacOptimizer<float> sane(model, o);
  theta = theta0;
  sane.step(model, lk, theta, data, 0);
  const Vec<float> theta1 = theta;
  EXPECT_NE(theta1, theta0);
  sane.step(model, lk, theta, data, 1);
  EXPECT_EQ(vector(sane.state(), "theta_before_unmeasured_update").size(), 0);
  EXPECT_NE(theta, theta1);
}

TEST(KfacOptimizer, BetweenRefreshesTheProposalKeepsTheInversesDampingWhileTheModelTakesTheNewOne) {
  // Step 0 inverts batch 1's factors with λ₀; a state whose λ is then changed to λ₁ (as the Levenberg–Marquardt
  // rule would) is loaded, and step 1, before the next refresh, proposes with those inverses (λ₀) but sizes the
  // update with the quadratic model damped by λ₁. Re-inverting at λ₁ would give another direction.
  Network<double> model(mlp_spec(4, 5, 3));
  const LikelihoodKind lk = LikelihoodKind::gaussian;
  const Dataset<double> b1 = random_dataset(model, 10, lk, 5), b2 = random_dataset(model, 10, lk, 6);
  const Vec<double> theta0 = random_vec<double>(model.num_params(), 7) * 0.5;
  const double lambda0 = 0.05, lambda1 = 0.5;
  KfacStepOptions o;
  o.lr = 1;
  o.damping = lambda0;
  o.adapt_damping = false;
  o.inverse_every = 100;
  o.factor_every = 100;  // the running factors stay batch 1's
  KfacOptimizer<double> opt(model, o);
  Vec<double> theta = theta0;
  opt.step(model, lk, theta, b1, 0);
  const Vec<double> theta1 = theta, step1 = theta1 - theta0;
  OptimizerState s = opt.state();
  for (auto& [n, v] : s.scalars)
    if (n == "damping") v = lambda1;
  KfacOptimizer<double> changed(model, o);
  changed.load_state(s);
  changed.step(model, lk, theta, b2, 1);
  const Mat<double> Fd = dense_fisher(model, theta1, b2, lk, FisherKind::exact);
  const Vec<double> g = FisherOperator<double>(model, theta1, lk, b2).gradient();
  const Vec<double> K1 = packed_factors_of(model, theta0, b1, lk);
  auto update = [&](double proposal_lambda) {
    const Vec<double> delta = proposal(model, K1, proposal_lambda, g);
    Mat<double> D(delta.size(), 2);
    D.col(0) = delta;
    D.col(1) = step1;
    const Mat<double> M = D.transpose() * Fd * D + lambda1 * D.transpose() * D;
    const Vec<double> am = M.lu().solve(Vec<double>(-D.transpose() * g));
    return Vec<double>(am[0] * delta + am[1] * step1);
  };
  const Vec<double> want = update(lambda0), other = update(lambda1);
  EXPECT_LT(rel_err_vec(Vec<double>(theta - theta1), want), 1e-9);
  EXPECT_GT(rel_err_vec(other, want), 1e-3);  // the case tells the two apart
}

TEST(KfacOptimizer, FactorIntervalByDefaultFollowsTheFactorsCost) {
  // factor_every 0: every 2 steps when the factors take one backprop (sampled labels, the empirical kind), every
  // 16 when they take more (the exact kind's closed form: C = 3 backprops here); counted in the state over 17
  // steps: k = 0, 16 or k = 0, 2, …, 16.
  Network<double> model(mlp_spec(4, 5, 3));
  const LikelihoodKind lk = LikelihoodKind::categorical;
  const Dataset<double> data = random_dataset(model, 24, lk, 16);
  for (const auto& [kind, backprops, every] :
       {std::tuple{FisherKind::exact, 3, 16}, {FisherKind::mc, 1, 2}, {FisherKind::empirical, 1, 2}}) {
    SCOPED_TRACE(to_string(kind));
    KfacStepOptions o;
    o.fisher.kind = kind;
    ASSERT_EQ(o.factor_every, 0);
    const FisherOperator<double> F(model, random_vec<double>(model.num_params(), 17), lk, data, o.fisher);
    EXPECT_EQ(KfacApproximation<double>(F).backprops(), backprops);
    EXPECT_EQ(KfacApproximation<double>::backprops_for(model, o.fisher), backprops);
    KfacOptimizer<double> opt(model, o);
    EXPECT_EQ(opt.factor_every(), every);
    Vec<double> theta = random_vec<double>(model.num_params(), 18) * 0.5;
    for (Index k = 0; k < 17; ++k) opt.step(model, lk, theta, data.slice((k % 3) * 8, 8), k);
    double updates = -1;
    for (const auto& [n, v] : opt.state().scalars)
      if (n == "factor_updates") updates = v;
    EXPECT_EQ(updates, double(16 / every + 1));
  }
}

TEST(KfacOptimizer, StateRoundTripsBitForBitAndThreadsDoNotChangeBits) {
  Network<float> model(mlp_spec(4, 6, 3));
  const LikelihoodKind lk = LikelihoodKind::categorical;
  const Dataset<float> data = random_dataset(model, 48, lk, 10);
  const Vec<float> theta0 = random_vec<float>(model.num_params(), 11) * 0.5f;
  auto options = [](int threads) {
    KfacStepOptions o;
    o.fisher.kind = FisherKind::mc;
    o.fisher.num_threads = threads;
    o.inverse_every = 3;
    o.damping_every = 2;
    return o;
  };
  auto batch = [&](Index k) { return data.slice((k % 4) * 12, 12); };
  KfacOptimizer<float> whole(model, options(1));
  Vec<float> a = theta0;
  for (Index k = 0; k < 8; ++k) whole.step(model, lk, a, batch(k), k);
  KfacOptimizer<float> first(model, options(1));
  Vec<float> b = theta0;
  for (Index k = 0; k < 4; ++k) first.step(model, lk, b, batch(k), k);
  KfacOptimizer<float> resumed(model, options(1));
  resumed.load_state(first.state());
  for (Index k = 4; k < 8; ++k) resumed.step(model, lk, b, batch(k), k);
  EXPECT_EQ(a, b);
  KfacOptimizer<float> threaded(model, options(3));
  Vec<float> c = theta0;
  for (Index k = 0; k < 8; ++k) threaded.step(model, lk, c, batch(k), k);
  EXPECT_EQ(a, c);
  EXPECT_NE(a, theta0);
  // Another optimizer's state is refused with a sentence.
  NaturalGradientOptimizer<float> other(model.num_params(), NaturalGradientStepOptions());
  EXPECT_NE(error_of([&] { resumed.load_state(other.state()); }).find("K-FAC"), std::string::npos);
  // A checkpoint of an older natgrad, whose inverses took each step's λ, is refused with what to do.
  OptimizerState old = first.state();
  const auto before = old.scalars.size();
  old.scalars.erase(std::remove_if(old.scalars.begin(), old.scalars.end(),
                                   [](const auto& kv) { return kv.first == "inverse_damping"; }),
                    old.scalars.end());
  ASSERT_EQ(old.scalars.size() + 1, before);
  EXPECT_NE(error_of([&] { resumed.load_state(old); }).find("older natgrad"), std::string::npos);
}

// Targets a network of the same shape produces (labels: its argmax; gaussian: its outputs; bernoulli: their
// sigmoids), so the loss can fall to the teacher's own.
Dataset<double> teacher_dataset(const Network<double>& model, Index N, LikelihoodKind lk, uint64_t seed) {
  Dataset<double> d = random_dataset(model, N, lk, seed);
  const Vec<double> teacher = random_vec<double>(model.num_params(), seed + 1) * 1.5;
  const Mat<double> Z = model.predict(teacher.data(), d.inputs);
  if (lk == LikelihoodKind::categorical) {
    for (Index n = 0; n < N; ++n) {
      Index best = 0;
      Z.col(n).maxCoeff(&best);
      d.labels[static_cast<std::size_t>(n)] = best;
    }
  } else {
    d.targets = lk == LikelihoodKind::gaussian ? Z : Mat<double>((1.0 + (-Z.array()).exp()).inverse());
  }
  return d;
}

TEST(KfacOptimizer, LowersTheLossForEveryLikelihoodAndFisherKind) {
  for (LikelihoodKind lk : {LikelihoodKind::categorical, LikelihoodKind::gaussian, LikelihoodKind::bernoulli})
    for (FisherKind kind : {FisherKind::exact, FisherKind::mc, FisherKind::empirical}) {
      SCOPED_TRACE(std::string(to_string(lk)) + " " + to_string(kind));
      Network<double> model(mlp_spec(5, 8, 3));
      const Dataset<double> data = teacher_dataset(model, 64, lk, 12);
      Vec<double> theta = random_vec<double>(model.num_params(), 21) * 0.5;
      KfacStepOptions o;
      o.fisher.kind = kind;
      KfacOptimizer<double> opt(model, o);
      TrainOptions to;
      to.epochs = 10;
      to.batch = 16;
      // The floor: bernoulli targets in (0, 1) have an entropy; a gaussian's constant is in the loss.
      const Vec<double> teacher = random_vec<double>(model.num_params(), 13) * 1.5;  // teacher_dataset's
      const double floor = lk == LikelihoodKind::categorical ? 0.0 : FisherOperator<double>(model, teacher, lk, data).loss();
      const double before = FisherOperator<double>(model, theta, lk, data).loss();
      train<double>(model, lk, theta, data, nullptr, opt, to);
      const double after = FisherOperator<double>(model, theta, lk, data).loss();
      EXPECT_LT(after - floor, 0.7 * (before - floor)) << before << " -> " << after << " (floor " << floor << ")";
    }
}
