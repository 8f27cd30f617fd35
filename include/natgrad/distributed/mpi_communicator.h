/// \file mpi_communicator.h
/// \brief Communicator over an MPI communicator (CMake option NATGRAD_USE_MPI; includes <mpi.h>).
///
/// sum() is a reduce-scatter followed by an all-gather, in segments of at most 2²⁰ entries: each rank owns
/// a contiguous block of a segment, receives every rank's values of that block (MPI_Alltoallv), adds them
/// in rank order, and the blocks are gathered back to every rank (MPI_Allgatherv). Each rank sends and
/// receives 2 (K − 1)/K · n values, as a ring all-reduce does, but the order of the additions is fixed
/// (a plain MPI_Allreduce promises none), so results are deterministic for a given K.
///
/// MPI must be initialized (MPI_Init or MPI_Init_thread) before the first call and finalized after the
/// last; the communicator is not duplicated, and is only used from the thread that calls these methods.
///
/// \code
/// MPI_Init(&argc, &argv);
/// {
///   natgrad::MpiCommunicator comm(MPI_COMM_WORLD);
///   natgrad::FisherOptions opt;
///   opt.communicator = &comm;   // with this rank's share of the batch (see FisherOptions)
/// }
/// MPI_Finalize();
/// \endcode
#pragma once

#include <natgrad/distributed/communicator.h>

#include <mpi.h>

#include <vector>

namespace natgrad {

class MpiCommunicator final : public Communicator {
 public:
  explicit MpiCommunicator(MPI_Comm comm);

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  void sum(float* x, Index n) const override;
  void sum(double* x, Index n) const override;
  bool broadcast(bool flag) const override;
  std::string first_error(const std::string& mine) const override;
  double max(double value) const override;

  /// The processes of this communicator on this one's node (MPI_COMM_TYPE_SHARED): what the default thread
  /// count divides the cores by.
  int ranks_on_node() const { return node_size_; }
  MPI_Comm comm() const { return comm_; }

 private:
  template <typename Scalar>
  void sum_impl(Scalar* x, Index n, MPI_Datatype type) const;

  MPI_Comm comm_;
  int rank_ = 0, size_ = 1, node_size_ = 1;
  mutable std::vector<double> scratch_;  // a segment's received blocks (as doubles or floats)
  mutable std::vector<int> counts_, displs_, recv_counts_, recv_displs_;
};

}  // namespace natgrad
