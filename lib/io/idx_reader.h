// Private: MNIST-format IDX files (the format of MNIST and Fashion-MNIST, usually gzip-compressed) read
// front to back, keeping only the records of one share. A gzip stream cannot be read at an offset, so a rank
// decompresses the whole file in pieces of 64 KiB, keeps its own records and drops the rest: its memory is
// its share, not the file.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace natgrad {
namespace detail {

/// Bytes read front to back.
class ByteStream {
 public:
  virtual ~ByteStream() = default;
  /// Reads up to n bytes into dst and returns how many; fewer than n only at the end of the stream.
  /// Throws std::invalid_argument("<label>: <problem>") on a read error or corrupt compressed data.
  virtual std::size_t read(uint8_t* dst, std::size_t n) = 0;
  /// At most this many bytes remain to be read (a bound, not a promise: the stream may end sooner).
  virtual uint64_t max_remaining() const = 0;
};

/// A file as zlib reads it: gzip-compressed data is decompressed, anything else is read as it is.
class GzipFileStream final : public ByteStream {
 public:
  explicit GzipFileStream(const std::string& path);
  ~GzipFileStream() override;
  GzipFileStream(const GzipFileStream&) = delete;
  GzipFileStream& operator=(const GzipFileStream&) = delete;
  std::size_t read(uint8_t* dst, std::size_t n) override;
  /// deflate expands a byte to at most 1032 (RFC 1951's longest match, 258 bytes, in 2 bits); a file zlib
  /// reads as it is holds its size. So: 1032 × the file's size.
  uint64_t max_remaining() const override;

 private:
  std::string path_;
  void* file_;  // gzFile
  uint64_t file_size_ = 0;
};

/// Bytes in memory (the fuzzers' input, parse_idx).
class MemoryStream final : public ByteStream {
 public:
  MemoryStream(const uint8_t* data, std::size_t size) : data_(data), size_(size) {}
  std::size_t read(uint8_t* dst, std::size_t n) override;
  uint64_t max_remaining() const override { return size_ - at_; }

 private:
  const uint8_t* data_;
  std::size_t size_, at_ = 0;
};

/// An IDX header: dims[0] records of record_bytes = dims[1] · dims[2] · … bytes each (unsigned bytes).
struct IdxHeader {
  std::vector<uint32_t> dims;
  uint64_t records = 0, record_bytes = 0, data_bytes = 0;
};

/// Reads and checks the header of an IDX file of unsigned bytes with `expect_dims` dimensions: the magic,
/// the element type, the dimension count, and the data size d₀ · d₁ · … ≤ 2⁴⁰ computed without overflow.
/// Throws std::invalid_argument("<label>: <problem>").
IdxHeader read_idx_header(ByteStream& in, int expect_dims, const std::string& label);

/// Reads the rest of the file after read_idx_header: returns the bytes of records [first, first + count)
/// and checks that the file holds exactly the data_bytes its header promises (reading it to the end).
std::vector<uint8_t> read_idx_records(ByteStream& in, const IdxHeader& header, const std::string& label,
                                      uint64_t first, uint64_t count);

}  // namespace detail
}  // namespace natgrad
