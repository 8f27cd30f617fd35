// Training with each minibatch shared by K ranks, in one process (the ranks are threads joined by the
// Communicator of thread_communicator.h): whole runs of adam, sgd, the natural-gradient optimizer (CG with its
// safeguards, the Gram solve, Monte-Carlo curvature) and K-FAC on 2 and 3 ranks against the same runs in one
// process. The batches are 5, 5 and 1 samples (the last smaller than K, so a rank holds nothing), the
// curvature batch 3 (a rank holds none of it on 3 ranks or on the last batch), the test set 2 samples. The
// one-process run is the reference: the shared one must give the same parameters, losses and evaluations to
// rounding (1e-12 in float64; the natural gradient by CG to a fraction of CG's tolerance), hold the same bits
// on every rank, and repeat them bit for bit.
// (The MPI build's end-to-end `natgrad train` under mpirun is in tests/mpi_ranks.py.)
#include "test_helpers.h"
#include "thread_communicator.h"

#include <natgrad/model/initialization.h>
#include <natgrad/training/kfac_optimizer.h>
#include <natgrad/training/trainer.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace natgrad {
namespace {

using test::rel_err;
using test::rel_err_vec;

// An optimizer for a run, made with the ranks' communicator (nullptr: one process).
using MakeOptimizer = std::function<std::unique_ptr<Optimizer<double>>(const Network<double>&, const Communicator*)>;

struct Run {
  Vec<double> theta;
  std::vector<double> losses;  // every step's
  std::vector<bool> rejected;
  std::vector<Index> cg_iterations, cg_iterate;  // (natgrad's)
  std::vector<double> test_loss, test_accuracy;  // every evaluation's
  Index steps = 0;
};

struct Fixture {
  Network<double> model{test::mlp_spec(6, 8, 4)};
  Dataset<double> data = test::random_dataset(model, 11, LikelihoodKind::categorical, 21);
  Dataset<double> test = test::random_dataset(model, 2, LikelihoodKind::categorical, 31);

  Run run(const MakeOptimizer& make, const Communicator* comm) const {
    Vec<double> theta = init_parameters(model, 5);
    const std::unique_ptr<Optimizer<double>> opt = make(model, comm);
    TrainOptions o;
    o.epochs = 3;
    o.batch = 5;  // 5, 5, 1
    o.seed = 9;
    o.communicator = comm;
    const TrainSummary s = train(model, LikelihoodKind::categorical, theta, data, &test, *opt, o);
    Run r;
    r.theta = theta;
    r.steps = s.steps;
    for (const TrainRecord& t : s.records)
      if (t.eval) {
        r.test_loss.push_back(t.test_loss);
        r.test_accuracy.push_back(t.test_accuracy);
      } else {
        r.losses.push_back(t.result.loss);
        r.rejected.push_back(t.result.rejected);
        r.cg_iterations.push_back(t.result.cg_iterations);
        r.cg_iterate.push_back(t.result.cg_iterate);
      }
    return r;
  }

  std::vector<Run> on(int K, const MakeOptimizer& make) const {
    std::vector<Run> runs(static_cast<std::size_t>(K));
    const std::vector<std::string> errors =
        test::on_ranks(K, [&](int r, const Communicator& comm) { runs[static_cast<std::size_t>(r)] = run(make, &comm); });
    for (int r = 0; r < K; ++r) EXPECT_EQ(errors[static_cast<std::size_t>(r)], "") << "rank " << r;
    return runs;
  }
};

// `tol`: how far the parameters and losses may lie from one process's (1e-12: rounding).
void expect_shared_equals_one_process(const char* name, const MakeOptimizer& make, double tol = 1e-12) {
  const Fixture f;
  const Run one = f.run(make, nullptr);
  ASSERT_EQ(one.steps, 9) << name;
  for (int K : {2, 3}) {
    const std::vector<Run> runs = f.on(K, make), again = f.on(K, make);
    for (int r = 0; r < K; ++r) {
      const Run& x = runs[static_cast<std::size_t>(r)];
      ASSERT_EQ(x.losses.size(), one.losses.size()) << name << " K " << K;
      ASSERT_EQ(x.test_loss.size(), one.test_loss.size()) << name << " K " << K;
      EXPECT_LE(rel_err_vec(x.theta, one.theta), tol) << name << " K " << K << " rank " << r;
      for (std::size_t i = 0; i < one.losses.size(); ++i) {
        EXPECT_LE(rel_err(x.losses[i], one.losses[i]), tol) << name << " K " << K << " step " << i;
        EXPECT_EQ(x.rejected[i], one.rejected[i]) << name << " K " << K << " step " << i;
        EXPECT_EQ(x.cg_iterations[i], one.cg_iterations[i]) << name << " K " << K << " step " << i;
        EXPECT_EQ(x.cg_iterate[i], one.cg_iterate[i]) << name << " K " << K << " step " << i;
      }
      for (std::size_t i = 0; i < one.test_loss.size(); ++i) {
        EXPECT_LE(rel_err(x.test_loss[i], one.test_loss[i]), tol) << name << " K " << K;
        EXPECT_EQ(x.test_accuracy[i], one.test_accuracy[i]) << name << " K " << K;
      }
      // Every rank holds the same bits, and a second run repeats them.
      EXPECT_EQ(x.theta, runs[0].theta) << name << " K " << K << " rank " << r;
      EXPECT_EQ(x.losses, runs[0].losses) << name << " K " << K << " rank " << r;
      EXPECT_EQ(x.theta, again[static_cast<std::size_t>(r)].theta) << name << " K " << K << " rank " << r;
      EXPECT_EQ(x.losses, again[static_cast<std::size_t>(r)].losses) << name << " K " << K << " rank " << r;
    }
  }
  // The runs moved: a test that compared untouched parameters could not fail.
  EXPECT_GT(rel_err_vec(one.theta, init_parameters(f.model, 5)), 1e-3) << name;
}

TEST(TrainDistributed, AdamAndSgdEqualOneProcess) {
  expect_shared_equals_one_process("adam", [](const Network<double>& m, const Communicator* c) {
    AdamOptions o;
    o.lr = 0.05;
    o.communicator = c;
    return std::make_unique<AdamOptimizer<double>>(m.num_params(), o);
  });
  expect_shared_equals_one_process("sgd", [](const Network<double>& m, const Communicator* c) {
    SgdOptions o;
    o.lr = 0.3;
    o.momentum = 0.9;
    o.communicator = c;
    return std::make_unique<SgdOptimizer<double>>(m.num_params(), o);
  });
}

NaturalGradientStepOptions natgrad_options(const Communicator* c) {
  NaturalGradientStepOptions o;  // the Levenberg–Marquardt rule and the line search on
  o.damping = 0.3;
  o.curvature_batch = 3;
  o.momentum = 0.5;
  // A CG stopped at a tolerance T is only that close to the solution, and two solves whose sums differ in
  // order agree to a fraction of T, not to rounding (measured: 1e-11 after 9 steps at T = 1e-10); a T much
  // nearer rounding makes CG stop an iteration apart in the two runs. Backtracking compares the losses of
  // iterates that agree that closely: it has its own case below.
  o.cg_tolerance = 1e-10;
  o.backtrack = false;
  o.fisher.num_threads = 1;
  o.fisher.communicator = c;
  return o;
}

TEST(TrainDistributed, NaturalGradientWithCgEqualsOneProcess) {
  expect_shared_equals_one_process("natgrad cg", [](const Network<double>& m, const Communicator* c) {
    NaturalGradientStepOptions o = natgrad_options(c);
    o.solver = SolverKind::cg;
    return std::make_unique<NaturalGradientOptimizer<double>>(m.num_params(), o);
  }, 1e-10);
  expect_shared_equals_one_process("natgrad cg, mc", [](const Network<double>& m, const Communicator* c) {
    NaturalGradientStepOptions o = natgrad_options(c);
    o.solver = SolverKind::cg;
    o.fisher.kind = FisherKind::mc;
    o.fisher.seed = 4;
    o.curvature_batch = 0;
    return std::make_unique<NaturalGradientOptimizer<double>>(m.num_params(), o);
  }, 1e-10);
}

// CG at the default tolerance 1e-4 with backtracking: the same iterations, iterates taken and rejections as
// one process, the same bits on every rank and run to run; the parameters as close as CG's tolerance lets two
// differently rounded solves be (the solve's directions likewise: docs/distributed.md).
TEST(TrainDistributed, NaturalGradientWithBacktrackingTakesTheSameIterates) {
  expect_shared_equals_one_process(
      "natgrad cg, backtracking",
      [](const Network<double>& m, const Communicator* c) {
        NaturalGradientStepOptions o = natgrad_options(c);
        o.solver = SolverKind::cg;
        o.cg_tolerance = 1e-4;
        o.backtrack = true;
        return std::make_unique<NaturalGradientOptimizer<double>>(m.num_params(), o);
      },
      1e-8);
}

TEST(TrainDistributed, NaturalGradientWithTheGramEqualsOneProcess) {
  expect_shared_equals_one_process("natgrad smw", [](const Network<double>& m, const Communicator* c) {
    NaturalGradientStepOptions o = natgrad_options(c);
    o.solver = SolverKind::smw;
    return std::make_unique<NaturalGradientOptimizer<double>>(m.num_params(), o);
  });
}

TEST(TrainDistributed, KfacEqualsOneProcess) {
  expect_shared_equals_one_process("kfac", [](const Network<double>& m, const Communicator* c) {
    KfacStepOptions o;
    o.curvature_batch = 3;
    o.inverse_every = 2;
    o.damping_every = 1;
    o.fisher.num_threads = 1;
    o.fisher.communicator = c;
    return std::make_unique<KfacOptimizer<double>>(m, o);
  });
}

// The stop is rank 0's: a stop that only rank 0 asks for ends every rank at the same step boundary (and one
// that only another rank asks for ends none), so no rank is left waiting in a sum.
TEST(TrainDistributed, RankZeroDecidesTheStop) {
  const Fixture f;
  for (int asking : {0, 1}) {
    std::vector<Index> steps(3);
    const std::vector<std::string> errors = test::on_ranks(3, [&](int r, const Communicator& comm) {
      Vec<double> theta = init_parameters(f.model, 5);
      AdamOptions ao;
      ao.communicator = &comm;
      AdamOptimizer<double> adam(f.model.num_params(), ao);
      TrainOptions o;
      o.epochs = 3;
      o.batch = 5;
      o.communicator = &comm;
      Index polls = 0;
      o.stop_requested = [&] { return r == asking && ++polls > 4; };
      steps[static_cast<std::size_t>(r)] =
          train(f.model, LikelihoodKind::categorical, theta, f.data, &f.test, adam, o).steps;
    });
    for (int r = 0; r < 3; ++r) {
      EXPECT_EQ(errors[static_cast<std::size_t>(r)], "");
      EXPECT_EQ(steps[static_cast<std::size_t>(r)], asking == 0 ? 4 : 9) << "rank " << r;
    }
  }
}

}  // namespace
}  // namespace natgrad
