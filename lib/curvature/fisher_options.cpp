// FisherOptions: the range of every field, and the automatic chunk size.
#include <natgrad/curvature/fisher_operator.h>

#include <algorithm>
#include <cmath>
#include <string>

namespace natgrad {

bool FisherOptions::is_valid(std::string* why) const {
  auto bad = [&](const std::string& m) {
    if (why) *why = m;
    return false;
  };
  if (kind == FisherKind::mc && mc_samples < 1)
    return bad("mc_samples must be >= 1, got " + std::to_string(mc_samples));
  if (!(damping >= 0) || !std::isfinite(damping))
    return bad("damping must be finite and >= 0, got " + std::to_string(damping));
  if (chunk_size < 0)
    return bad("chunk_size must be >= 0 (0 = automatic), got " + std::to_string(chunk_size));
  if (num_threads < 0) return bad("num_threads must be >= 0, got " + std::to_string(num_threads));
  if (first_sample < 0) return bad("first_sample must be >= 0, got " + std::to_string(first_sample));
  if (total_samples < 0) return bad("total_samples must be >= 0, got " + std::to_string(total_samples));
  return true;
}

Index FisherOptions::chunk_for(Index num_samples, Index min_chunk) const {
  if (chunk_size > 0) return chunk_size;
  const Index per64 = (num_samples + 63) / 64;
  return std::min<Index>(256, std::max<Index>(min_chunk, (per64 + 7) / 8 * 8));
}

}  // namespace natgrad
