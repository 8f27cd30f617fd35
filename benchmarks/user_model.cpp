#include "user_model.h"

#include "flop_model.h"
#include "random_batch.h"

#include <natgrad/curvature/fisher_operator.h>
#include <natgrad/io/dataset_io.h>
#include <natgrad/io/model_spec_json.h>
#include <natgrad/io/parameters_io.h>
#include <natgrad/core/threads.h>
#include <natgrad/model/initialization.h>
#include <natgrad/solvers/conjugate_gradient.h>
#include <natgrad/solvers/preconditioner.h>

#include <benchmark/benchmark.h>

#include <memory>
#include <stdexcept>
#include <string>

namespace natgrad {
namespace bench {
namespace {


struct UserModel {
  ModelFile file;
  std::unique_ptr<Network<float>> model;
  Vec<float> theta, v, y;
  Dataset<float> data;
  FlopModel flops;
  // One operator at a time (each caches the batch's activations): rebuilt when the Fisher kind changes.
  std::unique_ptr<FisherOperator<float>> F;
  FisherKind kind = FisherKind::exact;

  FisherOperator<float>& op(FisherKind k) {
    if (!F || kind != k) {
      F.reset();
      FisherOptions fo;
      fo.kind = k;
      fo.damping = 1e-3;
      F = std::make_unique<FisherOperator<float>>(*model, theta, file.likelihood, data, fo);
      kind = k;
    }
    return *F;
  }
};

UserModel& user() {
  static UserModel m;
  return m;
}

void rate(benchmark::State& state, double flops) {
  state.counters["GFLOP/s"] = benchmark::Counter(flops * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["threads"] = num_threads();
}

void model_gradient(benchmark::State& state) {
  UserModel& m = user();
  FisherOperator<float>& F = m.op(FisherKind::exact);
  for (auto _ : state) {
    F.rebind(m.theta);  // forward pass
    benchmark::DoNotOptimize(F.gradient().data());
  }
  rate(state, double(m.data.size()) * gradient_flops(m.flops));
}

void model_fvp(benchmark::State& state, FisherKind kind) {
  UserModel& m = user();
  FisherOperator<float>& F = m.op(kind);
  const Index before = F.num_products();
  for (auto _ : state) {
    F.perform_op(m.v.data(), m.y.data());
    benchmark::DoNotOptimize(m.y.data());
  }
  rate(state, double(m.data.size()) * fvp_flops(m.flops));
  state.counters["products"] = double(F.num_products() - before) / double(state.iterations());
}

void model_cg10(benchmark::State& state) {
  UserModel& m = user();
  FisherOperator<float>& F = m.op(FisherKind::exact);
  const Vec<float>& g = F.gradient();
  CgOptions opt;
  opt.relative_tolerance = 1e-30;  // exactly 10 iterations
  opt.max_iterations = 10;
  CgWorkspace<float> ws(F.rows());
  Vec<float> x(F.rows());
  CgSummary summary;
  for (auto _ : state) {
    summary = conjugate_gradient(F, IdentityPreconditioner<float>(F.rows()), g.data(), x.data(), opt, ws);
    benchmark::DoNotOptimize(x.data());
  }
  rate(state, double(summary.operator_applications) * double(m.data.size()) * fvp_flops(m.flops));
  state.counters["iterations"] = double(summary.iterations);
  state.counters["products"] = double(summary.operator_applications);
  state.counters["rel_residual"] = summary.relative_residual;
}

}  // namespace

bool register_user_model(int argc, char** argv) {
  std::string model, weights, data;
  long long batch = 128;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i], value;
    const auto eq = arg.find('=');
    if (eq != std::string::npos) {
      value = arg.substr(eq + 1);
      arg = arg.substr(0, eq);
    }
    auto take = [&]() {
      if (eq != std::string::npos) return value;
      if (i + 1 >= argc) throw std::invalid_argument(arg + " needs a value");
      return std::string(argv[++i]);
    };
    if (arg == "--model") model = take();
    else if (arg == "--weights") weights = take();
    else if (arg == "--data") data = take();
    else if (arg == "--batch") {
      const std::string b = take();
      std::size_t used = 0;
      try {
        batch = std::stoll(b, &used);
      } catch (const std::exception&) {
        used = 0;
      }
      if (used != b.size() || batch < 1) throw std::invalid_argument("--batch must be a positive integer, got '" + b + "'");
    } else {
      throw std::invalid_argument("unknown argument '" + std::string(argv[i]) +
                                  "' (natgrad-bench takes Google Benchmark's --benchmark_* flags and "
                                  "--model M.json [--weights W] [--data D] [--batch B])");
    }
  }
  if (model.empty()) {
    if (!weights.empty() || !data.empty()) throw std::invalid_argument("--weights and --data need --model");
    return false;
  }
  UserModel& m = user();
  m.file = read_model_spec(model);
  m.model = std::make_unique<Network<float>>(m.file.spec);
  if (weights.empty()) {
    m.theta = init_parameters(*m.model, 0);
  } else {
    m.theta = load_parameters<float>(weights, *m.model);
    load_buffers<float>(weights, *m.model);
  }
  if (data.empty()) {
    m.data = random_batch(*m.model, m.file.spec, m.file.likelihood, Index(batch));
  } else {
    const Index T = m.model->output_positions();
    m.data = load_dataset<float>(data, m.file.spec.input_shape, m.file.likelihood, m.model->output_size() / T,
                                 Split::train, Index(batch), T);
    m.model->check_inputs(m.data.inputs);
  }
  m.v = init_parameters(*m.model, 7);
  m.y.resize(m.model->num_params());
  m.flops = flops_per_sample(*m.model);
  auto ms = [](benchmark::internal::Benchmark* b) { b->Unit(benchmark::kMillisecond)->UseRealTime(); };
  ms(benchmark::RegisterBenchmark("model/gradient", model_gradient));
  ms(benchmark::RegisterBenchmark("model/fvp_exact", model_fvp, FisherKind::exact));
  ms(benchmark::RegisterBenchmark("model/fvp_mc", model_fvp, FisherKind::mc));
  ms(benchmark::RegisterBenchmark("model/fvp_empirical", model_fvp, FisherKind::empirical));
  ms(benchmark::RegisterBenchmark("model/cg10", model_cg10)->Iterations(1));
  std::fprintf(stderr, "natgrad-bench: model %s (%lld parameters, %s), %lld samples%s\n", model.c_str(),
               static_cast<long long>(m.model->num_params()), weights.empty() ? "initialization seed 0" : weights.c_str(),
               static_cast<long long>(m.data.size()), data.empty() ? " of random inputs" : (" of " + data).c_str());
  return true;
}

}  // namespace bench
}  // namespace natgrad
