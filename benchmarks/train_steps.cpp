// natgrad-bench's train/step_* entries: one optimizer step on the benchmark MLP (784-1024-1024-10 tanh,
// categorical, batch 1000, float32) with the optimizer's defaults as natgrad train sets them — natgrad (CG
// warm-started, Levenberg–Marquardt), kfac (the exact kind: H's closed form for the 10 classes, so the factors
// of every 16th batch averaged; Cholesky inverses every 20 steps; the loss at the update on every 5th: the 40
// iterations cover two refreshes, three factor updates and eight such windows) and adam — and natgrad_cg10, the fixed step of the PyTorch peer
// (benchmarks/torch_hf_step.py). Each is read as a ratio to mlp/gradient; cg_iterations is CG's mean per step.
#include "benchmark_models.h"
#include "random_batch.h"

#include <natgrad/model/initialization.h>
#include <natgrad/training/kfac_optimizer.h>
#include <natgrad/training/optimizer.h>

#include <benchmark/benchmark.h>

#include <memory>

namespace natgrad {
namespace {

struct Problem {
  ModelSpec spec = bench::mlp(10);
  Network<float> model{spec};
  Vec<float> theta = init_parameters(model, 0);
  Dataset<float> data = bench::random_batch(model, spec, LikelihoodKind::categorical, 1000);
};

Problem& problem() {
  static Problem p;
  return p;
}

void run_steps(benchmark::State& state, Optimizer<float>& opt) {
  Problem& p = problem();
  Vec<float> theta = p.theta;
  Index k = 0, cg = 0;
  for (auto _ : state) {
    const StepResult r = opt.step(p.model, LikelihoodKind::categorical, theta, p.data, k++);
    cg += r.cg_iterations;
    benchmark::DoNotOptimize(r.loss);
  }
  state.counters["steps"] = double(k);
  state.counters["cg_iterations"] = k > 0 ? double(cg) / double(k) : 0.0;
}

void step_natgrad(benchmark::State& state) {
  NaturalGradientStepOptions o;  // natgrad train's defaults: λ0 1, CG to 1e-4 (100 iterations), auto solver
  NaturalGradientOptimizer<float> opt(problem().model.num_params(), o);
  run_steps(state, opt);
}

// The step of benchmarks/torch_hf_step.py (its PyTorch peer): λ fixed at 1, exactly 10 CG iterations warm-started
// from 0.95 × the previous direction (the tolerance is out of float32's reach), no line search, no damping rule,
// so no backtracking: natgrad train --solver cg --cg-max-iters 10 --damping-adapt off --line-search off.
void step_natgrad_cg10(benchmark::State& state) {
  NaturalGradientStepOptions o;
  o.solver = SolverKind::cg;
  o.cg_max_iterations = 10;
  o.cg_tolerance = 1e-12;
  o.adapt_damping = false;
  o.line_search = false;
  NaturalGradientOptimizer<float> opt(problem().model.num_params(), o);
  run_steps(state, opt);
}

void step_kfac(benchmark::State& state) {
  KfacOptimizer<float> opt(problem().model, KfacStepOptions());
  run_steps(state, opt);
}

void step_adam(benchmark::State& state) {
  AdamOptimizer<float> opt(problem().model.num_params(), AdamOptions());
  run_steps(state, opt);
}

BENCHMARK(step_natgrad)->Name("train/step_natgrad")->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(10);
BENCHMARK(step_natgrad_cg10)
    ->Name("train/step_natgrad_cg10")
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime()
    ->Iterations(10);
BENCHMARK(step_kfac)->Name("train/step_kfac")->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(40);
BENCHMARK(step_adam)->Name("train/step_adam")->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace
}  // namespace natgrad
