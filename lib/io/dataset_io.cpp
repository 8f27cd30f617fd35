#include <natgrad/io/dataset_io.h>
#include <natgrad/io/safetensors.h>

#include "core/fail.h"
#include "io/csv_reader.h"
#include "io/foreign_format.h"
#include "io/idx_reader.h"
#include "io/read_only_file.h"
#include "io/sample_range.h"

#include <algorithm>
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
using detail::range_count;

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

// The error for a data file of no format natgrad reads; a PyTorch checkpoint (model.pt) is named as such.
[[noreturn]] void fail_unknown_format(const std::string& path) {
  uint8_t head[64];
  std::ifstream in(path, std::ios::binary);
  in.read(reinterpret_cast<char*>(head), sizeof head);
  const auto got = static_cast<std::size_t>(std::max<std::streamsize>(in.gcount(), 0));
  const std::string kind = detail::foreign_format(head, got);
  if (detail::is_checkpoint(kind))
    fail(path, "this is " + kind + ", not a data file: write the samples as safetensors with "
               "tools/export_torch.py's export_data(path, inputs, targets)");
  fail(path, "unknown data format (expected a directory of IDX files, a .safetensors or a .csv file; a text file "
             "needs --context T)");
}

}  // namespace

std::vector<uint8_t> parse_idx(const std::vector<uint8_t>& bytes, int expect_dims, const std::string& label,
                               std::vector<uint32_t>* dims) {
  detail::MemoryStream in(bytes.data(), bytes.size());
  const detail::IdxHeader h = detail::read_idx_header(in, expect_dims, label);
  std::vector<uint8_t> data = detail::read_idx_records(in, h, label, 0, h.records);
  if (dims) *dims = h.dims;
  return data;
}

namespace {

std::string find_idx(const std::string& dir, const std::string& base) {
  for (const std::string& candidate : {dir + "/" + base + ".gz", dir + "/" + base})
    if (exists(candidate)) return candidate;
  fail(dir, "missing " + base + "[.gz] (expected the four MNIST-format IDX files)");
}

// The images and labels files of a split, read front to back (gzip is decompressed as a stream): only the
// samples [first, first + count) are kept and converted.
template <typename Scalar>
Dataset<Scalar> load_idx(const std::string& dir, const Shape& input_shape, Split split, Index first, Index count) {
  const std::string prefix = split == Split::train ? "train" : "t10k";
  const std::string ipath = find_idx(dir, prefix + "-images-idx3-ubyte");
  const std::string lpath = find_idx(dir, prefix + "-labels-idx1-ubyte");
  detail::GzipFileStream images(ipath), labels(lpath);
  const detail::IdxHeader ih = detail::read_idx_header(images, 3, ipath);
  if (Index(ih.record_bytes) != shape_size(input_shape))
    fail(ipath, "images of " + std::to_string(ih.dims[1]) + "x" + std::to_string(ih.dims[2]) +
                    " do not match the model's input_shape " + shape_to_string(input_shape));
  const Index n = range_count(dir, Index(ih.records), first, count, "samples in the data");
  const std::vector<uint8_t> pixels =
      detail::read_idx_records(images, ih, ipath, uint64_t(first), uint64_t(n));
  const detail::IdxHeader lh = detail::read_idx_header(labels, 1, lpath);
  if (lh.records != ih.records)
    fail(lpath, std::to_string(lh.records) + " labels for " + std::to_string(ih.records) + " images");
  const std::vector<uint8_t> classes =
      detail::read_idx_records(labels, lh, lpath, uint64_t(first), uint64_t(n));
  Dataset<Scalar> d;
  d.inputs.resize(Index(ih.record_bytes), n);
  for (Index k = 0; k < d.inputs.size(); ++k)
    d.inputs.data()[k] = Scalar(pixels[std::size_t(k)]) / Scalar(255);
  d.labels.assign(classes.begin(), classes.end());
  return d;
}

// The header, then the rows [first, first + count) of `inputs` and `targets`, read from the file at their
// offsets straight into the dataset's matrices.
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
  // (The reader checked that every partial product of a file's shape fits: shape_size cannot overflow.)
  const Shape sample(in.shape.begin() + 1, in.shape.end());
  if (shape_size(sample) != shape_size(input_shape) || (sample.size() > 1 && sample != input_shape))
    fail(path, "\"inputs\" samples have shape " + shape_to_string(sample) + " but the model's input_shape is " +
                   shape_to_string(input_shape));
  const Index N = in.shape[0];
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
  } else {
    if (t.dtype != DType::F32 && t.dtype != DType::F64)
      fail(path, std::string("\"targets\" has dtype ") + to_string(t.dtype) + "; a " + to_string(likelihood) +
                     " likelihood needs F32 or F64 targets");
    const std::vector<int64_t> want = T == 1 ? std::vector<int64_t>{N, C} : std::vector<int64_t>{N, T, C};
    if (t.shape != want)
      fail(path, "\"targets\" must have shape [" + std::to_string(N) + ", " +
                     (T > 1 ? std::to_string(T) + ", " : "") + std::to_string(C) + "]");
  }
  const Index n = range_count(path, N, first, count, "samples in the data");
  Dataset<Scalar> d;
  d.inputs.resize(shape_size(input_shape), n);
  f.read_rows<Scalar>("inputs", first, n, d.inputs.data());
  if (in.dtype == DType::U8) d.inputs /= Scalar(255);
  if (likelihood == LikelihoodKind::categorical) {
    d.labels.resize(static_cast<std::size_t>(n * T));
    f.read_rows<int64_t>("targets", first, n, d.labels.data());
  } else {
    d.targets.resize(T * C, n);
    f.read_rows<Scalar>("targets", first, n, d.targets.data());
  }
  return d;
}

template <typename Scalar>
Dataset<Scalar> load_csv(const std::string& path, const Shape& input_shape, LikelihoodKind likelihood,
                         Index C, Index first, Index count) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(path, std::string("cannot open file (") + std::strerror(errno) + ")");
  struct stat st;
  const uint64_t bytes = ::stat(path.c_str(), &st) == 0 ? static_cast<uint64_t>(st.st_size) : UINT64_MAX;
  return detail::read_csv<Scalar>(in, bytes, input_shape, likelihood, C, path, first, count);
}

// Windows [first, first + count) of `context` + 1 bytes, read from the file at their offset.
template <typename Scalar>
Dataset<Scalar> load_text(const std::string& path, const Shape& input_shape, Index context, Index first,
                          Index count) {
  if (context < 1) fail(path, "--context must be >= 1, got " + std::to_string(context));
  if (input_shape != Shape{context})
    fail(path, "--context " + std::to_string(context) + " gives inputs of shape [" + std::to_string(context) +
                   "] but the model's input_shape is " + shape_to_string(input_shape));
  const detail::ReadOnlyFile file(path);
  const Index window = context + 1, N = static_cast<Index>(file.size() / uint64_t(window));
  if (N == 0)
    fail(path, "holds " + std::to_string(file.size()) +
                   " bytes, shorter than one window of --context + 1 = " + std::to_string(window) + " bytes");
  const Index n = range_count(path, N, first, count, "windows of " + std::to_string(window) + " bytes in the text");
  std::vector<uint8_t> bytes(static_cast<std::size_t>(n * window));
  file.read_at(uint64_t(first * window), bytes.size(), bytes.data());
  Dataset<Scalar> d;
  d.inputs.resize(context, n);
  d.labels.resize(static_cast<std::size_t>(n * context));
  for (Index w = 0; w < n; ++w)
    for (Index t = 0; t < context; ++t) {
      const auto at = static_cast<std::size_t>(w * window + t);
      d.inputs(t, w) = Scalar(bytes[at]);
      d.labels[static_cast<std::size_t>(w * context + t)] = bytes[at + 1];
    }
  return d;
}

}  // namespace

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
    d = load_csv<Scalar>(path, input_shape, likelihood, C, first, max_samples);
  } else {
    fail_unknown_format(path);
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
  if (is_directory(path)) {  // the labels file's header
    const std::string lpath = find_idx(path, std::string(split == Split::train ? "train" : "t10k") + "-labels-idx1-ubyte");
    detail::GzipFileStream labels(lpath);
    return Index(detail::read_idx_header(labels, 1, lpath).records);
  }
  if (ends_with(path, ".safetensors")) {
    const SafetensorsFile f = SafetensorsFile::read(path);
    if (!f.contains("inputs")) fail(path, "missing tensor \"inputs\"");
    const TensorInfo& in = f.info("inputs");
    if (in.shape.empty()) fail(path, "\"inputs\" needs a leading sample dimension");
    return in.shape[0];
  }
  if (ends_with(path, ".csv")) {  // the non-empty lines, less a non-numeric first one, read as a stream
    std::ifstream in(path, std::ios::binary);
    if (!in) fail(path, std::string("cannot open file (") + std::strerror(errno) + ")");
    return detail::count_csv_rows(in);
  }
  fail_unknown_format(path);
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
template Dataset<double> load_dataset<double>(const std::string&, const Shape&, LikelihoodKind, Index, Split,
                                              Index, Index, Index, Index);
template void save_dataset<float>(const std::string&, const Dataset<float>&, const Shape&);
template void save_dataset<double>(const std::string&, const Dataset<double>&, const Shape&);

}  // namespace natgrad
