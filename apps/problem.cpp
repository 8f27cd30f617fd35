#include "problem.h"

#include <natgrad/core/threads.h>
#include <natgrad/io/dataset_io.h>
#include <natgrad/io/parameters_io.h>
#include <natgrad/model/initialization.h>
#include <natgrad/natural_gradient/memory_estimate.h>

#include <cstdio>
#include <stdexcept>

namespace natgrad {
namespace cli {

ModelFile default_model() {
  ModelFile m;
  m.spec.input_shape = {1, 28, 28};
  m.spec.layers = {LayerSpec::flatten(), LayerSpec::linear(784, 256), LayerSpec::activation(LayerType::tanh),
                   LayerSpec::linear(256, 256), LayerSpec::activation(LayerType::tanh), LayerSpec::linear(256, 10)};
  m.likelihood = LikelihoodKind::categorical;
  return m;
}

template <typename Scalar>
Problem<Scalar> load_problem(Args& a, bool allow_default, const Progress& progress, Index top_k) {
  Problem<Scalar> p;
  if (a.model.empty() && a.data.empty() && allow_default) {
    p.embedded = true;
    p.file = default_model();
    a.data = kDefaultDataDir;
    if (a.batch == 0) a.batch = kDefaultBatch;
    p.model_label = "embedded MLP 784-256-256-10 (tanh)";
    std::FILE* f = std::fopen((std::string(kDefaultDataDir) + "/train-images-idx3-ubyte.gz").c_str(), "rb");
    if (!f)
      throw std::invalid_argument(std::string(kDefaultDataDir) +
                                  ": Fashion-MNIST is not installed; install it with `apt-get install dataset-fashion-mnist` "
                                  "(or `bash scripts/install-deps.sh`), or pass --model and --data");
    std::fclose(f);
  } else {
    if (a.model.empty()) usage_error("--model is required" + std::string(allow_default ? " with --data (omit both for the embedded default)" : ""));
    if (a.data.empty()) usage_error("--data is required" + std::string(allow_default ? " with --model (omit both for the embedded default)" : ""));
    p.file = read_model_spec(a.model);
    p.model_label = a.model;
  }
  p.model = std::make_unique<Network<Scalar>>(p.file.spec);
  const Network<Scalar>& model = *p.model;

  p.data = load_dataset<Scalar>(a.data, p.file.spec.input_shape, p.file.likelihood,
                                model.output_size() / model.output_positions(), Split::train, a.batch,
                                model.output_positions(), a.context);
  p.data_label = a.data;
  try {
    model.check_inputs(p.data.inputs);  // token indices within their embedding's range
  } catch (const std::invalid_argument& e) {
    throw std::invalid_argument(a.data + ": " + e.what());
  }
  if (a.curvature_batch > p.data.size())
    usage_error("--curvature-batch " + std::to_string(a.curvature_batch) + " exceeds the batch of " +
                std::to_string(p.data.size()) + " samples");

  // Refuse, before the operators allocate anything, a run whose estimate (from the real sample count) does
  // not fit.
  const MemoryEstimate mem = estimate_solve_memory(p.file.spec, p.data.size(), a.curvature_batch, sizeof(Scalar),
                                                   fisher_options(a), top_k, num_threads(),
                                                   a.preconditioner == "diagonal", p.file.likelihood);
  p.estimate = mem.total;
  const std::size_t limit = a.max_memory_gb > 0 ? static_cast<std::size_t>(a.max_memory_gb * 1e9) : available_memory_bytes();
  if (limit > 0 && mem.total > limit)
    throw std::invalid_argument("this run needs about " + format_bytes(double(mem.total)) + " but " +
                                (a.max_memory_gb > 0 ? "--max-memory allows " : "only ") + format_bytes(double(limit)) +
                                (a.max_memory_gb > 0 ? "" : " are available") + " (" + mem.report() + ")");

  if (a.weights.empty()) {
    p.theta = init_parameters(model, a.seed);
    p.params_label = "PyTorch-style initialization, seed " + std::to_string(a.seed);
  } else {
    std::string conversion;
    p.theta = load_parameters<Scalar>(a.weights, model, &conversion);
    load_buffers<Scalar>(a.weights, *p.model);
    p.params_label = a.weights;
    if (!conversion.empty()) std::fprintf(stderr, "note: %s: %s\n", a.weights.c_str(), conversion.c_str());
  }
  progress.line("model %s: %lld parameters (%s); data %s: %lld samples; estimated memory %s", p.model_label.c_str(),
                static_cast<long long>(model.num_params()), p.params_label.c_str(), p.data_label.c_str(),
                static_cast<long long>(p.data.size()), format_bytes(double(mem.total)).c_str());
  return p;
}

DType out_dtype(const Args& a) { return a.dtype == "float64" ? DType::F64 : DType::F32; }

template Problem<float> load_problem<float>(Args&, bool, const Progress&, Index);
template Problem<double> load_problem<double>(Args&, bool, const Progress&, Index);

}  // namespace cli
}  // namespace natgrad
