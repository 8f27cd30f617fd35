// The command line's shared pieces: the parsed arguments, their checks, progress lines, the signal flag.
#pragma once

#include <natgrad/curvature/fisher_operator.h>

#include <CLI/CLI.hpp>

#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

namespace natgrad {
namespace cli {

constexpr const char* kDefaultDataDir = "/usr/share/datasets/fashion-mnist";
constexpr Index kDefaultBatch = 1000;

struct Args {
  std::string model, weights, data, vector, output, save_gradient, report;
  std::string fisher = "exact", preconditioner = "none", dtype = "float32";
  int mc_samples = 1;
  uint64_t seed = 0;
  Index batch = 0, curvature_batch = 0;
  Index context = 0;  // --context T: read --data as text, byte windows of T + 1
  double damping = 0;
  std::vector<double> dampings;  // solve --damping l1,l2,...: several (multi-shift CG); damping is then the smallest
  double cg_tol = 1e-6;
  Index cg_max_iters = 500;
  Index spectrum = 0;
  std::vector<std::string> compare;  // solve --compare empirical,mc,diagonal,kfac
  Index products = 10;  // profile --products R
  Index deflate = 0;  // solve --deflate K
  bool trace = false;  // spectrum --trace
  bool per_layer = false;  // spectrum --per-layer
  bool density = false;    // spectrum --density
  Index lanczos_steps = 40;  // spectrum --lanczos-steps K (SLQ)
  Index probes = 30;   // spectrum --probes M
  std::string eigenvectors;  // spectrum --eigenvectors v.safetensors
  std::string plot;          // spectrum --plot density.svg (implies --density)
  Index top = 10;
  int threads = 0;
  int ranks = 1;  // natgrad info --ranks: the per-rank estimate
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


// SIGINT / SIGTERM during a solve: CG stops at the end of its iteration and writes that iteration's iterate.
extern volatile std::sig_atomic_t g_signal;
void install_signal_handlers();

/// The model, data and Fisher options every command shares.
void add_common(CLI::App* c, Args& a, const std::string& damping_default);
/// Ends with a usage error (exit status 2) naming the option.
[[noreturn]] void usage_error(const std::string& what);
/// Checks the values of the options (ranges, names); usage_error otherwise.
void validate(const Args& a);
FisherOptions fisher_options(const Args& a);
/// The file a solve over several dampings writes for `damping`: "d.safetensors" → "d_1e-02.safetensors"
/// (λ as %.0e, before the extension).
std::string damping_output_path(const std::string& output, double damping);

}  // namespace cli
}  // namespace natgrad
