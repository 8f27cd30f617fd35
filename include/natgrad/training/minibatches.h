/// \file minibatches.h
/// \brief Which samples make minibatch k of an epoch.
///
/// Without shuffling, minibatch k is samples [kB, (k+1)B) in file order and the last one is smaller, as PyTorch's
/// `DataLoader(shuffle=False, drop_last=False)`. With shuffling, the epoch's order is a permutation drawn by
/// Fisher–Yates from the counter-based generator keyed by (seed, epoch): position i (from N − 1 down to 1)
/// swaps with j = bits(i) mod (i + 1), draw i of stream rng_stream(RngDomain::shuffle, epoch). The same for any
/// thread or process count.
#pragma once

#include <natgrad/core/dataset.h>

#include <cstdint>
#include <vector>

namespace natgrad {

/// ⌈N / B⌉.
Index batches_per_epoch(Index num_samples, Index batch);

/// The order of the N samples in `epoch` (a permutation, or 0 … N − 1 without shuffling).
std::vector<Index> epoch_order(Index num_samples, uint64_t seed, Index epoch, bool shuffle);

/// The samples order[first, first + count) of `data`, in that order (inputs, labels with their positions,
/// targets).
template <typename Scalar>
Dataset<Scalar> gather(const Dataset<Scalar>& data, const std::vector<Index>& order, Index first, Index count);

}  // namespace natgrad
