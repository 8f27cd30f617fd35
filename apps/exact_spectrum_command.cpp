// natgrad spectrum --exact: every nonzero eigenvalue of F from the Gram of the curvature batch's rows
// (curvature/fisher_gram.h) — the top K printed, the exact trace and mass at zero, the exact histogram as the
// density plot, eigenvectors on request.
#include "commands.h"
#include "density_plot.h"
#include "problem.h"
#include "report.h"
#include "signals.h"

#include <natgrad/curvature/fisher_gram.h>
#include <natgrad/io/parameters_io.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <stdexcept>
#include <string>

#include "core/format_number.h"

namespace natgrad {
namespace cli {

template <typename Scalar>
int run_exact_spectrum(Args& a, const World& world) {
  const Progress progress(a.quiet);
  Problem<Scalar> p = load_problem<Scalar>(a, false, progress, a.top, world);
  const auto t0 = clock_type::now();
  FisherOptions fo = fisher_options(a);
  fo.damping = 0;
  watch_fisher(fo, progress);
  // This rank's share of the curvature batch (the whole of it in one process), as `spectrum` takes it.
  Dataset<Scalar> prefix;
  if (world.size() == 1 && a.curvature_batch > 0) prefix = p.data.head(a.curvature_batch);
  const bool own = world.size() == 1 ? a.curvature_batch > 0 : p.curvature_total < p.total;
  const Dataset<Scalar>& curvature = !own ? p.data : world.size() == 1 ? prefix : p.curvature;
  const Index N = world.size() == 1 ? curvature.size() : p.curvature_total;
  const Index R = FisherGram<Scalar>::rows_for(*p.model, N, fo.kind, fo.mc_samples);
  const GramFootprint need = FisherGram<Scalar>::required_bytes(*p.model, N, fo);
  progress.line("the Gram of %lld rows (%s) on %lld samples", static_cast<long long>(R),
                detail::format_bytes(double(need.total())).c_str(), static_cast<long long>(N));
  FisherOperator<Scalar> F(*p.model, p.theta, p.file.likelihood, curvature, share_options(fo, p, true, world));
  if (!F.forward_error().empty()) throw std::runtime_error("forward pass: " + F.forward_error() + "; nothing written");
  const FisherGram<Scalar> gram(F);
  progress.line("formed in %.2f s; eigendecomposition of %lld x %lld", gram.form_seconds(), static_cast<long long>(R),
                static_cast<long long>(R));
  const Index want_vectors = a.eigenvectors.empty() ? 0 : a.top;
  const GramSpectrum s = gram.spectrum(want_vectors);
  if (s.eigenvalues.size() == 0) throw std::runtime_error("F is zero on this batch; nothing written");
  const Index k = std::min<Index>(a.top, s.eigenvalues.size());
  Vec<double> top = Vec<double>::Zero(a.top);  // beyond the rank, F's eigenvalues are 0
  top.head(k) = s.eigenvalues.head(k);
  const double P = double(F.rows()), zero_mass = double(s.zero_count) / P;
  const double secs = std::chrono::duration<double>(clock_type::now() - t0).count();
  std::printf("natgrad spectrum: %lld parameters, %lld samples, fisher %s, exact (the Gram of %lld rows)%s\n",
              static_cast<long long>(F.rows()), static_cast<long long>(N), a.fisher.c_str(), static_cast<long long>(R),
              World::has_mpi() ? (", ranks: " + std::to_string(world.size())).c_str() : "");
  std::printf("top-%lld eigenvalues of F: %s\n", static_cast<long long>(a.top), format_eigenvalues(top).c_str());
  std::printf("nonzero eigenvalues: %lld (above 1e-12 lambda_max), smallest %.6e; trace of F: %.10e (exact); mass "
              "at zero %.6f (%lld of %lld)\n",
              static_cast<long long>(s.eigenvalues.size()), s.eigenvalues(s.eigenvalues.size() - 1), s.trace, zero_mass,
              static_cast<long long>(s.zero_count), static_cast<long long>(F.rows()));
  std::printf("timing (s): form the Gram %.3f, eigendecomposition %.3f, total %.3f\n", gram.form_seconds(), s.seconds,
              secs);
  if (!a.plot.empty()) {
    DensityPlot picture;  // the exact eigenvalues as the quadrature: weight 1/P each, the rest at zero
    picture.nodes.assign(s.eigenvalues.data(), s.eigenvalues.data() + s.eigenvalues.size());
    picture.weights.assign(picture.nodes.size(), 1.0 / P);
    picture.nodes.push_back(0.0);
    picture.weights.push_back(zero_mass);
    picture.top.assign(top.data(), top.data() + k);
    picture.zero_threshold = 1e-12 * s.eigenvalues(0);
    picture.trace = s.trace;
    picture.trace_standard_error = 0;
    picture.parameters = static_cast<long long>(F.rows());
    picture.title = "Fisher spectrum (exact, the Gram of " + std::to_string(R) + " rows), fisher " + a.fisher;
    write_density_svg(a.plot, picture);
    std::printf("wrote the exact eigenvalue histogram to %s\n", a.plot.c_str());
  }
  if (!a.eigenvectors.empty()) {
    const Mat<double> V = gram.eigenvectors(s, std::min<Index>(want_vectors, s.eigenvalues.size())).template cast<double>();
    save_parameter_stack(a.eigenvectors, *p.model, V, out_dtype(a),
                         {{"natgrad", "top-" + std::to_string(V.cols()) + " eigenvectors of F (exact), leading index"}});
    std::printf("wrote the top-%lld eigenvectors to %s\n", static_cast<long long>(V.cols()), a.eigenvectors.c_str());
  }
  if (!a.report.empty()) {
    nlohmann::ordered_json j;
    j["command"] = "spectrum";
    j["params"] = F.rows();
    j["samples"] = N;
    j["ranks"] = world.size();
    j["fisher"] = a.fisher;
    std::vector<double> all(s.eigenvalues.data(), s.eigenvalues.data() + s.eigenvalues.size());
    j["spectrum"] = {{"exact", true},
                     {"eigenvalues", std::vector<double>(top.data(), top.data() + top.size())},
                     {"converged", true},
                     {"status", "exact: the eigendecomposition of the Gram"},
                     {"products", 0},
                     {"gram_rows", R},
                     {"nonzero", s.eigenvalues.size()},
                     {"all_nonzero_eigenvalues", all},
                     {"trace", s.trace},
                     {"zero_count", s.zero_count},
                     {"mass_at_zero", zero_mass}};
    j["timing_s"] = {{"gram_form", gram.form_seconds()}, {"eigendecomposition", s.seconds}, {"total", secs}};
    write_file_atomically(a.report, j.dump(2) + "\n");
  }
  return 0;
}

template int run_exact_spectrum<float>(Args&, const World&);
template int run_exact_spectrum<double>(Args&, const World&);

}  // namespace cli
}  // namespace natgrad
