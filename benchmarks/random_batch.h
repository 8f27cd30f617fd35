// The benchmarks' data when none is given: inputs and targets from the counter-based generator, fixed seeds.
#pragma once

#include <natgrad/core/dataset.h>
#include <natgrad/core/random.h>
#include <natgrad/likelihood/likelihood.h>
#include <natgrad/model/network.h>

namespace natgrad {
namespace bench {

/// `batch` samples: inputs uniform in [0, 1) (token indices for a model that starts with an embedding) and,
/// per the likelihood, a class per position, a 0/1 target or one in [−1, 1).
inline Dataset<float> random_batch(const Network<float>& model, const ModelSpec& spec, LikelihoodKind likelihood,
                                   Index batch) {
  const CounterRng rng(1, 1);
  Dataset<float> d;
  d.inputs.resize(model.input_size(), batch);
  const Index vocab =
      !spec.layers.empty() && spec.layers.front().type == LayerType::embedding ? spec.layers.front().num_embeddings : 0;
  for (Index k = 0; k < d.inputs.size(); ++k)
    d.inputs.data()[k] = vocab ? float(rng.bits(uint64_t(k)) % uint64_t(vocab)) : float(rng.uniform(uint64_t(k)));
  const Index T = model.output_positions(), C = model.output_size() / T;
  const uint64_t off = 1ull << 40;
  if (likelihood == LikelihoodKind::categorical) {
    for (Index n = 0; n < batch * T; ++n) d.labels.push_back(int64_t(rng.bits(uint64_t(n) + off) % uint64_t(C)));
  } else {
    d.targets.resize(model.output_size(), batch);
    for (Index k = 0; k < d.targets.size(); ++k) {
      const double u = rng.uniform(uint64_t(k) + off);
      d.targets.data()[k] = likelihood == LikelihoodKind::bernoulli ? float(u < 0.5) : float(2 * u - 1);
    }
  }
  return d;
}

}  // namespace bench
}  // namespace natgrad
