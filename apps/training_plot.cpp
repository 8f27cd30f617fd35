#include "training_plot.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <stdexcept>
#include <unistd.h>

#ifdef NATGRAD_HAVE_PLPLOT
#include <plplot.h>
#endif

namespace natgrad {
namespace cli {

#ifdef NATGRAD_HAVE_PLPLOT
namespace {

// The runs' colours (matplotlib's tab10), each at full strength and lightly (alpha) for the per-step losses.
constexpr unsigned char kPalette[kMaxPlottedRuns][3] = {
    {31, 119, 180}, {255, 127, 14},  {44, 160, 44},   {214, 39, 40},  {148, 103, 189},
    {140, 86, 75},  {227, 119, 194}, {127, 127, 127}, {188, 189, 34}, {23, 190, 207}};
constexpr PLFLT kStepAlpha = 0.3;
constexpr PLINT kBlack = 1, kGrey = 2, kLightGrey = 3, kRunColour = 4,
                kRunLight = kRunColour + kMaxPlottedRuns;

// Layout in pixels: a title band, a legend strip on the right, and per panel room for its title, tick labels
// and axis labels around the viewport.
constexpr double kTitleBand = 40, kLegendWidth = 270, kLeft = 84, kRight = 22, kTop = 34, kBottom = 62;

// The PLplot escape character is '#': a literal one is "##".
std::string escaped(const std::string& text) {
  std::string out;
  for (char c : text) {
    out += c;
    if (c == '#') out += '#';
  }
  return out;
}

// Tick labels as plain numbers, a tick at zero (up to rounding of the tick arithmetic) as "0".
struct AxisSpans {
  double x = 1, y = 1;
};
void tick_label(PLINT axis, PLFLT value, char* label, PLINT length, PLPointer data) {
  const AxisSpans* spans = static_cast<const AxisSpans*>(data);
  const double span = axis == PL_X_AXIS ? spans->x : spans->y;
  if (std::abs(value) < 1e-9 * span) value = 0;
  std::snprintf(label, static_cast<std::size_t>(length), "%.6g", value);
}

enum class Axis { epochs, seconds };
enum class Quantity { loss, accuracy };

const std::vector<double>& xs(const CurveSeries& s, Axis axis) {
  return axis == Axis::epochs ? s.epoch : s.time_s;
}

// The series a panel draws of one run.
std::vector<const CurveSeries*> panel_series(const TrainingCurve& c, Quantity q) {
  if (q == Quantity::accuracy) return {&c.test_accuracy};
  return {&c.step_loss, &c.epoch_loss, &c.test_loss};
}

// [lo, hi] with 5% margins; a single value gets a window around it, no data [0, 1].
void data_range(double lo, double hi, double* out_lo, double* out_hi) {
  if (!(lo <= hi)) {
    *out_lo = 0, *out_hi = 1;
    return;
  }
  double span = hi - lo;
  if (!(span > 1e-12 * std::max(1.0, std::abs(hi)))) {
    span = std::max(0.1 * std::abs(hi), 1e-3);
    lo -= span / 2, hi += span / 2;
  }
  *out_lo = lo - 0.05 * span, *out_hi = hi + 0.05 * span;
}

void line(const std::vector<double>& x, const std::vector<double>& y) {
  if (x.size() == 1) {
    plpoin(1, x.data(), y.data(), 1);  // (a dot: one point has no line)
    return;
  }
  plline(static_cast<PLINT>(x.size()), x.data(), y.data());
}

void markers(const std::vector<double>& x, const std::vector<double>& y) {
  plwidth(1);
  plssym(0, 0.6);
  plpoin(static_cast<PLINT>(x.size()), x.data(), y.data(), 4);  // small circles
}

void dashed(bool on) {
  if (on) {
    const PLINT mark = 6000, space = 3000;  // micrometres
    plstyl(1, &mark, &space);
  } else {
    plstyl(0, nullptr, nullptr);
  }
}

void draw_panel(const TrainingPlot& p, Axis axis, Quantity q, double x0, double x1, double y0, double y1) {
  double xmax = 0, ylo = HUGE_VAL, yhi = -HUGE_VAL;
  for (const TrainingCurve& c : p.runs)
    for (const CurveSeries* s : panel_series(c, q)) {
      if (axis == Axis::epochs && !c.epochs_known) continue;
      for (double v : xs(*s, axis)) xmax = std::max(xmax, v);
      for (double v : s->value) ylo = std::min(ylo, v), yhi = std::max(yhi, v);
    }
  const double xhi = xmax > 0 ? 1.02 * xmax : 1;
  double wlo, whi;
  data_range(ylo, yhi, &wlo, &whi);
  plvpor(x0, x1, y0, y1);
  plwind(0, xhi, wlo, whi);
  AxisSpans spans{xhi, whi - wlo};
  plslabelfunc(tick_label, &spans);
  plcol0(kBlack);
  plwidth(1);
  dashed(false);
  plbox("bcnsto", 0, 0, "bcnstvo", 0, 0);
  const bool epochs = axis == Axis::epochs;
  const std::string what = q == Quantity::loss ? "loss" : "test accuracy";
  plmtex("t", 1.0, 0.5, 0.5, (what + (epochs ? " by epoch" : " by training time")).c_str());
  plmtex("b", 3.2, 0.5, 0.5, epochs ? "epoch" : "training time (s)");
  plmtex("l", 4.4, 0.5, 0.5, what.c_str());
  plslabelfunc(nullptr, nullptr);
  for (std::size_t i = 0; i < p.runs.size(); ++i) {
    const TrainingCurve& c = p.runs[i];
    if (axis == Axis::epochs && !c.epochs_known) continue;
    const PLINT colour = kRunColour + PLINT(i % kMaxPlottedRuns),
                light = kRunLight + PLINT(i % kMaxPlottedRuns);
    auto draw = [&](const CurveSeries& s, PLINT col, double width, bool dash, bool marked) {
      if (s.value.empty()) return;
      plcol0(col);
      plwidth(width);
      dashed(dash);
      line(xs(s, axis), s.value);
      dashed(false);
      if (marked) markers(xs(s, axis), s.value);
    };
    if (q == Quantity::loss) {
      draw(c.step_loss, light, 1, false, false);
      draw(c.epoch_loss, colour, 2, false, true);
      draw(c.test_loss, colour, 2, true, true);
    } else {
      draw(c.test_accuracy, colour, 2, false, true);
    }
  }
  plwidth(1);
}

// The legend strip: a line sample and label per run, then what each line style means.
void draw_legend(const TrainingPlot& p, double x0, double x1, double y0, double y1, double width_px,
                 double height_px) {
  plvpor(x0, x1, y0, y1);
  plwind(0, width_px, -height_px, 0);  // pixels from the strip's top left
  plschr(0, 0.7);
  double y = -12;
  auto entry = [&](PLINT colour, double width, bool dash, const std::string& text) {
    const PLFLT lx[2] = {0, 34}, ly[2] = {y, y};
    plcol0(colour);
    plwidth(width);
    dashed(dash);
    plline(2, lx, ly);
    dashed(false);
    plwidth(1);
    plcol0(kBlack);
    plptex(42, y, 1, 0, 0, escaped(text).c_str());
    y -= 20;
  };
  for (std::size_t i = 0; i < p.runs.size(); ++i)
    entry(kRunColour + PLINT(i % kMaxPlottedRuns), 2, false, p.runs[i].label);
  y -= 14;
  entry(kLightGrey, 1, false, "train loss, each step");
  entry(kGrey, 2, false, "train loss, epoch mean");
  entry(kGrey, 2, true, "test loss");
}

}  // namespace
#endif

void write_training_svg(const std::string& path, const TrainingPlot& p, const std::string& option) {
#ifndef NATGRAD_HAVE_PLPLOT
  (void)p;
  throw std::runtime_error(option + " " + path +
                           ": this build has no PLplot (install libplplot-dev and rebuild)");
#else
  bool accuracy = false;
  for (const TrainingCurve& c : p.runs) accuracy = accuracy || !c.test_accuracy.value.empty();
  std::vector<Axis> columns;
  if (p.by_epoch) columns.push_back(Axis::epochs);
  if (p.by_time) columns.push_back(Axis::seconds);
  if (columns.empty()) throw std::runtime_error(option + " " + path + ": no x axis to draw against");
  const int rows = accuracy ? 2 : 1, cols = static_cast<int>(columns.size());
  const double cell_w = cols == 2 ? 430 : 470, cell_h = 340;
  const double W = cols * cell_w + kLegendWidth, H = kTitleBand + rows * cell_h;

  // PLplot ends the process when it cannot open its file: make sure it can first.
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  if (std::FILE* f = std::fopen(tmp.c_str(), "wb"))
    std::fclose(f);
  else
    throw std::runtime_error(option + " " + path + ": cannot create a file in its directory");
  char geometry[64];
  std::snprintf(geometry, sizeof geometry, "%.0fx%.0f", W, H);
  plsdev("svg");
  plsfnam(tmp.c_str());
  plsetopt("geometry", geometry);
  plscolbg(255, 255, 255);
  plscmap0n(kRunLight + kMaxPlottedRuns);
  plinit();
  pladv(0);
  plscol0(kBlack, 0, 0, 0);
  plscol0(kGrey, 80, 80, 80);
  plscol0a(kLightGrey, 80, 80, 80, kStepAlpha);
  for (int i = 0; i < kMaxPlottedRuns; ++i) {
    plscol0(kRunColour + i, kPalette[i][0], kPalette[i][1], kPalette[i][2]);
    plscol0a(kRunLight + i, kPalette[i][0], kPalette[i][1], kPalette[i][2], kStepAlpha);
  }
  plschr(0, 0.8);
  plcol0(kBlack);
  // The title, centred over the panels.
  plvpor(0, 1, 0, 1);
  plwind(0, W, 0, H);
  plptex((W - kLegendWidth) / 2, H - kTitleBand / 2, 1, 0, 0.5, escaped(p.title).c_str());
  for (int r = 0; r < rows; ++r)
    for (int k = 0; k < cols; ++k) {
      const double left = k * cell_w, top = kTitleBand + r * cell_h;  // pixels from the top left
      draw_panel(p, columns[k], r == 0 ? Quantity::loss : Quantity::accuracy, (left + kLeft) / W,
                 (left + cell_w - kRight) / W, 1 - (top + cell_h - kBottom) / H, 1 - (top + kTop) / H);
    }
  const double strip_left = cols * cell_w + 10, strip_top = kTitleBand + kTop;
  draw_legend(p, strip_left / W, (W - 4) / W, 0.02, 1 - strip_top / H, W - 4 - strip_left,
              0.98 * H - strip_top);
  plend();
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    throw std::runtime_error(option + " " + path + ": cannot move the picture into place");
  }
#endif
}

}  // namespace cli
}  // namespace natgrad
