#include "density_plot.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <stdexcept>

#ifdef NATGRAD_HAVE_PLPLOT
#include <plplot.h>
#endif

namespace natgrad {
namespace cli {

bool can_plot() {
#ifdef NATGRAD_HAVE_PLPLOT
  return true;
#else
  return false;
#endif
}

void log_density(const DensityPlot& p, std::vector<double>* grid, std::vector<double>* density) {
  constexpr int kPoints = 400;
  constexpr double kSigma = 0.05;  // decades
  double top = p.zero_threshold;
  for (double v : p.nodes) top = std::max(top, v);
  for (double v : p.top) top = std::max(top, v);
  const double lo = std::log10(p.zero_threshold) - 1, hi = std::log10(top) + 1;
  grid->assign(kPoints, 0.0);
  density->assign(kPoints, 0.0);
  for (int i = 0; i < kPoints; ++i) (*grid)[i] = lo + (hi - lo) * i / (kPoints - 1);
  const double norm = 1 / (kSigma * std::sqrt(2 * M_PI));
  for (std::size_t k = 0; k < p.nodes.size(); ++k) {
    if (!(p.nodes[k] >= p.zero_threshold)) continue;
    const double x = std::log10(p.nodes[k]);
    for (int i = 0; i < kPoints; ++i) {
      const double z = ((*grid)[i] - x) / kSigma;
      (*density)[i] += p.weights[k] * norm * std::exp(-0.5 * z * z);
    }
  }
}

void write_density_svg(const std::string& path, const DensityPlot& p) {
#ifndef NATGRAD_HAVE_PLPLOT
  (void)p;
  throw std::runtime_error("--plot " + path + ": this build has no PLplot (install libplplot-dev and rebuild)");
#else
  std::vector<double> x, y;
  log_density(p, &x, &y);
  double zero_mass = 0;
  for (std::size_t k = 0; k < p.nodes.size(); ++k)
    if (!(p.nodes[k] >= p.zero_threshold)) zero_mass += p.weights[k];
  const double ymax = std::max(*std::max_element(y.begin(), y.end()), 1e-300) * 1.15;
  const std::string tmp = path + ".tmp";
  plsdev("svg");
  plsfnam(tmp.c_str());
  plsetopt("geometry", "900x560");
  plscolbg(255, 255, 255);
  plinit();
  pladv(0);
  plscol0(1, 0, 0, 0);        // axes and text: black
  plscol0(2, 31, 119, 180);   // density: blue
  plscol0(3, 214, 39, 40);    // top-k: red
  plscol0(4, 127, 127, 127);  // mass at zero: grey
  plcol0(1);
  plschr(0, 0.9);
  // Left panel: the share of the spectral mass at zero (F has rank <= N(C - 1)), on its own linear scale.
  plvpor(0.07, 0.13, 0.2, 0.85);
  plwind(0, 1, 0, 1.12);
  plbox("bc", 0, 0, "bcnstv", 0.2, 0);
  plmtex("l", 3.2, 0.5, 0.5, "share of the mass");
  plmtex("b", 1.2, 0.5, 0.5, "at 0");
  char label[64];
  std::snprintf(label, sizeof label, "%.1f%%", 100 * zero_mass);
  plcol0(4);
  const double bx[4] = {0.2, 0.2, 0.8, 0.8}, by[4] = {0, zero_mass, zero_mass, 0};
  plfill(4, bx, by);
  plcol0(1);
  plptex(0.5, zero_mass + 0.03, 1, 0, 0.5, label);
  // Right panel: the density of log10(eigenvalue) of the rest, the top-k marked.
  plvpor(0.26, 0.96, 0.2, 0.85);
  plwind(x.front(), x.back(), 0, ymax);
  plbox("bcnstl", 0, 0, "bcnstv", 0, 0);  // l: logarithmic labels on x
  plmtex("b", 2.8, 0.5, 0.5, "eigenvalue");
  plmtex("l", 4.2, 0.5, 0.5, "density of log10(eigenvalue), the rest");
  plmtex("t", 2.2, 0.42, 0.5, p.title.c_str());
  char caption[256];
  std::snprintf(caption, sizeof caption, "tr(F) = %.4g +- %.2g;  %lld parameters;  %.1f%% of the mass above %.1e",
                p.trace, p.trace_standard_error, p.parameters, 100 * (1 - zero_mass), p.zero_threshold);
  plmtex("b", 4.6, 0.42, 0.5, caption);
  plcol0(2);
  plwidth(2);
  plline(static_cast<PLINT>(x.size()), x.data(), y.data());
  plcol0(3);
  plwidth(1);
  for (double v : p.top) {
    if (!(v > 0)) continue;
    const double lx[2] = {std::log10(v), std::log10(v)}, ly[2] = {0, ymax * 0.9};
    plline(2, lx, ly);
  }
  if (!p.top.empty() && p.top.front() > 0)
    plptex(std::log10(p.top.front()), ymax * 0.93, 1, 0, 1.0, ("top " + std::to_string(p.top.size())).c_str());
  plend();
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    throw std::runtime_error("--plot " + path + ": cannot write the file");
  }
#endif
}

}  // namespace cli
}  // namespace natgrad
