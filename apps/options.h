// The command line's shared pieces: the parsed arguments and their checks.
#pragma once

#include <natgrad/curvature/fisher_operator.h>

#include <CLI/CLI.hpp>

#include <cstdint>
#include <string>
#include <vector>

namespace natgrad {
namespace cli {

constexpr const char* kDefaultDataDir = "/usr/share/datasets/fashion-mnist";
constexpr Index kDefaultBatch = 1000;

struct Args {
  std::string model, weights, data, vector, output, save_gradient, report;
  std::string fisher = "exact", preconditioner = "none", dtype = "float32";
  std::string solver = "cg";  // solve --solver cg|smw|auto
  int mc_samples = 1;
  uint64_t seed = 0;
  Index batch = 0, curvature_batch = 0;
  Index context = 0;  // --context T: read --data as text, byte windows of T + 1
  double damping = 0;
  std::vector<double> dampings;  // solve --damping l1,l2,...: several (multi-shift CG); damping is then the smallest
  double cg_tol = 1e-6;
  Index cg_max_iters = 500;
  Index spectrum = 0;
  bool spectrum_given = false;  // solve --spectrum given (the embedded default's 10 otherwise)
  std::vector<std::string> compare;  // solve --compare empirical,mc,diagonal,kfac
  Index products = 10;  // profile --products R
  Index deflate = 0;  // solve --deflate K
  bool deflate_given = false;  // --deflate 0 given: plain CG, no deflation by the spectrum
  bool trace = false;  // spectrum --trace
  bool exact = false;  // spectrum --exact (the Gram's eigendecomposition)
  bool per_layer = false;  // spectrum --per-layer
  bool density = false;    // spectrum --density
  Index lanczos_steps = 40;  // spectrum --lanczos-steps K (SLQ)
  Index probes = 30;   // spectrum --probes M
  std::string eigenvectors;  // spectrum --eigenvectors v.safetensors
  std::string plot;          // spectrum --plot density.svg (implies --density); train --plot curve.svg
  Index top = 10;
  int threads = 0;
  int ranks = 1;  // natgrad info --ranks: the per-rank estimate
  double max_memory_gb = 0;
  bool quiet = false;
  // train
  std::string optimizer = "natgrad", test_data, damping_adapt = "lm", save, log;
  std::string line_search = "armijo", cg_backtrack = "on";  // natgrad's safeguards
  std::string checkpoint, resume;  // train --checkpoint C, --resume C
  double lr = 0;  // 0: the optimizer's default
  double momentum = 0;
  Index epochs = 10, eval_every = 0;
  double max_time = 0;
  bool no_shuffle = false, autoencoder = false;
  double holdout = 0.1;  // train --holdout F: text --data's last windows kept for evaluation (without --test-data)
  Index inverse_every = 20;  // kfac
  Index factor_every = 0;    // kfac (0: by the factors' cost)
  double min_damping = 1e-6;  // kfac
  // plot: the logs (positional), --x epochs|seconds|both, --labels (--output is the figure)
  std::vector<std::string> logs, labels;
  std::string plot_x = "both";
};

/// The model, data and Fisher options of solve, fvp, spectrum and profile.
void add_problem_options(CLI::App* c, Args& a, const std::string& damping_default);
/// --curvature-batch (solve, spectrum).
void add_curvature_batch_option(CLI::App* c, Args& a);
/// CG's options (solve only): --cg-tol, --cg-max-iters, --preconditioner.
void add_cg_options(CLI::App* c, Args& a);
/// Ends with a usage error (exit status 2) naming the option.
[[noreturn]] void usage_error(const std::string& what);
/// Checks the values of the options (ranges, names); usage_error otherwise.
void validate(const Args& a);
FisherOptions fisher_options(const Args& a);
/// Every output path (--output, each damping's file, --save-gradient, --report, --eigenvectors, --plot) can
/// be written: its directory exists and is writable, and it is not a directory. Throws std::invalid_argument
/// naming the option and the path otherwise; run before anything is computed.
void check_output_paths(const Args& a);
/// The file a solve over several dampings writes for `damping`: "d.safetensors" → "d_1e-02.safetensors"
/// (λ as %.0e, before the extension).
std::string damping_output_path(const std::string& output, double damping);

}  // namespace cli
}  // namespace natgrad
