// The natgrad command line: the options of each command and the dispatch; one file per command beside it.
#include "cli.h"

#include "commands.h"
#include "options.h"

#include <natgrad/core/threads.h>

#include <CLI/CLI.hpp>

#include <cstdio>
#include <new>
#include <stdexcept>
#include <string>
#include <vector>

namespace natgrad {
namespace cli {

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
