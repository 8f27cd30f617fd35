// Pictures of training runs (natgrad train --plot, natgrad plot), drawn with PLplot's SVG driver: the loss
// (each step's, lightly; each epoch's mean; the test loss, dashed) and, when a run has them, the test
// accuracy, against epochs and against seconds of training time; one colour per run, a legend of runs and
// line styles.
#pragma once

#include "training_log.h"

#include <string>
#include <vector>

namespace natgrad {
namespace cli {

/// At most this many runs on one figure (one colour each).
constexpr int kMaxPlottedRuns = 10;

struct TrainingPlot {
  std::vector<TrainingCurve> runs;
  bool by_epoch = true;  ///< a column of panels against epochs
  bool by_time = true;   ///< a column against training seconds
  std::string title;
};

/// Writes the figure as SVG to `path` through a temporary file in its directory, renamed into place. Panels:
/// a row for the loss, and a row for the test accuracy when some run has one; a column per x axis asked for.
/// Axes are linear, x from 0, y over the data drawn (5% margins); tick labels are plain numbers ("%.6g").
/// Throws std::runtime_error naming `option` and the path when the build has no PLplot or the file cannot be
/// written.
void write_training_svg(const std::string& path, const TrainingPlot& p, const std::string& option);

}  // namespace cli
}  // namespace natgrad
