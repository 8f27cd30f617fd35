#include "commands.h"
#include "problem.h"
#include "signals.h"
#include "report.h"

#include <natgrad/core/interrupted.h>
#include <natgrad/curvature/fisher_operator.h>
#include <natgrad/io/parameters_io.h>
#include <natgrad/io/safetensors.h>

#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdio>
#include <memory>
#include <stdexcept>

namespace natgrad {
namespace cli {

template <typename Scalar>
int run_fvp(Args& a, const World& world) {
  const Progress progress(a.quiet);
  install_signal_handlers(!a.quiet && world.root());
  if (a.vector.empty()) usage_error("--vector is required");
  if (a.output.empty()) usage_error("--output is required");
  Problem<Scalar> p = load_problem<Scalar>(a, false, progress, 0, world);
  Vec<Scalar> v;
  agree(world.comm(), [&] { v = load_parameters<Scalar>(a.vector, *p.model); });
  // A signal before the product is done stops the run at the next chunk: nothing is complete to write.
  auto interrupted_during = [&](const char* what) {
    std::printf("interrupted by %s during %s: nothing written\n", signal_name(), what);
    return interrupted_status();
  };
  if (stop_agreed(world)) return interrupted_during("loading");
  const auto t0 = clock_type::now();
  FisherOptions fo = share_options(fisher_options(a), p, false, world);
  watch_fisher(fo, progress);
  std::unique_ptr<FisherOperator<Scalar>> op;
  try {
    op = std::make_unique<FisherOperator<Scalar>>(*p.model, p.theta, p.file.likelihood, p.data, fo);
  } catch (const Interrupted&) {
    return interrupted_during("the forward pass");
  }
  const FisherOperator<Scalar>& F = *op;
  if (!F.forward_error().empty()) throw std::runtime_error("forward pass: " + F.forward_error() + "; nothing written");
  if (stop_agreed(world)) return interrupted_during("the forward pass");
  progress.line("the product (F + lambda I) v");
  Vec<Scalar> y(F.rows());
  try {
    F.perform_op(v.data(), y.data());
  } catch (const Interrupted&) {
    return interrupted_during("the product");
  }
  const double secs = std::chrono::duration<double>(clock_type::now() - t0).count();
  if (!y.allFinite()) throw std::runtime_error("the Fisher-vector product is not finite; nothing written");
  save_parameters(a.output, *p.model, y, out_dtype(a), {{"natgrad", "Fisher-vector product"}});
  std::printf("natgrad fvp: |v| = %.6e, |(F + %g I) v| = %.6e, v^T (F + %g I) v = %.6e, %.3f s%s; wrote %s\n",
              double(v.norm()), a.damping, double(y.norm()), a.damping,
              double(v.template cast<double>().dot(y.template cast<double>())), secs,
              World::has_mpi() ? (", ranks: " + std::to_string(world.size())).c_str() : "", a.output.c_str());
  if (!a.report.empty()) {
    nlohmann::ordered_json j;
    j["command"] = "fvp";
    j["params"] = p.model->num_params();
    j["samples"] = p.total;
    j["ranks"] = world.size();
    j["fisher"] = a.fisher;
    j["damping"] = a.damping;
    j["vector_norm"] = double(v.norm());
    j["product_norm"] = double(y.norm());
    j["timing_s"] = {{"total", secs}};
    write_file_atomically(a.report, j.dump(2) + "\n");
  }
  // A signal that came after the product: the output is complete and written; the status still says so.
  if (!stop_agreed(world)) return 0;
  std::printf("interrupted by %s after the product was complete: wrote it\n", signal_name());
  return interrupted_status();
}

template int run_fvp<float>(Args&, const World&);
template int run_fvp<double>(Args&, const World&);

}  // namespace cli
}  // namespace natgrad
