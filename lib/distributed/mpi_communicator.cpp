#include <natgrad/distributed/mpi_communicator.h>

#include <algorithm>

namespace natgrad {

MpiCommunicator::MpiCommunicator(MPI_Comm comm) : comm_(comm) {
  MPI_Comm_rank(comm_, &rank_);
  MPI_Comm_size(comm_, &size_);
  MPI_Comm node;
  MPI_Comm_split_type(comm_, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &node);
  MPI_Comm_size(node, &node_size_);
  MPI_Comm_free(&node);
  const auto K = static_cast<std::size_t>(size_);
  counts_.resize(K);
  displs_.resize(K);
  recv_counts_.resize(K);
  recv_displs_.resize(K);
}

template <typename Scalar>
void MpiCommunicator::sum_impl(Scalar* x, Index n, MPI_Datatype type) const {
  if (size_ == 1 || n == 0) return;
  const auto K = static_cast<std::size_t>(size_);
  if (scratch_.empty()) scratch_.resize(static_cast<std::size_t>(kSumSegment + size_));
  Scalar* recv = reinterpret_cast<Scalar*>(scratch_.data());  // (a float view uses half of it)
  for (Index s0 = 0; s0 < n; s0 += kSumSegment) {
    const Index S = std::min(kSumSegment, n - s0);
    for (std::size_t j = 0; j < K; ++j) {
      const SampleShare b = share_of(S, static_cast<int>(j), size_);
      counts_[j] = static_cast<int>(b.count);
      displs_[j] = static_cast<int>(b.first);
    }
    const auto me = static_cast<std::size_t>(rank_);
    const int mine = counts_[me];
    for (std::size_t i = 0; i < K; ++i) {
      recv_counts_[i] = mine;
      recv_displs_[i] = static_cast<int>(i) * mine;
    }
    // Reduce-scatter: rank j receives every rank's values of block j, and adds them in rank order.
    MPI_Alltoallv(x + s0, counts_.data(), displs_.data(), type, recv, recv_counts_.data(), recv_displs_.data(),
                  type, comm_);
    Scalar* out = x + s0 + displs_[me];
    std::copy(recv, recv + mine, out);
    for (std::size_t i = 1; i < K; ++i) {
      const Scalar* part = recv + i * static_cast<std::size_t>(mine);
      for (int e = 0; e < mine; ++e) out[e] += part[e];
    }
    // All-gather: every rank gets every block.
    MPI_Allgatherv(MPI_IN_PLACE, 0, type, x + s0, counts_.data(), displs_.data(), type, comm_);
  }
}

void MpiCommunicator::sum(float* x, Index n) const { sum_impl(x, n, MPI_FLOAT); }
void MpiCommunicator::sum(double* x, Index n) const { sum_impl(x, n, MPI_DOUBLE); }

bool MpiCommunicator::broadcast(bool flag) const {
  int v = flag ? 1 : 0;
  MPI_Bcast(&v, 1, MPI_INT, 0, comm_);
  return v != 0;
}

std::string MpiCommunicator::first_error(const std::string& mine) const {
  std::vector<int> lengths(static_cast<std::size_t>(size_));
  const int len = static_cast<int>(mine.size());
  MPI_Allgather(&len, 1, MPI_INT, lengths.data(), 1, MPI_INT, comm_);
  const auto first = std::find_if(lengths.begin(), lengths.end(), [](int l) { return l > 0; });
  if (first == lengths.end()) return std::string();
  const int root = static_cast<int>(first - lengths.begin());
  std::string message = rank_ == root ? mine : std::string(static_cast<std::size_t>(*first), '\0');
  MPI_Bcast(&message[0], *first, MPI_CHAR, root, comm_);
  return message;
}

double MpiCommunicator::max(double value) const {
  double out = value;
  MPI_Allreduce(&value, &out, 1, MPI_DOUBLE, MPI_MAX, comm_);
  return out;
}

}  // namespace natgrad
