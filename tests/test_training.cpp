// The training layer (issue 27, first part): Adam and SGD against their update rules written out per entry in
// PyTorch's order, the natural-gradient step against a dense solve and its Levenberg–Marquardt rule, state
// round trips, the minibatch order, and the training loop's schedule, evaluation, stop rules and thread
// invariance.
#include "test_helpers.h"

#include <natgrad/training/minibatches.h>
#include <natgrad/training/optimizer.h>
#include <natgrad/training/trainer.h>

#include <Eigen/Cholesky>
#include <algorithm>
#include <cmath>
#include <set>

using namespace natgrad;
using namespace natgrad::test;

TEST(Optimizers, AdamIsTorchsUpdateEntryByEntry) {
  const Index P = 7;
  AdamOptions o;
  o.lr = 3e-3;
  AdamOptimizer<double> adam(P, o);
  Vec<double> theta = random_vec<double>(P, 1), ref = theta;
  std::vector<double> m(P, 0.0), v(P, 0.0);
  for (int t = 1; t <= 6; ++t) {
    const Vec<double> g = random_vec<double>(P, 10 + t);
    adam.update(theta, g);
    const double bc1 = 1 - std::pow(0.9, t), bc2 = 1 - std::pow(0.999, t);
    for (Index i = 0; i < P; ++i) {  // torch.optim.Adam (single tensor), written out
      m[i] = m[i] * 0.9 + (1 - 0.9) * g[i];
      v[i] = v[i] * 0.999 + (1 - 0.999) * g[i] * g[i];
      const double denom = std::sqrt(v[i]) / std::sqrt(bc2) + 1e-8;
      ref[i] -= (o.lr / bc1) * (m[i] / denom);
    }
    EXPECT_LT(rel_err_vec(theta, ref), 1e-14) << "step " << t;
  }
}

TEST(Optimizers, SgdWithMomentumIsTorchsUpdate) {
  const Index P = 5;
  SgdOptimizer<double> sgd(P, {0.1, 0.9});
  Vec<double> theta = random_vec<double>(P, 2), ref = theta, b = Vec<double>::Zero(P);
  for (int t = 0; t < 4; ++t) {
    const Vec<double> g = random_vec<double>(P, 20 + t);
    sgd.update(theta, g);
    b = t == 0 ? g : Vec<double>(0.9 * b + g);  // the first step's buffer is the gradient itself
    ref -= 0.1 * b;
    EXPECT_LT(rel_err_vec(theta, ref), 1e-15);
  }
  SgdOptimizer<double> plain(P, {0.5, 0.0});
  Vec<double> x = Vec<double>::Ones(P);
  plain.update(x, Vec<double>::Constant(P, 2.0));
  EXPECT_LT((x - Vec<double>::Zero(P)).norm(), 1e-15);
}

TEST(Optimizers, StepUsesTheBatchGradientAndStateRoundTrips) {
  Network<double> model(mlp_spec(4, 5, 3));
  const Dataset<double> data = random_dataset(model, 9, LikelihoodKind::categorical, 3);
  Vec<double> theta = random_vec<double>(model.num_params(), 4) * 0.5;
  FisherOperator<double> F(model, theta, LikelihoodKind::categorical, data);
  AdamOptimizer<double> a(model.num_params(), {}), b(model.num_params(), {});
  Vec<double> ta = theta, tb = theta;
  const StepResult r = a.step(model, LikelihoodKind::categorical, ta, data, 0);
  EXPECT_NEAR(r.loss, F.loss(), 1e-15);
  b.update(tb, F.gradient());
  EXPECT_EQ(ta, tb);
  // A state saved after one step and loaded into a fresh optimizer continues the same run.
  AdamOptimizer<double> c(model.num_params(), {});
  c.load_state(a.state());
  Vec<double> tc = ta;
  a.step(model, LikelihoodKind::categorical, ta, data, 1);
  c.step(model, LikelihoodKind::categorical, tc, data, 1);
  EXPECT_EQ(ta, tc);
  SgdOptimizer<double> s(model.num_params(), {});
  EXPECT_NE(error_of([&] { s.load_state(a.state()); }).find("another optimizer"), std::string::npos);
  EXPECT_NE(error_of([&] { AdamOptimizer<double>(3, {}).load_state(a.state()); }).find("parameters"),
            std::string::npos);
}

TEST(NaturalGradientStep, WithoutAdaptationIsTheDampedSolveForCgAndTheGram) {
  Network<double> model(mlp_spec(4, 5, 3));
  const Dataset<double> data = random_dataset(model, 8, LikelihoodKind::categorical, 5);
  const Vec<double> theta0 = random_vec<double>(model.num_params(), 6) * 0.5;
  const Mat<double> Fd = dense_fisher(model, theta0, data, LikelihoodKind::categorical, FisherKind::exact);
  FisherOperator<double> F(model, theta0, LikelihoodKind::categorical, data);
  const double lambda = 1e-2, lr = 0.5;
  Mat<double> A = Fd;
  A.diagonal().array() += lambda;
  const Vec<double> want = theta0 - lr * Vec<double>(A.llt().solve(F.gradient()));
  for (SolverKind solver : {SolverKind::cg, SolverKind::smw}) {
    SCOPED_TRACE(to_string(solver));
    NaturalGradientStepOptions o;
    o.lr = lr;
    o.damping = lambda;
    o.adapt_damping = false;
    o.solver = solver;
    o.cg_tolerance = 1e-13;
    o.cg_max_iterations = 1000;
    NaturalGradientOptimizer<double> opt(model.num_params(), o);
    Vec<double> theta = theta0;
    const StepResult r = opt.step(model, LikelihoodKind::categorical, theta, data, 0);
    EXPECT_LT(rel_err_vec(Vec<double>(theta - theta0), Vec<double>(want - theta0)), 1e-9);
    EXPECT_EQ(r.solver, solver);
    EXPECT_EQ(opt.damping(), lambda);  // not adapted
    EXPECT_FALSE(r.rejected);
  }
}

TEST(NaturalGradientStep, LevenbergMarquardtLowersDampingOnGoodStepsAndRejectsBadOnes) {
  Network<double> model(mlp_spec(4, 6, 3));
  const Dataset<double> data = random_dataset(model, 16, LikelihoodKind::categorical, 7);
  const Vec<double> theta0 = random_vec<double>(model.num_params(), 8);
  NaturalGradientStepOptions o;
  o.damping = 1.0;
  o.solver = SolverKind::smw;
  // A short step: the quadratic model predicts it (ρ near 1): accepted, λ × 2/3.
  o.lr = 1e-3;
  NaturalGradientOptimizer<double> small(model.num_params(), o);
  Vec<double> theta = theta0;
  const StepResult r = small.step(model, LikelihoodKind::categorical, theta, data, 0);
  EXPECT_FALSE(r.rejected);
  EXPECT_NE(theta, theta0);
  EXPECT_DOUBLE_EQ(small.damping(), 2.0 / 3.0);
  FisherOperator<double> after(model, theta, LikelihoodKind::categorical, data);
  EXPECT_LT(after.loss(), r.loss);
  // A step 1e4 times the natural gradient raises the loss: rejected, θ unchanged, λ × 3/2.
  o.lr = 1e4;
  NaturalGradientOptimizer<double> big(model.num_params(), o);
  theta = theta0;
  const StepResult rb = big.step(model, LikelihoodKind::categorical, theta, data, 0);
  EXPECT_TRUE(rb.rejected);
  EXPECT_EQ(theta, theta0);
  EXPECT_DOUBLE_EQ(big.damping(), 1.5);
}

TEST(Minibatches, ShuffledOrdersArePermutationsKeyedBySeedAndEpoch) {
  const std::vector<Index> a = epoch_order(100, 3, 0, true), b = epoch_order(100, 3, 1, true),
                           c = epoch_order(100, 3, 0, true), d = epoch_order(100, 4, 0, true);
  EXPECT_EQ(std::set<Index>(a.begin(), a.end()).size(), 100u);
  EXPECT_EQ(*std::max_element(a.begin(), a.end()), 99);
  EXPECT_EQ(a, c);
  EXPECT_NE(a, b);
  EXPECT_NE(a, d);
  std::vector<Index> plain = epoch_order(5, 3, 0, false);
  EXPECT_EQ(plain, (std::vector<Index>{0, 1, 2, 3, 4}));
  EXPECT_EQ(batches_per_epoch(10, 4), 3);
  // gather: the samples in the order given, labels with their positions.
  Dataset<double> data;
  data.inputs = random_mat<double>(2, 4, 1);
  data.labels = {0, 1, 2, 3, 4, 5, 6, 7};  // two positions per sample
  const Dataset<double> g = gather(data, {3, 1, 0, 2}, 1, 2);
  EXPECT_EQ(g.inputs.col(0), data.inputs.col(1));
  EXPECT_EQ(g.inputs.col(1), data.inputs.col(0));
  EXPECT_EQ(g.labels, (std::vector<int64_t>{2, 3, 0, 1}));
}

TEST(Trainer, ScheduleEvaluationsAndStops) {
  Network<double> model(mlp_spec(4, 6, 3));
  const Dataset<double> data = random_dataset(model, 50, LikelihoodKind::categorical, 9);
  const Dataset<double> test = random_dataset(model, 20, LikelihoodKind::categorical, 10);
  const Vec<double> theta0 = random_vec<double>(model.num_params(), 11) * 0.5;
  TrainOptions o;
  o.epochs = 3;
  o.batch = 16;  // 4 steps per epoch, the last of 2 samples
  AdamOptimizer<double> adam(model.num_params(), {1e-2});
  Vec<double> theta = theta0;
  const TrainSummary s = train(model, LikelihoodKind::categorical, theta, data, &test, adam, o);
  EXPECT_EQ(s.steps, 12);
  EXPECT_EQ(s.epochs, 3);
  ASSERT_EQ(s.per_epoch.size(), 3u);
  EXPECT_EQ(std::count_if(s.records.begin(), s.records.end(), [](const TrainRecord& r) { return r.eval; }), 3);
  // The last evaluation is the final parameters' loss and accuracy on the test data.
  const auto [loss, accuracy] = evaluate(model, LikelihoodKind::categorical, theta, test);
  EXPECT_EQ(s.test_loss, loss);
  EXPECT_EQ(s.test_accuracy, accuracy);
  // The training loss falls on this separable-enough problem, and an epoch's train_loss is its steps' mean.
  EXPECT_LT(s.per_epoch[2].train_loss, s.per_epoch[0].train_loss);
  double sum = 0;
  for (int k = 0; k < 4; ++k) sum += s.records[static_cast<std::size_t>(k)].result.loss * (k == 3 ? 2 : 16);
  EXPECT_NEAR(s.per_epoch[0].train_loss, sum / 50, 1e-14);
  // eval_every: every 5 steps and once at the end.
  o.eval_every = 5;
  AdamOptimizer<double> a2(model.num_params(), {1e-2});
  theta = theta0;
  const TrainSummary s2 = train(model, LikelihoodKind::categorical, theta, data, &test, a2, o);
  std::vector<Index> at;
  for (const TrainRecord& r : s2.records)
    if (r.eval) at.push_back(r.step);
  EXPECT_EQ(at, (std::vector<Index>{5, 10, 12}));
  // A stop request before the 3rd step: 2 steps, then one evaluation.
  o.eval_every = 0;
  int polls = 0;
  o.stop_requested = [&] { return ++polls > 2; };
  AdamOptimizer<double> a3(model.num_params(), {1e-2});
  theta = theta0;
  const TrainSummary s3 = train(model, LikelihoodKind::categorical, theta, data, &test, a3, o);
  EXPECT_TRUE(s3.stopped);
  EXPECT_EQ(s3.steps, 2);
  EXPECT_TRUE(s3.records.back().eval);
}

TEST(Trainer, NaturalGradientRunsAreBitIdenticalForOneAndThreeThreads) {
  Network<float> model(mlp_spec(4, 6, 3));
  const Dataset<float> data = random_dataset(model, 40, LikelihoodKind::categorical, 12);
  const Vec<float> theta0 = random_vec<float>(model.num_params(), 13) * 0.5f;
  std::vector<Vec<float>> out;
  for (int threads : {1, 3})
    for (SolverKind solver : {SolverKind::cg, SolverKind::smw}) {
      NaturalGradientStepOptions o;
      o.fisher.kind = FisherKind::mc;
      o.fisher.num_threads = threads;
      o.solver = solver;
      NaturalGradientOptimizer<float> opt(model.num_params(), o);
      TrainOptions to;
      to.epochs = 2;
      to.batch = 16;
      Vec<float> theta = theta0;
      train<float>(model, LikelihoodKind::categorical, theta, data, nullptr, opt, to);
      out.push_back(theta);
    }
  EXPECT_EQ(out[0], out[2]);  // cg, 1 and 3 threads
  EXPECT_EQ(out[1], out[3]);  // smw
  EXPECT_NE(out[0], theta0);
}
