#include "commands.h"
#include "density_plot.h"
#include "problem.h"
#include "signals.h"
#include "report.h"

#include <natgrad/core/interrupted.h>
#include <natgrad/curvature/fisher_operator.h>
#include <natgrad/io/parameters_io.h>
#include <natgrad/io/safetensors.h>
#include <natgrad/natural_gradient/damped_condition.h>
#include <natgrad/natural_gradient/module_spectrum.h>
#include <natgrad/solvers/hutchinson_trace.h>
#include <natgrad/solvers/slq_density.h>

#include <nlohmann/json.hpp>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace natgrad {
namespace cli {

namespace {

std::string join(const std::vector<std::string>& parts) {
  std::string s;
  for (const std::string& p : parts) s += (s.empty() ? "" : ", ") + p;
  return s;
}

}  // namespace

template <typename Scalar>
int run_spectrum(Args& a, const World& world) {
  const Progress progress(a.quiet);
  install_signal_handlers(!a.quiet && world.root());
  if (a.top < 1) usage_error("--top must be >= 1, got " + std::to_string(a.top));
  if (a.exact) return run_exact_spectrum<Scalar>(a, world);
  Problem<Scalar> p = load_problem<Scalar>(a, false, progress, a.top, world);
  if (a.top >= p.model->num_params())
    usage_error("--top " + std::to_string(a.top) + " must be below the parameter count " +
                std::to_string(p.model->num_params()) +
                " (Lanczos finds at most P - 1 eigenvalues of a P x P operator; for all of them form F densely)");
  const auto t0 = clock_type::now();
  // A signal stops the run at the next chunk of work; what was complete is written, the rest named here.
  std::vector<std::string> skipped;
  auto interrupted_during = [&](const std::string& what) {
    std::printf("interrupted by %s during %s: nothing computed; nothing written\n", signal_name(), what.c_str());
    return interrupted_status();
  };
  if (stop_agreed(world)) return interrupted_during("loading");
  FisherOptions fo = fisher_options(a);
  fo.damping = 0;
  watch_fisher(fo, progress);
  Dataset<Scalar> prefix;  // (a conditional between p.data and a temporary would copy p.data)
  if (world.size() == 1 && a.curvature_batch > 0) prefix = p.data.head(a.curvature_batch);
  const bool own = world.size() == 1 ? a.curvature_batch > 0 : p.curvature_total < p.total;
  const Dataset<Scalar>& curvature = !own ? p.data : world.size() == 1 ? prefix : p.curvature;
  std::unique_ptr<FisherOperator<Scalar>> op;
  try {
    op = std::make_unique<FisherOperator<Scalar>>(*p.model, p.theta, p.file.likelihood, curvature,
                                                  share_options(fo, p, true, world));
  } catch (const Interrupted&) {
    return interrupted_during("the forward pass");
  }
  const FisherOperator<Scalar>& F = *op;
  if (!F.forward_error().empty()) throw std::runtime_error("forward pass: " + F.forward_error() + "; nothing written");
  SpectrumOptions so = spectrum_options(progress, world);
  so.num_eigenvalues = a.top;
  so.compute_eigenvectors = !a.eigenvectors.empty() || a.per_layer;
  progress.line("lanczos: the top %lld eigenvalues", static_cast<long long>(a.top));
  const SpectrumResult s = top_eigenvalues(F, so);
  if (s.termination == SpectrumTermination::interrupted)
    return interrupted_during("Lanczos (after " + std::to_string(s.matvecs) + " products)");
  if (!s.converged) throw std::runtime_error("Lanczos failed: " + s.status + "; nothing written");
  const SpectrumCallback callback = spectrum_callback(progress, world);
  auto stopped = [&] { return stop_agreed(world); };
  // Hutchinson's trace: Rademacher probes keyed by (seed, probe), products counted apart.
  TraceEstimate trace;
  Index trace_products = 0;
  if (a.trace && !a.per_layer) {  // (with --per-layer its probes give the trace too)
    if (stopped()) {
      skipped.push_back("the trace");
    } else {
      const Index before = F.num_products();
      trace = hutchinson_trace(F, a.probes, a.seed, callback);
      trace_products = F.num_products() - before;
    }
  }
  // The spectral density (SLQ): its probes are keyed by (seed, probe) like the trace's.
  SpectralDensity density;
  double zero_mass = 0;
  const Index steps = std::min<Index>(a.lanczos_steps, F.rows());
  if (a.density) {
    if (stopped()) {
      skipped.push_back("the density");
    } else {
      const Index before = F.num_products();
      density = slq_density(F, steps, a.probes, a.seed, 400, 0, callback);
      density.matvecs = F.num_products() - before;
      // F has rank ≤ N·C, so much of its spectrum sits at 0: the nodes below 1e-4 λ_max.
      for (std::size_t i = 0; i < density.nodes.size(); ++i)
        if (density.nodes[i] < 1e-4 * s.eigenvalues[0]) zero_mass += density.weights[i];
    }
  }
  ModuleSpectrumResult modules;
  if (a.per_layer) {
    if (stopped()) {
      skipped.push_back("the per-module spectrum");
    } else {
      ModuleSpectrumOptions mo;
      mo.probes = a.probes;
      mo.seed = a.seed;
      mo.callback = callback;
      modules = module_spectrum(F, s.eigenvectors, mo);
      if (a.trace) trace = modules.trace;
      Index missing = 0;
      for (const ModuleSpectrum& m : modules.modules) missing += std::isnan(m.top_eigenvalue) ? 1 : 0;
      if (modules.interrupted && missing > 0)
        skipped.push_back("the top eigenvalue of " + std::to_string(missing) + " of " +
                          std::to_string(modules.modules.size()) + " module blocks");
    }
  }
  // With --damping λ > 0, the condition number of F + λI (F alone is singular); λ_max is the spectrum's.
  ConditionEstimate condition;
  const bool has_condition = a.damping > 0 && !stopped();
  if (a.damping > 0 && !has_condition) skipped.push_back("the condition number");
  if (has_condition) condition = damped_condition_number(F, a.damping, s.eigenvalues[0]);
  const bool interrupted = stop_agreed(world);
  const double secs = std::chrono::duration<double>(clock_type::now() - t0).count();
  const bool plot = !a.plot.empty() && density.probes > 0;
  if (!a.plot.empty() && !plot) skipped.push_back("the plot");
  if (plot) {
    DensityPlot picture;
    picture.nodes = density.nodes;
    picture.weights = density.weights;
    picture.top.assign(s.eigenvalues.data(), s.eigenvalues.data() + s.eigenvalues.size());
    picture.zero_threshold = 1e-4 * s.eigenvalues[0];
    const double n = double(F.rows());
    const bool hutchinson = a.trace && trace.probes >= 2;
    picture.trace = hutchinson ? trace.trace : density.first_moment * n;  // Hutchinson's if asked, else SLQ's
    picture.trace_standard_error = hutchinson ? trace.standard_error : density.first_moment_standard_error * n;
    picture.parameters = static_cast<long long>(F.rows());
    picture.title = "Fisher spectrum (SLQ, " + std::to_string(density.probes) + " probes), fisher " + a.fisher;
    write_density_svg(a.plot, picture);
  }
  if (!a.eigenvectors.empty()) {
    save_parameter_stack(a.eigenvectors, *p.model, s.eigenvectors, out_dtype(a),
                         {{"natgrad", "top-" + std::to_string(a.top) + " eigenvectors of F, leading index"}});
  }
  std::printf("natgrad spectrum: %lld parameters, %lld samples, fisher %s%s\n", static_cast<long long>(F.rows()),
              static_cast<long long>(F.total_samples()), a.fisher.c_str(),
              World::has_mpi() ? (", ranks: " + std::to_string(world.size())).c_str() : "");
  std::printf("top-%lld eigenvalues of F: %s\n", static_cast<long long>(a.top), format_eigenvalues(s.eigenvalues).c_str());
  auto of_probes = [&](Index done) {
    return done < a.probes ? std::to_string(done) + " of " + std::to_string(a.probes) : std::to_string(done);
  };
  if (a.trace && trace.probes >= 2)
    std::printf("trace of F: %.6e +- %.2e (Hutchinson, %s Rademacher probes, %s)\n", trace.trace,
                trace.standard_error, of_probes(trace.probes).c_str(),
                a.per_layer ? "the per-module traces' products" : (std::to_string(trace_products) + " products").c_str());
  else if (a.trace && (trace.interrupted || modules.trace.interrupted))
    skipped.push_back("the trace (fewer than 2 probes done)");
  if (has_condition) print_condition(condition);
  if (a.density && density.probes > 0)
    std::printf("spectral density (SLQ, %s probes x %lld Lanczos steps, %lld products): mean eigenvalue %.6e, "
                "mass at zero (below 1e-4 lambda_max) %.4f\n",
                of_probes(density.probes).c_str(), static_cast<long long>(steps),
                static_cast<long long>(density.matvecs), density.first_moment, zero_mass);
  else if (a.density && density.interrupted)
    skipped.push_back("the density (no probe done)");
  if (a.per_layer && !modules.modules.empty()) {
    std::printf("per module (diagonal blocks F_ll; traces from %s shared probes; mass of the top eigenvectors):\n",
                of_probes(modules.trace_products).c_str());
    std::printf("  %-28s %10s %13s %24s  %s\n", "module", "parameters", "top eig F_ll", "trace F_ll", "eigenvector mass");
    for (const ModuleSpectrum& m : modules.modules) {
      std::string mass;
      for (double x : m.eigenvector_mass) mass += (mass.empty() ? "" : " ") + std::to_string(x).substr(0, 5);
      std::printf("  %-28s %10lld %13.6e %13.6e +- %8.2e  %s\n", m.module.c_str(), static_cast<long long>(m.params),
                  m.top_eigenvalue, m.trace, m.trace_standard_error, mass.c_str());
    }
  }
  std::printf("%lld products, %lld restarts, %.3f s\n", static_cast<long long>(F.num_products()),
              static_cast<long long>(s.restarts), secs);
  if (plot)
    std::printf("wrote the density plot to %s%s\n", a.plot.c_str(),
                density.interrupted ? " (from the probes done)" : "");
  if (!a.eigenvectors.empty())
    std::printf("wrote the top-%lld eigenvectors to %s ([%lld, ...] per parameter tensor)\n",
                static_cast<long long>(a.top), a.eigenvectors.c_str(), static_cast<long long>(a.top));
  if (interrupted)
    std::printf("interrupted by %s: wrote what was complete%s%s\n", signal_name(), skipped.empty() ? "" : "; skipped ",
                join(skipped).c_str());
  if (!a.report.empty()) {
    nlohmann::ordered_json j;
    j["command"] = "spectrum";
    j["params"] = F.rows();
    j["samples"] = F.total_samples();
    j["ranks"] = world.size();
    j["fisher"] = a.fisher;
    j["spectrum"] = spectrum_json(s);
    if (a.trace && trace.probes >= 2)
      j["trace"] = {{"estimate", trace.trace}, {"standard_error", trace.standard_error}, {"probes", trace.probes},
                    {"products", trace_products}};
    if (a.trace && a.per_layer && trace.probes >= 2) j["trace"]["shared_with_per_layer"] = true;
    if (has_condition) {
      j["damping"] = a.damping;
      j["condition"] = condition_json(condition);
    }
    if (a.density && density.probes > 0)
      j["density"] = {{"probes", density.probes},
                      {"lanczos_steps", steps},
                      {"products", density.matvecs},
                      {"nodes", density.nodes},
                      {"weights", density.weights},
                      {"mass_at_zero", zero_mass},
                      {"mean_eigenvalue", density.first_moment},
                      {"mean_eigenvalue_standard_error", density.first_moment_standard_error},
                      {"sigma", density.sigma},
                      {"grid", density.grid},
                      {"density", density.density}};
    if (a.per_layer && !modules.modules.empty()) {
      j["per_layer"] = per_module_json(modules.modules);
      j["per_layer_trace_products"] = modules.trace_products;
    }
    j["products"] = F.num_products();
    if (interrupted) j["interrupted"] = {{"signal", signal_name()}, {"skipped", skipped}};
    j["timing_s"] = {{"total", secs}};
    write_file_atomically(a.report, j.dump(2) + "\n");
  }
  return interrupted ? interrupted_status() : 0;
}

template int run_spectrum<float>(Args&, const World&);
template int run_spectrum<double>(Args&, const World&);

}  // namespace cli
}  // namespace natgrad
