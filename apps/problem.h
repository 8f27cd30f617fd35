// Loading a command's problem: the model (or the embedded default), its parameters and data, and the memory
// admission that refuses a run whose estimate does not fit.
#pragma once

#include "options.h"
#include "progress.h"
#include "world.h"

#include <natgrad/core/dataset.h>
#include <natgrad/io/model_spec_json.h>
#include <natgrad/io/safetensors.h>
#include <natgrad/model/network.h>

#include <cstddef>
#include <memory>
#include <string>

namespace natgrad {
namespace cli {

/// The embedded default: MLP 784-256-256-10 (tanh), categorical.
ModelFile default_model();

template <typename Scalar>
struct Problem {
  ModelFile file;
  std::unique_ptr<Network<Scalar>> model;
  Vec<Scalar> theta;
  Dataset<Scalar> data;  // the batch, or under MPI this rank's share of it
  // Under MPI (more than one rank): the batch's N samples, this rank's share [first, first + data.size()),
  // and the curvature batch's Nc samples with this rank's share of them, held in `curvature` when Nc < N.
  Index total = 0, first = 0, curvature_total = 0, curvature_first = 0;
  Dataset<Scalar> curvature;
  bool embedded = false;
  std::string data_label, model_label, params_label;
  std::size_t estimate = 0;  // bytes, from estimate_solve_memory
  std::size_t gram_budget = 0;  // bytes left under the limit for --solver auto's Gram (0: no limit known)
};


/// Reads the model (the embedded default when allowed and neither --model nor --data is given), the data and
/// the parameters; refuses a run whose memory estimate (with a top_k spectrum) exceeds the limit. Under MPI
/// each rank reads its share of the batch and of the curvature batch, and the ranks agree on any error.
template <typename Scalar>
Problem<Scalar> load_problem(Args& a, bool allow_default, const Progress& progress, Index top_k, const World& world);

/// This rank's share of the batch and of the curvature batch, for the library's shared solve and operators.
template <typename Scalar>
FisherOptions share_options(const FisherOptions& base, const Problem<Scalar>& p, bool curvature, const World& world);

/// The dtype outputs are written in (--dtype).
DType out_dtype(const Args& a);

}  // namespace cli
}  // namespace natgrad
