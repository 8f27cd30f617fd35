#include "commands.h"
#include "problem.h"
#include "report.h"

#include <natgrad/core/threads.h>
#include <natgrad/io/parameters_io.h>
#include <natgrad/natural_gradient/memory_estimate.h>

#include <cstdio>

namespace natgrad {
namespace cli {

int run_info(Args& a) {
  if (a.model.empty()) usage_error("--model is required");
  const ModelFile m = read_model_spec(a.model);
  const Network<double> model(m.spec);
  std::printf("model %s: input %s, likelihood %s\n", a.model.c_str(), shape_to_string(m.spec.input_shape).c_str(),
              to_string(m.likelihood));
  std::printf("  %-5s %-11s %-18s %12s\n", "index", "type", "output shape", "parameters");
  for (std::size_t i = 0; i < model.num_layers(); ++i)
    std::printf("  %-5zu %-11s %-18s %12lld\n", i, model.layer(i).name(), shape_to_string(model.layer(i).output_shape()).c_str(),
                static_cast<long long>(model.layer(i).num_params()));
  std::printf("total parameters: %lld\n", static_cast<long long>(model.num_params()));
  if (!a.weights.empty()) {
    const Vec<double> theta = load_parameters<double>(a.weights, model);
    std::printf("weights %s: all %zu tensors present with the model's shapes, |theta| = %.6e\n", a.weights.c_str(),
                model.named_params().size(), theta.norm());
  }
  const Index batch = a.batch > 0 ? a.batch : kDefaultBatch;
  const std::size_t bytes = a.dtype == "float64" ? 8 : 4;
  const MemoryEstimate mem = estimate_solve_memory(m.spec, batch, a.curvature_batch, bytes, fisher_options(a), a.spectrum,
                                                   num_threads());
  std::printf("memory for a solve at batch %lld (%s): %s\n", static_cast<long long>(batch), a.dtype.c_str(),
              mem.report().c_str());
  return 0;
}




}  // namespace cli
}  // namespace natgrad
