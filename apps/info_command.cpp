#include "commands.h"
#include "problem.h"
#include "report.h"

#include <natgrad/core/threads.h>
#include <natgrad/io/parameters_io.h>
#include <natgrad/natural_gradient/memory_estimate.h>

#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>

namespace natgrad {
namespace cli {

int run_info(Args& a) {
  if (a.model.empty()) usage_error("--model is required");
  const ModelFile m = read_model_spec(a.model);
  Network<double> model(m.spec);
  std::printf("model %s: input %s, output %s, likelihood %s%s, %zu nodes\n", a.model.c_str(),
              shape_to_string(m.spec.input_shape).c_str(), shape_to_string(model.output_shape()).c_str(),
              to_string(m.likelihood),
              model.output_positions() > 1 ? (" per position (" + std::to_string(model.output_positions()) + ")").c_str() : "",
              model.num_layers());
  // The graph in the order it runs: each node, its operation, the nodes it reads, its output and parameters.
  auto value_name = [&](int v) { return v == 0 ? std::string(kModelInputId) : model.node_id(static_cast<std::size_t>(v - 1)); };
  std::size_t id_width = 4, in_width = 6;
  std::vector<std::string> inputs(model.num_layers());
  for (std::size_t l = 0; l < model.num_layers(); ++l) {
    for (int v : model.node_inputs(l)) inputs[l] += (inputs[l].empty() ? "" : ", ") + value_name(v);
    id_width = std::max(id_width, model.node_id(l).size());
    in_width = std::max(in_width, inputs[l].size());
  }
  const int iw = static_cast<int>(std::min<std::size_t>(id_width, 40)), inw = static_cast<int>(std::min<std::size_t>(in_width, 40));
  // The PyTorch origin of each node (the exporter's "origin": module and source line), when the spec has
  // them.
  bool origins = false;
  for (std::size_t l = 0; l < model.num_layers(); ++l)
    origins = origins || !model.layer_spec(l).origin.empty();
  std::printf("  %-*s %-14s %-*s %-18s %12s%s\n", iw, "node", "op", inw, "inputs", "output shape",
              "parameters", origins ? "  PyTorch origin" : "");
  for (std::size_t l = 0; l < model.num_layers(); ++l) {
    // A tied node's parameters are another node's: counted there, named here.
    const std::size_t owner = model.tied_to(l);
    const std::string& origin = model.layer_spec(l).origin;
    std::printf("  %-*s %-14s %-*s %-18s %12lld%s%s\n", iw, model.node_id(l).c_str(), model.layer(l).name(),
                inw, inputs[l].c_str(), shape_to_string(model.layer(l).output_shape()).c_str(),
                static_cast<long long>(model.layer(l).num_params()),
                owner == l ? "" : (" (tied to " + model.node_id(owner) + ")").c_str(),
                origin.empty() ? "" : ("  " + origin).c_str());
  }
  std::printf("total parameters: %lld in %zu tensors", static_cast<long long>(model.num_params()),
              model.named_params().size());
  if (!model.named_buffers().empty()) std::printf("; %zu buffers", model.named_buffers().size());
  std::printf("\n");
  if (!a.weights.empty()) {
    const Vec<double> theta = load_parameters<double>(a.weights, model);
    load_buffers<double>(a.weights, model);
    std::printf("weights %s: all %zu tensors%s present with the model's shapes, |theta| = %.6e\n", a.weights.c_str(),
                model.named_params().size(), model.named_buffers().empty() ? "" : " and buffers", theta.norm());
  }
  const Index batch = a.batch > 0 ? a.batch : kDefaultBatch;
  const std::size_t bytes = a.dtype == "float64" ? 8 : 4;
  if (a.ranks == 1) {
    const MemoryEstimate mem = estimate_solve_memory(m.spec, batch, a.curvature_batch, bytes, fisher_options(a),
                                                     a.spectrum, num_threads(), a.preconditioner == "diagonal",
                                                     m.likelihood);
    std::printf("memory for a solve at batch %lld (%s): %s\n", static_cast<long long>(batch), a.dtype.c_str(),
                mem.report().c_str());
    return 0;
  }
  // Per rank: the largest share (rank 0's shares are never larger than the others' by more than one sample;
  // the last rank's are the largest).
  if (batch < a.ranks || (a.curvature_batch > 0 && a.curvature_batch < a.ranks))
    usage_error("--ranks " + std::to_string(a.ranks) + " exceeds the samples to share");
  const Index share = share_of(batch, a.ranks - 1, a.ranks).count;
  const Index curvature_share = a.curvature_batch > 0 && a.curvature_batch < batch
                                    ? share_of(a.curvature_batch, a.ranks - 1, a.ranks).count
                                    : 0;
  const MemoryEstimate mem = estimate_solve_memory(m.spec, share, curvature_share, bytes, fisher_options(a), a.spectrum,
                                                   num_threads(), a.preconditioner == "diagonal", m.likelihood, a.ranks);
  std::printf("memory for a solve at batch %lld (%s) per rank of %d (at most %lld samples each): %s\n",
              static_cast<long long>(batch), a.dtype.c_str(), a.ranks, static_cast<long long>(share),
              mem.report().c_str());
  return 0;
}

}  // namespace cli
}  // namespace natgrad
