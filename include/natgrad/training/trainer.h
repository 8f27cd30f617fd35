/// \file trainer.h
/// \brief Epochs of minibatch steps with an Optimizer, evaluation on held-out data, progress and stop.
///
/// A step takes minibatch k of its epoch (minibatches.h) and calls Optimizer::step with the run's step index;
/// an evaluation computes the loss and, for a categorical likelihood, the accuracy on the test data
/// (positions whose label is −100 left out). Training time excludes evaluation. `train_loss` of an epoch is
/// the sample-weighted mean of its steps' losses. A run started from the TrainProgress of a stopped one
/// (TrainOptions::start; a checkpoint holds it, checkpoint.h), with the optimizer's state restored, is that
/// run continued, bit for bit.
///
/// **The schedule.** Before each step the stop rules (stop_requested, max_time_s) are asked; then the step
/// runs. An evaluation follows each step whose number (counted from the run's first, a resumed run's steps
/// included) is a multiple of eval_every, or with eval_every 0 each epoch's last step. At the last epoch's
/// end an evaluation follows unless this call's last record is one; then, at every epoch's end, on_epoch_end.
/// A stop ends the run with an evaluation, unless this call's last record is one. TrainOptions::on_begin
/// announces each step, evaluation and on_epoch_end just before it starts.
///
/// **Several processes.** With TrainOptions::communicator of K > 1 ranks every rank holds the whole training
/// (and test) data and calls train() with the same options; each step's minibatch is the same on every rank
/// (the order is keyed by (seed, epoch)) and the optimizer, made with the same communicator, shares it
/// (optimizer.h). An evaluation shares the test data the same way and sums the losses and the counts of right
/// answers. Whether to stop (stop_requested, max_time_s) is rank 0's decision, taken by every rank at the
/// same step boundary; the callbacks run on every rank (rank 0 is the one to print and write).
#pragma once

#include <natgrad/training/optimizer.h>

#include <functional>
#include <limits>
#include <vector>

namespace natgrad {

/// One row of the training log: a step or an evaluation.
struct TrainRecord {
  bool eval = false;
  Index step = 0;       ///< steps done (after this step; for an evaluation, so far)
  Index epoch = 0;      ///< the epoch this step belongs to, from 1 (an evaluation: epochs completed so far)
  double time_s = 0;    ///< training time so far, evaluation excluded
  StepResult result;    ///< a step's
  double test_loss = std::numeric_limits<double>::quiet_NaN();
  double test_accuracy = std::numeric_limits<double>::quiet_NaN();  ///< categorical only
  double train_loss = std::numeric_limits<double>::quiet_NaN();     ///< an end-of-epoch evaluation: the epoch's
};


/// An epoch completed: its steps' sample-weighted mean loss, the latest evaluation at its end, the training
/// time so far, and for the natural gradient the damping at its end and CG's mean iterations per step.
struct EpochSummary {
  Index epoch = 0;
  double train_loss = 0, time_s = 0;
  double damping = 0;        ///< StepResult::damping_after of the epoch's last step
  double cg_iterations = 0;  ///< StepResult::cg_iterations, the mean over the epoch's steps
  double test_loss = std::numeric_limits<double>::quiet_NaN(), test_accuracy = std::numeric_limits<double>::quiet_NaN();
};

/// Where a run stands at a step boundary: what a checkpoint stores so that a resumed run is the same run. Step
/// `steps` (from 0) is minibatch `steps − epochs · per_epoch` of epoch `epochs` (from 0), whose order is keyed by
/// (seed, epoch); its Monte-Carlo draws are keyed by the step.
struct TrainProgress {
  Index steps = 0;            ///< steps done
  Index epochs = 0;           ///< epochs completed
  double time_s = 0;          ///< training time so far, evaluation excluded
  double epoch_loss_sum = 0;  ///< Σ loss × batch size over the steps done of the epoch in progress
  Index epoch_samples = 0;    ///< their samples
  double epoch_cg_sum = 0;    ///< their CG iterations
  Index epoch_steps = 0;      ///< their count
  double epoch_damping = 0;   ///< λ after the last of them
  std::vector<EpochSummary> per_epoch;  ///< the epochs completed
};

/// What the trainer is about to start (TrainOptions::on_begin).
enum class TrainPhase {
  step,        ///< a step (the optimizer's)
  evaluation,  ///< an evaluation on the test data (a record even without test data)
  checkpoint   ///< TrainOptions::on_epoch_end
};

struct TrainOptions {
  Index epochs = 10;      ///< the total number of epochs
  Index batch = 128;      ///< the minibatch size
  bool shuffle = true;    ///< a permutation per epoch keyed by (seed, epoch); false: file order
  uint64_t seed = 0;
  Index eval_every = 0;   ///< evaluate every K steps (0: at the end of each epoch)
  double max_time_s = 0;  ///< stop at the first step boundary after this much training time of this call (0: no limit)
  /// Called after every step and every evaluation (progress lines, logs). Optional.
  std::function<void(const TrainRecord&)> on_record;
  /// Called just before a step, an evaluation or on_epoch_end starts, in the schedule's order (above), with
  /// for a step its number from 1 (its TrainRecord::step: steps done + 1), else the steps done. A step's call
  /// comes once the stop rules let it run; each call is followed by its step's or evaluation's on_record, or
  /// by on_epoch_end, before any other callback. For a status line ("step 13 running 4.2 s"). Optional.
  std::function<void(TrainPhase, Index)> on_begin;
  /// Polled before every step: true stops the run at that boundary (after a final evaluation). Optional.
  std::function<bool()> stop_requested;
  /// Where to start: a fresh run (the default) or a checkpoint's progress; its `epochs` must be below the total.
  TrainProgress start;
  /// Called at the end of every epoch, after its evaluation, with the progress then (θ and the optimizer's
  /// state are at that boundary: a checkpoint). Optional.
  std::function<void(const TrainProgress&)> on_epoch_end;
  /// The ranks that share each batch and the evaluations (see above); nullptr (default): one process. The
  /// optimizer must have been made with the same one.
  const Communicator* communicator = nullptr;
};

/// Counts, times and epochs are the run's totals, a resumed run's included; `records` are this call's.
struct TrainSummary {
  std::vector<TrainRecord> records;
  std::vector<EpochSummary> per_epoch;
  Index steps = 0;
  Index epochs = 0;  ///< epochs completed
  double time_s = 0;
  TrainProgress progress;  ///< at the end or the stop (what a checkpoint then holds)
  bool stopped = false;  ///< by max_time_s or stop_requested
  double test_loss = std::numeric_limits<double>::quiet_NaN(), test_accuracy = std::numeric_limits<double>::quiet_NaN();
};

/// The loss and (categorical) accuracy of theta on `data`. With a communicator of K > 1 ranks (collective:
/// every rank passes the whole data) each rank evaluates its share and the sums are over the ranks.
template <typename Scalar>
std::pair<double, double> evaluate(const Network<Scalar>& model, LikelihoodKind likelihood, const Vec<Scalar>& theta,
                                   const Dataset<Scalar>& data, const Communicator* communicator = nullptr);

/// Trains theta in place. `test` may be null (no evaluation). Throws what the optimizer throws.
template <typename Scalar>
TrainSummary train(const Network<Scalar>& model, LikelihoodKind likelihood, Vec<Scalar>& theta,
                   const Dataset<Scalar>& data, const Dataset<Scalar>* test, Optimizer<Scalar>& optimizer,
                   const TrainOptions& options);

}  // namespace natgrad
