// This rank's share of a minibatch that the ranks of a communicator share (optimizer.h, trainer.h): every rank
// holds the whole batch, and computes on its contiguous share of it (share_of), which may be empty.
#pragma once

#include <natgrad/core/dataset.h>
#include <natgrad/curvature/fisher_operator.h>

#include <algorithm>

namespace natgrad {
namespace detail {

/// The first `count` samples of `batch` as this rank sees them: under a communicator of K > 1 ranks its share
/// and FisherOptions that say which share it is (first_sample, total_samples); in one process the samples
/// themselves (no copy when they are the whole batch) and the options unchanged.
template <typename Scalar>
class BatchShare {
 public:
  BatchShare(const Dataset<Scalar>& batch, Index count, const FisherOptions& base) : options_(base) {
    const Communicator* comm = base.communicator;
    if (comm && comm->size() > 1) {
      const SampleShare s = share_of(count, comm->rank(), comm->size());
      own_ = batch.slice(s.first, s.count);
      options_.first_sample = s.first;
      options_.total_samples = count;
    } else if (count < batch.size()) {
      own_ = batch.head(count);
      options_.communicator = nullptr;
    } else {
      whole_ = &batch;
      options_.communicator = nullptr;
    }
  }
  BatchShare(const BatchShare&) = delete;
  BatchShare& operator=(const BatchShare&) = delete;

  /// This rank's samples.
  const Dataset<Scalar>& data() const { return whole_ ? *whole_ : own_; }
  /// `base` for them.
  const FisherOptions& options() const { return options_; }

 private:
  const Dataset<Scalar>* whole_ = nullptr;
  Dataset<Scalar> own_;
  FisherOptions options_;
};

}  // namespace detail
}  // namespace natgrad
