#include <natgrad/core/random.h>
#include <natgrad/core/types.h>

#include <Random123/philox.h>

#include <cmath>
#include <sstream>

namespace natgrad {

std::string shape_to_string(const Shape& s) {
  std::ostringstream os;
  os << '[';
  for (std::size_t i = 0; i < s.size(); ++i) os << (i ? ", " : "") << s[i];
  os << ']';
  return os.str();
}

namespace {
r123::Philox4x32::ctr_type philox_block(uint64_t seed, uint64_t stream, uint64_t counter) {
  r123::Philox4x32 gen;
  // Key: the seed. Counter: (stream, draw) — 128 bits, so no two (stream, draw) pairs collide.
  r123::Philox4x32::key_type key = {{static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32)}};
  r123::Philox4x32::ctr_type ctr = {{static_cast<uint32_t>(counter), static_cast<uint32_t>(counter >> 32),
                                     static_cast<uint32_t>(stream), static_cast<uint32_t>(stream >> 32)}};
  return gen(ctr, key);
}
}  // namespace

uint64_t CounterRng::bits(uint64_t counter) const {
  auto r = philox_block(seed_, stream_, counter);
  return (static_cast<uint64_t>(r[0]) << 32) | r[1];
}

double CounterRng::uniform(uint64_t counter) const {
  return static_cast<double>(bits(counter) >> 11) * 0x1.0p-53;
}

double CounterRng::normal(uint64_t counter) const {
  auto r = philox_block(seed_, stream_, counter);
  const uint64_t a = (static_cast<uint64_t>(r[0]) << 32) | r[1];
  const uint64_t b = (static_cast<uint64_t>(r[2]) << 32) | r[3];
  // u1 in (0, 1] so the logarithm is finite.
  const double u1 = (static_cast<double>(a >> 11) + 1.0) * 0x1.0p-53;
  const double u2 = static_cast<double>(b >> 11) * 0x1.0p-53;
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * M_PI * u2);
}

}  // namespace natgrad
