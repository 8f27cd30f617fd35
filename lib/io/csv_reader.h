// Private: CSV datasets read line by line, keeping only the rows of one share: one sample a row, the inputs
// then the target (categorical: one integer column; otherwise C columns); a first line that is not all
// numbers is a header; empty lines are skipped. Rows outside the share are counted, not parsed.
#pragma once

#include <natgrad/core/dataset.h>
#include <natgrad/likelihood/likelihood.h>

#include <cstdint>
#include <istream>
#include <string>

namespace natgrad {
namespace detail {

/// The samples of a CSV stream: its non-empty lines, less a first line that is not all numbers.
Index count_csv_rows(std::istream& in);

/// Rows [first, first + count) of a CSV stream positioned at its start (count 0: to the end), checked
/// against the model's input size and likelihood; `bytes` is the stream's length. Reads the stream twice
/// when the number of rows must be known first (count 0, or more rows asked for than `bytes` could hold),
/// so the samples are stored once, in place. Throws std::invalid_argument("<label>: <problem>").
template <typename Scalar>
Dataset<Scalar> read_csv(std::istream& in, uint64_t bytes, const Shape& input_shape,
                         LikelihoodKind likelihood, Index num_outputs, const std::string& label,
                         Index first = 0, Index count = 0);

}  // namespace detail
}  // namespace natgrad
