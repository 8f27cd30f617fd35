/// \file safetensors.h
/// \brief Reading and writing safetensors files (8-byte little-endian header length, JSON header, raw data).
///
/// The header is validated before anything is trusted: its length must lie within the file and be at most
/// 100 MiB; every tensor needs a known dtype, a shape of non-negative dimensions and data offsets inside
/// the data section, whose length equals shape × dtype size; tensors may not overlap. A file whose header
/// cannot be read and that begins as a zip archive or a Python pickle (as `torch.save` writes) or as JSON
/// is named as such, with how to convert a checkpoint (tools/export_torch.py's
/// `save_safetensors(path, model.state_dict())`). Readers convert
/// F64, F32, F16, BF16, I64, I32, U8 and BOOL (0 or 1) to the requested type. Writers write to a temporary file in the
/// same directory and rename it into place, so an interrupted run never leaves a half-written file.
///
/// \code
/// natgrad::SafetensorsFile f = natgrad::SafetensorsFile::read("weights.safetensors");
/// std::vector<float> w = f.get<float>("0.weight");
/// natgrad::write_safetensors("out.safetensors", {{"x", natgrad::DType::F32, {3}, w.data()}});
/// \endcode
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace natgrad {

enum class DType { F64, F32, F16, BF16, I64, I32, U8, BOOL };
const char* to_string(DType t);
std::size_t dtype_size(DType t);

struct TensorInfo {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  std::size_t begin = 0, end = 0;  ///< byte offsets in the data section
  int64_t numel() const;
};

class SafetensorsFile {
 public:
  /// Reads and validates the header; the tensors' data is read from the file when get(), get_rows() or
  /// read_rows() asks for it, only the rows asked for (the file stays open while a copy of this object
  /// lives). Throws std::invalid_argument("<path>: <problem>").
  static SafetensorsFile read(const std::string& path);
  /// Parses an in-memory image (used by read() and by the fuzzers); `label` names it in errors.
  static SafetensorsFile parse(std::vector<uint8_t> bytes, const std::string& label);

  const std::string& path() const { return path_; }
  bool contains(const std::string& name) const { return index_.count(name) > 0; }
  /// Tensor names in file order (by data offset).
  std::vector<std::string> names() const;
  const TensorInfo& info(const std::string& name) const;
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  /// The tensor's values converted to T (F64, F32, F16, BF16, I64, I32, U8, BOOL sources); row-major.
  template <typename T>
  std::vector<T> get(const std::string& name) const;
  /// Rows [first, first + rows) along the leading dimension, converted like get().
  template <typename T>
  std::vector<T> get_rows(const std::string& name, int64_t first, int64_t rows) const;
  /// The same rows, converted into out[0 … rows · (numel / shape[0])) (a caller's buffer, e.g. a matrix).
  template <typename T>
  void read_rows(const std::string& name, int64_t first, int64_t rows, T* out) const;

 private:
  struct Source;
  static uint64_t header_length(const uint8_t* head, std::size_t head_size, uint64_t file_size,
                                const std::string& label);
  static SafetensorsFile from_header(const std::string& text, uint64_t file_size, const std::string& label,
                                     const uint8_t* head, std::size_t head_size);

  std::string path_;
  std::shared_ptr<const Source> source_;
  uint64_t data_start_ = 0;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, std::size_t> index_;
  std::map<std::string, std::string> metadata_;
};

/// One tensor to write: `data` points at numel(shape) values of `dtype`.
struct TensorView {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  const void* data;
};

/// Writes the tensors (atomically: temporary file, then rename). Throws std::invalid_argument on failure.
void write_safetensors(const std::string& path, const std::vector<TensorView>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename.
void write_file_atomically(const std::string& path, const std::string& bytes);

}  // namespace natgrad
