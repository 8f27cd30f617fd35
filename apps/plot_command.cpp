// natgrad plot a.csv b.csv … --output curves.svg: several training logs (train --log) on one figure, one
// colour and legend entry per run (training_plot.h).
#include "commands.h"
#include "training_log.h"
#include "training_plot.h"

#include <cstdio>
#include <filesystem>
#include <stdexcept>
#include <string>

namespace natgrad {
namespace cli {

int run_plot(Args& a) {
  if (a.logs.empty())
    usage_error("give the training logs to draw (natgrad plot a.csv b.csv --output curves.svg)");
  if (a.output.empty()) usage_error("--output is required (the figure, SVG)");
  if (a.logs.size() > static_cast<std::size_t>(kMaxPlottedRuns))
    usage_error("natgrad plot draws at most " + std::to_string(kMaxPlottedRuns) +
                " logs (one colour each), got " + std::to_string(a.logs.size()));
  if (a.plot_x != "epochs" && a.plot_x != "seconds" && a.plot_x != "both")
    usage_error("--x must be epochs, seconds or both, got \"" + a.plot_x + "\"");
  if (!a.labels.empty() && a.labels.size() != a.logs.size())
    usage_error("--labels gives " + std::to_string(a.labels.size()) + " names for " +
                std::to_string(a.logs.size()) + " logs (one each, comma-separated)");
  check_output_paths(a);
  TrainingPlot p;
  p.by_epoch = a.plot_x != "seconds";
  p.by_time = a.plot_x != "epochs";
  for (std::size_t i = 0; i < a.logs.size(); ++i) {
    const std::vector<TrainingLogRow> rows = read_training_log(a.logs[i]);
    bool steps = false;
    for (const TrainingLogRow& r : rows) steps = steps || !r.eval;
    if (!steps) throw std::invalid_argument(a.logs[i] + ": holds no steps (nothing to draw)");
    const std::string label =
        a.labels.empty() ? std::filesystem::path(a.logs[i]).stem().string() : a.labels[i];
    p.runs.push_back(training_curve(rows, label));
    if (!p.runs.back().epochs_known && p.by_epoch)
      std::fprintf(
          stderr,
          "note: %s stopped within its first epoch, and the log does not say how many steps an epoch has: "
          "it is drawn against training time only\n",
          a.logs[i].c_str());
  }
  p.title = a.logs.size() == 1 ? "natgrad plot: " + a.logs[0]
                               : "natgrad plot: " + std::to_string(a.logs.size()) + " runs";
  write_training_svg(a.output, p, "--output");
  std::printf("wrote %zu run%s to %s\n", a.logs.size(), a.logs.size() == 1 ? "" : "s", a.output.c_str());
  return 0;
}

}  // namespace cli
}  // namespace natgrad
