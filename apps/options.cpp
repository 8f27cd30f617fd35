#include "options.h"

#include <algorithm>
#include <cstdio>

#include <natgrad/likelihood/likelihood.h>
#include <natgrad/natural_gradient/solve_natural_gradient.h>
#include <natgrad/solvers/preconditioner.h>

#include <cmath>
#include <stdexcept>
#include <string>
#include <sys/stat.h>
#include <unistd.h>
#include <utility>
#include <vector>

namespace natgrad {
namespace cli {

namespace {
// "1e-3" or "1e-1,1e-2,1e-3": one damping, or several for multi-shift CG (damping is then the smallest).
void parse_dampings(const std::string& text, Args& a) {
  std::vector<double> values;
  std::size_t begin = 0;
  while (true) {
    const std::size_t end = text.find(',', begin);
    const std::string item = text.substr(begin, end == std::string::npos ? std::string::npos : end - begin);
    std::size_t used = 0;
    double v = 0;
    try {
      v = std::stod(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (item.empty() || used != item.size())
      usage_error("--damping: '" + item + "' is not a number (give one damping, or a list such as 1e-1,1e-2,1e-3)");
    if (!(v >= 0) || !std::isfinite(v)) usage_error("--damping must be a finite number >= 0, got " + item);
    for (double w : values)
      if (w == v) usage_error("--damping: " + item + " is listed twice");
    values.push_back(v);
    if (end == std::string::npos) break;
    begin = end + 1;
  }
  a.damping = *std::min_element(values.begin(), values.end());
  a.dampings = values.size() > 1 ? values : std::vector<double>();
}
}  // namespace

std::string damping_output_path(const std::string& output, double damping) {
  char tag[32];
  std::snprintf(tag, sizeof tag, "_%.0e", damping);
  const std::size_t slash = output.find_last_of('/');
  const std::size_t dot = output.find_last_of('.');
  const bool has_extension = dot != std::string::npos && (slash == std::string::npos || dot > slash + 1);
  return has_extension ? output.substr(0, dot) + tag + output.substr(dot) : output + tag;
}

void add_problem_options(CLI::App* c, Args& a, const std::string& damping_default) {
  c->add_option("--model", a.model, "Model spec (JSON, docs/formats.md)");
  c->add_option("--weights", a.weights,
                "Parameters (safetensors, PyTorch state_dict names); default: PyTorch-style initialization from --seed");
  c->add_option("--data", a.data, "Data: a .safetensors file (inputs, targets), a directory of MNIST-format IDX files, or a .csv");
  c->add_option("--context", a.context,
                "Read --data as text: byte-level windows of T + 1 bytes (inputs the first T, targets the last T; vocabulary 256)");
  c->add_option("--fisher", a.fisher, "Fisher kind: exact, mc or empirical")->capture_default_str();
  c->add_option("--mc-samples", a.mc_samples, "Monte-Carlo labels per input for --fisher mc (>= 1)")->capture_default_str();
  c->add_option("--seed", a.seed, "Seed for Monte-Carlo labels, probes and initialization")->capture_default_str();
  c->add_option("--batch", a.batch, "Use the first B samples (default: all; 1000 for the embedded default)");
  c->add_option_function<std::string>(
      "--damping", [&a](const std::string& text) { parse_dampings(text, a); },
      "Damping lambda >= 0 added as lambda*I (default " + damping_default +
          (damping_default == "1e-3"
               ? "); also a list, 1e-1,1e-2,1e-3: every damping from one Krylov space (multi-shift CG), the "
                 "products of the smallest alone, an output file and a report entry each"
               : ")"));
  c->add_option("--dtype", a.dtype, "float32 or float64")->capture_default_str();
  c->add_option("--threads", a.threads,
                "Threads: >= 1, or 0 for all cores (default: OMP_NUM_THREADS, else all cores; under MPI each rank's share of them)");
  c->add_option("--max-memory", a.max_memory_gb,
                "Refuse to start if the estimated memory exceeds this many GB (> 0; default: the available memory)");
  c->add_flag("--quiet", a.quiet,
              "Only the results on stdout and errors on stderr: no progress, notes or warnings");
}

void add_curvature_batch_option(CLI::App* c, Args& a) {
  c->add_option("--curvature-batch", a.curvature_batch, "Curvature on the first B2 samples of the batch (default: the batch)");
}

void add_cg_options(CLI::App* c, Args& a) {
  c->add_option("--cg-tol", a.cg_tol, "CG relative residual tolerance, in (0, 1)")->capture_default_str();
  c->add_option("--cg-max-iters", a.cg_max_iters, "CG iteration limit (>= 1)")->capture_default_str();
  c->add_option("--preconditioner", a.preconditioner,
                "none, diagonal (Martens: (diag(F_emp) + lambda)^0.75) or kfac (K-FAC's damped inverse); not with "
                "--deflate. What each does to CG's products on the default problem: docs/solvers.md")
      ->capture_default_str();
}

[[noreturn]] void usage_error(const std::string& what) { throw CLI::ValidationError(what); }

void validate(const Args& a) {
  if (!(a.damping >= 0) || !std::isfinite(a.damping)) usage_error("--damping must be a finite number >= 0, got " + std::to_string(a.damping));
  if (a.mc_samples < 1) usage_error("--mc-samples must be >= 1, got " + std::to_string(a.mc_samples));
  if (a.batch < 0) usage_error("--batch must be >= 1, got " + std::to_string(a.batch));
  if (a.curvature_batch < 0) usage_error("--curvature-batch must be >= 1, got " + std::to_string(a.curvature_batch));
  if (a.context < 0) usage_error("--context must be >= 1, got " + std::to_string(a.context));
  if (a.threads < 0) usage_error("--threads must be >= 1, or 0 for all cores; got " + std::to_string(a.threads));
  if (a.dtype != "float32" && a.dtype != "float64") usage_error("--dtype must be float32 or float64, got \"" + a.dtype + "\"");
  try {
    fisher_kind_from_string(a.fisher);
  } catch (const std::invalid_argument& e) {
    usage_error(std::string("--fisher: ") + e.what());
  }
  try {
    solver_from_string(a.solver);
  } catch (const std::invalid_argument& e) {
    usage_error(std::string("--solver: ") + e.what());
  }
  try {
    preconditioner_from_string(a.preconditioner);
  } catch (const std::invalid_argument& e) {
    usage_error(std::string("--preconditioner: ") + e.what());
  }
}

namespace {

// A file can be written at `path` when it is not a directory and its directory exists and is writable
// (outputs are written to a temporary file there and renamed).
void check_output_path(const std::string& option, const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode))
    throw std::invalid_argument(option + " " + path + ": is a directory, not a file name");
  const std::size_t slash = path.find_last_of('/');
  const std::string dir = slash == std::string::npos ? "." : slash == 0 ? "/" : path.substr(0, slash);
  if (::stat(dir.c_str(), &st) != 0)
    throw std::invalid_argument(option + " " + path + ": the directory " + dir + " does not exist");
  if (!S_ISDIR(st.st_mode)) throw std::invalid_argument(option + " " + path + ": " + dir + " is not a directory");
  if (::access(dir.c_str(), W_OK | X_OK) != 0)
    throw std::invalid_argument(option + " " + path + ": the directory " + dir + " is not writable");
}

}  // namespace

void check_output_paths(const Args& a) {
  const std::vector<std::pair<const char*, const std::string*>> outputs = {
      {"--output", &a.output},           {"--save-gradient", &a.save_gradient}, {"--report", &a.report},
      {"--eigenvectors", &a.eigenvectors}, {"--plot", &a.plot}, {"--save", &a.save}, {"--log", &a.log},
      {"--checkpoint", &a.checkpoint}};
  for (const auto& [option, path] : outputs) {
    if (path->empty()) continue;
    if (std::string(option) == "--output" && !a.dampings.empty()) {  // one file per damping
      for (double d : a.dampings) check_output_path(option, damping_output_path(a.output, d));
    } else {
      check_output_path(option, *path);
    }
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

}  // namespace cli
}  // namespace natgrad
