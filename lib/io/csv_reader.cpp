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

// The cells of a CSV line: their text in `cells`, their values (strtod's syntax; blanks after a number are
// allowed, "3 foo" is not a number) in `vals`. Returns the index of the first cell that is not a number, or
// -1. A first line that is not all numbers is a header.
Index csv_numbers(const std::string& line, std::vector<double>& vals, std::vector<std::string>& cells) {
  vals.clear();
  cells.clear();
  std::stringstream ss(line);
  std::string cell;
  Index bad = -1;
  while (std::getline(ss, cell, ',')) {
    char* end = nullptr;
    const double v = std::strtod(cell.c_str(), &end);
    while (end && (*end == ' ' || *end == '\t')) ++end;
    if (bad < 0 && (end == cell.c_str() || *end != '\0')) bad = Index(cells.size());
    vals.push_back(v);
    cells.push_back(cell);
  }
  return bad;
}

// "line 3, column 2" (both counted from 1, every line of the file counted).
std::string where(Index row, Index column) {
  return "line " + std::to_string(row) + ", column " + std::to_string(column + 1);
}

}  // namespace

Index count_csv_rows(std::istream& in) {
  std::string line;
  std::vector<double> vals;
  std::vector<std::string> cells;
  Index row = 0, n = 0;
  while (next_line(in, line, &row))
    if (row > 1 || csv_numbers(line, vals, cells) < 0) ++n;  // (a first line not all numbers is a header)
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
  std::vector<std::string> cells;
  Index row = 0, sample = 0, kept = 0;
  while (kept < n && next_line(in, line, &row)) {
    const Index bad = row == 1 || sample >= first ? csv_numbers(line, vals, cells) : -1;
    if (row == 1 && bad >= 0) continue;  // a header line
    if (sample++ < first) continue;      // another share's row: counted, not parsed
    if (bad >= 0) fail(label, where(row, bad) + ": \"" + cells[std::size_t(bad)] + "\" is not a number");
    if (Index(vals.size()) != F + T)
      fail(label, "line " + std::to_string(row) + " has " + std::to_string(vals.size()) +
                      " values; expected " + std::to_string(F) + " inputs and " + std::to_string(T) +
                      " target" + (T > 1 ? "s" : ""));
    for (Index k = 0; k < F; ++k) d.inputs(k, kept) = Scalar(vals[std::size_t(k)]);
    if (likelihood == LikelihoodKind::categorical) {
      const double y = vals.back();
      const std::string index = where(row, F) + ": class index \"" + cells.back() + "\"";
      if (y != std::floor(y)) fail(label, index + " is not an integer");                 // NaN too
      if (!(std::abs(y) < 9007199254740992.0)) fail(label, index + " is out of range");  // 2^53
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
