#include "world.h"

#include <natgrad/core/threads.h>

#include <cstdlib>
#include <thread>

#ifdef NATGRAD_HAVE_MPI
#include <natgrad/distributed/mpi_communicator.h>
#endif

namespace natgrad {
namespace cli {

World::World(int* argc, char*** argv) {
#ifdef NATGRAD_HAVE_MPI
  int provided = 0;
  MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided);
  auto mpi = std::make_unique<MpiCommunicator>(MPI_COMM_WORLD);
  ranks_on_node_ = mpi->ranks_on_node();
  comm_ = std::move(mpi);
#else
  (void)argc;
  (void)argv;
  comm_ = std::make_unique<SerialCommunicator>();
#endif
}

World::~World() {
#ifdef NATGRAD_HAVE_MPI
  comm_.reset();
  MPI_Finalize();
#endif
}

bool World::has_mpi() {
#ifdef NATGRAD_HAVE_MPI
  return true;
#else
  return false;
#endif
}

int World::default_threads() const {
  const int cores = available_cores();  // the processors this process's affinity allows
  const auto node = static_cast<int>(std::thread::hardware_concurrency());
  // Bound by the launcher to fewer cores than the node has: those cores are this rank's own.
  if (ranks_on_node_ <= 1 || (node > 0 && cores < node)) return cores;
  return std::max(1, cores / ranks_on_node_);
}

void World::abort(int code) const {
#ifdef NATGRAD_HAVE_MPI
  if (size() > 1) MPI_Abort(MPI_COMM_WORLD, code);
#endif
  std::exit(code);
}

}  // namespace cli
}  // namespace natgrad
