// Loading a command's problem: the model (or the embedded default), its parameters and data, and the memory
// admission that refuses a run whose estimate does not fit.
#pragma once

#include "options.h"

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
  Dataset<Scalar> data;
  bool embedded = false;
  std::string data_label, model_label, params_label;
  std::size_t estimate = 0;  // bytes, from estimate_solve_memory
};


/// Reads the model (the embedded default when allowed and neither --model nor --data is given), the data and
/// the parameters; refuses a run whose memory estimate (with a top_k spectrum) exceeds the limit.
template <typename Scalar>
Problem<Scalar> load_problem(Args& a, bool allow_default, const Progress& progress, Index top_k);

/// The dtype outputs are written in (--dtype).
DType out_dtype(const Args& a);

}  // namespace cli
}  // namespace natgrad
