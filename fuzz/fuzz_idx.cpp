// libFuzzer target: the IDX reader (MNIST format) on arbitrary bytes: first byte chooses images (3 dims) or
// labels (1 dim), the rest is the file.
#include <natgrad/io/dataset_io.h>

#include <stdexcept>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const int dims = (data[0] & 1) ? 3 : 1;
  std::vector<uint32_t> shape;
  try {
    const std::vector<uint8_t> v = natgrad::parse_idx(std::vector<uint8_t>(data + 1, data + size), dims, "fuzz", &shape);
    uint64_t n = 1;
    for (uint32_t d : shape) n *= d;
    if (n != v.size()) __builtin_trap();
  } catch (const std::invalid_argument&) {
  }
  return 0;
}
