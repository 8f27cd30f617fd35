/// \file communicator.h
/// \brief The processes that share a batch, behind a small interface: the library stays free of MPI.
///
/// A Fisher-vector product, the gradient and the loss are sums over samples, so a batch split over K
/// processes (ranks) needs one sum across them per product. Communicator is that sum and the few agreements
/// around it. SerialCommunicator is the one-process case (every call a no-op); MpiCommunicator
/// (distributed/mpi_communicator.h, built with the CMake option NATGRAD_USE_MPI) wraps an MPI_Comm.
///
/// **Determinism.** sum() adds the ranks' partial values in rank order, ((x₀ + x₁) + x₂) + …, whatever the
/// timing: results are bit-identical from run to run for a given K, and every rank holds the same result
/// (so replicated solvers, CG and Lanczos, take the same decisions on every rank).
///
/// Every method is collective: all ranks call it, in the same order, with the same n.
///
/// \code
/// const natgrad::Communicator& comm = natgrad::serial_communicator();
/// std::vector<double> x{1, 2};
/// comm.sum(x.data(), 2);                       // one process: unchanged
/// std::string e = comm.first_error("");        // "" when no rank reports an error
/// \endcode
#pragma once

#include <natgrad/core/types.h>

#include <string>

namespace natgrad {

class Communicator {
 public:
  virtual ~Communicator() = default;
  /// This process's rank, 0 … size() − 1.
  virtual int rank() const = 0;
  /// The number of ranks K.
  virtual int size() const = 0;
  /// x ← Σ over ranks of x (n entries), added in rank order; the same result on every rank.
  virtual void sum(float* x, Index n) const = 0;
  virtual void sum(double* x, Index n) const = 0;
  /// Rank 0's flag, on every rank (rank 0 decides, for example, whether a signal stops a solve).
  virtual bool broadcast(bool flag) const = 0;
  /// The first non-empty message in rank order, on every rank ("" if every rank passed ""): how the ranks
  /// agree to fail together, with the message of the rank that failed.
  virtual std::string first_error(const std::string& mine) const = 0;
  /// The largest of the ranks' values, on every rank.
  virtual double max(double value) const = 0;

  bool is_root() const { return rank() == 0; }
};

/// Entries per segment of a sum over ranks: an MPI sum holds kSumSegment + K doubles of scratch.
constexpr Index kSumSegment = Index(1) << 20;

/// One process: size() 1, every collective returns its input.
class SerialCommunicator final : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  void sum(float*, Index) const override {}
  void sum(double*, Index) const override {}
  bool broadcast(bool flag) const override { return flag; }
  std::string first_error(const std::string& mine) const override { return mine; }
  double max(double value) const override { return value; }
};

/// The process-wide SerialCommunicator.
const Communicator& serial_communicator();

/// The contiguous share of `total` samples that rank `rank` of `ranks` holds: [first, first + count), as
/// equal as possible (sizes differ by at most one), in rank order.
struct SampleShare {
  Index first = 0, count = 0;
};
inline SampleShare share_of(Index total, int rank, int ranks) {
  const Index a = total * rank / ranks, b = total * (rank + 1) / ranks;
  return {a, b - a};
}

}  // namespace natgrad
