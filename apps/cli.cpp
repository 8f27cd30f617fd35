#include "cli.h"

#include <natgrad/core/threads.h>
#include <natgrad/curvature/fisher_operator.h>
#include <natgrad/io/dataset_io.h>
#include <natgrad/io/model_spec_json.h>
#include <natgrad/io/parameters_io.h>
#include <natgrad/io/safetensors.h>
#include <natgrad/model/initialization.h>
#include <natgrad/natural_gradient/memory_estimate.h>
#include <natgrad/natural_gradient/solve_natural_gradient.h>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <chrono>
#include <csignal>
#include <cmath>
#include <cstdio>
#include <memory>
#include <new>
#include <stdexcept>
#include <string>
#include <vector>

namespace natgrad {
namespace cli {

namespace {

constexpr const char* kDefaultDataDir = "/usr/share/datasets/fashion-mnist";
constexpr Index kDefaultBatch = 1000;

struct Args {
  std::string model, weights, data, vector, output, save_gradient, report;
  std::string fisher = "exact", preconditioner = "none", dtype = "float32";
  int mc_samples = 1;
  uint64_t seed = 0;
  Index batch = 0, curvature_batch = 0;
  double damping = 0;
  double cg_tol = 1e-6;
  Index cg_max_iters = 500;
  Index spectrum = 0;
  Index top = 10;
  int threads = 0;
  double max_memory_gb = 0;
  bool quiet = false;
};

using clock_type = std::chrono::steady_clock;

class Progress {
 public:
  explicit Progress(bool quiet) : quiet_(quiet), start_(clock_type::now()) {}
  double elapsed() const { return std::chrono::duration<double>(clock_type::now() - start_).count(); }
  template <typename... T>
  void line(const char* fmt, T... args) const {
    if (quiet_) return;
    std::fprintf(stderr, "[%7.2fs] ", elapsed());
    std::fprintf(stderr, fmt, args...);
    std::fputc('\n', stderr);
  }
  bool quiet() const { return quiet_; }

 private:
  bool quiet_;
  clock_type::time_point start_;
};

// SIGINT / SIGTERM during a solve: CG stops at the end of its iteration and the best iterate is written.
volatile std::sig_atomic_t g_signal = 0;
extern "C" void on_signal(int sig) { g_signal = sig; }

void add_common(CLI::App* c, Args& a, const std::string& damping_default) {
  c->add_option("--model", a.model, "Model spec (JSON, docs/formats.md)");
  c->add_option("--weights", a.weights,
                "Parameters (safetensors, PyTorch state_dict names); default: PyTorch-style initialization from --seed");
  c->add_option("--data", a.data, "Data: a .safetensors file (inputs, targets), a directory of MNIST-format IDX files, or a .csv");
  c->add_option("--fisher", a.fisher, "Fisher kind: exact, mc or empirical")->capture_default_str();
  c->add_option("--mc-samples", a.mc_samples, "Monte-Carlo labels per input for --fisher mc (>= 1)")->capture_default_str();
  c->add_option("--seed", a.seed, "Seed for Monte-Carlo labels and initialization")->capture_default_str();
  c->add_option("--batch", a.batch, "Use the first B samples (default: all; 1000 for the embedded default)");
  c->add_option("--curvature-batch", a.curvature_batch, "Curvature on the first B2 samples of the batch (default: the batch)");
  c->add_option("--damping", a.damping, "Damping lambda >= 0 added as lambda*I (default " + damping_default + ")");
  c->add_option("--cg-tol", a.cg_tol, "CG relative residual tolerance, in (0, 1)")->capture_default_str();
  c->add_option("--cg-max-iters", a.cg_max_iters, "CG iteration limit (>= 1)")->capture_default_str();
  c->add_option("--preconditioner", a.preconditioner, "none or diagonal (Martens: (diag(F_emp) + lambda)^0.75)")
      ->capture_default_str();
  c->add_option("--dtype", a.dtype, "float32 or float64")->capture_default_str();
  c->add_option("--threads", a.threads, "Threads: >= 1, or 0 for all cores (default: OMP_NUM_THREADS, else all cores)");
  c->add_option("--max-memory", a.max_memory_gb,
                "Refuse to start if the estimated memory exceeds this many GB (default: the available memory)");
  c->add_flag("--quiet", a.quiet, "No progress on stderr");
}

[[noreturn]] void usage_error(const std::string& what) { throw CLI::ValidationError(what); }

void validate(const Args& a) {
  if (!(a.damping >= 0) || !std::isfinite(a.damping)) usage_error("--damping must be a finite number >= 0, got " + std::to_string(a.damping));
  if (a.mc_samples < 1) usage_error("--mc-samples must be >= 1, got " + std::to_string(a.mc_samples));
  if (a.batch < 0) usage_error("--batch must be >= 1, got " + std::to_string(a.batch));
  if (a.curvature_batch < 0) usage_error("--curvature-batch must be >= 1, got " + std::to_string(a.curvature_batch));
  if (!(a.cg_tol > 0 && a.cg_tol < 1)) usage_error("--cg-tol must be in (0, 1), got " + std::to_string(a.cg_tol));
  if (a.cg_max_iters < 1) usage_error("--cg-max-iters must be >= 1, got " + std::to_string(a.cg_max_iters));
  if (a.threads < 0) usage_error("--threads must be >= 1, or 0 for all cores; got " + std::to_string(a.threads));
  if (a.dtype != "float32" && a.dtype != "float64") usage_error("--dtype must be float32 or float64, got \"" + a.dtype + "\"");
  if (a.max_memory_gb < 0) usage_error("--max-memory must be > 0");
  try {
    fisher_kind_from_string(a.fisher);
  } catch (const std::invalid_argument& e) {
    usage_error(std::string("--fisher: ") + e.what());
  }
  try {
    preconditioner_from_string(a.preconditioner);
  } catch (const std::invalid_argument& e) {
    usage_error(std::string("--preconditioner: ") + e.what());
  }
}

FisherOptions fisher_options(const Args& a) {
  FisherOptions f;
  f.kind = fisher_kind_from_string(a.fisher);
  f.mc_samples = a.mc_samples;
  f.damping = a.damping;
  f.seed = a.seed;
  f.num_threads = a.threads;
  return f;
}

ModelFile default_model() {
  ModelFile m;
  m.spec.input_shape = {1, 28, 28};
  m.spec.layers = {LayerSpec::flatten(), LayerSpec::linear(784, 256), LayerSpec::activation(LayerType::tanh),
                   LayerSpec::linear(256, 256), LayerSpec::activation(LayerType::tanh), LayerSpec::linear(256, 10)};
  m.likelihood = LikelihoodKind::categorical;
  return m;
}

template <typename Scalar>
struct Problem {
  ModelFile file;
  std::unique_ptr<Sequential<Scalar>> model;
  Vec<Scalar> theta;
  Dataset<Scalar> data;
  bool embedded = false;
  std::string data_label, model_label, params_label;
  std::size_t estimate = 0;  // bytes, from estimate_solve_memory
};

template <typename Scalar>
Problem<Scalar> load_problem(Args& a, bool allow_default, const Progress& progress, Index top_k) {
  Problem<Scalar> p;
  if (a.model.empty() && a.data.empty() && allow_default) {
    p.embedded = true;
    p.file = default_model();
    a.data = kDefaultDataDir;
    if (a.batch == 0) a.batch = kDefaultBatch;
    p.model_label = "embedded MLP 784-256-256-10 (tanh)";
    std::FILE* f = std::fopen((std::string(kDefaultDataDir) + "/train-images-idx3-ubyte.gz").c_str(), "rb");
    if (!f)
      throw std::invalid_argument(std::string(kDefaultDataDir) +
                                  ": Fashion-MNIST is not installed; install it with `apt-get install dataset-fashion-mnist` "
                                  "(or `bash scripts/install-deps.sh`), or pass --model and --data");
    std::fclose(f);
  } else {
    if (a.model.empty()) usage_error("--model is required" + std::string(allow_default ? " with --data (omit both for the embedded default)" : ""));
    if (a.data.empty()) usage_error("--data is required" + std::string(allow_default ? " with --model (omit both for the embedded default)" : ""));
    p.file = read_model_spec(a.model);
    p.model_label = a.model;
  }
  p.model = std::make_unique<Sequential<Scalar>>(p.file.spec);
  const Sequential<Scalar>& model = *p.model;

  p.data = load_dataset<Scalar>(a.data, p.file.spec.input_shape, p.file.likelihood, model.output_size(), Split::train,
                                a.batch);
  p.data_label = a.data;
  if (a.curvature_batch > p.data.size())
    usage_error("--curvature-batch " + std::to_string(a.curvature_batch) + " exceeds the batch of " +
                std::to_string(p.data.size()) + " samples");

  // Refuse, before the operators allocate anything, a run whose estimate (from the real sample count) does
  // not fit.
  const MemoryEstimate mem = estimate_solve_memory(p.file.spec, p.data.size(), a.curvature_batch, sizeof(Scalar),
                                                   fisher_options(a), top_k, num_threads(),
                                                   a.preconditioner == "diagonal");
  p.estimate = mem.total;
  const std::size_t limit = a.max_memory_gb > 0 ? static_cast<std::size_t>(a.max_memory_gb * 1e9) : available_memory_bytes();
  if (limit > 0 && mem.total > limit)
    throw std::invalid_argument("this run needs about " + format_bytes(double(mem.total)) + " but " +
                                (a.max_memory_gb > 0 ? "--max-memory allows " : "only ") + format_bytes(double(limit)) +
                                (a.max_memory_gb > 0 ? "" : " are available") + " (" + mem.report() + ")");

  if (a.weights.empty()) {
    p.theta = init_parameters(model, a.seed);
    p.params_label = "PyTorch-style initialization, seed " + std::to_string(a.seed);
  } else {
    std::string conversion;
    p.theta = load_parameters<Scalar>(a.weights, model, &conversion);
    p.params_label = a.weights;
    if (!conversion.empty()) std::fprintf(stderr, "note: %s: %s\n", a.weights.c_str(), conversion.c_str());
  }
  progress.line("model %s: %lld parameters (%s); data %s: %lld samples; estimated memory %s", p.model_label.c_str(),
                static_cast<long long>(model.num_params()), p.params_label.c_str(), p.data_label.c_str(),
                static_cast<long long>(p.data.size()), format_bytes(double(mem.total)).c_str());
  return p;
}

DType out_dtype(const Args& a) { return a.dtype == "float64" ? DType::F64 : DType::F32; }

std::string format_eigenvalues(const Vec<double>& ev) {
  std::string s;
  char buf[32];
  for (Index i = 0; i < ev.size(); ++i) {
    std::snprintf(buf, sizeof buf, "%s%.6e", i ? " " : "", ev[i]);
    s += buf;
  }
  return s;
}

nlohmann::ordered_json spectrum_json(const SpectrumResult& s) {
  nlohmann::ordered_json j;
  j["eigenvalues"] = std::vector<double>(s.eigenvalues.data(), s.eigenvalues.data() + s.eigenvalues.size());
  j["matvecs"] = s.matvecs;
  j["converged"] = s.converged;
  j["status"] = s.status;
  j["time_s"] = s.time_s;
  return j;
}

nlohmann::ordered_json condition_json(const ConditionEstimate& c) {
  nlohmann::ordered_json j;
  auto num = [](double v) { return std::isfinite(v) ? nlohmann::ordered_json(v) : nlohmann::ordered_json(nullptr); };
  j["condition_number"] = num(c.condition_number);
  j["lambda_max"] = num(c.lambda_max);
  j["lambda_min"] = num(c.lambda_min);
  j["exact"] = c.exact_min;
  j["kind"] = to_string(c.kind);
  j["lambda_min_error"] = num(c.lambda_min_error);
  j["method"] = c.method;
  return j;
}

void print_condition(const ConditionEstimate& c) {
  std::printf("condition number of F + lambda*I: %.6e  (lambda_max %.6e, lambda_min %.6e; %s)\n", c.condition_number,
              c.lambda_max, c.lambda_min, c.method.c_str());
}

SpectrumOptions spectrum_options(const Progress& progress) {
  SpectrumOptions so;
  so.tolerance = 1e-8;
  so.on_product = [&progress](Index n) {
    if (n % 25 == 0) progress.line("lanczos: %lld products", static_cast<long long>(n));
  };
  return so;
}

template <typename Scalar>
int run_solve(Args& a) {
  const Progress progress(a.quiet);
  const bool embedded = a.model.empty() && a.data.empty();
  const Index k = embedded && a.spectrum == 0 ? 10 : a.spectrum;  // the embedded default reports its top 10
  Problem<Scalar> p = load_problem<Scalar>(a, true, progress, k);
  NaturalGradientOptions opt;
  opt.fisher = fisher_options(a);
  opt.curvature_batch = a.curvature_batch;
  opt.cg.relative_tolerance = a.cg_tol;
  opt.cg.max_iterations = a.cg_max_iters;
  // A line for the first iterations, then one at least every 2 s of work, with an estimate of the time left
  // from the residual's recent rate of decrease (log-linear) and the iteration limit. SIGINT / SIGTERM stop
  // CG at the end of the iteration.
  double last_line = -1e9, last_rel = 1;
  Index last_i = 0;
  opt.cg.callback = [&](const CgIterationInfo& info) {
    const double t = progress.elapsed();
    if (info.iteration <= 3 || t - last_line >= 2.0) {
      const double per_iter = info.elapsed_s / double(info.iteration);
      const double rate = info.iteration > last_i && info.relative_residual > 0 && last_rel > 0
                              ? std::log(last_rel / info.relative_residual) / double(info.iteration - last_i)
                              : 0;
      double left = double(a.cg_max_iters - info.iteration);
      if (rate > 0) left = std::min(left, std::log(info.relative_residual / a.cg_tol) / rate);
      progress.line("cg %4lld  |r|/|b| = %.3e  phi = % .6e  %.2f s/iteration, eta %.0f s", static_cast<long long>(info.iteration),
                    info.relative_residual, info.quadratic_model, per_iter, std::max(0.0, left) * per_iter);
      last_line = t;
      last_rel = info.relative_residual;
      last_i = info.iteration;
    }
    return g_signal ? CallbackResult::stop : CallbackResult::keep_going;
  };
  opt.on_gradient = [&](double loss, double gnorm) {
    progress.line("loss %.8f, gradient norm %.6e; solving (F + lambda I) d = g", loss, gnorm);
  };
  opt.preconditioner = preconditioner_from_string(a.preconditioner);
  opt.spectrum_top_k = std::min<Index>(k, p.model->num_params() - 1);
  opt.spectrum = spectrum_options(progress);
  opt.condition_number = k > 0;
  const int threads = num_threads();
  std::printf("natgrad solve: %s (%lld parameters, %s), %s (%lld samples, curvature on %lld), fisher %s, damping %g, "
              "%s, %d threads, parameters: %s\n",
              p.model_label.c_str(), static_cast<long long>(p.model->num_params()), to_string(p.file.likelihood),
              p.data_label.c_str(), static_cast<long long>(p.data.size()),
              static_cast<long long>(a.curvature_batch > 0 ? a.curvature_batch : p.data.size()), a.fisher.c_str(),
              a.damping, a.dtype.c_str(), threads, p.params_label.c_str());
  progress.line("forward pass over %lld samples", static_cast<long long>(p.data.size()));
  std::signal(SIGINT, on_signal);
  std::signal(SIGTERM, on_signal);
  std::fflush(stdout);
  const auto r = solve_natural_gradient(*p.model, p.theta, p.file.likelihood, p.data, opt);
  if (!r.ok()) throw std::runtime_error(r.failure + "; nothing written");
  if (!r.direction.allFinite())
    throw std::runtime_error("the natural-gradient direction is not finite (" + r.cg.message + "); nothing written");
  const bool interrupted = g_signal != 0 && r.cg.termination == CgTermination::user_stop;
  std::printf("loss: %.8f\ngradient norm: %.6e\n%s\n", r.loss, r.gradient_norm, r.cg.brief_report().c_str());
  if (interrupted)
    std::printf("interrupted by %s at CG iteration %lld: writing the best iterate so far\n",
                g_signal == SIGINT ? "SIGINT" : "SIGTERM", static_cast<long long>(r.cg.iterations));
  else if (!r.cg.is_converged())
    std::printf("warning: CG did not converge: %s\n", r.cg.message.c_str());
  if (opt.spectrum_top_k > 0)
    std::printf("top-%lld eigenvalues of F: %s  (%lld products, %s)\n", static_cast<long long>(opt.spectrum_top_k),
                format_eigenvalues(r.spectrum.eigenvalues).c_str(), static_cast<long long>(r.spectrum.matvecs),
                r.spectrum.status.c_str());
  if (r.has_condition) print_condition(r.condition);
  std::printf("timing (s): forward %.3f, gradient %.3f, cg %.3f, spectrum %.3f, total %.3f\n", r.time_forward_s,
              r.time_gradient_s, r.time_cg_s, r.time_spectrum_s, r.time_total_s);
  if (!a.output.empty()) {
    save_parameters(a.output, *p.model, r.direction, out_dtype(a), {{"natgrad", "natural-gradient direction"}});
    std::printf("wrote the direction to %s\n", a.output.c_str());
  }
  if (!a.save_gradient.empty()) {
    save_parameters(a.save_gradient, *p.model, r.gradient, out_dtype(a), {{"natgrad", "gradient"}});
    std::printf("wrote the gradient to %s\n", a.save_gradient.c_str());
  }
  if (!a.report.empty()) {
    nlohmann::ordered_json j;
    j["command"] = "solve";
    j["loss"] = r.loss;
    j["gradient_norm"] = r.gradient_norm;
    j["params"] = p.model->num_params();
    j["samples"] = r.samples;
    j["curvature_samples"] = r.curvature_samples;
    j["fisher"] = a.fisher;
    j["damping"] = a.damping;
    j["dtype"] = a.dtype;
    j["threads"] = threads;
    j["cg"] = {{"iterations", r.cg.iterations},
               {"converged", r.cg.is_converged()},
               {"termination", interrupted ? "interrupted" : to_string(r.cg.termination)},
               {"message", r.cg.message},
               {"relative_residual", r.cg.relative_residual},
               {"recursive_relative_residual", r.cg.recursive_relative_residual},
               {"residual_replacements", r.cg.restarts},
               {"breakdown", to_string(r.cg.breakdown)},
               {"products", r.cg.operator_applications},
               {"returned_iterate", r.cg.returned_iterate},
               {"residual_history", r.cg.residual_history}};
    if (opt.spectrum_top_k > 0) j["spectrum"] = spectrum_json(r.spectrum);
    if (r.has_condition) j["condition"] = condition_json(r.condition);
    j["timing_s"] = {{"forward", r.time_forward_s}, {"gradient", r.time_gradient_s}, {"cg", r.time_cg_s},
                     {"spectrum", r.time_spectrum_s}, {"total", r.time_total_s}};
    write_file_atomically(a.report, j.dump(2) + "\n");
  }
  return interrupted ? 128 + int(g_signal) : 0;
}

template <typename Scalar>
int run_fvp(Args& a) {
  const Progress progress(a.quiet);
  if (a.vector.empty()) usage_error("--vector is required");
  if (a.output.empty()) usage_error("--output is required");
  Problem<Scalar> p = load_problem<Scalar>(a, false, progress, 0);
  const Vec<Scalar> v = load_parameters<Scalar>(a.vector, *p.model);
  const auto t0 = clock_type::now();
  FisherOperator<Scalar> F(*p.model, p.theta, p.file.likelihood, p.data, fisher_options(a));
  if (!F.forward_error().empty()) throw std::runtime_error("forward pass: " + F.forward_error() + "; nothing written");
  Vec<Scalar> y(F.rows());
  F.perform_op(v.data(), y.data());
  const double secs = std::chrono::duration<double>(clock_type::now() - t0).count();
  if (!y.allFinite()) throw std::runtime_error("the Fisher-vector product is not finite; nothing written");
  save_parameters(a.output, *p.model, y, out_dtype(a), {{"natgrad", "Fisher-vector product"}});
  std::printf("natgrad fvp: |v| = %.6e, |(F + %g I) v| = %.6e, v^T (F + %g I) v = %.6e, %.3f s; wrote %s\n",
              double(v.norm()), a.damping, double(y.norm()), a.damping,
              double(v.template cast<double>().dot(y.template cast<double>())), secs, a.output.c_str());
  if (!a.report.empty()) {
    nlohmann::ordered_json j;
    j["command"] = "fvp";
    j["params"] = p.model->num_params();
    j["samples"] = p.data.size();
    j["fisher"] = a.fisher;
    j["damping"] = a.damping;
    j["vector_norm"] = double(v.norm());
    j["product_norm"] = double(y.norm());
    j["timing_s"] = {{"total", secs}};
    write_file_atomically(a.report, j.dump(2) + "\n");
  }
  return 0;
}

template <typename Scalar>
int run_spectrum(Args& a) {
  const Progress progress(a.quiet);
  if (a.top < 1) usage_error("--top must be >= 1, got " + std::to_string(a.top));
  Problem<Scalar> p = load_problem<Scalar>(a, false, progress, a.top);
  if (a.top >= p.model->num_params())
    usage_error("--top " + std::to_string(a.top) + " must be below the parameter count " + std::to_string(p.model->num_params()));
  const auto t0 = clock_type::now();
  FisherOptions fo = fisher_options(a);
  fo.damping = 0;
  FisherOperator<Scalar> F(*p.model, p.theta, p.file.likelihood,
                           a.curvature_batch > 0 ? p.data.head(a.curvature_batch) : p.data, fo);
  if (!F.forward_error().empty()) throw std::runtime_error("forward pass: " + F.forward_error() + "; nothing written");
  SpectrumOptions so = spectrum_options(progress);
  so.num_eigenvalues = a.top;
  const SpectrumResult s = top_eigenvalues(F, so);
  const double secs = std::chrono::duration<double>(clock_type::now() - t0).count();
  if (!s.converged) throw std::runtime_error("Lanczos failed: " + s.status);
  std::printf("natgrad spectrum: %lld parameters, %lld samples, fisher %s\n", static_cast<long long>(F.rows()),
              static_cast<long long>(F.num_samples()), a.fisher.c_str());
  std::printf("top-%lld eigenvalues of F: %s\n", static_cast<long long>(a.top), format_eigenvalues(s.eigenvalues).c_str());
  std::printf("%lld products, %lld restarts, %.3f s\n", static_cast<long long>(s.matvecs), static_cast<long long>(s.restarts), secs);
  if (!a.report.empty()) {
    nlohmann::ordered_json j;
    j["command"] = "spectrum";
    j["params"] = F.rows();
    j["samples"] = F.num_samples();
    j["fisher"] = a.fisher;
    j["spectrum"] = spectrum_json(s);
    j["timing_s"] = {{"total", secs}};
    write_file_atomically(a.report, j.dump(2) + "\n");
  }
  return 0;
}

int run_info(Args& a) {
  if (a.model.empty()) usage_error("--model is required");
  const ModelFile m = read_model_spec(a.model);
  const Sequential<double> model(m.spec);
  std::printf("model %s: input %s, likelihood %s\n", a.model.c_str(), shape_to_string(m.spec.input_shape).c_str(),
              to_string(m.likelihood));
  std::printf("  %-5s %-11s %-18s %12s\n", "index", "type", "output shape", "parameters");
  for (std::size_t i = 0; i < model.num_layers(); ++i)
    std::printf("  %-5zu %-11s %-18s %12lld\n", i, model.layer(i).name(), shape_to_string(model.layer(i).output_shape()).c_str(),
                static_cast<long long>(model.layer(i).num_params()));
  std::printf("total parameters: %lld\n", static_cast<long long>(model.num_params()));
  if (!a.weights.empty()) {
    const Vec<double> theta = load_parameters<double>(a.weights, model);
    std::printf("weights %s: all %zu tensors present with the model's shapes, |theta| = %.6e\n", a.weights.c_str(),
                model.named_params().size(), theta.norm());
  }
  const Index batch = a.batch > 0 ? a.batch : kDefaultBatch;
  const std::size_t bytes = a.dtype == "float64" ? 8 : 4;
  const MemoryEstimate mem = estimate_solve_memory(m.spec, batch, a.curvature_batch, bytes, fisher_options(a), a.spectrum,
                                                   num_threads());
  std::printf("memory for a solve at batch %lld (%s): %s\n", static_cast<long long>(batch), a.dtype.c_str(),
              mem.report().c_str());
  return 0;
}

}  // namespace

int run(int argc, char** argv, bool solve_only) {
  Args a;
  CLI::App app(solve_only ? "solve-natural-gradient: the natural gradient d = (F + lambda*I)^-1 g, matrix-free. "
                            "Without --model/--data it runs the embedded default (MLP on Fashion-MNIST)."
                          : "natgrad: natural gradients without forming the Fisher matrix");
  app.set_version_flag("--version", "natgrad 0.1.0");
  CLI::App* solve = solve_only ? &app : app.add_subcommand("solve", "Solve (F + lambda*I) d = g; without --model/--data, the embedded default");
  CLI::App* fvp = solve_only ? nullptr : app.add_subcommand("fvp", "Fisher-vector product (F + lambda*I) v");
  CLI::App* spectrum = solve_only ? nullptr : app.add_subcommand("spectrum", "Top-k eigenvalues of F by Lanczos");
  CLI::App* info = solve_only ? nullptr : app.add_subcommand("info", "Layers, shapes, parameter counts and memory estimate");
  a.damping = 1e-3;
  add_common(solve, a, "1e-3");
  solve->add_option("--output", a.output, "Write the direction d here (safetensors, the weights' names and shapes)");
  solve->add_option("--save-gradient", a.save_gradient, "Write the gradient g here");
  solve->add_option("--spectrum", a.spectrum, "Also report the top-K eigenvalues of F and the condition number of F + lambda*I (default 0; 10 for the embedded default)");
  solve->add_option("--report", a.report, "Write a JSON report here");
  if (!solve_only) {
    add_common(fvp, a, "0 for fvp");
    fvp->add_option("--vector", a.vector, "The vector v (safetensors, the weights' names and shapes)");
    fvp->add_option("--output", a.output, "Write (F + lambda*I) v here");
    fvp->add_option("--report", a.report, "Write a JSON report here");
    add_common(spectrum, a, "0 for spectrum");
    spectrum->add_option("--top", a.top, "Number of largest eigenvalues")->capture_default_str();
    spectrum->add_option("--report", a.report, "Write a JSON report here");
    info->add_option("--model", a.model, "Model spec (JSON)");
    info->add_option("--weights", a.weights, "Check these parameters against the model");
    info->add_option("--batch", a.batch, "Batch for the memory estimate (default 1000)");
    info->add_option("--curvature-batch", a.curvature_batch, "Curvature batch for the memory estimate");
    info->add_option("--dtype", a.dtype, "float32 or float64")->capture_default_str();
    info->add_option("--spectrum", a.spectrum, "Top-K spectrum to account for");
    info->add_option("--threads", a.threads, "Threads to account for");
    info->add_flag("--quiet", a.quiet, "Accepted for uniformity; info prints no progress");
    app.require_subcommand(1);
  }
  try {
    app.parse(argc, argv);
    // 0 is the "all samples" default internally; asked for explicitly it is an error.
    for (CLI::App* c : {solve, fvp, spectrum, info})
      if (c && c->parsed()) {
        if (c->count("--batch") && a.batch < 1) usage_error("--batch must be >= 1, got " + std::to_string(a.batch));
        if (c->count("--curvature-batch") && a.curvature_batch < 1)
          usage_error("--curvature-batch must be >= 1, got " + std::to_string(a.curvature_batch));
      }
    // Options every command accepts for uniformity but only solve uses: refused where they would be ignored.
    for (CLI::App* c : {fvp, spectrum}) {
      if (!c || !c->parsed()) continue;
      std::vector<const char*> unused = {"--cg-tol", "--cg-max-iters", "--preconditioner"};
      if (c == fvp) unused.push_back("--curvature-batch");
      for (const char* o : unused)
        if (c->count(o))
          usage_error(std::string(o) + " is not used by `natgrad " + c->get_name() + "` (it is an option of `natgrad solve`)");
    }
    if (fvp && fvp->parsed() && fvp->count("--damping") == 0) a.damping = 0;
    if (spectrum && spectrum->parsed() && spectrum->count("--damping") == 0) a.damping = 0;
    validate(a);
    set_num_threads(a.threads);
    const bool f64 = a.dtype == "float64";
    if (solve_only || solve->parsed()) return f64 ? run_solve<double>(a) : run_solve<float>(a);
    if (fvp->parsed()) return f64 ? run_fvp<double>(a) : run_fvp<float>(a);
    if (spectrum->parsed()) return f64 ? run_spectrum<double>(a) : run_spectrum<float>(a);
    return run_info(a);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::fprintf(stderr, "%s: error: %s (see --help)\n", solve_only ? "solve-natural-gradient" : "natgrad", e.what());
    return 2;
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr,
                 "%s: error: out of memory: an allocation failed although the estimate fit in the available memory "
                 "(see `natgrad info`); nothing written. Lower --batch or --curvature-batch, or use --dtype float32\n",
                 solve_only ? "solve-natural-gradient" : "natgrad");
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s: error: %s\n", solve_only ? "solve-natural-gradient" : "natgrad", e.what());
    return 1;
  }
}

}  // namespace cli
}  // namespace natgrad
