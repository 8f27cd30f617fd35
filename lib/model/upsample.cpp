// Nearest-neighbour upsampling by integer factors (nn.Upsample(scale_factor=2), F.interpolate(x,
// scale_factor=2) in mode "nearest"): a sample [C, d_1, …, d_m] becomes [C, f_1 d_1, …, f_m d_m], output
// position p of a spatial dimension reading input position p / f. A Gather: backprop sums the f_1 ⋯ f_m
// outputs that read each input.
#include <cstdint>
#include <utility>
#include <vector>

#include "core/fail.h"
#include "model/gather.h"
#include "model/layers.h"

namespace natgrad {
namespace detail {

template <typename Scalar>
std::unique_ptr<Layer<Scalar>> make_upsample(const LayerSpec& spec, const Shape& in, const std::string& where) {
  if (in.size() < 2)
    fail(where, "upsample reads [C, spatial...] samples (channels first), not " + shape_to_string(in));
  const std::size_t m = in.size() - 1;
  Shape f = spec.scale_factor;
  if (f.size() == 1) f.assign(m, f[0]);
  if (f.size() != m)
    fail(where, "upsample: " + std::to_string(spec.scale_factor.size()) + " scale factors for " + std::to_string(m) +
                    " spatial dimensions");
  Shape out{in[0]};
  double total = double(in[0]);
  for (std::size_t k = 0; k < m; ++k) {
    if (f[k] < 1) fail(where, "upsample: a scale factor below 1");
    out.push_back(in[k + 1] * f[k]);
    total *= double(in[k + 1]) * double(f[k]);
  }
  if (total >= 2147483647.0) fail(where, "upsample: an output of more than 2^31 values per sample");
  const std::vector<Index> stride = strides_of(in);
  std::vector<int32_t> source(static_cast<std::size_t>(total));
  for_each_index(out, [&](Index o, const std::vector<Index>& idx) {
    Index i = idx[0] * stride[0];
    for (std::size_t k = 1; k < idx.size(); ++k) i += (idx[k] / f[k - 1]) * stride[k];
    source[static_cast<std::size_t>(o)] = static_cast<int32_t>(i);
  });
  return std::make_unique<Gather<Scalar>>(LayerType::upsample, in, out, std::move(source), total == double(shape_size(in)));
}

template std::unique_ptr<Layer<float>> make_upsample<float>(const LayerSpec&, const Shape&, const std::string&);
template std::unique_ptr<Layer<double>> make_upsample<double>(const LayerSpec&, const Shape&, const std::string&);

}  // namespace detail
}  // namespace natgrad
