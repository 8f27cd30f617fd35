#include "problem.h"

#include <natgrad/core/threads.h>
#include <natgrad/io/dataset_io.h>
#include <natgrad/io/parameters_io.h>
#include <natgrad/model/initialization.h>
#include <natgrad/natural_gradient/memory_estimate.h>

#include <algorithm>
#ifdef __GLIBC__
#include <malloc.h>
#endif
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

namespace {

template <typename Scalar>
Problem<Scalar> load_problem_here(Args& a, bool allow_default, const Progress& progress, Index top_k,
                                  const World& world) {
  Problem<Scalar> p;
  if (world.root()) check_output_paths(a);  // (rank 0 writes; its error is every rank's)
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

  const Index C = model.output_size() / model.output_positions();
  auto load = [&](Index first, Index count) {
    Dataset<Scalar> d = load_dataset<Scalar>(a.data, p.file.spec.input_shape, p.file.likelihood, C, Split::train, count,
                                             model.output_positions(), a.context, first);
    try {
      model.check_inputs(d.inputs);  // token indices within their embedding's range
    } catch (const std::invalid_argument& e) {
      throw std::invalid_argument(a.data + ": " + e.what() +
                                  (first > 0 ? " (counting from sample " + std::to_string(first) + ")" : ""));
    }
    return d;
  };
  p.data_label = a.data;
  const int K = world.size();
  if (K == 1) {
    p.data = load(0, a.batch);
    p.total = p.curvature_total = p.data.size();
  } else {
    // Each rank reads its contiguous share of the batch, and of the curvature batch (the first Nc samples)
    // when that is smaller: every rank computes on as many curvature samples as the others.
    const Index available = count_samples(a.data, Split::train, a.context);
    if (a.batch > available)
      throw std::invalid_argument(a.data + ": batch " + std::to_string(a.batch) + " exceeds the " +
                                  std::to_string(available) + " samples in the data");
    p.total = a.batch > 0 ? a.batch : available;
    p.curvature_total = a.curvature_batch > 0 ? std::min(a.curvature_batch, p.total) : p.total;
    if (p.curvature_total < K)
      throw std::invalid_argument("the " + std::string(p.curvature_total < p.total ? "curvature batch" : "batch") +
                                  " of " + std::to_string(p.curvature_total) + " samples cannot be shared by " +
                                  std::to_string(K) + " ranks (each needs at least one sample)");
    const SampleShare mine = share_of(p.total, world.rank(), K);
    p.first = mine.first;
    p.data = load(mine.first, mine.count);
    if (p.curvature_total < p.total) {
      const SampleShare c = share_of(p.curvature_total, world.rank(), K);
      p.curvature_first = c.first;
      p.curvature = load(c.first, c.count);
    } else {
      p.curvature_first = p.first;
    }
  }
#ifdef __GLIBC__
  // Give the heap pages freed while reading (the readers' pieces of the file, a safetensors header) back
  // before the solve, so the resident size does not keep them on top of the estimate.
  malloc_trim(0);
#endif
  if (a.curvature_batch > p.total)
    usage_error("--curvature-batch " + std::to_string(a.curvature_batch) + " exceeds the batch of " +
                std::to_string(p.total) + " samples");

  // Refuse, before the operators allocate anything, a run whose estimate (from the real sample count, this
  // rank's share under MPI) does not fit.
  const Index shared_curvature = K == 1 ? a.curvature_batch : (p.curvature_total < p.total ? p.curvature.size() : 0);
  MemoryEstimate mem = estimate_solve_memory(p.file.spec, p.data.size(), shared_curvature, sizeof(Scalar),
                                             fisher_options(a), std::max(top_k, a.deflate), num_threads(), a.preconditioner == "diagonal",
                                             p.file.likelihood, K);
  mem.add_multi_shift(model.num_params(), sizeof(Scalar), static_cast<Index>(a.dampings.size()));
  const auto compares = [&](const char* kind) { return std::find(a.compare.begin(), a.compare.end(), kind) != a.compare.end(); };
  if (a.preconditioner == "kfac" || compares("kfac"))
    mem.add_kfac(model, shared_curvature > 0 ? shared_curvature : p.data.size(), fisher_options(a), compares("kfac"));
  if (compares("empirical") || compares("mc")) mem.add_second_operator();
  const Index gram_samples = shared_curvature > 0 ? shared_curvature : p.data.size();
  if (a.solver == "smw" || a.exact) mem.add_gram(model, gram_samples, fisher_options(a));
  p.estimate = mem.total;
  const std::size_t limit = a.max_memory_gb > 0 ? static_cast<std::size_t>(a.max_memory_gb * 1e9) : available_memory_bytes();
  if (a.solver == "auto" && limit > mem.total) p.gram_budget = limit - mem.total;
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
    if (!conversion.empty() && !a.quiet) std::fprintf(stderr, "note: %s: %s\n", a.weights.c_str(), conversion.c_str());
  }
  progress.line("model %s: %lld parameters (%s); data %s: %lld samples; estimated memory %s", p.model_label.c_str(),
                static_cast<long long>(model.num_params()), p.params_label.c_str(), p.data_label.c_str(),
                static_cast<long long>(p.total), format_bytes(double(mem.total)).c_str());
  return p;
}

}  // namespace

template <typename Scalar>
Problem<Scalar> load_problem(Args& a, bool allow_default, const Progress& progress, Index top_k, const World& world) {
  Problem<Scalar> p;
  agree(world.comm(), [&] { p = load_problem_here<Scalar>(a, allow_default, progress, top_k, world); });
  return p;
}

template <typename Scalar>
FisherOptions share_options(const FisherOptions& base, const Problem<Scalar>& p, bool curvature, const World& world) {
  FisherOptions o = base;
  if (world.size() == 1) return o;
  o.communicator = &world.comm();
  o.first_sample = curvature ? p.curvature_first : p.first;
  o.total_samples = curvature ? p.curvature_total : p.total;
  return o;
}

DType out_dtype(const Args& a) { return a.dtype == "float64" ? DType::F64 : DType::F32; }

template Problem<float> load_problem<float>(Args&, bool, const Progress&, Index, const World&);
template Problem<double> load_problem<double>(Args&, bool, const Progress&, Index, const World&);
template FisherOptions share_options<float>(const FisherOptions&, const Problem<float>&, bool, const World&);
template FisherOptions share_options<double>(const FisherOptions&, const Problem<double>&, bool, const World&);

}  // namespace cli
}  // namespace natgrad
