#include "commands.h"
#include "problem.h"
#include "signals.h"
#include "report.h"

#include <natgrad/core/interrupted.h>
#include <natgrad/core/threads.h>
#include <natgrad/io/parameters_io.h>
#include <natgrad/io/safetensors.h>
#include <natgrad/natural_gradient/solve_natural_gradient.h>

#include <utility>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <new>
#include <string>
#include <vector>
#include <stdexcept>

#include "core/format_number.h"  // (lib/, private: the numbers in messages as the library writes them)
#include "natural_gradient/solve_report.h"  // (lib/, private: the report, shared with the Python package)

namespace natgrad {
namespace cli {

namespace {

// A bound on rank F for the batch (Martens & Grosse; docs/math.md): F = 1/M Σ J_nᵀ H_n J_n is a sum of
// M per-position terms (the positions that count: N·T less those whose label is the ignore index) of rank
// ≤ rank H: C − 1 for the categorical (softmax ignores a common shift of the logits), C for gaussian and
// bernoulli; S sampled scores per position for mc; one score per sample (the stacked positions) for the
// empirical Fisher. Above it F + 0·I is singular.
Index fisher_rank_bound(FisherKind kind, LikelihoodKind likelihood, Index N, Index M, Index C, int mc_samples) {
  const Index exact = M * (likelihood == LikelihoodKind::categorical ? C - 1 : C);
  switch (kind) {
    case FisherKind::exact: return exact;
    case FisherKind::mc: return std::min(exact, M * Index(mc_samples));
    case FisherKind::empirical: return N;
  }
  return exact;
}

// The CG summary line with the CLI's word for a stop by signal: "interrupted", as in the report.
std::string cg_line(const CgSummary& cg) {
  std::string line = cg.brief_report();
  const std::string stop = std::string("CG ") + to_string(CgTermination::user_stop);
  if (cg.termination == CgTermination::user_stop && line.rfind(stop, 0) == 0)
    line.replace(0, stop.size(), "CG interrupted");
  return line;
}

// The solve's options as the command line gives them (run_solve adds the progress callbacks).
NaturalGradientOptions solve_options(const Args& a, Index spectrum) {
  NaturalGradientOptions opt;
  opt.fisher = fisher_options(a);
  opt.curvature_batch = a.curvature_batch;
  opt.cg.relative_tolerance = a.cg_tol;
  opt.cg.max_iterations = a.cg_max_iters;
  opt.preconditioner = preconditioner_from_string(a.preconditioner);
  opt.solver = solver_from_string(a.solver);
  opt.spectrum_top_k = spectrum;
  opt.condition_number = spectrum > 0;
  opt.deflate = a.deflate;
  opt.dampings = a.dampings;
  for (const std::string& name : a.compare) {
    try {
      opt.compare.push_back(approximation_from_string(name));
    } catch (const std::invalid_argument& e) {
      usage_error(std::string("--compare: ") + e.what());
    }
  }
  return opt;
}

// NaturalGradientOptions::is_valid names the fields ("deflate 4 and preconditioner diagonal do not
// combine"); a usage error names the options typed ("--deflate 4 and --preconditioner diagonal ...").
std::string with_option_names(const std::string& why) {
  static const std::pair<const char*, const char*> kNames[] = {{"fisher.damping", "--damping"},
                                                               {"fisher.mc_samples", "--mc-samples"},
                                                               {"fisher.num_threads", "--threads"},
                                                               {"cg.relative_tolerance", "--cg-tol"},
                                                               {"cg.max_iterations", "--cg-max-iters"},
                                                               {"batch", "--batch"},
                                                               {"curvature_batch", "--curvature-batch"},
                                                               {"spectrum_top_k", "--spectrum"},
                                                               {"deflate", "--deflate"},
                                                               {"preconditioner", "--preconditioner"},
                                                               {"compare", "--compare"},
                                                               {"solver", "--solver"}};
  auto name_char = [](char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '.'; };
  std::string out;
  for (std::size_t i = 0; i < why.size();) {
    if (!name_char(why[i])) {
      out += why[i++];
      continue;
    }
    std::size_t end = i;
    while (end < why.size() && name_char(why[end])) ++end;
    while (end > i + 1 && why[end - 1] == '.') --end;  // a full stop after a name is not part of it
    std::string word = why.substr(i, end - i);
    for (const auto& n : kNames)
      if (word == n.first) word = n.second;
    out += word;
    i = end;
  }
  return out;
}

// Every rule about the solve is NaturalGradientOptions::is_valid's (with the parameter count once the
// model is known): a broken one is a usage error, exit 2.
void check_solve_options(const NaturalGradientOptions& opt, Index num_params) {
  std::string why;
  if (!(num_params > 0 ? opt.is_valid(num_params, &why) : opt.is_valid(&why)))
    usage_error(with_option_names(why));
}

}  // namespace

template <typename Scalar>
int run_solve(Args& a, const World& world) {
  const Progress progress(a.quiet);
  install_signal_handlers(!a.quiet && world.root());
  const bool embedded = a.model.empty() && a.data.empty();
  // The embedded default reports its top 10 unless --spectrum says otherwise (0: none).
  const Index k = embedded && !a.spectrum_given ? 10 : a.spectrum;
  NaturalGradientOptions opt = solve_options(a, k);
  check_solve_options(opt, 0);  // before anything is loaded
  Problem<Scalar> p = load_problem<Scalar>(a, true, progress, k, world);
  check_solve_options(opt, p.model->num_params());
  opt.gram_max_bytes = p.gram_budget;  // auto: the Gram only where it fits beside the rest
  // A line for the first iterations, then one at least every 2 s of work, with an estimate of the time left
  // from the residual's recent rate of decrease (log-linear) and the iteration limit. SIGINT / SIGTERM stop
  // CG at the end of the iteration, and the forward pass, the gradient and the products at their next chunk.
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
    return stop_asked() ? CallbackResult::stop : CallbackResult::keep_going;
  };
  watch_fisher(opt.fisher, progress);  // the forward pass and the gradient: a line at least every 2 s
  opt.on_gradient = [&](double loss, double gnorm) {
    progress.line("loss %.8f, gradient norm %.6e; solving (F + lambda I) d = g", loss, gnorm);
  };
  opt.spectrum = spectrum_options(progress, world);
  if (a.deflate_given && a.deflate == 0) opt.reuse_spectrum = false;  // --deflate 0: plain CG
  const int threads = num_threads();
  const Index positions = p.model->output_positions();
  const std::string per_position =
      positions > 1 ? ", per position: " + std::to_string(positions) + " positions per sample" : "";
  const std::string ranks = World::has_mpi() ? ", ranks: " + std::to_string(world.size()) : "";
  std::string damping_text = detail::format_number(a.damping);
  if (!a.dampings.empty()) {
    damping_text = "";
    for (double l : a.dampings) damping_text += (damping_text.empty() ? "" : ",") + detail::format_number(l);
    damping_text += opt.solver == SolverKind::cg ? " (multi-shift CG)" : "";
  }
  std::printf("natgrad solve: %s (%lld parameters, %s%s), %s (%lld samples, curvature on %lld), fisher %s, damping %s, "
              "%s, %d threads%s, parameters: %s\n",
              p.model_label.c_str(), static_cast<long long>(p.model->num_params()), to_string(p.file.likelihood),
              per_position.c_str(), p.data_label.c_str(), static_cast<long long>(p.total),
              static_cast<long long>(a.curvature_batch > 0 ? a.curvature_batch : p.total), a.fisher.c_str(),
              damping_text.c_str(), a.dtype.c_str(), threads, ranks.c_str(), p.params_label.c_str());
  // λ = 0 with F provably singular on this batch: CG can reach a least-squares answer at best.
  const Index curvature_samples = world.size() > 1 ? p.curvature_total : a.curvature_batch > 0 ? a.curvature_batch : p.total;
  // M: the curvature batch's positions that count (categorical labels equal to the ignore index do not), over
  // the ranks.
  Index counted = curvature_samples * positions;
  if (p.file.likelihood == LikelihoodKind::categorical) {
    const Dataset<Scalar>& cd = world.size() > 1 && p.curvature_total < p.total ? p.curvature : p.data;
    const Index n = world.size() > 1 ? cd.size() : curvature_samples;
    double mine = double(std::count_if(cd.labels.begin(), cd.labels.begin() + n * positions,
                                       [](int64_t y) { return y != kIgnoreIndex; }));
    if (world.size() > 1) world.comm().sum(&mine, 1);
    counted = static_cast<Index>(mine);
  }
  const Index rank_bound = fisher_rank_bound(opt.fisher.kind, p.file.likelihood, curvature_samples, counted,
                                             p.model->output_size() / positions, a.mc_samples);
  if (a.damping == 0 && rank_bound < p.model->num_params() && !a.quiet && world.root())
    std::fprintf(stderr,
                 "warning: --damping 0: F has rank at most %lld on this batch (%s) but %lld parameters, so F + 0*I "
                 "is singular and CG can only reach a least-squares answer (expect it to stop unconverged); give a "
                 "damping > 0\n",
                 static_cast<long long>(rank_bound),
                 opt.fisher.kind == FisherKind::empirical ? "N, one score per sample"
                 : counted < curvature_samples * positions
                     ? (opt.fisher.kind == FisherKind::mc ? "M*S sampled scores, M the positions not ignored"
                                                          : "M*(C-1), M the positions not ignored")
                 : opt.fisher.kind == FisherKind::mc                ? "N*T*S sampled scores"
                 : p.file.likelihood == LikelihoodKind::categorical ? "N*T*(C-1)" : "N*T*C",
                 static_cast<long long>(p.model->num_params()));
  progress.line("forward pass over %lld samples", static_cast<long long>(p.total));
  std::fflush(stdout);
  if (stop_agreed(world)) {
    std::printf("interrupted by %s while loading: nothing computed; nothing written\n", signal_name());
    return interrupted_status();
  }
  NaturalGradientResult<Scalar> r;
  try {
    if (world.size() == 1) {
      r = solve_natural_gradient(*p.model, std::move(p.theta), p.file.likelihood, p.data, opt);  // θ is not needed after
    } else {  // each rank its share; the sums over ranks inside
      opt.curvature_batch = 0;
      opt.fisher.communicator = &world.comm();
      const bool own_curvature = p.curvature_total < p.total;
      r = solve_natural_gradient(*p.model, std::move(p.theta), p.file.likelihood,
                                 BatchShare<Scalar>{&p.data, p.first, p.total},
                                 BatchShare<Scalar>{own_curvature ? &p.curvature : &p.data, p.curvature_first,
                                                    p.curvature_total},
                                 opt);
    }
  } catch (const Interrupted& e) {  // the forward pass, the gradient or a product stopped at a chunk
    std::printf("interrupted by %s: %s; nothing written\n", signal_name(), e.what());
    return interrupted_status();
  } catch (const std::bad_alloc&) {
    throw std::runtime_error("out of memory during the solve; the estimate for the whole run was " +
                             detail::format_bytes(double(p.estimate)) + "; nothing written");
  } catch (const std::runtime_error& e) {
    const std::string what = e.what();
    if (what.rfind("out of memory", 0) != 0) throw;
    throw std::runtime_error(what + "; the estimate for the whole run was " + detail::format_bytes(double(p.estimate)) +
                             "; nothing written");
  }
  if (!r.ok()) throw std::runtime_error(r.failure + "; nothing written");
  if (!r.direction.allFinite())
    throw std::runtime_error("the natural-gradient direction is not finite (" + r.cg.message + "); nothing written");
  // (Rank 0's signal decided the stop; the others may have seen none.)
  const bool interrupted = r.cg.termination == CgTermination::user_stop || !r.interrupted.empty();
  std::printf("loss: %.8f\ngradient norm: %.6e\n", r.loss, r.gradient_norm);
  const bool gram = r.solver == SolverKind::smw;
  if (opt.solver == SolverKind::automatic) std::printf("solver: %s\n", r.solver_reason.c_str());
  if (gram) {
    std::printf("exact solve by the Gram of %lld rows (%s form): formed in %.3f s, factored in %.3f s, applied in %.3f s\n",
                static_cast<long long>(r.gram_rows), r.gram_push_through ? "push-through" : "Woodbury",
                r.time_gram_form_s, r.time_gram_factor_s, r.time_gram_apply_s);
    for (const auto& d : r.solves)
      std::printf("damping %s: |g - (F + lambda I)d|/|g| = %.3e\n", detail::format_number(d.damping).c_str(),
                  d.cg.relative_residual);
    if (r.solves.empty()) std::printf("|g - (F + lambda I)d|/|g| = %.3e\n", r.cg.relative_residual);
  } else if (r.solves.empty()) {
    std::printf("%s\n", cg_line(r.cg).c_str());
  } else {
    for (const auto& d : r.solves) {
      std::printf("damping %s: %s\n", detail::format_number(d.damping).c_str(), cg_line(d.cg).c_str());
      if (!d.cg.is_converged() && d.cg.termination != CgTermination::user_stop)
        std::printf("warning: CG for damping %s did not converge: %s\n", detail::format_number(d.damping).c_str(),
                    d.cg.message.c_str());
    }
    std::printf("multi-shift CG: %lld products for %zu dampings\n", static_cast<long long>(r.multi_shift_products),
                r.solves.size());
  }
  const bool has_spectrum = opt.spectrum_top_k > 0 && r.spectrum.eigenvalues.size() > 0;
  if (interrupted && !r.interrupted.empty())
    std::printf("interrupted by %s %s\n", signal_name(), r.interrupted.c_str());
  else if (interrupted)
    std::printf("interrupted by %s at CG iteration %lld: writing the current iterate%s\n", signal_name(),
                static_cast<long long>(r.cg.iterations),
                opt.spectrum_top_k > 0 && !has_spectrum ? "; skipped the spectrum and the condition number" : "");
  else if (!r.cg.is_converged() && r.solves.empty())
    std::printf("warning: CG did not converge: %s\n", r.cg.message.c_str());
  if (has_spectrum && gram)
    std::printf("top-%lld eigenvalues of F: %s  (%s; %lld nonzero, trace %.6e, %lld at zero)\n",
                static_cast<long long>(opt.spectrum_top_k), format_eigenvalues(r.spectrum.eigenvalues).c_str(),
                r.spectrum.status.c_str(), static_cast<long long>(r.exact_eigenvalues.size()), r.exact_trace,
                static_cast<long long>(r.exact_zero_count));
  else if (has_spectrum)
    std::printf("top-%lld eigenvalues of F: %s  (%lld products, %s)\n", static_cast<long long>(opt.spectrum_top_k),
                format_eigenvalues(r.spectrum.eigenvalues).c_str(), static_cast<long long>(r.spectrum.matvecs),
                r.spectrum.status.c_str());
  else if (opt.spectrum_top_k > 0 && !interrupted)
    std::printf("top-%lld eigenvalues of F: none (%s)\n", static_cast<long long>(opt.spectrum_top_k),
                r.spectrum.status.c_str());
  if (r.deflated > 0)
    std::printf("CG was deflated with the top-%lld eigenpairs of F (computed before it)\n",
                static_cast<long long>(r.deflated));
  if (r.solves.empty() && r.has_condition) print_condition(r.condition);
  for (const auto& d : r.solves)
    if (d.has_condition) {
      std::printf("damping %s: ", detail::format_number(d.damping).c_str());
      print_condition(d.condition);
    }
  if (!r.compare.empty()) print_comparison(r.compare, opt.spectrum_top_k);
  char compare_time[48] = "";
  if (!r.compare.empty()) std::snprintf(compare_time, sizeof compare_time, "compare %.3f, ", r.time_compare_s);
  std::printf("timing (s): forward %.3f, gradient %.3f, cg %.3f, spectrum %.3f, %stotal %.3f\n", r.time_forward_s,
              r.time_gradient_s, r.time_cg_s, r.time_spectrum_s, compare_time, r.time_total_s);
  if (!a.output.empty() && r.solves.empty()) {
    save_parameters(a.output, *p.model, r.direction, out_dtype(a), {{"natgrad", "natural-gradient direction"}});
    std::printf("wrote the direction to %s\n", a.output.c_str());
  }
  for (const auto& d : r.solves) {
    if (a.output.empty()) break;
    const std::string path = damping_output_path(a.output, d.damping);
    save_parameters(path, *p.model, d.direction, out_dtype(a),
                    {{"natgrad", "natural-gradient direction"}, {"damping", detail::format_number(d.damping)}});
    std::printf("wrote the direction for damping %s to %s\n", detail::format_number(d.damping).c_str(), path.c_str());
  }
  if (!a.save_gradient.empty()) {
    save_parameters(a.save_gradient, *p.model, r.gradient, out_dtype(a), {{"natgrad", "gradient"}});
    std::printf("wrote the gradient to %s\n", a.save_gradient.c_str());
  }
  if (!a.report.empty()) {
    SolveReportSetting s;
    s.params = p.model->num_params();
    s.positions = positions;
    s.fisher = a.fisher;
    s.damping = a.damping;
    s.preconditioner = a.preconditioner;
    s.dtype = a.dtype;
    s.threads = threads;
    s.ranks = world.size();
    for (const auto& d : r.solves) {
      nlohmann::ordered_json e = nlohmann::ordered_json::object();
      if (!a.output.empty()) e["output"] = damping_output_path(a.output, d.damping);
      if (d.has_condition) e["condition"] = condition_json(d.condition);
      s.solve_extras.push_back(e);
    }
    nlohmann::ordered_json& x = s.extras;
    if (has_spectrum) x["spectrum"] = spectrum_json(r.spectrum);
    if (has_spectrum && gram) {
      x["spectrum"]["exact"] = true;
      x["spectrum"]["nonzero"] = r.exact_eigenvalues.size();
      x["spectrum"]["trace"] = r.exact_trace;
      x["spectrum"]["zero_count"] = r.exact_zero_count;
    }
    if (r.has_condition) x["condition"] = condition_json(r.condition);
    if (!r.compare.empty()) x["compare"] = comparison_json(r.compare);
    if (interrupted) {
      std::vector<std::string> skipped;
      if (opt.spectrum_top_k > 0 && !has_spectrum) skipped.push_back("the spectrum");
      if (opt.condition_number && !r.has_condition) skipped.push_back("the condition number");
      if (!opt.compare.empty() && r.compare.empty()) skipped.push_back("the comparison");
      x["interrupted"] = {{"signal", signal_name()}, {"skipped", skipped}};
    }
    const nlohmann::ordered_json j = solve_report(r, s);
    write_file_atomically(a.report, j.dump(2) + "\n");
  }
  return interrupted ? interrupted_status() : 0;
}

template int run_solve<float>(Args&, const World&);
template int run_solve<double>(Args&, const World&);

}  // namespace cli
}  // namespace natgrad
