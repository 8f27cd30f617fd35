#include "command_options.h"

#include <cstring>

namespace natgrad {
namespace cli {

void add_solve_options(CLI::App* c, Args& a) {
  add_problem_options(c, a, "1e-3");
  add_curvature_batch_option(c, a);
  add_cg_options(c, a);
  c->add_option("--solver", a.solver,
                "cg (conjugate gradient on the products), smw (exact, through the Gram of the curvature batch's "
                "rows: needs a damping > 0, no preconditioner or deflation; docs/solvers.md) or auto "
                "(smw when the Gram is small enough, else cg; the output says which ran)")
      ->capture_default_str();
  c->add_option("--output", a.output,
                "Write the direction d here (safetensors, the weights' names and shapes; with a list of dampings "
                "one file each, d_1e-02.safetensors, ...)");
  c->add_option("--save-gradient", a.save_gradient, "Write the gradient g here");
  c->add_option("--spectrum", a.spectrum,
                "Also report the top-K eigenvalues of F (K below the parameter count) and the condition number of "
                "F + lambda*I (default 0; 10 for the embedded default)");
  c->add_option("--deflate", a.deflate,
                "Deflate CG with the top-K eigenpairs of F, computed before it (default: those of --spectrum, which "
                "a solve with a spectrum reuses; 0: plain CG; not with a preconditioner)");
  c->add_option("--report", a.report, "Write a JSON report here (docs/formats.md)");
  c->add_option("--compare", a.compare,
                "Compare approximations of F with it (a list of empirical, mc, diagonal, kfac): for each, the "
                "largest relative error of its product on F's top-K eigenvectors (--spectrum K) and the cosine "
                "between its damped direction and the solved one, with its time; needs a damping > 0")
      ->delimiter(',');
}

void add_fvp_options(CLI::App* c, Args& a) {
  add_problem_options(c, a, "0 for fvp");
  c->add_option("--vector", a.vector, "The vector v (safetensors, the weights' names and shapes)");
  c->add_option("--output", a.output, "Write (F + lambda*I) v here");
  c->add_option("--report", a.report, "Write a JSON report here (docs/formats.md)");
}

void add_profile_options(CLI::App* c, Args& a) {
  add_problem_options(c, a, "0 for profile");
  c->add_option("--products", a.products, "Products to time (the median's wall time is reported)")->capture_default_str();
  c->add_option("--report", a.report, "Write a JSON report here (per node: times, FLOPs, GFLOP/s, share)");
}

void add_spectrum_options(CLI::App* c, Args& a) {
  add_problem_options(c, a, "0 for spectrum");
  add_curvature_batch_option(c, a);
  c->add_option("--top", a.top, "Number of largest eigenvalues (below the parameter count)")->capture_default_str();
  c->add_flag("--trace", a.trace, "Also estimate tr(F) by Hutchinson (Rademacher probes), with its standard error");
  c->add_flag("--exact", a.exact,
              "Every nonzero eigenvalue of F exactly, from the Gram of the curvature batch's rows (rows "
              "N*T*C exact, N*S mc, N empirical): the top K printed, the exact trace, the mass at zero, --plot the "
              "exact histogram, --eigenvectors; not with --density, --per-layer or --trace (exact already)");
  c->add_flag("--per-layer", a.per_layer,
              "Per module (its tensors together): the top eigenvalue and trace of its diagonal block, and each top "
              "eigenvector's share of squared mass in it");
  c->add_flag("--density", a.density,
              "The spectral density by stochastic Lanczos quadrature: nodes and weights in the report, the mass at "
              "zero printed");
  c->add_option("--lanczos-steps", a.lanczos_steps, "Lanczos steps per probe for --density (>= 2)")->capture_default_str();
  c->add_option("--probes", a.probes, "Rademacher probes for --trace, --per-layer and --density (>= 2)")->capture_default_str();
  c->add_option("--eigenvectors", a.eigenvectors,
                "Write the top-K eigenvectors here: safetensors holding one [K, ...shape] tensor per parameter under "
                "its name, row i of every tensor together eigenvector i (row 0 the largest eigenvalue's)");
  c->add_option("--plot", a.plot,
                "Draw the spectral density here as SVG (implies --density): a logarithmic eigenvalue axis, the top-K "
                "eigenvalues marked, the mass at zero as its own bar, the trace in the caption (needs a build with "
                "PLplot)");
  c->add_option("--report", a.report, "Write a JSON report here (docs/formats.md)");
}

void add_train_options(CLI::App* c, Args& a) {
  c->add_option("--model", a.model, "Model spec (JSON, docs/formats.md)");
  c->add_option("--weights", a.weights,
                "Initial parameters (safetensors); default: PyTorch-style initialization from --seed");
  c->add_option("--data", a.data,
                "Training data: a .safetensors file, a .csv, a directory of MNIST-format IDX files (its train split), "
                "or any file as text with --context");
  c->add_option("--test-data", a.test_data,
                "Evaluation data (default: the t10k split of an IDX directory --data, a text's held-out tail; none "
                "for another file)");
  c->add_option("--context", a.context,
                "Read --data (and --test-data) as text: byte-level windows of T + 1 bytes, inputs the first T, "
                "targets the last T (a model with output [T, 256])");
  c->add_option("--holdout", a.holdout,
                "With --context and no --test-data: the last fraction F of the text's windows (at least one) is "
                "evaluated on, not trained on; in [0, 1), 0 for no evaluation")
      ->capture_default_str();
  c->add_option("--optimizer", a.optimizer, "natgrad (natural gradient, Hessian-free), kfac, adam or sgd")
      ->capture_default_str();
  c->add_option("--lr", a.lr, "Learning rate eta (default: 1 for natgrad, 0.5 for kfac, 1e-3 for adam, 1e-2 for sgd)");
  c->add_option("--momentum", a.momentum,
                "Momentum mu: SGD's (b <- mu*b + g), natgrad's (the update s = -lr*d + mu*s_prev); not for adam")
      ->capture_default_str();
  c->add_option("--epochs", a.epochs, "Epochs (>= 1)")->capture_default_str();
  c->add_option("--batch", a.batch, "Minibatch size (default 128)");
  c->add_option("--curvature-batch", a.curvature_batch,
                "natgrad: curvature on the first B2 samples of each batch (default: the whole batch)");
  c->add_option("--fisher", a.fisher, "natgrad, kfac: Fisher kind, exact, mc or empirical (kfac's exact factors: H's closed-form factor up to 100 classes, sampled labels above)")->capture_default_str();
  c->add_option("--mc-samples", a.mc_samples, "natgrad: Monte-Carlo labels per input for --fisher mc")
      ->capture_default_str();
  c->add_option("--damping", a.damping, "natgrad, kfac: the damping lambda at the first step (> 0; default 1 for natgrad, 0.01 for kfac)");
  c->add_option("--damping-adapt", a.damping_adapt,
                "natgrad: lm (Levenberg-Marquardt on the step's reduction ratio; rejected steps) or off")
      ->capture_default_str();
  c->add_option("--solver", a.solver, "natgrad: cg, smw (the exact Gram solve) or auto (default auto)");
  c->add_option("--cg-tol", a.cg_tol, "natgrad: CG's relative residual tolerance (default 1e-4)");
  c->add_option("--cg-max-iters", a.cg_max_iters, "natgrad: CG's iteration limit (default 100)");
  c->add_option("--line-search", a.line_search,
                "natgrad: armijo (halve lr until the loss falls enough, at most 8 times; else the step is rejected) "
                "or off")
      ->capture_default_str();
  c->add_option("--cg-backtrack", a.cg_backtrack,
                "natgrad: on (take the earlier CG iterate whose step lowers the loss more, Martens 2010; with "
                "--solver cg, and only with --damping-adapt lm or --line-search armijo) or off")
      ->capture_default_str();
  c->add_option("--inverse-every", a.inverse_every, "kfac: invert the averaged factors every K steps")
      ->capture_default_str();
  c->add_option("--factor-every", a.factor_every,
                "kfac: compute the Kronecker factors of every K-th batch into the running averages (0: every 2nd "
                "when they take one backprop, every 16th when more: the exact kind's closed form)")
      ->capture_default_str();
  c->add_option("--min-damping", a.min_damping, "kfac: the Levenberg-Marquardt rule lowers the damping no further")->capture_default_str();
  c->add_flag("--autoencoder", a.autoencoder,
              "Targets are the inputs, flattened (a gaussian or bernoulli model whose output has the input's size)");
  c->add_flag("--no-shuffle", a.no_shuffle, "Minibatches in file order (default: a permutation per epoch, seeded)");
  c->add_option("--eval-every", a.eval_every, "Evaluate every K steps (default 0: after each epoch)")
      ->capture_default_str();
  c->add_option("--max-time", a.max_time, "Stop after S seconds of training, evaluate and save (default 0: no limit)")
      ->capture_default_str();
  c->add_option("--seed", a.seed, "Seed for initialization, shuffling and Monte-Carlo labels")->capture_default_str();
  c->add_option("--dtype", a.dtype, "float32 or float64")->capture_default_str();
  c->add_option("--threads", a.threads, "Threads: >= 1, or 0 for all cores (default: OMP_NUM_THREADS, else all cores)");
  c->add_option("--save", a.save, "Write the final parameters here (safetensors, state_dict names)");
  c->add_option("--log", a.log,
                "Write the training log here (CSV: a row per step and per evaluation; a resumed run continues it)");
  c->add_option("--plot", a.plot,
                "Draw the run here as SVG, from its log: the loss and the test accuracy against epochs and "
                "against training seconds (needs a build with PLplot)");
  c->add_option("--checkpoint", a.checkpoint,
                "Write a checkpoint here (safetensors: parameters, buffers, optimizer state, progress, settings) at "
                "the end of every epoch, at the end and at a stop (--max-time, SIGINT, SIGTERM)");
  c->add_option("--resume", a.resume,
                "Continue the run a --checkpoint file holds, to --epochs in total, with the same settings, model and "
                "training data");
  c->add_option("--report", a.report, "Write a JSON report here (docs/formats.md)");
  c->add_flag("--quiet", a.quiet,
              "Only the results on stdout and errors on stderr (without it, a status line on stderr at least every "
              "2 s; for tests, the environment's NATGRAD_PROGRESS_INTERVAL=S makes it every S s)");
}

void add_plot_options(CLI::App* c, Args& a) {
  c->add_option("logs", a.logs, "Training logs (natgrad train --log CSV), one colour each (at most 10)");
  c->add_option("--output", a.output, "Write the figure here (SVG)");
  c->add_option("--x", a.plot_x, "Against epochs, seconds (of training time) or both")->capture_default_str();
  c->add_option("--labels", a.labels, "The runs' names in the legend, one per log (default: the files' stems)")
      ->delimiter(',');
}

void add_info_options(CLI::App* c, Args& a) {
  c->add_option("--model", a.model, "Model spec (JSON)");
  c->add_option("--weights", a.weights, "Check these parameters against the model");
  c->add_option("--batch", a.batch, "Batch for the memory estimate (default 1000)");
  c->add_option("--curvature-batch", a.curvature_batch, "Curvature batch for the memory estimate");
  c->add_option("--dtype", a.dtype, "float32 or float64")->capture_default_str();
  c->add_option("--spectrum", a.spectrum, "Top-K spectrum to account for");
  c->add_option("--threads", a.threads, "Threads to account for");
  c->add_option("--ranks", a.ranks, "MPI ranks sharing the batch: the estimate is per rank (default 1)");
  c->add_flag("--quiet", a.quiet, "Accepted for uniformity; info prints no progress");
}

std::string parse_error_message(const CLI::ParseError& e, int argc, char** argv) {
  // An option of solve given to fvp, spectrum or profile is an extra argument to CLI11: name it and say whose
  // option it is.
  if (dynamic_cast<const CLI::ExtrasError*>(&e) && argc > 1) {
    const std::string command = argv[1];
    if (command == "fvp" || command == "spectrum" || command == "profile") {
      std::vector<const char*> solve_only = {"--cg-tol", "--cg-max-iters", "--preconditioner", "--output",
                                             "--save-gradient", "--spectrum", "--deflate", "--compare", "--solver"};
      if (command != "spectrum") solve_only.push_back("--curvature-batch");
      if (command == "fvp") solve_only.erase(solve_only.begin() + 3);  // (fvp has its own --output)
      for (int i = 2; i < argc; ++i)
        for (const char* o : solve_only) {
          const std::size_t n = std::strlen(o);
          if (std::strncmp(argv[i], o, n) == 0 && (argv[i][n] == 0 || argv[i][n] == '='))
            return std::string(o) + " is not an option of `natgrad " + command + "` (it is one of `natgrad solve`)";
        }
    }
  }
  return e.what();
}

}  // namespace cli
}  // namespace natgrad
