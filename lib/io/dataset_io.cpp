#include <natgrad/io/dataset_io.h>
#include <natgrad/io/safetensors.h>

#include "core/fail.h"
#include "io/checked_size.h"

#include <zlib.h>

#include <cerrno>
#include <cmath>
#include <cstring>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <sys/stat.h>

namespace natgrad {

namespace {
using detail::fail;

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}
bool is_directory(const std::string& p) {
  struct stat st;
  return ::stat(p.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}
bool exists(const std::string& p) {
  struct stat st;
  return ::stat(p.c_str(), &st) == 0;
}

// The whole (possibly gzip-compressed) file; zlib reads plain files transparently. Capped at 1 GiB.
std::vector<uint8_t> read_maybe_gzip(const std::string& path) {
  gzFile f = gzopen(path.c_str(), "rb");
  if (!f) fail(path, std::string("cannot open file (") + std::strerror(errno) + ")");
  std::vector<uint8_t> out;
  uint8_t buf[1 << 16];
  int n;
  while ((n = gzread(f, buf, sizeof buf)) > 0) {
    out.insert(out.end(), buf, buf + n);
    if (out.size() > (1ull << 30)) {
      gzclose(f);
      fail(path, "larger than 1 GiB uncompressed");
    }
  }
  int err = 0;
  const char* msg = gzerror(f, &err);
  const bool bad = n < 0 || (err != Z_OK && err != Z_STREAM_END);
  const std::string m = msg ? msg : "";
  gzclose(f);
  if (bad) fail(path, "corrupt or truncated gzip data (" + m + ")");
  return out;
}

// An IDX file larger than this is refused from its header, before anything is read.
constexpr uint64_t kMaxIdxBytes = 1ull << 40;

std::string dims_to_string(const std::vector<uint32_t>& dims) {
  std::string s;
  for (uint32_t d : dims) s += (s.empty() ? "" : " x ") + std::to_string(d);
  return s;
}

uint32_t be32(const std::vector<uint8_t>& b, std::size_t at) {
  return (uint32_t(b[at]) << 24) | (uint32_t(b[at + 1]) << 16) | (uint32_t(b[at + 2]) << 8) | uint32_t(b[at + 3]);
}

}  // namespace

std::vector<uint8_t> parse_idx(const std::vector<uint8_t>& b, int expect_dims, const std::string& path,
                               std::vector<uint32_t>* dims) {
  if (b.size() < 4) fail(path, "too short for an IDX header");
  if (b[0] != 0 || b[1] != 0) fail(path, "not an IDX file (bad magic number)");
  if (b[2] != 0x08) fail(path, "IDX element type 0x" + std::to_string(b[2]) + " is not unsigned byte (0x08)");
  const int ndims = b[3];
  if (ndims != expect_dims)
    fail(path, "IDX file has " + std::to_string(ndims) + " dimensions, expected " + std::to_string(expect_dims));
  if (b.size() < 4 + 4 * std::size_t(ndims)) fail(path, "truncated IDX header");
  std::vector<uint32_t> shape;
  for (int d = 0; d < ndims; ++d) shape.push_back(be32(b, 4 + 4 * std::size_t(d)));
  uint64_t count = 0;
  if (!detail::checked_product(shape, &count, kMaxIdxBytes))
    fail(path, "IDX dimensions " + dims_to_string(shape) + " are absurdly large (more than 2^40 bytes)");
  const std::size_t start = 4 + 4 * std::size_t(ndims);
  if (b.size() - start != count)
    fail(path, "IDX header promises " + std::to_string(count) + " bytes of data but the file holds " +
                   std::to_string(b.size() - start) + " (truncated?)");
  if (dims) *dims = shape;
  return std::vector<uint8_t>(b.begin() + static_cast<std::ptrdiff_t>(start), b.end());
}

namespace {

// An IDX file (gzip or plain) of unsigned bytes: returns the dimensions, and the data in `data`.
std::vector<uint32_t> read_idx(const std::string& path, std::vector<uint8_t>& data, int expect_dims) {
  std::vector<uint32_t> dims;
  data = parse_idx(read_maybe_gzip(path), expect_dims, path, &dims);
  return dims;
}

std::string find_idx(const std::string& dir, const std::string& base) {
  for (const std::string& candidate : {dir + "/" + base + ".gz", dir + "/" + base})
    if (exists(candidate)) return candidate;
  fail(dir, "missing " + base + "[.gz] (expected the four MNIST-format IDX files)");
}

// The samples [first, first + count) of `total` (count 0: to the end), or the error naming the batch.
Index range_count(const std::string& path, Index total, Index first, Index count, const std::string& unit) {
  if (total == 0) fail(path, "holds no samples");
  const Index n = count > 0 ? count : total - first;
  if (first + (count > 0 ? count : 0) > total || n <= 0) {
    if (first == 0)
      fail(path, "batch " + std::to_string(count) + " exceeds the " + std::to_string(total) + " " + unit);
    fail(path, "samples [" + std::to_string(first) + ", " + std::to_string(first + std::max<Index>(count, 0)) +
                   ") lie beyond the " + std::to_string(total) + " " + unit);
  }
  return n;
}

template <typename Scalar>
Dataset<Scalar> load_idx(const std::string& dir, const Shape& input_shape, Split split, Index first, Index count) {
  const std::string prefix = split == Split::train ? "train" : "t10k";
  const std::string ipath = find_idx(dir, prefix + "-images-idx3-ubyte");
  const std::string lpath = find_idx(dir, prefix + "-labels-idx1-ubyte");
  std::vector<uint8_t> pixels, labels;
  const auto ishape = read_idx(ipath, pixels, 3);
  const auto lshape = read_idx(lpath, labels, 1);
  if (ishape[0] != lshape[0])
    fail(lpath, std::to_string(lshape[0]) + " labels for " + std::to_string(ishape[0]) + " images");
  const Index per = Index(ishape[1]) * Index(ishape[2]);
  if (per != shape_size(input_shape))
    fail(ipath, "images of " + std::to_string(ishape[1]) + "x" + std::to_string(ishape[2]) + " do not match the model's input_shape " +
                    shape_to_string(input_shape));
  // Convert only the samples asked for (the batch, or this rank's share of it), not the whole file.
  const Index n = range_count(dir, Index(ishape[0]), first, count, "samples in the data");
  Dataset<Scalar> d;
  d.inputs.resize(per, n);
  const uint8_t* src = pixels.data() + static_cast<std::size_t>(first * per);
  for (Index k = 0; k < d.inputs.size(); ++k) d.inputs.data()[k] = Scalar(src[k]) / Scalar(255);
  d.labels.assign(labels.begin() + first, labels.begin() + first + n);
  return d;
}

template <typename Scalar>
Dataset<Scalar> load_safetensors_data(const std::string& path, const Shape& input_shape, LikelihoodKind likelihood,
                                      Index C, Index T, Index first, Index count) {
  const SafetensorsFile f = SafetensorsFile::read(path);
  if (!f.contains("inputs")) fail(path, "missing tensor \"inputs\"");
  if (!f.contains("targets")) fail(path, "missing tensor \"targets\" (data without targets)");
  const TensorInfo& in = f.info("inputs");
  // I64 / I32 inputs are token indices for a model that starts with an embedding, which checks their range.
  const bool tokens = in.dtype == DType::I64 || in.dtype == DType::I32;
  if (in.dtype != DType::F32 && in.dtype != DType::F64 && in.dtype != DType::U8 && in.dtype != DType::F16 &&
      in.dtype != DType::BF16 && !tokens)
    fail(path, std::string("\"inputs\" has dtype ") + to_string(in.dtype) +
                   "; expected F32, F64 or U8 (pixels), or I64 / I32 (token indices)");
  if (in.shape.empty()) fail(path, "\"inputs\" needs a leading sample dimension");
  const Shape sample(in.shape.begin() + 1, in.shape.end());
  if (shape_size(sample) != shape_size(input_shape) || (sample.size() > 1 && sample != input_shape))
    fail(path, "\"inputs\" samples have shape " + shape_to_string(sample) + " but the model's input_shape is " +
                   shape_to_string(input_shape));
  const Index N = in.shape[0];
  const Index n = range_count(path, N, first, count, "samples in the data");
  Dataset<Scalar> d;
  std::vector<Scalar> x = f.get_rows<Scalar>("inputs", first, n);
  d.inputs = Eigen::Map<Mat<Scalar>>(x.data(), shape_size(input_shape), n);
  if (in.dtype == DType::U8) d.inputs /= Scalar(255);
  const TensorInfo& t = f.info("targets");
  if (likelihood == LikelihoodKind::categorical) {
    if (t.dtype != DType::I64 && t.dtype != DType::I32 && t.dtype != DType::U8)
      fail(path, std::string("\"targets\" has dtype ") + to_string(t.dtype) + "; a categorical likelihood needs I64 class indices");
    if (T == 1 && (t.shape.size() != 1 || t.shape[0] != N))
      fail(path, "\"targets\" must have shape [" + std::to_string(N) + "] (one class index per sample)");
    if (T > 1 && (t.shape.size() != 2 || t.shape[0] != N || t.shape[1] != T))
      fail(path, "\"targets\" must have shape [" + std::to_string(N) + ", " + std::to_string(T) +
                     "] (a class index per position: the model's output is [" + std::to_string(T) + ", " +
                     std::to_string(C) + "])");
    d.labels = f.get_rows<int64_t>("targets", first, n);
  } else {
    if (t.dtype != DType::F32 && t.dtype != DType::F64)
      fail(path, std::string("\"targets\" has dtype ") + to_string(t.dtype) + "; a " + to_string(likelihood) +
                     " likelihood needs F32 or F64 targets");
    const std::vector<int64_t> want = T == 1 ? std::vector<int64_t>{N, C} : std::vector<int64_t>{N, T, C};
    if (t.shape != want)
      fail(path, "\"targets\" must have shape [" + std::to_string(N) + ", " + (T > 1 ? std::to_string(T) + ", " : "") +
                     std::to_string(C) + "]");
    std::vector<Scalar> y = f.get_rows<Scalar>("targets", first, n);
    d.targets = Eigen::Map<Mat<Scalar>>(y.data(), T * C, n);
  }
  return d;
}

// The CSV rules parse_csv and count_samples share. Each line of `in` with its 1-based number, a trailing
// '\r' removed; empty lines skipped.
template <typename F>
void for_each_csv_line(std::istream& in, F f) {
  std::string line;
  Index row = 0;
  while (std::getline(in, line)) {
    ++row;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (!line.empty()) f(row, line);
  }
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

template <typename Scalar>
Dataset<Scalar> load_csv(const std::string& path, const Shape& input_shape, LikelihoodKind likelihood, Index C) {
  std::ifstream in(path);
  if (!in) fail(path, std::string("cannot open file (") + std::strerror(errno) + ")");
  std::stringstream text;
  text << in.rdbuf();
  return parse_csv<Scalar>(text.str(), input_shape, likelihood, C, path);
}

}  // namespace

template <typename Scalar>
Dataset<Scalar> parse_csv(const std::string& text, const Shape& input_shape, LikelihoodKind likelihood, Index C,
                          const std::string& path) {
  std::istringstream in(text);
  const Index F = shape_size(input_shape);
  const Index T = likelihood == LikelihoodKind::categorical ? 1 : C;
  std::vector<Scalar> xs;
  std::vector<int64_t> labels;
  std::vector<Scalar> ys;
  Index N = 0;
  std::vector<double> vals;
  for_each_csv_line(in, [&](Index row, const std::string& line) {
    if (!csv_numbers(line, vals)) {
      if (row == 1) return;  // a header line
      fail(path, "line " + std::to_string(row) + " has a value that is not a number");
    }
    if (Index(vals.size()) != F + T)
      fail(path, "line " + std::to_string(row) + " has " + std::to_string(vals.size()) + " values; expected " +
                     std::to_string(F) + " inputs and " + std::to_string(T) + " target" + (T > 1 ? "s" : ""));
    for (Index k = 0; k < F; ++k) xs.push_back(Scalar(vals[std::size_t(k)]));
    if (likelihood == LikelihoodKind::categorical) {
      const double y = vals.back();
      if (y != std::floor(y)) fail(path, "line " + std::to_string(row) + ": class index " + std::to_string(y) + " is not an integer");
      if (!(std::abs(y) < 9007199254740992.0))  // 2^53; NaN fails too
        fail(path, "line " + std::to_string(row) + ": class index " + std::to_string(y) + " is out of range");
      labels.push_back(static_cast<int64_t>(y));
    } else {
      for (Index k = 0; k < T; ++k) ys.push_back(Scalar(vals[std::size_t(F + k)]));
    }
    ++N;
  });
  Dataset<Scalar> d;
  d.inputs = Eigen::Map<Mat<Scalar>>(xs.data(), F, N);
  d.labels = labels;
  if (!ys.empty()) d.targets = Eigen::Map<Mat<Scalar>>(ys.data(), T, N);
  return d;
}


template <typename Scalar>
Dataset<Scalar> load_text(const std::string& path, const Shape& input_shape, Index context, Index first, Index count) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(path, std::string("cannot open file (") + std::strerror(errno) + ")");
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (context < 1) fail(path, "--context must be >= 1, got " + std::to_string(context));
  if (input_shape != Shape{context})
    fail(path, "--context " + std::to_string(context) + " gives inputs of shape [" + std::to_string(context) +
                   "] but the model's input_shape is " + shape_to_string(input_shape));
  const Index window = context + 1, N = static_cast<Index>(bytes.size()) / window;
  if (N == 0)
    fail(path, "holds " + std::to_string(bytes.size()) + " bytes, shorter than one window of --context + 1 = " +
                   std::to_string(window) + " bytes");
  const Index n = range_count(path, N, first, count, "windows of " + std::to_string(window) + " bytes in the text");
  Dataset<Scalar> d;
  d.inputs.resize(context, n);
  d.labels.resize(static_cast<std::size_t>(n * context));
  for (Index w = 0; w < n; ++w)
    for (Index t = 0; t < context; ++t) {
      const auto at = static_cast<std::size_t>((first + w) * window + t);
      d.inputs(t, w) = Scalar(static_cast<unsigned char>(bytes[at]));
      d.labels[static_cast<std::size_t>(w * context + t)] = static_cast<unsigned char>(bytes[at + 1]);
    }
  return d;
}

template <typename Scalar>
Dataset<Scalar> load_dataset(const std::string& path, const Shape& input_shape, LikelihoodKind likelihood, Index C,
                             Split split, Index max_samples, Index T, Index context, Index first) {
  if (!exists(path)) fail(path, "no such file or directory");
  if (first < 0) fail(path, "the first sample must be >= 0, got " + std::to_string(first));
  if (T > 1 && context == 0 && (is_directory(path) || ends_with(path, ".csv")))
    fail(path, "the model's output is [" + std::to_string(T) + ", " + std::to_string(C) +
                   "] (a likelihood per position): its targets come from a .safetensors file ([N, " + std::to_string(T) +
                   "] class indices) or a text file with --context");
  Dataset<Scalar> d;
  if (context > 0) {
    if (likelihood != LikelihoodKind::categorical)
      fail(path, "text (--context) gives byte targets for a categorical likelihood, not " + std::string(to_string(likelihood)));
    if (T != context)
      fail(path, "--context " + std::to_string(context) + " needs a model whose output is [" + std::to_string(context) +
                     ", 256], one prediction per position; this model's has " + std::to_string(T) + " position" +
                     (T == 1 ? "" : "s"));
    d = load_text<Scalar>(path, input_shape, context, first, max_samples);
  } else if (is_directory(path)) {
    d = load_idx<Scalar>(path, input_shape, split, first, max_samples);
  } else if (ends_with(path, ".safetensors")) {
    d = load_safetensors_data<Scalar>(path, input_shape, likelihood, C, T, first, max_samples);
  } else if (ends_with(path, ".csv")) {
    d = load_csv<Scalar>(path, input_shape, likelihood, C);
    if (d.size() > 0) {
      const Index n = range_count(path, d.size(), first, max_samples, "samples in the data");
      if (first > 0 || n < d.size()) d = d.slice(first, n);
    }
  } else {
    fail(path, "unknown data format (expected a directory of IDX files, a .safetensors or a .csv file; a text file "
               "needs --context T)");
  }
  if (d.size() == 0) fail(path, "holds no samples");
  for (Index n = 0; n < d.size(); ++n)
    if (!d.inputs.col(n).allFinite())
      fail(path, "inputs of sample " + std::to_string(first + n) + " contain NaN or Inf");
  try {
    check_targets(likelihood, d, C, T);
  } catch (const std::invalid_argument& e) {
    fail(path, e.what() + std::string(first > 0 ? " (counting from sample " + std::to_string(first) + ")" : ""));
  }
  return d;
}

Index count_samples(const std::string& path, Split split, Index context) {
  if (!exists(path)) fail(path, "no such file or directory");
  if (context > 0) {
    struct stat st;
    ::stat(path.c_str(), &st);
    return static_cast<Index>(st.st_size) / (context + 1);
  }
  if (is_directory(path)) {  // the labels file's header: magic, then the count
    const std::string lpath = find_idx(path, std::string(split == Split::train ? "train" : "t10k") + "-labels-idx1-ubyte");
    gzFile f = gzopen(lpath.c_str(), "rb");
    if (!f) fail(lpath, std::string("cannot open file (") + std::strerror(errno) + ")");
    std::vector<uint8_t> head(8);
    const int got = gzread(f, head.data(), 8);
    gzclose(f);
    if (got != 8) fail(lpath, "too short for an IDX header");
    return Index(be32(head, 4));
  }
  if (ends_with(path, ".safetensors")) {
    const SafetensorsFile f = SafetensorsFile::read(path);
    if (!f.contains("inputs")) fail(path, "missing tensor \"inputs\"");
    const TensorInfo& in = f.info("inputs");
    if (in.shape.empty()) fail(path, "\"inputs\" needs a leading sample dimension");
    return in.shape[0];
  }
  if (ends_with(path, ".csv")) {  // the non-empty lines, less a non-numeric first one
    std::ifstream in(path);
    if (!in) fail(path, std::string("cannot open file (") + std::strerror(errno) + ")");
    Index n = 0;
    std::vector<double> vals;
    for_each_csv_line(in, [&](Index row, const std::string& line) {
      if (row > 1 || csv_numbers(line, vals)) ++n;  // (a first line not all numbers is parse_csv's header)
    });
    return n;
  }
  fail(path, "unknown data format (expected a directory of IDX files, a .safetensors or a .csv file; a text file "
             "needs --context T)");
}

template <typename Scalar>
void save_dataset(const std::string& path, const Dataset<Scalar>& data, const Shape& input_shape) {
  std::vector<int64_t> shape{data.size()};
  shape.insert(shape.end(), input_shape.begin(), input_shape.end());
  const DType dt = sizeof(Scalar) == 4 ? DType::F32 : DType::F64;
  std::vector<TensorView> views{{"inputs", dt, shape, data.inputs.data()}};
  const auto per_sample = static_cast<int64_t>(data.labels.size()) / std::max<int64_t>(data.size(), 1);
  if (!data.labels.empty() && per_sample == 1)
    views.push_back({"targets", DType::I64, {data.size()}, data.labels.data()});
  else if (!data.labels.empty())
    views.push_back({"targets", DType::I64, {data.size(), per_sample}, data.labels.data()});
  else
    views.push_back({"targets", dt, {data.size(), data.targets.rows()}, data.targets.data()});
  write_safetensors(path, views);
}

template Dataset<float> load_dataset<float>(const std::string&, const Shape&, LikelihoodKind, Index, Split, Index, Index,
                                            Index, Index);
template Dataset<double> load_dataset<double>(const std::string&, const Shape&, LikelihoodKind, Index, Split, Index,
                                              Index, Index, Index);
template Dataset<float> parse_csv<float>(const std::string&, const Shape&, LikelihoodKind, Index, const std::string&);
template Dataset<double> parse_csv<double>(const std::string&, const Shape&, LikelihoodKind, Index, const std::string&);
template void save_dataset<float>(const std::string&, const Dataset<float>&, const Shape&);
template void save_dataset<double>(const std::string&, const Dataset<double>&, const Shape&);

}  // namespace natgrad
