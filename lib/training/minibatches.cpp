// Minibatches: the epoch's order and the gathering of a batch (minibatches.h).
#include <natgrad/core/random.h>
#include <natgrad/training/minibatches.h>

#include <numeric>
#include <utility>

#include "core/fail.h"

namespace natgrad {

Index batches_per_epoch(Index num_samples, Index batch) {
  if (batch < 1) detail::fail("the batch size must be >= 1, got " + std::to_string(batch));
  return (num_samples + batch - 1) / batch;
}

std::vector<Index> epoch_order(Index num_samples, uint64_t seed, Index epoch, bool shuffle) {
  std::vector<Index> order(static_cast<std::size_t>(num_samples));
  std::iota(order.begin(), order.end(), Index(0));
  if (!shuffle) return order;
  const CounterRng rng(seed, rng_stream(RngDomain::shuffle, static_cast<uint64_t>(epoch)));
  for (Index i = num_samples - 1; i >= 1; --i) {
    const auto j = static_cast<Index>(rng.bits(static_cast<uint64_t>(i)) % static_cast<uint64_t>(i + 1));
    std::swap(order[static_cast<std::size_t>(i)], order[static_cast<std::size_t>(j)]);
  }
  return order;
}

template <typename Scalar>
Dataset<Scalar> gather(const Dataset<Scalar>& data, const std::vector<Index>& order, Index first, Index count) {
  if (first < 0 || count < 0 || first + count > static_cast<Index>(order.size()))
    detail::fail("gather: samples [" + std::to_string(first) + ", " + std::to_string(first + count) +
                 ") outside the order of " + std::to_string(order.size()));
  Dataset<Scalar> out;
  const Index N = data.size();
  out.inputs.resize(data.inputs.rows(), count);
  if (data.targets.size() > 0) out.targets.resize(data.targets.rows(), count);
  const Index T = N > 0 ? static_cast<Index>(data.labels.size()) / N : 0;  // labels per sample
  out.labels.reserve(static_cast<std::size_t>(count * T));
  for (Index j = 0; j < count; ++j) {
    const Index n = order[static_cast<std::size_t>(first + j)];
    out.inputs.col(j) = data.inputs.col(n);
    if (data.targets.size() > 0) out.targets.col(j) = data.targets.col(n);
    for (Index t = 0; t < T; ++t) out.labels.push_back(data.labels[static_cast<std::size_t>(n * T + t)]);
  }
  return out;
}

template Dataset<float> gather<float>(const Dataset<float>&, const std::vector<Index>&, Index, Index);
template Dataset<double> gather<double>(const Dataset<double>&, const std::vector<Index>&, Index, Index);

}  // namespace natgrad
