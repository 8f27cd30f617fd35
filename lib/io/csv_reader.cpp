#include "io/csv_reader.h"

#include <natgrad/io/dataset_io.h>

#include <cmath>
#include <cstdlib>
#include <sstream>
#include <vector>

#include "core/fail.h"
#include "io/sample_range.h"

namespace natgrad {
namespace detail {

namespace {

// The next non-empty line of `in` (a trailing '\r' removed) and its 1-based number in *row; false at the end.
bool next_line(std::istream& in, std::string& line, Index* row) {
  while (std::getline(in, line)) {
    ++*row;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (!line.empty()) return true;
  }
  return false;
}

// The cells of a CSV line as numbers; false if any is not a number (trailing blanks allowed: "3 foo" is not
// a number). A first line that is not all numbers is a header.
bool csv_numbers(const std::string& line, std::vector<double>& vals) {
  vals.clear();
  std::stringstream ss(line);
  std::string cell;
  bool numeric = true;
  while (std::getline(ss, cell, ',')) {
    char* end = nullptr;
    const double v = std::strtod(cell.c_str(), &end);
    while (end && (*end == ' ' || *end == '\t')) ++end;
    if (end == cell.c_str() || *end != '\0') numeric = false;
    vals.push_back(v);
  }
  return numeric;
}

}  // namespace

Index count_csv_rows(std::istream& in) {
  std::string line;
  std::vector<double> vals;
  Index row = 0, n = 0;
  while (next_line(in, line, &row))
    if (row > 1 || csv_numbers(line, vals)) ++n;  // (a first line not all numbers is a header)
  return n;
}

template <typename Scalar>
Dataset<Scalar> read_csv(std::istream& in, uint64_t bytes, const Shape& input_shape,
                         LikelihoodKind likelihood, Index C, const std::string& label, Index first,
                         Index count) {
  const Index F = shape_size(input_shape);
  const Index T = likelihood == LikelihoodKind::categorical ? 1 : C;
  // A row is F + T cells of at least one character, each followed by a comma or a line end (the last line
  // may lack its own), so `bytes` bytes hold at most (bytes + 1) / (2 (F + T)) rows.
  const uint64_t most_rows = (bytes + 1) / (2 * static_cast<uint64_t>(F + T));
  Index n = count;
  if (count == 0 || static_cast<uint64_t>(first) + static_cast<uint64_t>(count) > most_rows) {
    const Index total = count_csv_rows(in);
    in.clear();
    in.seekg(0);
    n = range_count(label, total, first, count, "samples in the data");
  }
  Dataset<Scalar> d;
  d.inputs.resize(F, n);
  if (likelihood == LikelihoodKind::categorical)
    d.labels.reserve(static_cast<std::size_t>(n));
  else
    d.targets.resize(T, n);
  std::string line;
  std::vector<double> vals;
  Index row = 0, sample = 0, kept = 0;
  while (kept < n && next_line(in, line, &row)) {
    const bool numeric = (row == 1 || sample >= first) && csv_numbers(line, vals);
    if (row == 1 && !numeric) continue;  // a header line
    if (sample++ < first) continue;      // another share's row: counted, not parsed
    if (!numeric) fail(label, "line " + std::to_string(row) + " has a value that is not a number");
    if (Index(vals.size()) != F + T)
      fail(label, "line " + std::to_string(row) + " has " + std::to_string(vals.size()) +
                      " values; expected " + std::to_string(F) + " inputs and " + std::to_string(T) +
                      " target" + (T > 1 ? "s" : ""));
    for (Index k = 0; k < F; ++k) d.inputs(k, kept) = Scalar(vals[std::size_t(k)]);
    if (likelihood == LikelihoodKind::categorical) {
      const double y = vals.back();
      if (y != std::floor(y))
        fail(label,
             "line " + std::to_string(row) + ": class index " + std::to_string(y) + " is not an integer");
      if (!(std::abs(y) < 9007199254740992.0))  // 2^53; NaN fails too
        fail(label,
             "line " + std::to_string(row) + ": class index " + std::to_string(y) + " is out of range");
      d.labels.push_back(static_cast<int64_t>(y));
    } else {
      for (Index k = 0; k < T; ++k) d.targets(k, kept) = Scalar(vals[std::size_t(F + k)]);
    }
    ++kept;
  }
  // The stream ended first (only when the rows were not counted before): `sample` rows in all.
  if (kept < n) {
    range_count(label, sample, first, count, "samples in the data");
    fail(label, "the file changed while being read");
  }
  return d;
}

template Dataset<float> read_csv<float>(std::istream&, uint64_t, const Shape&, LikelihoodKind, Index,
                                        const std::string&, Index, Index);
template Dataset<double> read_csv<double>(std::istream&, uint64_t, const Shape&, LikelihoodKind, Index,
                                          const std::string&, Index, Index);

}  // namespace detail

template <typename Scalar>
Dataset<Scalar> parse_csv(const std::string& text, const Shape& input_shape, LikelihoodKind likelihood,
                          Index C, const std::string& label) {
  std::istringstream in(text);
  return detail::read_csv<Scalar>(in, text.size(), input_shape, likelihood, C, label);
}

template Dataset<float> parse_csv<float>(const std::string&, const Shape&, LikelihoodKind, Index,
                                         const std::string&);
template Dataset<double> parse_csv<double>(const std::string&, const Shape&, LikelihoodKind, Index,
                                           const std::string&);

}  // namespace natgrad
