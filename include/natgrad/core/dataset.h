/// \file dataset.h
/// \brief A batch of inputs and targets in natgrad's layout (samples as columns).
///
/// \code
/// natgrad::Dataset<double> d;
/// d.inputs = natgrad::Mat<double>::Random(4, 10);  // 10 samples of 4 features
/// d.labels.assign(10, 0);                          // categorical targets
/// auto first5 = d.head(5);
/// \endcode
#pragma once

#include <natgrad/core/types.h>

#include <algorithm>
#include <cstdint>
#include <vector>

namespace natgrad {

/// Inputs and targets of N samples.
///
/// For a categorical likelihood the targets are `labels` (class indices, size N) and `targets` is empty;
/// for gaussian and bernoulli likelihoods they are `targets` (C × N) and `labels` is empty. For a model with
/// a likelihood per position (output [T, C]) each sample has T labels ([N, T] row-major, size N·T), or
/// (T·C) × N targets.
template <typename Scalar>
struct Dataset {
  Mat<Scalar> inputs;           ///< input_size × N, each column one sample in NCHW order
  std::vector<int64_t> labels;  ///< class indices (categorical), T per sample
  Mat<Scalar> targets;          ///< C × N real targets (gaussian, bernoulli)

  Index size() const { return inputs.cols(); }

  /// The samples [first, first + count) as a new dataset.
  Dataset<Scalar> slice(Index first, Index count) const {
    Dataset<Scalar> out;
    out.inputs = inputs.middleCols(first, count);
    if (!labels.empty()) {
      const auto T = static_cast<Index>(labels.size()) / std::max<Index>(size(), 1);  // labels per sample
      out.labels.assign(labels.begin() + first * T, labels.begin() + (first + count) * T);
    }
    if (targets.size() > 0) out.targets = targets.middleCols(first, count);
    return out;
  }
  /// The first `count` samples.
  Dataset<Scalar> head(Index count) const { return slice(0, count); }

  /// The same data in another precision.
  template <typename Other>
  Dataset<Other> cast() const {
    Dataset<Other> out;
    out.inputs = inputs.template cast<Other>();
    out.labels = labels;
    out.targets = targets.template cast<Other>();
    return out;
  }
};

}  // namespace natgrad
