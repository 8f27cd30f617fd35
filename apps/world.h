// The processes of a run: this one alone, or the ranks of MPI_COMM_WORLD when natgrad is built with
// NATGRAD_USE_MPI (docs/distributed.md). Rank 0 prints and writes; the others compute their share quietly.
#pragma once

#include <natgrad/distributed/communicator.h>

#include <memory>
#include <string>

namespace natgrad {
namespace cli {

class World {
 public:
  /// Initializes MPI when built with it (MPI_Init_thread, funneled: only the main thread calls MPI).
  World(int* argc, char*** argv);
  /// Finalizes MPI.
  ~World();
  World(const World&) = delete;
  World& operator=(const World&) = delete;

  const Communicator& comm() const { return *comm_; }
  int rank() const { return comm_->rank(); }
  int size() const { return comm_->size(); }
  bool root() const { return comm_->rank() == 0; }
  /// Whether this binary was built with MPI (then headers and reports name the ranks).
  static bool has_mpi();
  /// The default thread count of each rank: the cores this process may run on, divided among the ranks on
  /// its node unless the MPI launcher already bound each rank to its own cores; never below 1.
  int default_threads() const;
  /// Ends every rank at once (MPI_Abort) after a failure that only this rank saw; exit(code) in one process.
  [[noreturn]] void abort(int code) const;

 private:
  std::unique_ptr<Communicator> comm_;
  int ranks_on_node_ = 1;
};

/// Runs `body` on every rank; if it throws on any rank, every rank throws the first failing rank's error
/// (a usage error stays a usage error), so no rank is left waiting for the others.
template <typename Body>
void agree(const Communicator& comm, Body&& body);

}  // namespace cli
}  // namespace natgrad

#include "world_agree.h"
