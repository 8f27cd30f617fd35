// natgrad train's --log CSV read back, for `natgrad plot` and `train --plot`: a strict parser of the format
// train writes (docs/formats.md), and the curves a picture of the run draws from it.
#pragma once

#include <natgrad/core/types.h>

#include <string>
#include <vector>

namespace natgrad {
namespace cli {

/// The log's first line, as train writes it.
constexpr const char* kTrainingLogHeader =
    "kind,step,epoch,time_s,loss,lr,damping,cg_iterations,test_loss,test_accuracy";

/// One row of the log; a field left empty (not applicable, or not a number when written) is NaN.
struct TrainingLogRow {
  bool eval = false;                        ///< kind: eval (true) or step
  Index step = 0;                           ///< steps done (an evaluation: so far)
  Index epoch = 0;                          ///< a step's epoch from 1; an evaluation's: epochs completed
  double time_s = 0;                        ///< training time so far
  double loss = 0;                          ///< a step's minibatch loss
  double test_loss = 0, test_accuracy = 0;  ///< an evaluation's
};

/// Parses the text of a log; `name` (the file) starts every error. Throws std::invalid_argument with one line
/// naming the file and the line: another header, a row without 10 fields, a kind other than step or eval, a
/// field that is not a number (as strtod reads it, whole), a step or epoch that is not a whole number >= 0,
/// or a step, epoch or time_s left empty.
std::vector<TrainingLogRow> parse_training_log(const std::string& text, const std::string& name);
/// Reads and parses the file at `path` (a missing or unreadable file is an error naming it).
std::vector<TrainingLogRow> read_training_log(const std::string& path);

/// Points of one quantity against epochs (fractional: steps done / steps per epoch) and training seconds.
struct CurveSeries {
  std::vector<double> epoch, time_s, value;
  void add(double e, double t, double v);  ///< skips a non-finite value
};

/// What a picture draws of one run.
struct TrainingCurve {
  std::string label;
  CurveSeries step_loss;   ///< each step's minibatch loss
  CurveSeries epoch_loss;  ///< each completed epoch's training loss, at its end
  CurveSeries test_loss;   ///< each evaluation's
  CurveSeries test_accuracy;
  /// Whether the positions in epochs mean anything: false for a log that stopped within its first epoch (the
  /// log does not say how many steps an epoch has); such a run is drawn against seconds only.
  bool epochs_known = true;
};

/// The curves of a log. An epoch is completed when a later epoch's step or an evaluation counting it follows;
/// its training loss is the mean of its steps' losses (the log holds no batch sizes: train's own,
/// sample-weighted, differs where the last batch is smaller), at its last step's time. A step's position in
/// epochs is step / steps_per_epoch; with steps_per_epoch 0 that is the largest number of step rows a
/// completed epoch of the log has, and when no epoch completed, unknown (epochs_known false).
TrainingCurve training_curve(const std::vector<TrainingLogRow>& rows, const std::string& label,
                             Index steps_per_epoch = 0);

}  // namespace cli
}  // namespace natgrad
