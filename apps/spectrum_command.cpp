#include "commands.h"
#include "density_plot.h"
#include "problem.h"
#include "report.h"

#include <natgrad/curvature/fisher_operator.h>
#include <natgrad/io/parameters_io.h>
#include <natgrad/natural_gradient/damped_condition.h>
#include <natgrad/natural_gradient/module_spectrum.h>
#include <natgrad/solvers/hutchinson_trace.h>
#include <natgrad/solvers/slq_density.h>
#include <natgrad/io/safetensors.h>

#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdio>
#include <stdexcept>

namespace natgrad {
namespace cli {

template <typename Scalar>
int run_spectrum(Args& a, const World& world) {
  const Progress progress(a.quiet);
  if (a.top < 1) usage_error("--top must be >= 1, got " + std::to_string(a.top));
  Problem<Scalar> p = load_problem<Scalar>(a, false, progress, a.top, world);
  if (a.top >= p.model->num_params())
    usage_error("--top " + std::to_string(a.top) + " must be below the parameter count " + std::to_string(p.model->num_params()));
  const auto t0 = clock_type::now();
  FisherOptions fo = fisher_options(a);
  fo.damping = 0;
  Dataset<Scalar> prefix;  // (a conditional between p.data and a temporary would copy p.data)
  if (world.size() == 1 && a.curvature_batch > 0) prefix = p.data.head(a.curvature_batch);
  const bool own = world.size() == 1 ? a.curvature_batch > 0 : p.curvature_total < p.total;
  const Dataset<Scalar>& curvature = !own ? p.data : world.size() == 1 ? prefix : p.curvature;
  FisherOperator<Scalar> F(*p.model, p.theta, p.file.likelihood, curvature, share_options(fo, p, true, world));
  if (!F.forward_error().empty()) throw std::runtime_error("forward pass: " + F.forward_error() + "; nothing written");
  SpectrumOptions so = spectrum_options(progress);
  so.num_eigenvalues = a.top;
  so.compute_eigenvectors = !a.eigenvectors.empty() || a.per_layer;
  const SpectrumResult s = top_eigenvalues(F, so);
  if (!s.converged) throw std::runtime_error("Lanczos failed: " + s.status + "; nothing written");
  // Hutchinson's trace: Rademacher probes keyed by (seed, probe), products counted apart.
  TraceEstimate trace;
  Index trace_products = 0;
  if (a.trace && !a.per_layer) {  // (with --per-layer its probes give the trace too)
    const Index before = F.num_products();
    trace = hutchinson_trace(F, a.probes, a.seed);
    trace_products = F.num_products() - before;
  }
  // The spectral density (SLQ): its probes are keyed by (seed, probe) like the trace's.
  SpectralDensity density;
  double zero_mass = 0;
  if (a.density) {
    const Index before = F.num_products();
    density = slq_density(F, std::min<Index>(a.lanczos_steps, F.rows()), a.probes, a.seed, 400);
    density.matvecs = F.num_products() - before;
    // F has rank ≤ N·C, so much of its spectrum sits at 0: the nodes below 1e-4 λ_max.
    for (std::size_t i = 0; i < density.nodes.size(); ++i)
      if (density.nodes[i] < 1e-4 * s.eigenvalues[0]) zero_mass += density.weights[i];
  }
  ModuleSpectrumResult modules;
  if (a.per_layer) {  // (its probes give the trace too)
    ModuleSpectrumOptions mo;
    mo.probes = a.probes;
    mo.seed = a.seed;
    modules = module_spectrum(F, s.eigenvectors, mo);
    if (a.trace) trace = modules.trace;
  }
  // With --damping λ > 0, the condition number of F + λI (F alone is singular); λ_max is the spectrum's.
  ConditionEstimate condition;
  if (a.damping > 0) condition = damped_condition_number(F, a.damping, s.eigenvalues[0]);
  const double secs = std::chrono::duration<double>(clock_type::now() - t0).count();
  if (!a.plot.empty()) {
    DensityPlot plot;
    plot.nodes = density.nodes;
    plot.weights = density.weights;
    plot.top.assign(s.eigenvalues.data(), s.eigenvalues.data() + s.eigenvalues.size());
    plot.zero_threshold = 1e-4 * s.eigenvalues[0];
    const double n = double(F.rows());
    plot.trace = a.trace ? trace.trace : density.first_moment * n;  // Hutchinson's if asked, else SLQ's
    plot.trace_standard_error = a.trace ? trace.standard_error : density.first_moment_standard_error * n;
    plot.parameters = static_cast<long long>(F.rows());
    plot.title = "Fisher spectrum (SLQ, " + std::to_string(a.probes) + " probes), fisher " + a.fisher;
    write_density_svg(a.plot, plot);
  }
  if (!a.eigenvectors.empty()) {
    save_parameter_stack(a.eigenvectors, *p.model, s.eigenvectors, out_dtype(a),
                         {{"natgrad", "top-" + std::to_string(a.top) + " eigenvectors of F, leading index"}});
  }
  std::printf("natgrad spectrum: %lld parameters, %lld samples, fisher %s%s\n", static_cast<long long>(F.rows()),
              static_cast<long long>(F.total_samples()), a.fisher.c_str(),
              World::has_mpi() ? (", ranks: " + std::to_string(world.size())).c_str() : "");
  std::printf("top-%lld eigenvalues of F: %s\n", static_cast<long long>(a.top), format_eigenvalues(s.eigenvalues).c_str());
  if (a.trace)
    std::printf("trace of F: %.6e +- %.2e (Hutchinson, %lld Rademacher probes, %s)\n", trace.trace,
                trace.standard_error, static_cast<long long>(trace.probes),
                a.per_layer ? "the per-module traces' products" : (std::to_string(trace_products) + " products").c_str());
  if (a.damping > 0) print_condition(condition);
  if (a.density)
    std::printf("spectral density (SLQ, %lld probes x %lld Lanczos steps, %lld products): mean eigenvalue %.6e, "
                "mass at zero (below 1e-4 lambda_max) %.4f\n",
                static_cast<long long>(a.probes), static_cast<long long>(std::min<Index>(a.lanczos_steps, F.rows())),
                static_cast<long long>(density.matvecs), density.first_moment, zero_mass);
  if (a.per_layer) {
    std::printf("per module (diagonal blocks F_ll; traces from %lld shared probes; mass of the top eigenvectors):\n",
                static_cast<long long>(a.probes));
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
  if (!a.plot.empty()) std::printf("wrote the density plot to %s\n", a.plot.c_str());
  if (!a.eigenvectors.empty())
    std::printf("wrote the top-%lld eigenvectors to %s ([%lld, ...] per parameter tensor)\n",
                static_cast<long long>(a.top), a.eigenvectors.c_str(), static_cast<long long>(a.top));
  if (!a.report.empty()) {
    nlohmann::ordered_json j;
    j["command"] = "spectrum";
    j["params"] = F.rows();
    j["samples"] = F.total_samples();
    j["ranks"] = world.size();
    j["fisher"] = a.fisher;
    j["spectrum"] = spectrum_json(s);
    if (a.trace)
      j["trace"] = {{"estimate", trace.trace}, {"standard_error", trace.standard_error}, {"probes", trace.probes},
                    {"products", trace_products}};
    if (a.trace && a.per_layer) j["trace"]["shared_with_per_layer"] = true;
    if (a.damping > 0) {
      j["damping"] = a.damping;
      j["condition"] = condition_json(condition);
    }
    if (a.density)
      j["density"] = {{"probes", a.probes},
                      {"lanczos_steps", std::min<Index>(a.lanczos_steps, F.rows())},
                      {"products", density.matvecs},
                      {"nodes", density.nodes},
                      {"weights", density.weights},
                      {"mass_at_zero", zero_mass},
                      {"mean_eigenvalue", density.first_moment},
                      {"mean_eigenvalue_standard_error", density.first_moment_standard_error},
                      {"sigma", density.sigma},
                      {"grid", density.grid},
                      {"density", density.density}};
    if (a.per_layer) {
      j["per_layer"] = per_module_json(modules.modules);
      j["per_layer_trace_products"] = modules.trace_products;
    }
    j["products"] = F.num_products();
    j["timing_s"] = {{"total", secs}};
    write_file_atomically(a.report, j.dump(2) + "\n");
  }
  return 0;
}

template int run_spectrum<float>(Args&, const World&);
template int run_spectrum<double>(Args&, const World&);

}  // namespace cli
}  // namespace natgrad
