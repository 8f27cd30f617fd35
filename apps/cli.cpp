// The natgrad command line: the commands, the checks across options and the dispatch; each command's options in
// command_options.cpp, its run in <command>_command.cpp.
#include "cli.h"

#include "commands.h"
#include "memory_reuse.h"
#include "command_options.h"
#include "options.h"
#include "world.h"

#include <natgrad/core/threads.h>

#include <CLI/CLI.hpp>

#include <cstdio>
#include <cstdlib>
#include <new>
#include <stdexcept>
#include <string>
#include <vector>

#include "core/format_number.h"  // (lib/, private: the numbers in messages as the library writes them)

namespace natgrad {
namespace cli {

namespace {
// train's defaults where they differ from solve's, and its own rules.
void check_train_options(const CLI::App& t, Args& a) {
  if (!t.count("--batch")) a.batch = 128;
  if (!t.count("--damping")) a.damping = 1.0;
  if (!t.count("--solver")) a.solver = "auto";
  if (!t.count("--cg-tol")) a.cg_tol = 1e-4;
  if (!t.count("--cg-max-iters")) a.cg_max_iters = 100;
  if (!t.count("--damping") && a.optimizer == "kfac") a.damping = 0.01;
  if (t.count("--min-damping") && a.optimizer != "kfac")
    usage_error("--min-damping is kfac's; --optimizer " + a.optimizer + " does not take it");
  if (!(a.min_damping >= 0) || !std::isfinite(a.min_damping))
    usage_error("--min-damping must be finite and >= 0, got " + detail::format_number(a.min_damping));
  if (a.optimizer != "natgrad" && a.optimizer != "kfac" && a.optimizer != "adam" && a.optimizer != "sgd")
    usage_error("--optimizer must be natgrad, kfac, adam or sgd, got \"" + a.optimizer + "\"");
  if (t.count("--lr") && !(a.lr > 0)) usage_error("--lr must be > 0, got " + detail::format_number(a.lr));
  if (t.count("--momentum") && (a.optimizer == "adam" || a.optimizer == "kfac"))
    usage_error("--momentum is for sgd and natgrad; --optimizer " + a.optimizer + " does not take it" +
                (a.optimizer == "kfac" ? " (kfac takes its momentum from the quadratic model)" : ""));
  if (!(a.momentum >= 0) || !std::isfinite(a.momentum))
    usage_error("--momentum must be finite and >= 0, got " + detail::format_number(a.momentum));
  if ((a.optimizer == "natgrad" || a.optimizer == "kfac") && !(a.damping > 0))
    usage_error("--damping must be > 0 for " + a.optimizer + " (F is singular on a minibatch), got " + detail::format_number(a.damping));
  if (a.damping_adapt != "lm" && a.damping_adapt != "off")
    usage_error("--damping-adapt must be lm or off, got \"" + a.damping_adapt + "\"");
  if (a.line_search != "armijo" && a.line_search != "off")
    usage_error("--line-search must be armijo or off, got \"" + a.line_search + "\"");
  if (a.cg_backtrack != "on" && a.cg_backtrack != "off")
    usage_error("--cg-backtrack must be on or off, got \"" + a.cg_backtrack + "\"");
  if (a.epochs < 1) usage_error("--epochs must be >= 1, got " + std::to_string(a.epochs));
  if (a.eval_every < 0) usage_error("--eval-every must be >= 0, got " + std::to_string(a.eval_every));
  if (!(a.max_time >= 0)) usage_error("--max-time must be >= 0 (seconds), got " + detail::format_number(a.max_time));
  if (a.inverse_every < 1) usage_error("--inverse-every must be >= 1, got " + std::to_string(a.inverse_every));
  if (a.factor_every < 0)
    usage_error("--factor-every must be >= 0 (0: by the factors' cost), got " + std::to_string(a.factor_every));
  for (const char* kfac_only : {"--inverse-every", "--factor-every"})
    if (t.count(kfac_only) && a.optimizer != "kfac")
      usage_error(std::string(kfac_only) + " is kfac's; --optimizer " + a.optimizer + " does not take it");
  if (a.cg_max_iters < 1) usage_error("--cg-max-iters must be >= 1, got " + std::to_string(a.cg_max_iters));
  if (!(a.cg_tol > 0 && a.cg_tol < 1)) usage_error("--cg-tol must be in (0, 1), got " + detail::format_number(a.cg_tol));
  if (t.count("--context") && a.context < 1) usage_error("--context must be >= 1, got " + std::to_string(a.context));
  if (!(a.holdout >= 0 && a.holdout < 1))
    usage_error("--holdout must be in [0, 1) (the fraction of the text's windows kept for evaluation), got " +
                detail::format_number(a.holdout));
  if (t.count("--holdout") && a.context == 0) usage_error("--holdout is for text (--context T)");
  if (t.count("--holdout") && !a.test_data.empty())
    usage_error("--holdout and --test-data: the evaluation windows come from one of them; give one");
  if (a.context > 0 && a.autoencoder) usage_error("--autoencoder and --context: text has byte targets, not its inputs");
}
}  // namespace

int run(int argc, char** argv, const MoreCommands* more) {
  const bool solve_only = more == nullptr;
  keep_freed_memory();  // (a refusal costs speed only)
  World world(&argc, &argv);  // MPI, when built with it: every rank parses the same arguments
  const char* program = solve_only ? "solve-natural-gradient" : "natgrad";
  // Rank 0 prints and writes; the others' standard output goes nowhere, and their errors are rank 0's
  // (agreed) or, for a failure only they saw, printed with their rank before the job is aborted.
  if (!world.root() && !std::freopen("/dev/null", "w", stdout)) world.abort(1);
  Args a;
  CLI::App app(solve_only ? "solve-natural-gradient: the natural gradient d = (F + lambda*I)^-1 g, matrix-free. "
                            "Without --model/--data it runs the embedded default (MLP on Fashion-MNIST)."
                          : "natgrad: natural gradients without forming the Fisher matrix");
  app.set_version_flag("--version", "natgrad 0.1.0");
  CLI::App* solve = solve_only ? &app : app.add_subcommand("solve", "Solve (F + lambda*I) d = g; without --model/--data, the embedded default");
  CLI::App* fvp = solve_only ? nullptr : app.add_subcommand("fvp", "Fisher-vector product (F + lambda*I) v");
  CLI::App* spectrum = solve_only ? nullptr : app.add_subcommand("spectrum", "Top-k eigenvalues of F by Lanczos");
  CLI::App* info = solve_only ? nullptr : app.add_subcommand("info", "Layers, shapes, parameter counts and memory estimate");
  CLI::App* profile = solve_only ? nullptr : app.add_subcommand("profile", "Where a Fisher-vector product's time goes, node by node");
  CLI::App* train = solve_only ? nullptr : app.add_subcommand("train", "Train a model: natural gradient, Adam or SGD, with evaluation");
  CLI::App* plot = solve_only ? nullptr : app.add_subcommand("plot", "Several training logs (train --log) on one SVG figure");
  a.damping = 1e-3;
  add_solve_options(solve, a);
  if (!solve_only) {
    add_fvp_options(fvp, a);
    add_profile_options(profile, a);
    add_spectrum_options(spectrum, a);
    add_info_options(info, a);
    add_train_options(train, a);
    add_plot_options(plot, a);
    app.require_subcommand(1);
  }
  try {
    app.parse(argc, argv);
    // 0 is the "all samples" default internally; asked for explicitly it is an error.
    for (CLI::App* c : {solve, fvp, spectrum, info, profile, train})
      if (c && c->parsed()) {
        if (c->count("--batch") && a.batch < 1) usage_error("--batch must be >= 1, got " + std::to_string(a.batch));
        if (c == solve && c->count("--deflate") && a.deflate < 0)
          usage_error("--deflate must be >= 0 (0: plain CG), got " + std::to_string(a.deflate));
        if (c->get_option_no_throw("--curvature-batch") && c->count("--curvature-batch") && a.curvature_batch < 1)
          usage_error("--curvature-batch must be >= 1, got " + std::to_string(a.curvature_batch));
        if (c->get_option_no_throw("--max-memory") && c->count("--max-memory") && !(a.max_memory_gb > 0))
          usage_error("--max-memory must be > 0 (GB), got " + detail::format_number(a.max_memory_gb));
      }
    if (solve->parsed()) {
      a.spectrum_given = solve->count("--spectrum") > 0;
      a.deflate_given = solve->count("--deflate") > 0;
    }
    if (!a.dampings.empty()) {  // a list: multi-shift CG, for solve only
      for (CLI::App* c : {fvp, spectrum, profile})
        if (c && c->parsed())
          usage_error("--damping takes one value in `natgrad " + c->get_name() +
                      "`; a list of dampings is for `natgrad solve` (multi-shift CG)");
      for (std::size_t i = 0; i < a.dampings.size() && !a.output.empty(); ++i)
        for (std::size_t j = 0; j < i; ++j)
          if (damping_output_path(a.output, a.dampings[i]) == damping_output_path(a.output, a.dampings[j]))
            usage_error("--damping: " + std::to_string(a.dampings[j]) + " and " + std::to_string(a.dampings[i]) +
                        " would both be written to " + damping_output_path(a.output, a.dampings[i]) +
                        " (the file name shows the damping as %.0e)");
    }
    if (fvp && fvp->parsed() && fvp->count("--damping") == 0) a.damping = 0;
    if (spectrum && spectrum->parsed() && spectrum->count("--damping") == 0) a.damping = 0;
    if (profile && profile->parsed() && profile->count("--damping") == 0) a.damping = 0;
    if (spectrum && spectrum->parsed() && a.exact && (a.density || a.per_layer || a.trace))
      usage_error(std::string("--exact and ") + (a.density ? "--density" : a.per_layer ? "--per-layer" : "--trace") +
                  " do not combine: the exact spectrum already gives every eigenvalue and the trace");
    if (spectrum && spectrum->parsed() && !a.plot.empty()) {
      if (!more->can_plot()) usage_error("--plot needs a build with PLplot (install libplplot-dev and rebuild natgrad)");
      a.density = !a.exact;
    }
    if (spectrum && spectrum->parsed() && spectrum->count("--lanczos-steps") && a.lanczos_steps < 2)
      usage_error("--lanczos-steps must be >= 2, got " + std::to_string(a.lanczos_steps));
    if (spectrum && spectrum->parsed() && spectrum->count("--probes") && a.probes < 2)
      usage_error("--probes must be >= 2, got " + std::to_string(a.probes));
    validate(a);
    if (a.ranks < 1) usage_error("--ranks must be >= 1, got " + std::to_string(a.ranks));
    if (!world.root()) a.quiet = true;
    // Threads: --threads T (0: all cores); without it OMP_NUM_THREADS, else all cores, or under MPI this
    // rank's share of them.
    if (train && train->parsed()) check_train_options(*train, a);
    if (((train && train->parsed() && !a.plot.empty()) || (plot && plot->parsed())) && !more->can_plot())
      usage_error(std::string(plot && plot->parsed() ? "natgrad plot" : "--plot") +
                  " needs a build with PLplot (install libplplot-dev and rebuild natgrad)");
    bool threads_given = false;
    for (CLI::App* c : {solve, fvp, spectrum, info, profile, train})
      if (c && c->parsed() && c->count("--threads")) threads_given = true;
    if (threads_given)
      set_num_threads(a.threads);
    else if (!std::getenv("OMP_NUM_THREADS"))
      set_num_threads(world.size() > 1 ? world.default_threads() : 0);
    const bool f64 = a.dtype == "float64";
    if (solve_only || solve->parsed()) return f64 ? run_solve<double>(a, world) : run_solve<float>(a, world);
    if (fvp->parsed()) return more->fvp(a, world, f64);
    if (spectrum->parsed()) return more->spectrum(a, world, f64);
    if (profile->parsed()) return more->profile(a, world, f64);
    if (train->parsed()) return more->train(a, world, f64);
    if (plot->parsed()) return more->plot(a);
    return more->info(a);
  } catch (const CLI::CallForHelp& e) {
    return world.root() ? app.exit(e) : 0;
  } catch (const CLI::CallForAllHelp& e) {
    return world.root() ? app.exit(e) : 0;
  } catch (const CLI::CallForVersion& e) {
    return world.root() ? app.exit(e) : 0;
  } catch (const CLI::ParseError& e) {  // the same on every rank
    if (world.root()) std::fprintf(stderr, "%s: error: %s (see --help)\n", program, parse_error_message(e, argc, argv).c_str());
    return 2;
  } catch (const std::bad_alloc&) {  // seen by this rank alone: it ends the job
    std::fprintf(stderr,
                 "%s: error%s: out of memory: an allocation failed although the estimate fit in the available memory "
                 "(see `natgrad info`); nothing written. Lower --batch or --curvature-batch, or use --dtype float32\n",
                 program, world.size() > 1 ? (" (rank " + std::to_string(world.rank()) + ")").c_str() : "");
    std::fflush(stderr);
    if (world.size() > 1) world.abort(1);
    return 1;
  } catch (const std::exception& e) {  // agreed by the ranks (or met after the last collective step)
    if (world.root()) std::fprintf(stderr, "%s: error: %s\n", program, e.what());
    return 1;
  }
}

}  // namespace cli
}  // namespace natgrad
