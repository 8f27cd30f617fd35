#include <natgrad/io/safetensors.h>

#include "core/fail.h"
#include "io/checked_size.h"
#include "io/foreign_format.h"
#include "io/read_only_file.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <limits>
#include <memory>
#include <stdexcept>
#include <unistd.h>

namespace natgrad {

namespace {
using detail::fail;
constexpr uint64_t kMaxHeader = 100ull << 20;
constexpr uint64_t kMaxElements = 1ull << 60;
// The first bytes read to recognize a file of another format.
constexpr std::size_t kSniffBytes = 64;

// A file whose header cannot be read: if its first bytes show another format (a PyTorch checkpoint, a JSON
// file), say that and what to do; otherwise `what` went wrong. (Only then: a valid safetensors file may
// begin with any bytes, 0x80 0x02 among them, a header of 640 bytes.)
[[noreturn]] void fail_unreadable(const std::string& label, const uint8_t* head, std::size_t n,
                                  const std::string& what) {
  const std::string kind = detail::foreign_format(head, n);
  if (detail::is_checkpoint(kind))
    fail(label, "this is " + kind + ", not a safetensors file: " + detail::kConvertCheckpoint);
  if (!kind.empty())
    fail(label, "this is " + kind + ", not a safetensors file (a model spec is read with --model)");
  fail(label, what);
}

std::string dims_to_string(const std::vector<uint64_t>& dims) {
  std::string s = "[";
  for (std::size_t i = 0; i < dims.size(); ++i) s += (i ? ", " : "") + std::to_string(dims[i]);
  return s + "]";
}

const struct {
  DType t;
  const char* name;
  std::size_t size;
} kDTypes[] = {{DType::F64, "F64", 8}, {DType::F32, "F32", 4}, {DType::F16, "F16", 2}, {DType::BF16, "BF16", 2},
               {DType::I64, "I64", 8}, {DType::I32, "I32", 4}, {DType::U8, "U8", 1},
               {DType::BOOL, "BOOL", 1}};

float half_to_float(uint16_t h) {
  const uint32_t sign = (h & 0x8000u) << 16, exp = (h >> 10) & 0x1f, mant = h & 0x3ff;
  uint32_t bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: normalize
      int e = -1;
      uint32_t m = mant;
      do {
        ++e;
        m <<= 1;
      } while ((m & 0x400) == 0);
      bits = sign | ((127 - 15 - e) << 23) | ((m & 0x3ff) << 13);
    }
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

template <typename T, typename Src>
void convert(const uint8_t* p, std::size_t n, T* out) {
  for (std::size_t i = 0; i < n; ++i) {
    Src v;
    std::memcpy(&v, p + i * sizeof(Src), sizeof(Src));
    out[i] = static_cast<T>(v);
  }
}
}  // namespace

const char* to_string(DType t) {
  for (const auto& d : kDTypes)
    if (d.t == t) return d.name;
  return "?";
}
std::size_t dtype_size(DType t) {
  for (const auto& d : kDTypes)
    if (d.t == t) return d.size;
  return 0;
}

int64_t TensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

// Where a file's bytes come from: the file itself, read at offsets when a tensor is asked for, so a reader
// holds the header and the rows it converts and never the whole file; or memory (parse()).
struct SafetensorsFile::Source {
  std::unique_ptr<detail::ReadOnlyFile> file;
  std::vector<uint8_t> bytes;

  void read(uint64_t offset, std::size_t n, uint8_t* dst) const {
    if (file)
      file->read_at(offset, n, dst);
    else if (n > 0)
      std::memcpy(dst, bytes.data() + offset, n);
  }
};

SafetensorsFile SafetensorsFile::read(const std::string& path) {
  auto source = std::make_shared<Source>();
  source->file = std::make_unique<detail::ReadOnlyFile>(path);
  const uint64_t size = source->file->size();
  // The header length, and enough bytes to recognize a file of another format if it is one.
  uint8_t head[kSniffBytes] = {};
  const std::size_t got = static_cast<std::size_t>(std::min<uint64_t>(size, kSniffBytes));
  source->file->read_at(0, got, head);
  const uint64_t n = header_length(head, got, size, path);
  std::string header(static_cast<std::size_t>(n), '\0');
  source->file->read_at(8, header.size(), &header[0]);
  SafetensorsFile f = from_header(header, size, path, head, got);
  f.source_ = std::move(source);
  return f;
}

SafetensorsFile SafetensorsFile::parse(std::vector<uint8_t> bytes, const std::string& label) {
  const std::size_t sniff = std::min<std::size_t>(bytes.size(), kSniffBytes);
  const uint64_t n = header_length(bytes.data(), sniff, bytes.size(), label);
  SafetensorsFile f =
      from_header(std::string(bytes.begin() + 8, bytes.begin() + 8 + static_cast<std::ptrdiff_t>(n)),
                  bytes.size(), label, bytes.data(), sniff);
  auto source = std::make_shared<Source>();
  source->bytes = std::move(bytes);
  f.source_ = std::move(source);
  return f;
}

uint64_t SafetensorsFile::header_length(const uint8_t* head, std::size_t head_size, uint64_t file_size,
                                       const std::string& label) {
  if (file_size < 8)
    fail_unreadable(label, head, head_size,
                    "file is " + std::to_string(file_size) + " bytes, too short for a safetensors header");
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | head[i];
  if (n > kMaxHeader)
    fail_unreadable(label, head, head_size, "header length " + std::to_string(n) + " exceeds the 100 MiB limit");
  if (n > file_size - 8)
    fail_unreadable(label, head, head_size,
                    "header length " + std::to_string(n) + " runs past the end of the " +
                        std::to_string(file_size) + "-byte file (truncated?)");
  return n;
}

SafetensorsFile SafetensorsFile::from_header(const std::string& text, uint64_t file_size, const std::string& label,
                                             const uint8_t* head, std::size_t head_size) {
  SafetensorsFile f;
  f.path_ = label;
  nlohmann::json header;
  try {
    header = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    fail_unreadable(label, head, head_size, std::string("header is not valid JSON: ") + e.what());
  }
  if (!header.is_object()) fail_unreadable(label, head, head_size, "header is not a JSON object");
  f.data_start_ = 8 + text.size();
  const uint64_t data_size = file_size - f.data_start_;
  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    const auto& v = it.value();
    if (name == "__metadata__") {
      if (!v.is_object()) fail(label, "__metadata__ is not an object");
      for (auto m = v.begin(); m != v.end(); ++m) {
        if (!m.value().is_string()) fail(label, "__metadata__ value \"" + m.key() + "\" is not a string");
        f.metadata_[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    const std::string where = "tensor \"" + name + "\"";
    if (!v.is_object() || !v.contains("dtype") || !v.contains("shape") || !v.contains("data_offsets"))
      fail(label, where + " needs dtype, shape and data_offsets");
    TensorInfo t;
    t.name = name;
    if (!v["dtype"].is_string()) fail(label, where + ": dtype is not a string");
    const std::string dt = v["dtype"].get<std::string>();
    bool known = false;
    for (const auto& d : kDTypes)
      if (dt == d.name) {
        t.dtype = d.t;
        known = true;
      }
    if (!known) fail(label, where + ": unsupported dtype \"" + dt + "\" (supported: F64, F32, F16, BF16, I64, I32, U8, BOOL)");
    if (!v["shape"].is_array()) fail(label, where + ": shape is not an array");
    std::vector<uint64_t> dims;
    for (const auto& d : v["shape"]) {
      if (!d.is_number_unsigned()) fail(label, where + ": shape has a dimension that is not a non-negative integer");
      dims.push_back(d.get<uint64_t>());
    }
    // Every partial product of the dimensions fits (zeros aside), so numel() and the size of any sample
    // shape computed from this one cannot overflow; × 8 bytes still fits in 64 bits.
    uint64_t numel = 0;
    if (!detail::checked_product(dims, &numel, kMaxElements))
      fail(label, where + ": shape " + dims_to_string(dims) + " is absurdly large (more than 2^60 elements)");
    t.shape.assign(dims.begin(), dims.end());
    const auto& off = v["data_offsets"];
    if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() || !off[1].is_number_unsigned())
      fail(label, where + ": data_offsets must be two non-negative integers");
    const uint64_t b = off[0].get<uint64_t>(), e = off[1].get<uint64_t>();
    if (b > e || e > data_size)
      fail(label, where + ": data_offsets [" + std::to_string(b) + ", " + std::to_string(e) +
                      "] lie outside the data section of " + std::to_string(data_size) + " bytes");
    if (e - b != numel * dtype_size(t.dtype))
      fail(label, where + ": shape and dtype need " + std::to_string(numel * dtype_size(t.dtype)) +
                      " bytes but data_offsets span " + std::to_string(e - b));
    t.begin = static_cast<std::size_t>(b);
    t.end = static_cast<std::size_t>(e);
    f.tensors_.push_back(t);
  }
  std::sort(f.tensors_.begin(), f.tensors_.end(), [](const TensorInfo& a, const TensorInfo& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  for (std::size_t i = 0; i < f.tensors_.size(); ++i) {
    if (i > 0 && f.tensors_[i].begin < f.tensors_[i - 1].end)
      fail(label, "tensors \"" + f.tensors_[i - 1].name + "\" and \"" + f.tensors_[i].name + "\" overlap");
    f.index_[f.tensors_[i].name] = i;
  }
  return f;
}

std::vector<std::string> SafetensorsFile::names() const {
  std::vector<std::string> out;
  for (const auto& t : tensors_) out.push_back(t.name);
  return out;
}

const TensorInfo& SafetensorsFile::info(const std::string& name) const {
  auto it = index_.find(name);
  if (it == index_.end()) fail(path_, "missing tensor \"" + name + "\"");
  return tensors_[it->second];
}

template <typename T>
std::vector<T> SafetensorsFile::get(const std::string& name) const {
  const TensorInfo& t = info(name);
  return t.shape.empty() ? get_rows<T>(name, 0, 1) : get_rows<T>(name, 0, t.shape[0]);
}

namespace {
// The number of values in rows [first, first + rows) of tensor t along its leading dimension (a scalar is
// one row), or the error naming the range. numel() ≤ 2^60 (checked when the header was read): no product
// here overflows.
int64_t rows_size(const std::string& path, const TensorInfo& t, int64_t first, int64_t rows) {
  const int64_t extent = t.shape.empty() ? 1 : t.shape[0];
  if (first < 0 || rows < 0 || first > extent || rows > extent - first)
    throw std::invalid_argument(path + ": rows [" + std::to_string(first) + ", " + std::to_string(first + rows) +
                                ") of tensor \"" + t.name + "\" lie beyond its " + std::to_string(extent));
  return rows * (extent > 0 ? t.numel() / extent : 0);
}

// n values of type `t` at p converted to T.
template <typename T>
void convert_values(DType t, const uint8_t* p, std::size_t n, T* out) {
  switch (t) {
    case DType::F64:
      convert<T, double>(p, n, out);
      break;
    case DType::F32:
      convert<T, float>(p, n, out);
      break;
    case DType::I64:
      convert<T, int64_t>(p, n, out);
      break;
    case DType::I32:
      convert<T, int32_t>(p, n, out);
      break;
    case DType::U8:
    case DType::BOOL:
      convert<T, uint8_t>(p, n, out);
      break;
    case DType::F16:
    case DType::BF16:
      for (std::size_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, p + 2 * i, 2);
        float v;
        if (t == DType::F16) {
          v = half_to_float(h);
        } else {
          const uint32_t bits = static_cast<uint32_t>(h) << 16;
          std::memcpy(&v, &bits, 4);
        }
        out[i] = static_cast<T>(v);
      }
      break;
  }
}
}  // namespace

template <typename T>
std::vector<T> SafetensorsFile::get_rows(const std::string& name, int64_t first, int64_t rows) const {
  std::vector<T> out(static_cast<std::size_t>(rows_size(path_, info(name), first, rows)));
  read_rows(name, first, rows, out.data());
  return out;
}

template <typename T>
void SafetensorsFile::read_rows(const std::string& name, int64_t first, int64_t rows, T* out) const {
  const TensorInfo& t = info(name);
  const std::size_t n = static_cast<std::size_t>(rows_size(path_, t, first, rows)), size = dtype_size(t.dtype);
  const std::size_t per = rows > 0 ? n / static_cast<std::size_t>(rows) : 0;
  const uint64_t at = data_start_ + t.begin + static_cast<uint64_t>(first) * per * size;
  if (!source_->file) {
    convert_values(t.dtype, source_->bytes.data() + at, n, out);
    return;
  }
  // Read and convert in pieces of at most 1 MiB: the cost of reading is the output and one piece.
  const std::size_t piece = std::max<std::size_t>(1, (std::size_t(1) << 20) / size);
  std::vector<uint8_t> raw(std::min(n, piece) * size);
  for (std::size_t done = 0; done < n;) {
    const std::size_t k = std::min(piece, n - done);
    source_->read(at + done * size, k * size, raw.data());
    convert_values(t.dtype, raw.data(), k, out + done);
    done += k;
  }
}

template std::vector<float> SafetensorsFile::get<float>(const std::string&) const;
template std::vector<float> SafetensorsFile::get_rows<float>(const std::string&, int64_t, int64_t) const;
template std::vector<double> SafetensorsFile::get_rows<double>(const std::string&, int64_t, int64_t) const;
template std::vector<int64_t> SafetensorsFile::get_rows<int64_t>(const std::string&, int64_t, int64_t) const;
template std::vector<double> SafetensorsFile::get<double>(const std::string&) const;
template std::vector<int64_t> SafetensorsFile::get<int64_t>(const std::string&) const;
template void SafetensorsFile::read_rows<float>(const std::string&, int64_t, int64_t, float*) const;
template void SafetensorsFile::read_rows<double>(const std::string&, int64_t, int64_t, double*) const;
template void SafetensorsFile::read_rows<int64_t>(const std::string&, int64_t, int64_t, int64_t*) const;

void write_file_atomically(const std::string& path, const std::string& bytes) {
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) fail(path, std::string("cannot create the output file (") + std::strerror(errno) + ")");
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    out.flush();
    if (!out) {
      std::remove(tmp.c_str());
      fail(path, "write error (disk full?)");
    }
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    std::remove(tmp.c_str());
    fail(path, std::string("cannot move the output into place (") + std::strerror(err) + ")");
  }
}

void write_safetensors(const std::string& path, const std::vector<TensorView>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::size_t offset = 0;
  for (const auto& t : tensors) {
    int64_t numel = 1;
    for (int64_t d : t.shape) numel *= d;
    const std::size_t bytes = static_cast<std::size_t>(numel) * dtype_size(t.dtype);
    header[t.name] = {{"dtype", to_string(t.dtype)}, {"shape", t.shape}, {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string h = header.dump();
  while ((8 + h.size()) % 8 != 0) h.push_back(' ');  // align the data section to 8 bytes, as the reference writer
  std::string out;
  out.reserve(8 + h.size() + offset);
  const uint64_t n = h.size();
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((n >> (8 * i)) & 0xff));
  out += h;
  for (const auto& t : tensors) {
    int64_t numel = 1;
    for (int64_t d : t.shape) numel *= d;
    out.append(static_cast<const char*>(t.data), static_cast<std::size_t>(numel) * dtype_size(t.dtype));
  }
  write_file_atomically(path, out);
}

}  // namespace natgrad
