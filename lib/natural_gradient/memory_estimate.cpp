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
  // θ (caller and operator copies), g, d, and CG's r, z, p, Ap.
  m.parameters = 8 * P * s;
  std::size_t per_sample = static_cast<std::size_t>(model.input_size());
  std::size_t aux = 0, scratch = 0;
  for (std::size_t l = 0; l < model.num_layers(); ++l) {
    per_sample += static_cast<std::size_t>(model.layer(l).output_size());
    aux += static_cast<std::size_t>(model.layer(l).aux_per_sample());
  }
  const std::size_t draws = fisher.kind == FisherKind::mc ? static_cast<std::size_t>(fisher.mc_samples) : 1;
  auto forward = [&](Index n) { return static_cast<std::size_t>(n) * (per_sample * s + aux * 4 + C * draws * s); };
  m.activations = forward(Nc) + (Nc < batch ? forward(batch) : 0);
  const Index chunk = std::min<Index>(fisher.chunk_for(Nc), std::max<Index>(Nc, 1));
  for (std::size_t l = 0; l < model.num_layers(); ++l)
    scratch = std::max(scratch, static_cast<std::size_t>(model.layer(l).scratch_size(chunk)));
  const std::size_t t = static_cast<std::size_t>(std::max(threads, 1));
  m.workspaces = t * (2 * static_cast<std::size_t>(model.max_width() * chunk) + scratch + C * static_cast<std::size_t>(chunk)) * s;
  const Index chunks = (Nc + fisher.chunk_for(Nc) - 1) / fisher.chunk_for(Nc);
  m.slots = static_cast<std::size_t>(std::min<Index>(fisher.slots_for(static_cast<Index>(P), s), std::max<Index>(chunks, 1))) * P * s;
  if (top_k > 0) m.spectrum = static_cast<std::size_t>(std::max<Index>(2 * top_k + 1, 20)) * P * 8 + 4 * P * 8;
  m.data = static_cast<std::size_t>(batch) * (static_cast<std::size_t>(model.input_size()) + C) * s;
  m.total = m.parameters + m.activations + m.workspaces + m.slots + m.spectrum + m.data;
  return m;
}

std::string MemoryEstimate::report() const {
  auto mb = [](std::size_t b) { return double(b) / (1024.0 * 1024.0); };
  char buf[512];
  std::snprintf(buf, sizeof buf,
                "parameter vectors %.1f MiB, activations %.1f MiB, workspaces %.1f MiB, accumulation slots %.1f MiB, "
                "Lanczos basis %.1f MiB, batch %.1f MiB; total %.1f MiB",
                mb(parameters), mb(activations), mb(workspaces), mb(slots), mb(spectrum), mb(data), mb(total));
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
