#include <natgrad/core/random.h>
#include <natgrad/model/initialization.h>

#include <cmath>

namespace natgrad {

template <typename Scalar>
Vec<Scalar> init_parameters(const Network<Scalar>& model, uint64_t seed) {
  Vec<Scalar> theta(model.num_params());
  const CounterRng rng(seed, rng_stream(RngDomain::init, 0));
  for (std::size_t l = 0; l < model.num_layers(); ++l) {
    const Layer<Scalar>& layer = model.layer(l);
    if (layer.num_params() == 0 || model.tied_to(l) != l) continue;  // a tied node's tensors are its owner's
    const Index off = model.param_offset(l);
    switch (layer.param_init()) {
      case ParamInit::ones_zeros: {  // weight then bias, each half
        const Index half = layer.num_params() / 2;
        for (Index k = 0; k < layer.num_params(); ++k) theta[off + k] = Scalar(k < half ? 1 : 0);
        break;
      }
      case ParamInit::normal:
        for (Index k = 0; k < layer.num_params(); ++k)
          theta[off + k] = static_cast<Scalar>(rng.normal(static_cast<uint64_t>(off + k)));
        break;
      case ParamInit::fan_in_uniform: {
        const Shape w = layer.param_tensors().front().shape;  // [out, in, ...]: fan_in is all but the first dim
        const Index fan_in = shape_size(w) / w[0];
        const double bound = 1.0 / std::sqrt(static_cast<double>(fan_in));
        for (Index k = 0; k < layer.num_params(); ++k)
          theta[off + k] = static_cast<Scalar>(bound * (2.0 * rng.uniform(static_cast<uint64_t>(off + k)) - 1.0));
        break;
      }
    }
  }
  return theta;
}

template Vec<float> init_parameters<float>(const Network<float>&, uint64_t);
template Vec<double> init_parameters<double>(const Network<double>&, uint64_t);

}  // namespace natgrad
