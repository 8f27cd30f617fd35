// natgrad spectrum --plot density.svg: the SLQ spectral density on a logarithmic eigenvalue axis, drawn with
// PLplot's SVG driver (apps are built with it when PLplot is found; otherwise --plot is refused).
#pragma once

#include <string>
#include <vector>

namespace natgrad {
namespace cli {

struct DensityPlot {
  std::vector<double> nodes, weights;  ///< the SLQ quadrature (weights sum to 1)
  std::vector<double> top;             ///< the top-k eigenvalues, marked
  double zero_threshold = 0;           ///< nodes below it count as the mass at zero (its own bar)
  double trace = 0, trace_standard_error = 0;  ///< for the caption
  long long parameters = 0;
  std::string title;
};

/// Whether this build can draw (PLplot was found).
bool can_plot();

/// The density of log10 λ: the nodes above zero_threshold smoothed by a Gaussian of 0.05 decades on 400
/// points from a decade below the threshold to a decade above the largest node. Exposed for the test.
void log_density(const DensityPlot& p, std::vector<double>* log10_grid, std::vector<double>* density);

/// Writes the plot as SVG to `path` (through a temporary file, renamed). Throws std::runtime_error when the
/// build has no PLplot or the file cannot be written.
void write_density_svg(const std::string& path, const DensityPlot& p);

}  // namespace cli
}  // namespace natgrad
