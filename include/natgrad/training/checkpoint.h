/// \file checkpoint.h
/// \brief A training checkpoint: everything a resumed run needs to be the same run, in one safetensors file.
///
/// The tensors: the parameters and the buffers under their `state_dict` names, in the run's dtype (F32 or F64,
/// so they round-trip exactly), and the optimizer's state (Optimizer::state()) under `optimizer/<name>`: its
/// vectors as F64 of shape [n] (an empty one, such as the natural gradient's previous direction before the
/// first step, as shape [0]) and its scalars as F64 of shape []. The JSON `__metadata__` (strings) holds:
///   - `natgrad` = "training checkpoint", `checkpoint_version` = "1", `optimizer` (Optimizer::name());
///   - the progress (TrainProgress): `steps`, `epochs_completed`, `epoch_samples` (integers), `time_s` and
///     `epoch_loss_sum` (17 significant digits: every bit), `epochs` (a JSON array of the completed epochs'
///     {`epoch`, `train_loss`, `test_loss`, `test_accuracy`, `time_s`}, null for NaN);
///   - the caller's settings (the options that change the result), each under its own key.
/// The file is written through a temporary file and a rename, so an interruption leaves the previous one.
///
/// \code
/// natgrad::save_checkpoint("c.safetensors", model, theta, optimizer, summary.progress, {{"batch", "32"}});
/// natgrad::Checkpoint<float> c = natgrad::load_checkpoint("c.safetensors", model);
/// optimizer.load_state(c.state);
/// options.start = c.progress;  // then train() continues from there
/// \endcode
#pragma once

#include <natgrad/training/optimizer.h>
#include <natgrad/training/trainer.h>

#include <map>
#include <string>
#include <vector>

namespace natgrad {

/// What load_checkpoint read.
template <typename Scalar>
struct Checkpoint {
  Vec<Scalar> theta;
  std::vector<std::vector<Scalar>> buffers;  ///< in the model's named_buffers() order
  std::string optimizer;                     ///< the optimizer's name()
  OptimizerState state;
  TrainProgress progress;
  std::map<std::string, std::string> settings;  ///< the caller's, as saved
};

/// The metadata keys the checkpoint itself uses; a setting may not take one of these names.
const std::vector<std::string>& checkpoint_reserved_keys();

/// Writes θ, the model's buffers, the optimizer's state, the progress and the settings to `path` (atomically).
/// Throws std::invalid_argument for a θ of the wrong size, a setting under a reserved key, or a failed write.
template <typename Scalar>
void save_checkpoint(const std::string& path, const Network<Scalar>& model, const Vec<Scalar>& theta,
                     const Optimizer<Scalar>& optimizer, const TrainProgress& progress,
                     const std::map<std::string, std::string>& settings);

/// The metadata of a checkpoint (its settings included) without reading its tensors; throws
/// std::invalid_argument("<path>: <problem>") for a file that is not a safetensors file or not a checkpoint.
std::map<std::string, std::string> read_checkpoint_metadata(const std::string& path);

/// Reads a checkpoint for `model`: every parameter and buffer present with its shape and in the dtype of
/// Scalar (a checkpoint of another model or dtype is refused, naming the tensor), finite parameters, the
/// optimizer's tensors and the progress. Throws std::invalid_argument("<path>: <problem>").
template <typename Scalar>
Checkpoint<Scalar> load_checkpoint(const std::string& path, const Network<Scalar>& model);

}  // namespace natgrad
