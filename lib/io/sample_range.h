// Private: the samples a reader is asked for, [first, first + count) of the file's `total`, or the error
// naming the batch.
#pragma once

#include <natgrad/core/types.h>

#include <algorithm>
#include <string>

#include "core/fail.h"

namespace natgrad {
namespace detail {

/// The number of samples in [first, first + count) (count 0: from first to the end) of `total`; throws
/// std::invalid_argument("<path>: …") when the file holds no samples or the range lies beyond them. `unit`
/// names what is counted ("samples in the data").
inline Index range_count(const std::string& path, Index total, Index first, Index count,
                         const std::string& unit) {
  if (total == 0) fail(path, "holds no samples");
  const Index n = count > 0 ? count : total - first;
  if (first + (count > 0 ? count : 0) > total || n <= 0) {
    if (first == 0)
      fail(path, "batch " + std::to_string(count) + " exceeds the " + std::to_string(total) + " " + unit);
    fail(path, "samples [" + std::to_string(first) + ", " +
                   std::to_string(first + std::max<Index>(count, 0)) + ") lie beyond the " +
                   std::to_string(total) + " " + unit);
  }
  return n;
}

}  // namespace detail
}  // namespace natgrad
