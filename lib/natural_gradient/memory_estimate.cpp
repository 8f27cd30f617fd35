#include <natgrad/model/sequential.h>
#include <natgrad/natural_gradient/memory_estimate.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <sstream>

namespace natgrad {

MemoryEstimate estimate_solve_memory(const ModelSpec& spec, Index batch, Index curvature_batch, std::size_t s,
                                     const FisherOptions& fisher, Index top_k, int threads) {
  const Sequential<double> model(spec);  // shapes only
  const std::size_t P = static_cast<std::size_t>(model.num_params());
  const std::size_t C = static_cast<std::size_t>(model.output_size());
  const Index Nc = curvature_batch > 0 ? curvature_batch : batch;
  MemoryEstimate m;
  const bool separate = Nc < batch;  // a second operator on the whole batch computes the gradient
  // θ (caller's and operator's), g (the result's, and the operator's unless a separate one made it), d, and
  // CG's r, z, p, Ap and best iterate.
  m.parameters = (separate ? 9 : 10) * P * s;
  std::size_t per_sample = static_cast<std::size_t>(model.input_size());
  std::size_t aux = 0;
  for (std::size_t l = 0; l < model.num_layers(); ++l) {
    per_sample += static_cast<std::size_t>(model.layer(l).output_size());
    aux += static_cast<std::size_t>(model.layer(l).aux_per_sample());
  }
  const std::size_t draws = fisher.kind == FisherKind::mc ? static_cast<std::size_t>(fisher.mc_samples) : 1;
  auto forward = [&](Index n) {
    return static_cast<std::size_t>(n) * (per_sample * s + aux * 4 + C * draws * s);
  };
  const std::size_t t = static_cast<std::size_t>(std::max(threads, 1));
  auto workspaces = [&](Index n) {
    const Index chunk = std::min<Index>(fisher.chunk_for(n), std::max<Index>(n, 1));
    return t *
           (2 * static_cast<std::size_t>(model.max_width() * chunk) +
            static_cast<std::size_t>(model.scratch_size(chunk)) + C * static_cast<std::size_t>(chunk)) *
           s;
  };
  auto slots = [&](Index n) {
    const Index chunks = (n + fisher.chunk_for(n) - 1) / fisher.chunk_for(n);
    return static_cast<std::size_t>(
               std::min<Index>(fisher.slots_for(static_cast<Index>(P), s), std::max<Index>(chunks, 1))) *
           P * s;
  };
  m.activations = forward(Nc);
  m.workspaces = workspaces(Nc);
  m.slots = slots(Nc);
  if (top_k > 0)
    m.spectrum = static_cast<std::size_t>(std::max<Index>(2 * top_k + 1, 20)) * P * 8 + 4 * P * 8;
  m.data = static_cast<std::size_t>(batch) * (static_cast<std::size_t>(model.input_size()) + C) * s;
  const std::size_t cg_phase = m.parameters + m.activations + m.workspaces + m.slots + m.spectrum + m.data;
  if (separate)  // θ, both operators' θ copies, the full operator's g, the result's g; both forward passes
    m.gradient_phase = 5 * P * s + forward(batch) + forward(Nc) + workspaces(batch) + workspaces(Nc) +
                       slots(batch) + slots(Nc) + m.data;
  m.total = std::max(cg_phase, m.gradient_phase);
  return m;
}

std::string MemoryEstimate::report() const {
  auto mb = [](std::size_t b) { return double(b) / (1024.0 * 1024.0); };
  char phase[64] = "";
  if (gradient_phase)
    std::snprintf(phase, sizeof phase, ", full-batch gradient phase %.1f MiB", mb(gradient_phase));
  char buf[512];
  std::snprintf(
      buf, sizeof buf,
      "parameter vectors %.1f MiB, activations %.1f MiB, workspaces %.1f MiB, accumulation slots %.1f MiB, "
      "Lanczos basis %.1f MiB, batch %.1f MiB%s; total %.1f MiB",
      mb(parameters), mb(activations), mb(workspaces), mb(slots), mb(spectrum), mb(data), phase, mb(total));
  return buf;
}

std::size_t available_memory_bytes() {
  std::ifstream in("/proc/meminfo");
  std::string key;
  std::size_t kb = 0;
  std::string unit;
  while (in >> key >> kb >> unit)
    if (key == "MemAvailable:") return kb * 1024;
  return 0;
}

}  // namespace natgrad
