// libFuzzer target: the IDX parser (MNIST format, the bytes load_dataset reads from an IDX file) on
// arbitrary bytes. The first byte chooses images (3 dims) or labels (1 dim), the rest is the file. The
// verdict is checked against an independent one computed here in 128-bit arithmetic, where no product of
// three 32-bit dimensions can wrap: the parser must accept exactly the files whose header has the right
// magic, element type and dimension count and whose data section holds exactly d₀·d₁·… bytes, and then
// return those bytes and dimensions.
#include <natgrad/io/dataset_io.h>

#include <cstring>
#include <stdexcept>

namespace {

uint32_t be32(const uint8_t* p) {
  return (uint32_t(p[0]) << 24) | (uint32_t(p[1]) << 16) | (uint32_t(p[2]) << 8) | p[3];
}

// Whether `b` (n bytes) is a valid IDX file of unsigned bytes with `dims` dimensions. natgrad also refuses
// dimensions whose nonzero ones multiply to more than 2⁴⁰ bytes (a record of [0, 2³², 2³²] would overflow
// the sizes computed from it), whatever the data section holds.
bool valid_idx(const uint8_t* b, size_t n, int dims) {
  if (n < 4 || b[0] != 0 || b[1] != 0 || b[2] != 0x08 || b[3] != dims) return false;
  const size_t start = 4 + 4 * size_t(dims);
  if (n < start) return false;
  unsigned __int128 bytes = 1, nonzero = 1;  // < 2⁹⁶: exact
  for (int d = 0; d < dims; ++d) {
    const uint32_t dim = be32(b + 4 + 4 * d);
    bytes *= dim;
    if (dim != 0) nonzero *= dim;
  }
  return nonzero <= (unsigned __int128)1 << 40 && bytes == n - start;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const int dims = (data[0] & 1) ? 3 : 1;
  const uint8_t* file = data + 1;
  const size_t n = size - 1;
  const bool valid = valid_idx(file, n, dims);
  std::vector<uint32_t> shape;
  try {
    const std::vector<uint8_t> v =
        natgrad::parse_idx(std::vector<uint8_t>(file, file + n), dims, "fuzz", &shape);
    if (!valid || shape.size() != size_t(dims)) __builtin_trap();  // accepted a file that is not valid
    for (int d = 0; d < dims; ++d)
      if (shape[size_t(d)] != be32(file + 4 + 4 * d)) __builtin_trap();
    const size_t start = 4 + 4 * size_t(dims);
    if (v.size() != n - start || (!v.empty() && std::memcmp(v.data(), file + start, v.size()) != 0))
      __builtin_trap();
  } catch (const std::invalid_argument&) {
    if (valid) __builtin_trap();  // refused a valid file
  }
  return 0;
}
