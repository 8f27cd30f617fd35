// natgrad-plan: how a Fisher-vector product's work divides among T threads, from the operator's own plan
// (FisherPlan: the chunk grid of phase A, the parameter tasks of phase B and their assignment), and the
// speedup that division allows: total work over the largest thread's, phase by phase (the phases are
// separated by barriers). A projection from the cost model (multiply-adds of the GEMMs), not a timing.
//
// Usage: natgrad-plan [T ...]   (default 1 2 8 16 64)
#include <natgrad/curvature/fisher_operator.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "benchmark_models.h"
#include "curvature/fisher_plan.h"

using namespace natgrad;

namespace {
void report(const char* name, const ModelSpec& spec, Index N, const std::vector<int>& threads) {
  const Network<float> model(spec);
  const detail::FisherPlan plan = detail::FisherPlan::make(model, N, FisherOptions());
  double total_b = 0;
  for (const auto& t : plan.tasks) total_b += t.macs;
  const double total_a = plan.chunk_macs_per_sample * double(N);
  std::printf("%s, B = %lld: %lld chunks of %lld samples, %zu parameter tasks; phase A %.2f GMAC, phase B %.2f GMAC\n",
              name, static_cast<long long>(N), static_cast<long long>(plan.num_chunks),
              static_cast<long long>(plan.chunk_size), plan.tasks.size(), total_a * 1e-9, total_b * 1e-9);
  for (int T : threads) {
    double max_a = 0, min_share = 1e300, max_share = 0;
    std::vector<double> share(static_cast<std::size_t>(T), 0.0);
    for (int t = 0; t < T; ++t) {
      Index k0, k1;
      plan.chunk_range(t, T, k0, k1);
      const double samples = double(std::min(N, k1 * plan.chunk_size) - std::min(N, k0 * plan.chunk_size));
      share[static_cast<std::size_t>(t)] = samples * plan.chunk_macs_per_sample;
      max_a = std::max(max_a, share[static_cast<std::size_t>(t)]);
    }
    double max_b = 0;
    const auto assignment = plan.assign(T);
    for (int t = 0; t < T; ++t) {
      double b = 0;
      for (int i : assignment[static_cast<std::size_t>(t)]) b += plan.tasks[static_cast<std::size_t>(i)].macs;
      max_b = std::max(max_b, b);
      share[static_cast<std::size_t>(t)] += b;
    }
    const double mean = (total_a + total_b) / T;
    for (double x : share) {
      min_share = std::min(min_share, x / mean);
      max_share = std::max(max_share, x / mean);
    }
    std::printf("  T = %3d: projected speedup %5.1f (phase A %5.1f, phase B %5.1f); thread shares %.2f to %.2f of the mean\n",
                T, (total_a + total_b) / (max_a + max_b), total_a / max_a, total_b / max_b, min_share, max_share);
  }
}
}  // namespace

int main(int argc, char** argv) {
  std::vector<int> threads;
  for (int i = 1; i < argc; ++i) threads.push_back(std::max(1, std::atoi(argv[i])));
  if (threads.empty()) threads = {1, 2, 8, 16, 64};
  report("MLP 784-1024-1024-10", bench::mlp(), 1000, threads);
  report("MLP 784-1024-1024-10", bench::mlp(), 8000, threads);
  report("CNN", bench::cnn(), 256, threads);
  report("CNN", bench::cnn(), 2048, threads);
  report("MLP 784-4096-4096-4096-10", bench::mlp(10, 4096, 3), 2000, threads);
  return 0;
}
