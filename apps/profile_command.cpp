// natgrad profile: where one Fisher-vector product's time goes, node by node, against the machine's GEMM
// rate measured in the same run.
#include "commands.h"
#include "problem.h"
#include "signals.h"

#include <natgrad/core/interrupted.h>
#include <natgrad/core/threads.h>
#include <natgrad/curvature/fisher_operator.h>

#include "core/reference_gemm.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <memory>
#include <stdexcept>
#include <vector>

namespace natgrad {
namespace cli {

namespace {

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[v.size() / 2];
}

// The reference rate of natgrad-bench's gemm/1024, median of 5 after one warm-up, in GFLOP/s.
double gemm_rate(int threads) {
  const Index n = 1024;
  const Mat<float> A = Mat<float>::Random(n, n), B = Mat<float>::Random(n, n);
  Mat<float> C(n, n);
  std::vector<double> times;
  for (int rep = 0; rep < 6; ++rep) {
    const auto t0 = clock_type::now();
    reference_gemm(A, B, C, threads);
    if (rep > 0) times.push_back(std::chrono::duration<double>(clock_type::now() - t0).count());
  }
  return 2.0 * double(n) * double(n) * double(n) / median(times) * 1e-9;
}

}  // namespace

template <typename Scalar>
int run_profile(Args& a, const World& world) {
  const Progress progress(a.quiet);
  install_signal_handlers(!a.quiet && world.root());
  if (a.products < 1) usage_error("--products must be >= 1, got " + std::to_string(a.products));
  Problem<Scalar> p = load_problem<Scalar>(a, true, progress, 0, world);
  const Network<Scalar>& model = *p.model;
  const int threads = num_threads();
  // A signal stops the run at the next chunk; the products timed before it make the profile.
  auto interrupted_during = [&](const char* what) {
    std::printf("interrupted by %s during %s: nothing timed; nothing written\n", signal_name(), what);
    return interrupted_status();
  };
  if (stop_agreed(world)) return interrupted_during("loading");
  progress.line("measuring gemm/1024 on %d threads", threads);
  const double gemm_gflops = gemm_rate(threads);
  FisherOptions fo = share_options(fisher_options(a), p, false, world);
  fo.profile = true;
  watch_fisher(fo, progress);
  std::unique_ptr<FisherOperator<Scalar>> op;
  Vec<Scalar> v, y;
  OperatorProfile forward;
  try {
    op = std::make_unique<FisherOperator<Scalar>>(model, p.theta, p.file.likelihood, p.data, fo);
    if (!op->forward_error().empty()) throw std::runtime_error("forward pass: " + op->forward_error());
    op->rebind(p.theta);  // the forward pass again, warm: the first one also paid for touching the activations' pages
    forward = op->profile();
    v = Vec<Scalar>::Random(op->cols());
    y.resize(op->rows());
    if (stop_agreed(world)) return interrupted_during("the forward pass");
    op->perform_op(v.data(), y.data());  // warm-up
  } catch (const Interrupted&) {
    return interrupted_during("the forward pass and the warm-up product");
  }
  FisherOperator<Scalar>& F = *op;
  F.reset_profile();
  std::vector<double> walls;
  OperatorProfile prof;  // of the products completed
  double last_line = -1e300;
  for (Index r = 0; r < a.products && !stop_agreed(world); ++r) {
    const auto t0 = clock_type::now();
    try {
      F.perform_op(v.data(), y.data());
    } catch (const Interrupted&) {
      break;
    }
    walls.push_back(std::chrono::duration<double>(clock_type::now() - t0).count());
    prof = F.profile();
    // The first product, then a line at least every kProgressInterval seconds with the time left.
    const double t = progress.elapsed();
    if (r == 0 || t - last_line >= kProgressInterval) {
      double spent = 0;
      for (double w : walls) spent += w;
      progress.line("profile: %lld of %lld products timed, eta %.0f s", static_cast<long long>(r + 1),
                    static_cast<long long>(a.products), spent / double(r + 1) * double(a.products - r - 1));
      last_line = t;
    }
  }
  if (walls.empty()) return interrupted_during("the first timed product");
  const bool interrupted = Index(walls.size()) < a.products;
  const double per = 1.0 / double(prof.products), T = double(F.options().num_threads > 0 ? F.options().num_threads : threads);
  const Index N = F.num_samples();

  // FLOPs from the layers' cost model: the R-op is dW·X plus, when its input has a tangent, W·dX; backprop
  // is the input cotangent (when the input depends on the parameters) and the parameter gradient.
  const std::size_t L = model.num_layers();
  std::vector<bool> depends(L + 1, false);
  for (std::size_t l = 0; l < L; ++l) {
    bool d = model.layer(l).num_params() > 0;
    for (int in : model.node_inputs(l)) d = d || depends[static_cast<std::size_t>(in)];
    depends[l + 1] = d;
  }
  struct Row {
    std::string id, op;
    double forward_ms, rop_ms, backprop_ms, flops_forward, flops_product, share;
  };
  std::vector<Row> rows;
  double total_cpu = prof.curvature_s + prof.reduction_s;
  for (std::size_t l = 0; l < L; ++l) total_cpu += prof.rop_s[l] + prof.backprop_s[l] + prof.gradient_s[l];
  for (std::size_t l = 0; l < L; ++l) {
    const Layer<Scalar>& layer = model.layer(l);
    const double gemm = 2.0 * layer.macs_per_sample() * double(N);
    const bool tangent_in = depends[static_cast<std::size_t>(model.node_inputs(l)[0])];
    const bool params = layer.num_params() > 0;
    const double cpu = prof.rop_s[l] + prof.backprop_s[l] + prof.gradient_s[l];
    rows.push_back({model.node_id(l), layer.name(), forward.forward_s[l] / T * 1e3, prof.rop_s[l] * per / T * 1e3,
                    (prof.backprop_s[l] + prof.gradient_s[l]) * per / T * 1e3, gemm,
                    params ? gemm * ((tangent_in ? 2 : 1) + (tangent_in ? 1 : 0) + 1) : 0.0,
                    total_cpu > 0 ? cpu / total_cpu : 0.0});
  }
  const double product_s = median(walls);
  std::printf("natgrad profile: %s (%lld parameters), %lld samples, fisher %s, %s, %d threads; one product "
              "%.2f ms (median of %lld), gemm/1024 %.1f GFLOP/s in this run\n",
              p.model_label.c_str(), static_cast<long long>(model.num_params()), static_cast<long long>(p.total),
              a.fisher.c_str(), a.dtype.c_str(), threads, product_s * 1e3, static_cast<long long>(walls.size()),
              gemm_gflops);
  std::printf("(ms per pass on %d threads: thread time / threads; GFLOP/s of R-op + backprop and its fraction of "
              "gemm/1024; share: of the product's thread time)\n", threads);
  std::printf("  %-24s %-16s %10s %10s %10s %12s %9s %6s %7s\n", "node", "op", "forward", "R-op", "backprop",
              "GFLOP/product", "GFLOP/s", "gemm", "share");
  for (const Row& r : rows) {
    const double ms = r.rop_ms + r.backprop_ms;
    const double rate = r.flops_product > 0 && ms > 0 ? r.flops_product / (ms * 1e-3) * 1e-9 : 0.0;
    if (r.flops_product > 0)
      std::printf("  %-24s %-16s %10.3f %10.3f %10.3f %12.4f %9.1f %5.0f%% %6.1f%%\n", r.id.c_str(), r.op.c_str(),
                  r.forward_ms, r.rop_ms, r.backprop_ms, r.flops_product * 1e-9, rate, 100 * rate / gemm_gflops,
                  100 * r.share);
    else
      std::printf("  %-24s %-16s %10.3f %10.3f %10.3f %12s %9s %6s %6.1f%%\n", r.id.c_str(), r.op.c_str(),
                  r.forward_ms, r.rop_ms, r.backprop_ms, "-", "-", "-", 100 * r.share);
  }
  std::printf("  output curvature H u: %.3f ms, %.1f%%; partial gradients summed: %.3f ms, %.1f%%\n",
              prof.curvature_s * per / T * 1e3, total_cpu > 0 ? 100 * prof.curvature_s / total_cpu : 0.0,
              prof.reduction_s * per / T * 1e3, total_cpu > 0 ? 100 * prof.reduction_s / total_cpu : 0.0);

  if (!a.report.empty() && world.root()) {
    nlohmann::ordered_json j;
    j["command"] = "profile";
    j["params"] = model.num_params();
    j["samples"] = p.total;
    j["fisher"] = a.fisher;
    j["dtype"] = a.dtype;
    j["threads"] = threads;
    j["ranks"] = world.size();
    j["products"] = prof.products;
    j["product_s"] = product_s;
    j["gemm_gflops"] = gemm_gflops;
    j["nodes"] = nlohmann::ordered_json::array();
    for (std::size_t l = 0; l < L; ++l) {
      const Row& r = rows[l];
      const double s = (r.rop_ms + r.backprop_ms) * 1e-3;
      j["nodes"].push_back({{"node", r.id}, {"op", r.op},
                            {"forward_s", r.forward_ms * 1e-3}, {"rop_s", r.rop_ms * 1e-3},
                            {"backprop_s", prof.backprop_s[l] * per / T}, {"gradient_s", prof.gradient_s[l] * per / T},
                            {"flops_forward", r.flops_forward}, {"flops_product", r.flops_product},
                            {"gflops", r.flops_product > 0 && s > 0 ? r.flops_product / s * 1e-9 : 0.0},
                            {"share", r.share}});
    }
    j["curvature_s"] = prof.curvature_s * per / T;
    j["reduction_s"] = prof.reduction_s * per / T;
    if (interrupted) j["interrupted"] = {{"signal", signal_name()}, {"skipped", {std::to_string(a.products - Index(walls.size())) + " products"}}};
    write_file_atomically(a.report, j.dump(2) + "\n");
  }
  if (!interrupted) return 0;
  std::printf("interrupted by %s after %zu of %lld products: the profile is of those\n", signal_name(), walls.size(),
              static_cast<long long>(a.products));
  return interrupted_status();
}

template int run_profile<float>(Args&, const World&);
template int run_profile<double>(Args&, const World&);

}  // namespace cli
}  // namespace natgrad
