// natgrad-bench: the benchmarks listed in docs/performance.md. Threads from OMP_NUM_THREADS. Counters: GFLOP/s (from the
// GEMM flop count of the pass), products and CG iterations where they apply.
//
// Flop counts (2·m·n·k per GEMM; element-wise work, embeddings and normalization are not counted):
//   gradient = forward (1 GEMM per layer) + backward (weight GEMM per layer, input GEMM for all but the first)
//   fvp      = R-op (weight GEMM per layer, input GEMM for all but the first) + the same backward.
// Attention's own products per sample (T² E multiply-adds each: q kᵀ and P v over the heads) count 2 in the
// forward pass, 4 in the R-op (dq kᵀ, q dkᵀ, dv P, v dP) and 4 in backprop (gP, gv, gq, gk).
#include "benchmark_models.h"
#include "flop_model.h"
#include "random_batch.h"
#include "user_model.h"

#include <natgrad/curvature/fisher_operator.h>
#include <natgrad/model/initialization.h>
#include <natgrad/natural_gradient/solve_natural_gradient.h>

#include "core/reference_gemm.h"

#include <benchmark/benchmark.h>

#ifdef NATGRAD_HAVE_OPENMP
#include <omp.h>
#endif

#include <chrono>
#include <cstdio>
#include <map>
#include <string>
#include <memory>

using namespace natgrad;

namespace {

int threads() {
#ifdef NATGRAD_HAVE_OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

using bench::cnn;
using bench::gpt;
using bench::resnet;
using bench::separable_cnn;
using bench::mlp;

using bench::FlopModel;
using bench::flops_per_sample;
using bench::gradient_flops;
using bench::fvp_flops;

struct Setup {
  std::unique_ptr<Network<float>> model;
  Vec<float> theta;
  Dataset<float> data;
  std::unique_ptr<FisherOperator<float>> F;
  Vec<float> v, y;
  FlopModel flops;
};

Setup& setup(const std::string& key, const ModelSpec& spec, Index batch, FisherKind kind) {
  static std::map<std::string, std::unique_ptr<Setup>> cache;
  auto& s = cache[key];
  if (s) return *s;
  s = std::make_unique<Setup>();
  s->model = std::make_unique<Network<float>>(spec);
  s->theta = init_parameters(*s->model, 0);
  // Token models (an embedding reads the input) get token indices and a label per position.
  s->data = bench::random_batch(*s->model, spec, LikelihoodKind::categorical, batch);
  FisherOptions fo;
  fo.kind = kind;
  fo.damping = 1e-3;
  s->F = std::make_unique<FisherOperator<float>>(*s->model, s->theta, LikelihoodKind::categorical, s->data, fo);
  s->v = init_parameters(*s->model, 7);
  s->y.resize(s->model->num_params());
  s->flops = flops_per_sample(*s->model);
  return *s;
}

void counters(benchmark::State& state, double flops_per_iteration) {
  state.counters["GFLOP/s"] = benchmark::Counter(flops_per_iteration * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["threads"] = threads();
}

void BM_gemm(benchmark::State& state) {
  const Index n = state.range(0);
  Mat<float> A = Mat<float>::Random(n, n), B = Mat<float>::Random(n, n), C(n, n);
  const int T = threads();
  for (auto _ : state) {
    reference_gemm(A, B, C, T);
    benchmark::DoNotOptimize(C.data());
  }
  counters(state, 2.0 * double(n) * double(n) * double(n));
}

void gradient(benchmark::State& state, const std::string& key, const ModelSpec& spec, Index batch) {
  Setup& s = setup(key, spec, batch, FisherKind::exact);
  for (auto _ : state) {
    s.F->rebind(s.theta);  // forward pass
    benchmark::DoNotOptimize(s.F->gradient().data());  // backward pass
  }
  counters(state, double(batch) * gradient_flops(s.flops));
}

void fvp(benchmark::State& state, const std::string& key, const ModelSpec& spec, Index batch, FisherKind kind) {
  Setup& s = setup(key, spec, batch, kind);
  for (auto _ : state) {
    s.F->perform_op(s.v.data(), s.y.data());
    benchmark::DoNotOptimize(s.y.data());
  }
  counters(state, double(batch) * fvp_flops(s.flops));
}

void BM_cg30(benchmark::State& state) {
  Setup& s = setup("mlp", mlp(10), 1000, FisherKind::exact);
  const Vec<float>& g = s.F->gradient();
  CgOptions opt;
  opt.relative_tolerance = 1e-30;
  opt.max_iterations = 30;
  CgWorkspace<float> ws(s.F->rows());
  Vec<float> x(s.F->rows());
  CgSummary summary;
  for (auto _ : state) {
    summary = conjugate_gradient(*s.F, IdentityPreconditioner<float>(s.F->rows()), g.data(), x.data(), opt, ws);
    benchmark::DoNotOptimize(x.data());
  }
  counters(state, 30.0 * 1000 * fvp_flops(s.flops));
  state.counters["iterations"] = double(summary.iterations);
  state.counters["products"] = double(summary.operator_applications);
  state.counters["rel_residual"] = summary.relative_residual;
}

// The operator with a clock on its products, so the Lanczos benchmark can tell the time outside them.
struct TimedOperator {
  using Scalar = float;
  const FisherOperator<float>& F;
  mutable double seconds = 0;
  Index rows() const { return F.rows(); }
  Index cols() const { return F.cols(); }
  void perform_op(const float* x, float* y) const {
    const auto t0 = std::chrono::steady_clock::now();
    F.perform_op(x, y);
    seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
};

// Top-10 eigenvalues to 1e-6; the Lanczos basis in the operator's precision (float), or in double
// (mlp/spectrum_top10_double), which costs twice the memory traffic outside the products.
void BM_spectrum_top10(benchmark::State& state, LanczosBasis basis) {
  Setup& s = setup("mlp", mlp(10), 1000, FisherKind::exact);
  SpectrumOptions opt;
  opt.num_eigenvalues = 10;
  opt.tolerance = 1e-6;
  opt.basis = basis;
  SpectrumResult r;
  TimedOperator op{*s.F};
  double total = 0;
  for (auto _ : state) {
    const auto t0 = std::chrono::steady_clock::now();
    r = top_eigenvalues(op, opt);
    total += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    benchmark::DoNotOptimize(r.eigenvalues.data());
  }
  const double runs = double(state.iterations());
  state.counters["products"] = double(r.matvecs);
  state.counters["product_s"] = op.seconds / runs;
  state.counters["outside_s"] = (total - op.seconds) / runs;
  state.counters["outside_share"] = (total - op.seconds) / total;
  state.counters["restarts"] = double(r.restarts);
  state.counters["lambda_max"] = r.eigenvalues.size() ? r.eigenvalues[0] : 0.0;
  state.counters["threads"] = threads();
}

}  // namespace

BENCHMARK(BM_gemm)->Name("gemm/1024")->Arg(1024)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_CAPTURE(gradient, mlp, std::string("mlp"), mlp(10), 1000)->Name("mlp/gradient")->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_CAPTURE(fvp, mlp_exact, std::string("mlp"), mlp(10), 1000, FisherKind::exact)->Name("mlp/fvp_exact")->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_CAPTURE(fvp, mlp_mc, std::string("mlp_mc"), mlp(10), 1000, FisherKind::mc)->Name("mlp/fvp_mc")->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_CAPTURE(fvp, mlp_emp, std::string("mlp_emp"), mlp(10), 1000, FisherKind::empirical)->Name("mlp/fvp_empirical")->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_CAPTURE(gradient, c10000, std::string("c10000"), mlp(10000), 1000)->Name("mlp_c10000/gradient")->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_CAPTURE(fvp, c10000, std::string("c10000"), mlp(10000), 1000, FisherKind::exact)->Name("mlp_c10000/fvp_exact")->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_CAPTURE(gradient, cnn, std::string("cnn"), cnn(), 256)->Name("cnn/gradient")->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_CAPTURE(fvp, cnn, std::string("cnn"), cnn(), 256, FisherKind::exact)->Name("cnn/fvp_exact")->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_CAPTURE(gradient, separable_cnn, std::string("separable_cnn"), separable_cnn(), 256)->Name("separable_cnn/gradient")->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_CAPTURE(fvp, separable_cnn, std::string("separable_cnn"), separable_cnn(), 256, FisherKind::exact)->Name("separable_cnn/fvp_exact")->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_CAPTURE(gradient, resnet, std::string("resnet"), resnet(), 128)->Name("resnet/gradient")->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_CAPTURE(fvp, resnet, std::string("resnet"), resnet(), 128, FisherKind::exact)->Name("resnet/fvp_exact")->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_CAPTURE(gradient, gpt, std::string("gpt"), gpt(), 16)->Name("gpt/gradient")->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_CAPTURE(fvp, gpt, std::string("gpt"), gpt(), 16, FisherKind::exact)->Name("gpt/fvp_exact")->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_cg30)->Name("mlp/cg30")->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(3);
BENCHMARK_CAPTURE(BM_spectrum_top10, float, LanczosBasis::operator_precision)->Name("mlp/spectrum_top10")->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(2);
BENCHMARK_CAPTURE(BM_spectrum_top10, double, LanczosBasis::double_precision)->Name("mlp/spectrum_top10_double")->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(2);

namespace {

// natgrad-bench --help: natgrad's own options, then Google Benchmark's.
void print_help() {
  std::printf(
      "natgrad-bench: natgrad's benchmarks (docs/performance.md); threads from OMP_NUM_THREADS.\n\n"
      "usage: natgrad-bench [--model M.json [--weights W.safetensors] [--data D] [--batch B]] [--benchmark_* flags]\n\n"
      "  --model M.json   benchmark this model (the files export_model writes) instead of the built-in ones:\n"
      "                   gemm/1024 (the machine's reference rate), model/gradient, model/fvp_exact,\n"
      "                   model/fvp_mc, model/fvp_empirical and model/cg10; --benchmark_filter chooses among these\n"
      "  --weights W      its parameters (safetensors; default: PyTorch-style initialization, seed 0)\n"
      "  --data D         its data, as natgrad solve reads it (default: random inputs and targets, fixed seeds)\n"
      "  --batch B        samples (>= 1; default 128)\n"
      "  (also as --name=value)\n\n"
      "Google Benchmark's flags:\n");
  benchmark::PrintDefaultHelp();
}

}  // namespace

// Google Benchmark's flags, then --model M.json [--weights W] [--data D] [--batch B] (user_model.h).
// With --model only gemm/1024 (the reference rate) and the model's benchmarks are registered, so
// --benchmark_filter chooses among them and never reaches the built-in models.
int main(int argc, char** argv) {
  bool model = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    model = model || a == "--model" || a.rfind("--model=", 0) == 0;
  }
  benchmark::Initialize(&argc, argv, print_help);
  if (model) {
    benchmark::ClearRegisteredBenchmarks();
    benchmark::RegisterBenchmark("gemm/1024", BM_gemm)->Arg(1024)->Unit(benchmark::kMillisecond)->UseRealTime();
  }
  try {
    natgrad::bench::register_user_model(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "natgrad-bench: %s\n", e.what());
    return 2;
  }
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
