// natgrad-mpi-bench: the Fisher-vector product of natgrad-bench's mlp/fvp_exact (MLP 784-1024-1024-10, batch
// 1000, float32, exact categorical Fisher) with the batch shared by the MPI ranks, and the sum over ranks
// of one parameter-sized vector alone. Built with NATGRAD_USE_MPI. benchmarks/mpi_scaling.sh compares
// 1 rank × 2 threads with 2 ranks × 1 thread in one run.
//
//   mpirun -np K natgrad-mpi-bench [--threads T] [--repeats R] [--batch B]
//
// Prints one line (rank 0): ranks, threads, the product's median [min, max] in ms (a barrier before each,
// wall time on rank 0), products per second, and the median sum of the P parameters over the ranks.
#include "benchmark_models.h"
#include "random_batch.h"

#include <natgrad/core/random.h>
#include <natgrad/core/threads.h>
#include <natgrad/curvature/fisher_operator.h>
#include <natgrad/distributed/mpi_communicator.h>
#include <natgrad/model/initialization.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

using namespace natgrad;

namespace {
double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}
}  // namespace

int main(int argc, char** argv) {
  int provided = 0;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided);
  int threads = 1, repeats = 15;
  Index batch = 1000;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--threads")) threads = std::atoi(argv[i + 1]);
    if (!std::strcmp(argv[i], "--repeats")) repeats = std::atoi(argv[i + 1]);
    if (!std::strcmp(argv[i], "--batch")) batch = std::atol(argv[i + 1]);
  }
  {
    MpiCommunicator comm(MPI_COMM_WORLD);
    set_num_threads(threads);
    Network<float> model(bench::mlp(10));
    const Vec<float> theta = init_parameters(model, 0);
    // The same batch as natgrad-bench's, and this rank's share of it.
    const SampleShare share = share_of(batch, comm.rank(), comm.size());
    const Dataset<float> data =
        bench::random_batch(model, bench::mlp(10), LikelihoodKind::categorical, batch).slice(share.first, share.count);
    FisherOptions fo;
    fo.damping = 1e-3;
    fo.communicator = &comm;
    fo.first_sample = share.first;
    fo.total_samples = batch;
    FisherOperator<float> F(model, theta, LikelihoodKind::categorical, data, fo);
    const Vec<float> v = init_parameters(model, 7);
    Vec<float> y(F.rows()), s = v;
    using clock = std::chrono::steady_clock;
    auto time = [&](auto&& op) {
      std::vector<double> ms;
      op();  // warm-up (first-touch of every buffer)
      for (int r = 0; r < repeats; ++r) {
        MPI_Barrier(MPI_COMM_WORLD);
        const auto t0 = clock::now();
        op();
        ms.push_back(std::chrono::duration<double, std::milli>(clock::now() - t0).count());
      }
      return ms;
    };
    const std::vector<double> fvp = time([&] { F.perform_op(v.data(), y.data()); });
    const std::vector<double> sum = time([&] { comm.sum(s.data(), s.size()); });
    if (comm.is_root())
      std::printf("ranks %d threads %d: fvp median %.2f ms [%.2f, %.2f], %.3f products/s; sum of %lld floats over "
                  "the ranks median %.3f ms [%.3f, %.3f]\n",
                  comm.size(), threads, median(fvp), *std::min_element(fvp.begin(), fvp.end()),
                  *std::max_element(fvp.begin(), fvp.end()), 1000.0 / median(fvp),
                  static_cast<long long>(F.rows()), median(sum), *std::min_element(sum.begin(), sum.end()),
                  *std::max_element(sum.begin(), sum.end()));
  }
  MPI_Finalize();
  return 0;
}
