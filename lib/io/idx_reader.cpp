#include "io/idx_reader.h"

#include <sys/stat.h>
#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstring>

#include "core/fail.h"
#include "io/checked_size.h"

namespace natgrad {
namespace detail {

namespace {
// An IDX file larger than this is refused from its header, before anything is read.
constexpr uint64_t kMaxIdxBytes = 1ull << 40;
// Bytes read (and, for gzip, decompressed) per call: the memory a skipped part of a file costs.
constexpr std::size_t kPiece = 1 << 16;

std::string dims_to_string(const std::vector<uint32_t>& dims) {
  std::string s;
  for (uint32_t d : dims) s += (s.empty() ? "" : " x ") + std::to_string(d);
  return s;
}

// Reads n bytes into dst, or fewer at the end of the stream; returns how many.
std::size_t read_fully(ByteStream& in, uint8_t* dst, std::size_t n) {
  std::size_t got = 0;
  while (got < n) {
    const std::size_t k = in.read(dst + got, n - got);
    if (k == 0) break;
    got += k;
  }
  return got;
}

// Reads and drops up to n bytes; returns how many there were.
uint64_t skip(ByteStream& in, uint64_t n) {
  uint8_t piece[kPiece];
  uint64_t done = 0;
  while (done < n) {
    const std::size_t k = in.read(piece, static_cast<std::size_t>(std::min<uint64_t>(kPiece, n - done)));
    if (k == 0) break;
    done += k;
  }
  return done;
}
}  // namespace

GzipFileStream::GzipFileStream(const std::string& path) : path_(path) {
  file_ = gzopen(path.c_str(), "rb");
  if (!file_) fail(path, std::string("cannot open file (") + std::strerror(errno) + ")");
  gzbuffer(static_cast<gzFile>(file_), kPiece);
  struct stat st;
  file_size_ = ::stat(path.c_str(), &st) == 0 ? static_cast<uint64_t>(st.st_size) : UINT64_MAX;
}

uint64_t GzipFileStream::max_remaining() const {
  return file_size_ > UINT64_MAX / 1032 ? UINT64_MAX : file_size_ * 1032;
}

GzipFileStream::~GzipFileStream() { gzclose(static_cast<gzFile>(file_)); }

std::size_t GzipFileStream::read(uint8_t* dst, std::size_t n) {
  const auto f = static_cast<gzFile>(file_);
  const int got = gzread(f, dst, static_cast<unsigned>(std::min<std::size_t>(n, INT_MAX / 2)));
  int err = Z_OK;
  const char* msg = gzerror(f, &err);
  if (got < 0 || (err != Z_OK && err != Z_STREAM_END))
    fail(path_, "corrupt or truncated gzip data (" + std::string(msg ? msg : "") + ")");
  return static_cast<std::size_t>(got);
}

std::size_t MemoryStream::read(uint8_t* dst, std::size_t n) {
  const std::size_t k = std::min(n, size_ - at_);
  if (k > 0) std::memcpy(dst, data_ + at_, k);
  at_ += k;
  return k;
}

IdxHeader read_idx_header(ByteStream& in, int expect_dims, const std::string& label) {
  uint8_t head[4];
  if (read_fully(in, head, 4) < 4) fail(label, "too short for an IDX header");
  if (head[0] != 0 || head[1] != 0) fail(label, "not an IDX file (bad magic number)");
  if (head[2] != 0x08) {
    char type[8];
    std::snprintf(type, sizeof type, "0x%02x", head[2]);
    fail(label, std::string("IDX element type ") + type + " is not unsigned byte (0x08)");
  }
  const int ndims = head[3];
  if (ndims != expect_dims)
    fail(label,
         "IDX file has " + std::to_string(ndims) + " dimensions, expected " + std::to_string(expect_dims));
  IdxHeader h;
  for (int d = 0; d < ndims; ++d) {
    uint8_t b[4];
    if (read_fully(in, b, 4) < 4) fail(label, "truncated IDX header");
    h.dims.push_back((uint32_t(b[0]) << 24) | (uint32_t(b[1]) << 16) | (uint32_t(b[2]) << 8) |
                     uint32_t(b[3]));
  }
  // Every partial product checked (2²⁴ · 2¹⁶ · 2²⁴ wraps to 0 in 64 bits), zeros aside: a record of
  // [0, 2³², 2³²] would overflow the sizes computed from it.
  if (!checked_product(h.dims, &h.data_bytes, kMaxIdxBytes))
    fail(label, "IDX dimensions " + dims_to_string(h.dims) + " are absurdly large (more than 2^40 bytes)");
  h.records = h.dims.empty() ? 1 : h.dims[0];
  checked_product(std::vector<uint32_t>(h.dims.begin() + (h.dims.empty() ? 0 : 1), h.dims.end()),
                  &h.record_bytes, kMaxIdxBytes);
  return h;
}

std::vector<uint8_t> read_idx_records(ByteStream& in, const IdxHeader& h, const std::string& label,
                                      uint64_t first, uint64_t count) {
  // first + count ≤ records (the caller checked), so these products are at most data_bytes ≤ 2⁴⁰.
  const uint64_t before = first * h.record_bytes, keep = count * h.record_bytes;
  uint64_t seen = skip(in, before);
  std::vector<uint8_t> out;
  // Sized from the header only as far as the stream can hold it: a header that lies about the data costs
  // no more memory than the file could decompress to.
  out.reserve(static_cast<std::size_t>(std::min(keep, in.max_remaining())));
  uint8_t piece[kPiece];
  // (Only when the skip reached `first`: a shorter file is the error below. The loop runs until the share is
  // whole, piece by piece: `seen` counts on.)
  const bool at_first = seen == before;
  while (at_first && out.size() < keep) {
    const std::size_t k =
        in.read(piece, static_cast<std::size_t>(std::min<uint64_t>(kPiece, keep - out.size())));
    if (k == 0) break;
    out.insert(out.end(), piece, piece + k);
    seen += k;
  }
  // The rest, to the end: the file must hold exactly what its header promises (and gzip checks its CRC).
  for (std::size_t k; (k = in.read(piece, kPiece)) > 0;) seen += k;
  if (seen != h.data_bytes)
    fail(label, "IDX header promises " + std::to_string(h.data_bytes) + " bytes of data but the file holds " +
                    std::to_string(seen) + (seen < h.data_bytes ? " (truncated?)" : ""));
  return out;
}

}  // namespace detail
}  // namespace natgrad
