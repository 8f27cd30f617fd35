// The training layer (issue 27): Adam and SGD against their update rules written out per entry in PyTorch's
// order, the natural-gradient step against a dense solve, its Levenberg–Marquardt rule, CG backtracking
// (against CG's dense recurrence and Martens' walk over losses from evaluate()), the Armijo line search and
// momentum, state round trips, the minibatch order, and the training loop's schedule, evaluation, stop rules
// and thread invariance.
#include "test_helpers.h"

#include <natgrad/training/minibatches.h>
#include <natgrad/training/optimizer.h>
#include <natgrad/training/trainer.h>

#include <Eigen/Cholesky>
#include <algorithm>
#include <cmath>
#include <set>

#include "training/cg_backtracking.h"  // (lib/, private: the kept iterations and the walk back)

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
    o.line_search = false;  // (and so no CG backtracking: the plain step)
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
  o.line_search = false;  // the rule alone
  // A short step: the quadratic model predicts it (ρ near 1): accepted, λ × 2/3.
  o.lr = 1e-3;
  NaturalGradientOptimizer<double> small(model.num_params(), o);
  Vec<double> theta = theta0;
  const StepResult r = small.step(model, LikelihoodKind::categorical, theta, data, 0);
  EXPECT_FALSE(r.rejected);
  EXPECT_NE(theta, theta0);
  EXPECT_DOUBLE_EQ(small.damping(), 2.0 / 3.0);
  EXPECT_EQ(r.damping_after, small.damping());
  EXPECT_GT(r.rho, 0.75);
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
  EXPECT_TRUE(std::isnan(rb.rho));
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

// on_begin announces each step, evaluation and on_epoch_end just before it: the calls, the records and
// on_epoch_end interleaved as the schedule in trainer.h says, written out here, for eval_every 0, one that
// does not divide the epoch's 5 steps and one that does, stopped mid-epoch, at an epoch's end or not at all;
// and a run resumed from a stop goes on as the run that was not stopped.
TEST(Trainer, OnBeginAnnouncesEachPhaseJustBeforeItInTheSchedulesOrder) {
  Network<double> model(mlp_spec(4, 6, 3));
  const Dataset<double> data = random_dataset(model, 18, LikelihoodKind::categorical, 9);
  const Dataset<double> test = random_dataset(model, 6, LikelihoodKind::categorical, 10);
  const Index epochs = 2, per_epoch = 5;  // batches of 4, the last of 2
  // What the run calls, in order: "begin <phase> <n>" (on_begin), "step <n>" and "evaluation <n>"
  // (on_record), "epoch end <n>" (on_epoch_end).
  std::vector<std::string> calls;
  Index steps_recorded = 0, stop_after = 0;  // (0: no stop)
  TrainOptions o;
  o.epochs = epochs;
  o.batch = 4;
  o.on_begin = [&](TrainPhase phase, Index n) {
    const char* name = phase == TrainPhase::step         ? "step"
                       : phase == TrainPhase::evaluation ? "evaluation"
                                                         : "checkpoint";
    calls.push_back("begin " + std::string(name) + " " + std::to_string(n));
  };
  o.on_record = [&](const TrainRecord& r) {
    steps_recorded += r.eval ? 0 : 1;
    calls.push_back((r.eval ? "evaluation " : "step ") + std::to_string(r.step));
  };
  o.on_epoch_end = [&](const TrainProgress& at) { calls.push_back("epoch end " + std::to_string(at.steps)); };
  o.stop_requested = [&] { return stop_after > 0 && steps_recorded == stop_after; };
  auto run = [&](const TrainProgress& start) {
    calls.clear();
    steps_recorded = start.steps;
    o.start = start;
    AdamOptimizer<double> adam(model.num_params(), {1e-2});
    Vec<double> theta = random_vec<double>(model.num_params(), 11) * 0.5;
    return train(model, LikelihoodKind::categorical, theta, data, &test, adam, o);
  };
  for (const auto& [eval_every, stop] : std::vector<std::pair<Index, Index>>{
           {3, 8}, {3, 6}, {3, 5}, {3, 0}, {5, 0}, {0, 7}, {0, 5}, {0, 0}}) {
    // The schedule: an evaluation after every eval_every-th step (eval_every 0: each epoch's last), one at
    // the last epoch's end and one at a stop unless the last record is one, on_epoch_end after each epoch.
    std::vector<std::string> expected;
    Index done = 0;
    bool stopped = false, last_is_eval = false;
    auto phase = [&](const std::string& name, const std::string& then) {
      expected.push_back("begin " + name + " " + std::to_string(done));
      expected.push_back(then + " " + std::to_string(done));
      last_is_eval = name == "evaluation" || (last_is_eval && name == "checkpoint");
    };
    for (Index epoch = 0; epoch < epochs && !stopped; ++epoch) {
      for (Index k = 0; k < per_epoch && !stopped; ++k) {
        stopped = stop > 0 && done == stop;
        if (stopped) break;
        ++done;
        phase("step", "step");
        if (eval_every > 0 ? done % eval_every == 0 : k + 1 == per_epoch) phase("evaluation", "evaluation");
      }
      if (stopped) break;
      if (epoch + 1 == epochs && !last_is_eval) phase("evaluation", "evaluation");
      phase("checkpoint", "epoch end");
    }
    if (stopped && !last_is_eval) phase("evaluation", "evaluation");
    o.eval_every = eval_every;
    stop_after = stop;
    const TrainSummary s = run(TrainProgress());
    EXPECT_EQ(s.stopped, stopped);
    EXPECT_EQ(calls, expected) << "eval_every " << eval_every << ", stop after " << stop;
  }
  // Stopped after step 7 and resumed: the calls of the run that was not stopped after its 7th step's record.
  o.eval_every = 3;
  stop_after = 0;
  run(TrainProgress());
  const std::vector<std::string> whole = calls;
  stop_after = 7;
  const TrainSummary first = run(TrainProgress());
  ASSERT_TRUE(first.stopped);
  stop_after = 0;
  run(first.progress);
  const auto seventh = std::find(whole.begin(), whole.end(), "step 7");
  ASSERT_NE(seventh, whole.end());
  EXPECT_EQ(calls, std::vector<std::string>(seventh + 1, whole.end()));
}

// With every safeguard on (the defaults), momentum and a smaller curvature batch (backtracking's losses on
// it, the line search's on the step's batch), for CG and the Gram; and each epoch's damping and mean CG
// iterations are its steps'.
TEST(Trainer, NaturalGradientRunsAreBitIdenticalForOneAndThreeThreads) {
  Network<float> model(mlp_spec(4, 6, 3));
  const Dataset<float> data = random_dataset(model, 40, LikelihoodKind::categorical, 12);
  const Vec<float> theta0 = random_vec<float>(model.num_params(), 13) * 0.5f;
  std::vector<Vec<float>> out;
  for (int threads : {1, 3})
    for (SolverKind solver : {SolverKind::cg, SolverKind::smw})
      for (Index curvature_batch : {0, 8}) {
        NaturalGradientStepOptions o;
        o.fisher.kind = FisherKind::mc;
        o.fisher.num_threads = threads;
        o.solver = solver;
        o.curvature_batch = curvature_batch;
        o.momentum = curvature_batch > 0 ? 0.5 : 0.0;
        NaturalGradientOptimizer<float> opt(model.num_params(), o);
        TrainOptions to;
        to.epochs = 2;
        to.batch = 16;
        Vec<float> theta = theta0;
        const TrainSummary s =
            train<float>(model, LikelihoodKind::categorical, theta, data, nullptr, opt, to);
        out.push_back(theta);
        std::vector<const StepResult*> steps;
        for (const TrainRecord& r : s.records)
          if (!r.eval) steps.push_back(&r.result);
        ASSERT_EQ(steps.size(), 6u);
        EXPECT_EQ(s.per_epoch[0].damping, steps[2]->damping_after);
        EXPECT_EQ(s.per_epoch[0].damping, steps[3]->damping);  // what the next epoch's first step solved with
        EXPECT_EQ(s.per_epoch[1].damping, opt.damping());
        EXPECT_EQ(s.per_epoch[1].cg_iterations,
                  double(steps[3]->cg_iterations + steps[4]->cg_iterations + steps[5]->cg_iterations) / 3);
      }
  for (std::size_t i = 0; i < 4; ++i) EXPECT_EQ(out[i], out[i + 4]) << i;  // 1 and 3 threads
  EXPECT_NE(out[0], theta0);
}

// ---- The natural-gradient step's safeguards: CG backtracking, the Armijo line search, momentum ----

// The iterations CG backtracking keeps are ⌈1.3^j⌉, written out here (1.3^12 = 23.3, 1.3^13 = 30.3,
// 1.3^14 = 39.4), each a copy of x as it was at that iteration; the walk back stops at the first rise.
TEST(CgBacktracking, KeepsIterationsAtCeilingsOfPowersAndWalksBackWhileTheLossFalls) {
  Vec<double> x(2);
  detail::SavedIterates<double> saved(1.3, x.data(), 2);
  for (Index i = 1; i <= 40; ++i) {
    x << double(i), -double(i);
    saved.on_iteration(i);
  }
  const std::vector<Index> want{1, 2, 3, 4, 5, 7, 9, 11, 14, 18, 24, 31, 40};
  EXPECT_EQ(saved.iterations(), want);
  for (std::size_t j = 0; j < want.size(); ++j) EXPECT_EQ(saved.iterates()[j][1], -double(want[j]));

  auto walk = [](std::vector<double> losses, Index* calls) {
    *calls = 0;
    return detail::walk_back(static_cast<Index>(losses.size()), [&](Index i) {
      ++*calls;
      return losses[static_cast<std::size_t>(i)];
    });
  };
  Index calls = 0;
  EXPECT_EQ(walk({5, 3, 4, 6, 7}, &calls), 1);  // 7 → 6 → 4 → 3, and 5 is a rise
  EXPECT_EQ(calls, 5);
  EXPECT_EQ(walk({1, 2, 0.5, 3}, &calls), 2);  // Martens' walk stops at the first rise, not at the minimum
  EXPECT_EQ(calls, 3);
  EXPECT_EQ(walk({2, 1, std::nan("")}, &calls), 1);  // a NaN loss is walked past
  EXPECT_EQ(walk({4, 3}, &calls), 1);                // the last is kept when the one before is no better
  EXPECT_EQ(calls, 2);
  EXPECT_EQ(walk({7}, &calls), 0);
}

namespace {

// θ − η x for a direction x (the update without momentum).
Vec<double> moved(const Vec<double>& theta, double eta, const Vec<double>& x) { return theta - eta * x; }

// CG's k-th iterate from zero for A x = b, by the textbook recurrence on the dense matrix (Hestenes–Stiefel).
Vec<double> dense_cg_iterate(const Mat<double>& A, const Vec<double>& b, Index k) {
  Vec<double> x = Vec<double>::Zero(b.size()), r = b, p = b;
  for (Index i = 0; i < k; ++i) {
    const Vec<double> Ap = A * p;
    const double rr = r.squaredNorm(), alpha = rr / p.dot(Ap);
    x += alpha * p;
    r -= alpha * Ap;
    p = r + (r.squaredNorm() / rr) * p;
  }
  return x;
}

// Data a network of the same shape can fit (unlike random targets, which minibatch steps only overfit): the
// targets of a teacher at random parameters — its most likely class, its outputs, or their signs.
Dataset<double> teacher_dataset(const Network<double>& model, Index N, LikelihoodKind lk, uint64_t seed) {
  Dataset<double> d;
  d.inputs = random_mat<double>(model.input_size(), N, seed);
  const Vec<double> teacher = random_vec<double>(model.num_params(), seed + 1) * 2.0;
  const Mat<double> Z = model.predict(teacher.data(), d.inputs);
  if (lk == LikelihoodKind::categorical) {
    for (Index n = 0; n < N; ++n) {
      Index best = 0;
      Z.col(n).maxCoeff(&best);
      d.labels.push_back(best);
    }
  } else if (lk == LikelihoodKind::gaussian) {
    d.targets = Z;
  } else {
    d.targets = (Z.array() > 0).cast<double>().matrix();
  }
  return d;
}

}  // namespace

// A case where CG's later iterates lower the loss less than earlier ones (λ = 0.01 is small for this
// network: the quadratic model is poor far from θ). The iterates are formed independently by CG's recurrence
// on the dense damped Fisher of the curvature batch (from zero, as the first step starts), their losses on
// that batch by evaluate(); Martens' walk over them gives the iterate the step must take.
TEST(NaturalGradientStep, CgBacktrackingTakesTheIterateTheWalkReaches) {
  Network<double> model(mlp_spec(4, 6, 3));
  const LikelihoodKind lk = LikelihoodKind::categorical;
  const Dataset<double> data = random_dataset(model, 16, lk, 21);
  const Dataset<double> head = data.head(8);
  const Vec<double> theta0 = random_vec<double>(model.num_params(), 31) * 0.5;
  const double lambda = 1e-2;
  Mat<double> A = dense_fisher(model, theta0, head, lk, FisherKind::exact);
  A.diagonal().array() += lambda;
  const Vec<double> g = FisherOperator<double>(model, theta0, lk, data).gradient();
  NaturalGradientStepOptions o;
  o.damping = lambda;
  o.curvature_batch = 8;
  o.solver = SolverKind::cg;
  o.cg_tolerance = 1e-10;
  o.cg_max_iterations = 12;
  o.line_search = false;  // the rule on: backtracking runs, and the update is −η d_j
  NaturalGradientOptimizer<double> opt(model.num_params(), o);
  Vec<double> theta = theta0;
  const StepResult r = opt.step(model, lk, theta, data, 0);
  ASSERT_EQ(r.cg_iterations, 12);

  const std::vector<Index> kept{1, 2, 3, 4, 5, 7, 9, 11, 12};
  std::vector<double> losses;
  for (Index i : kept)
    losses.push_back(evaluate(model, lk, moved(theta0, 1.0, dense_cg_iterate(A, g, i)), head).first);
  std::size_t j = kept.size() - 1;
  while (j > 0 && losses[j - 1] < losses[j]) --j;
  ASSERT_LT(j, kept.size() - 1) << "the case must make a later iterate worse";
  EXPECT_GT(losses.back(), losses[j]);
  EXPECT_EQ(r.cg_iterate, kept[j]);
  ASSERT_FALSE(r.rejected);
  EXPECT_LT(rel_err_vec(Vec<double>(theta - theta0), Vec<double>(-dense_cg_iterate(A, g, kept[j]))), 1e-8);
  EXPECT_LT(evaluate(model, lk, theta, data).first, r.loss);

  // Off: the last iterate.
  o.backtrack = false;
  NaturalGradientOptimizer<double> plain(model.num_params(), o);
  theta = theta0;
  const StepResult rp = plain.step(model, lk, theta, data, 0);
  EXPECT_EQ(rp.cg_iterate, 12);
  // With neither the rule nor the line search, backtracking is off too: the plain step with the last iterate,
  // the same bits as with backtrack false. (Against the dense recurrence to 1e-5 only: by iteration 12 CG has
  // lost orthogonality and amplifies the two computations' different rounding, 1e-6 here.)
  o.adapt_damping = false;
  Vec<double> theta_off = theta0;
  NaturalGradientOptimizer<double>(model.num_params(), o).step(model, lk, theta_off, data, 0);
  o.backtrack = true;
  NaturalGradientOptimizer<double> exact(model.num_params(), o);
  theta = theta0;
  const StepResult re = exact.step(model, lk, theta, data, 0);
  EXPECT_EQ(re.cg_iterate, 12);
  EXPECT_EQ(theta, theta_off);
  EXPECT_LT(rel_err_vec(Vec<double>(theta - theta0), Vec<double>(-dense_cg_iterate(A, g, 12))), 1e-5);
}

// Armijo: the η taken satisfies L(θ + s) ≤ L(θ) + c·gᵀs and twice it does not, both recomputed with
// evaluate() at θ − η d, d = (F + λI)⁻¹g by Eigen's dense solve; the rule's ρ is the one at that η.
TEST(NaturalGradientStep, ArmijoTakesTheFirstHalvingWithSufficientDecreaseAndRhoIsMeasuredThere) {
  Network<double> model(mlp_spec(4, 6, 3));
  for (LikelihoodKind lk :
       {LikelihoodKind::categorical, LikelihoodKind::gaussian, LikelihoodKind::bernoulli}) {
    SCOPED_TRACE(to_string(lk));
    const Dataset<double> data = random_dataset(model, 16, lk, 41);
    const Vec<double> theta0 = random_vec<double>(model.num_params(), 42);
    const double lambda = 1e-2, lr = 40;
    Mat<double> A = dense_fisher(model, theta0, data, lk, FisherKind::exact);
    A.diagonal().array() += lambda;
    FisherOperator<double> G(model, theta0, lk, data);
    const Vec<double> g = G.gradient(), d = A.llt().solve(g);
    NaturalGradientStepOptions o;
    o.lr = lr;
    o.damping = lambda;
    o.adapt_damping = false;
    o.solver = SolverKind::smw;
    NaturalGradientOptimizer<double> opt(model.num_params(), o);
    Vec<double> theta = theta0;
    const StepResult r = opt.step(model, lk, theta, data, 0);
    ASSERT_FALSE(r.rejected);
    ASSERT_GE(r.line_search_trials, 2) << "η = 40 must fail first";
    EXPECT_EQ(r.lr, lr * std::pow(0.5, double(r.line_search_trials - 1)));
    EXPECT_EQ(opt.damping(), lambda);
    EXPECT_LT(rel_err_vec(Vec<double>(theta - theta0), Vec<double>(-r.lr * d)), 1e-10);
    const double L0 = evaluate(model, lk, theta0, data).first;
    auto sufficient = [&](double eta) {
      return evaluate(model, lk, moved(theta0, eta, d), data).first <= L0 + 1e-4 * g.dot(-eta * d);
    };
    EXPECT_TRUE(sufficient(r.lr));
    EXPECT_FALSE(sufficient(r.lr / 0.5));
    // With the rule too, ρ is measured at the update taken, s = −η d with the line search's η, against the
    // undamped quadratic model gᵀs + ½ sᵀFs (F dense).
    o.adapt_damping = true;
    NaturalGradientOptimizer<double> lm(model.num_params(), o);
    theta = theta0;
    const StepResult rl = lm.step(model, lk, theta, data, 0);
    ASSERT_EQ(rl.lr, r.lr);
    const Vec<double> step = -r.lr * d;
    const Mat<double> Fd = A - lambda * Mat<double>::Identity(A.rows(), A.cols());
    const double rho = (evaluate(model, lk, Vec<double>(theta0 + step), data).first - L0) /
                       (g.dot(step) + 0.5 * step.dot(Fd * step));
    EXPECT_LT(rel_err(rl.rho, rho), 1e-8);
  }
}

// Momentum: s_k = −η d_k + μ s_{k−1}, two steps on two batches, d_k = (F_k + λI)⁻¹g_k by Eigen's dense solve
// at θ_k; a state saved after the first step and loaded into a fresh optimizer takes the same second step.
TEST(NaturalGradientStep, MomentumAddsAMultipleOfThePreviousUpdate) {
  Network<double> model(mlp_spec(4, 5, 3));
  const LikelihoodKind lk = LikelihoodKind::categorical;
  const Dataset<double> b1 = random_dataset(model, 10, lk, 51), b2 = random_dataset(model, 10, lk, 52);
  const Vec<double> theta0 = random_vec<double>(model.num_params(), 53) * 0.5;
  const double lambda = 0.1, lr = 0.7, mu = 0.6;
  auto direction = [&](const Vec<double>& th, const Dataset<double>& b) {
    Mat<double> A = dense_fisher(model, th, b, lk, FisherKind::exact);
    A.diagonal().array() += lambda;
    return Vec<double>(A.llt().solve(FisherOperator<double>(model, th, lk, b).gradient()));
  };
  const Vec<double> s1 = -lr * direction(theta0, b1), theta1 = theta0 + s1;
  const Vec<double> s2 = -lr * direction(theta1, b2) + mu * s1, theta2 = theta1 + s2;
  for (SolverKind solver : {SolverKind::cg, SolverKind::smw}) {
    SCOPED_TRACE(to_string(solver));
    NaturalGradientStepOptions o;
    o.lr = lr;
    o.damping = lambda;
    o.momentum = mu;
    o.adapt_damping = false;
    o.line_search = false;
    o.solver = solver;
    o.cg_tolerance = 1e-13;
    o.cg_max_iterations = 1000;
    NaturalGradientOptimizer<double> opt(model.num_params(), o);
    Vec<double> theta = theta0;
    opt.step(model, lk, theta, b1, 0);
    EXPECT_LT(rel_err_vec(theta, theta1), 1e-12);
    NaturalGradientOptimizer<double> resumed(model.num_params(), o);
    resumed.load_state(opt.state());
    Vec<double> theta_r = theta;
    opt.step(model, lk, theta, b2, 1);
    resumed.step(model, lk, theta_r, b2, 1);
    EXPECT_LT(rel_err_vec(Vec<double>(theta - theta1), s2), 1e-9);
    EXPECT_LT(rel_err_vec(theta, theta2), 1e-12);
    EXPECT_EQ(theta, theta_r);
  }
}

// A rejected step keeps θ and forgets the previous update: the next update has no momentum term.
TEST(NaturalGradientStep, ARejectedStepRestartsMomentum) {
  Network<double> model(mlp_spec(4, 5, 3));
  const LikelihoodKind lk = LikelihoodKind::categorical;
  const Dataset<double> data = random_dataset(model, 12, lk, 61);
  const Vec<double> theta0 = random_vec<double>(model.num_params(), 62);
  NaturalGradientStepOptions o;
  o.solver = SolverKind::smw;
  o.momentum = 0.9;
  o.lr = 1e-3;  // accepted
  NaturalGradientOptimizer<double> opt(model.num_params(), o);
  Vec<double> theta = theta0;
  ASSERT_FALSE(opt.step(model, lk, theta, data, 0).rejected);
  auto update_size = [](const OptimizerState& s) {
    for (const auto& [n, v] : s.vectors)
      if (n == "update") return v.size();
    return Index(-1);
  };
  EXPECT_EQ(update_size(opt.state()), model.num_params());
  // The same state with a huge η: every halving still raises the loss.
  OptimizerState st = opt.state();
  o.lr = 1e6;
  NaturalGradientOptimizer<double> big(model.num_params(), o);
  big.load_state(st);
  const Vec<double> before = theta;
  const StepResult r = big.step(model, lk, theta, data, 1);
  EXPECT_TRUE(r.rejected);
  EXPECT_EQ(r.line_search_trials, 9);
  EXPECT_EQ(theta, before);
  EXPECT_EQ(update_size(big.state()), 0);
  EXPECT_DOUBLE_EQ(big.damping(), opt.damping() * 1.5);
  // load_state refuses an update of another size.
  for (auto& [n, v] : st.vectors)
    if (n == "update") v = Vec<double>::Zero(3);
  EXPECT_NE(error_of([&] { big.load_state(st); }).find("update has 3 entries"), std::string::npos);
}

// Each safeguard, and all of them with momentum, lowers the loss of a few epochs on a small problem, for
// every likelihood and Fisher kind.
TEST(NaturalGradientStep, EachOptionLowersTheLossForEveryLikelihoodAndFisher) {
  Network<double> model(mlp_spec(4, 6, 3));
  struct Setting {
    const char* name;
    bool adapt, line_search, backtrack;
    double lr, momentum;
  };
  // (Momentum without a safeguard takes η 1/2: its steady update is η/(1 − μ) times the direction.)
  const Setting settings[] = {{"backtracking with the rule", true, false, true, 1, 0},
                              {"the line search alone", false, true, false, 1, 0},
                              {"momentum alone", false, false, false, 0.5, 0.5},
                              {"all, with momentum", true, true, true, 1, 0.5}};
  for (LikelihoodKind lk :
       {LikelihoodKind::categorical, LikelihoodKind::gaussian, LikelihoodKind::bernoulli}) {
    const Dataset<double> data = teacher_dataset(model, 48, lk, 71);
    const Vec<double> theta0 = random_vec<double>(model.num_params(), 72);
    const double L0 = evaluate(model, lk, theta0, data).first;
    for (FisherKind fk : {FisherKind::exact, FisherKind::mc, FisherKind::empirical})
      for (const Setting& set : settings) {
        SCOPED_TRACE(std::string(to_string(lk)) + ", " + to_string(fk) + ", " + set.name);
        NaturalGradientStepOptions o;
        o.fisher.kind = fk;
        o.fisher.num_threads = 1;  // (tiny products: threads would only wait for each other)
        o.adapt_damping = set.adapt;
        o.line_search = set.line_search;
        o.backtrack = set.backtrack;
        o.lr = set.lr;
        o.momentum = set.momentum;
        o.solver = SolverKind::cg;
        o.curvature_batch = 8;
        NaturalGradientOptimizer<double> opt(model.num_params(), o);
        TrainOptions to;
        to.epochs = 3;
        to.batch = 16;
        Vec<double> theta = theta0;
        train<double>(model, lk, theta, data, nullptr, opt, to);
        EXPECT_LT(evaluate(model, lk, theta, data).first, L0);
      }
  }
}

// Adam and SGD (with and without momentum) lower a teacher's loss for every likelihood, at their defaults'
// scale of learning rate, over a few epochs of minibatches.
TEST(Optimizers, AdamAndSgdLowerTheLossForEveryLikelihood) {
  Network<double> model(mlp_spec(4, 6, 3));
  for (LikelihoodKind lk : {LikelihoodKind::categorical, LikelihoodKind::gaussian, LikelihoodKind::bernoulli}) {
    const Dataset<double> data = teacher_dataset(model, 48, lk, 81);
    const Vec<double> theta0 = random_vec<double>(model.num_params(), 82);
    const double L0 = evaluate(model, lk, theta0, data).first;
    AdamOptions adam_options;
    adam_options.lr = 1e-2;
    AdamOptimizer<double> adam(model.num_params(), adam_options);
    SgdOptimizer<double> momentum(model.num_params(), {0.05, 0.9}), plain(model.num_params(), {0.1, 0.0});
    for (Optimizer<double>* opt : std::initializer_list<Optimizer<double>*>{&adam, &momentum, &plain}) {
      SCOPED_TRACE(std::string(to_string(lk)) + ", " + opt->name());
      TrainOptions to;
      to.epochs = 5;
      to.batch = 16;
      Vec<double> theta = theta0;
      train<double>(model, lk, theta, data, nullptr, *opt, to);
      EXPECT_LT(evaluate(model, lk, theta, data).first, 0.9 * L0);
    }
  }
}

// --solver auto takes the Gram while its rows — the curvature batch's samples times the outputs (exact), times
// the Monte-Carlo labels (mc), or the samples themselves (empirical) — are at most gram_max_rows, CG above;
// each step is then the chosen solver's, bit for bit.
TEST(NaturalGradientStep, AutoTakesTheGramUpToGramMaxRowsAndCgAbove) {
  Network<double> model(mlp_spec(4, 5, 3));  // 3 outputs
  const Dataset<double> data = random_dataset(model, 8, LikelihoodKind::categorical, 91);
  const Vec<double> theta0 = random_vec<double>(model.num_params(), 92) * 0.5;
  struct Case {
    FisherKind kind;
    Index curvature_batch, rows;
  };
  const Case cases[] = {{FisherKind::exact, 0, 8 * 3},
                        {FisherKind::exact, 5, 5 * 3},
                        {FisherKind::mc, 0, 8 * 2},  // (2 labels per sample, below)
                        {FisherKind::empirical, 6, 6}};
  for (const Case& c : cases) {
    for (Index limit : {c.rows, c.rows - 1}) {
      SCOPED_TRACE(std::string(to_string(c.kind)) + ", curvature batch " + std::to_string(c.curvature_batch) +
                   ", gram_max_rows " + std::to_string(limit));
      const auto step = [&](SolverKind solver, StepResult* r) {
        NaturalGradientStepOptions o;
        o.fisher.kind = c.kind;
        o.fisher.mc_samples = 2;
        o.curvature_batch = c.curvature_batch;
        o.solver = solver;
        o.gram_max_rows = limit;
        NaturalGradientOptimizer<double> opt(model.num_params(), o);
        Vec<double> theta = theta0;
        *r = opt.step(model, LikelihoodKind::categorical, theta, data, 0);
        return theta;
      };
      StepResult automatic, chosen;
      const Vec<double> by_auto = step(SolverKind::automatic, &automatic);
      const SolverKind want = limit >= c.rows ? SolverKind::smw : SolverKind::cg;
      const Vec<double> by_chosen = step(want, &chosen);
      EXPECT_EQ(automatic.solver, want);
      EXPECT_EQ(by_auto, by_chosen);
      EXPECT_EQ(automatic.cg_iterations, chosen.cg_iterations);
    }
  }
}

TEST(NaturalGradientStep, InvalidOptionsNameTheField) {
  auto why = [](auto change) {
    NaturalGradientStepOptions o;
    change(o);
    return error_of([&] { NaturalGradientOptimizer<double>(5, o); });
  };
  EXPECT_NE(why([](auto& o) { o.momentum = -1; }).find("natgrad: momentum must be"), std::string::npos);
  EXPECT_NE(why([](auto& o) { o.backtrack_spacing = 1; }).find("backtrack_spacing"), std::string::npos);
  EXPECT_NE(why([](auto& o) { o.armijo_c = 1; }).find("armijo_c"), std::string::npos);
  EXPECT_NE(why([](auto& o) { o.line_search_shrink = 0; }).find("line_search_shrink"), std::string::npos);
  EXPECT_NE(why([](auto& o) { o.line_search_max_shrinks = -1; }).find("line_search_max_shrinks"),
            std::string::npos);
  EXPECT_NE(why([](auto& o) { o.lr = 0; }).find("lr must be"), std::string::npos);
  EXPECT_TRUE(NaturalGradientStepOptions().is_valid(nullptr));
}
