// Progress on stderr (silenced by --quiet) and the points where a command notices a signal: the forward pass
// and gradient by chunks, the spectrum tools product by product, the phases between them.
#pragma once

#include "world.h"

#include <natgrad/curvature/fisher_operator.h>
#include <natgrad/solvers/spectrum_progress.h>

#include <chrono>
#include <cstdio>
#include <functional>

namespace natgrad {
namespace cli {

using clock_type = std::chrono::steady_clock;

/// Lines "[  12.34s] what" on stderr, timed from the command's start; nothing with --quiet.
class Progress {
 public:
  explicit Progress(bool quiet) : quiet_(quiet), start_(clock_type::now()) {}
  double elapsed() const { return std::chrono::duration<double>(clock_type::now() - start_).count(); }
  template <typename... T>
  void line(const char* fmt, T... args) const {
    if (quiet_) return;
    std::fprintf(stderr, "[%7.2fs] ", elapsed());
    std::fprintf(stderr, fmt, args...);
    std::fputc('\n', stderr);
  }
  bool quiet() const { return quiet_; }

 private:
  bool quiet_;
  clock_type::time_point start_;
};

/// Seconds between two progress lines of a long phase.
constexpr double kProgressInterval = 2.0;

/// The callback of the spectrum tools (top_eigenvalues, hutchinson_trace, slq_density, module_spectrum): a
/// line at the first product of each phase and then at least every kProgressInterval seconds, with the time
/// left when the phase's products are known in advance (probes) and the products done when they are not
/// (Lanczos); and a stop once a signal arrived, decided by rank 0 and agreed by every rank at the same product.
SpectrumCallback spectrum_callback(const Progress& progress, const World& world);

/// FisherOptions' progress and stop: a line for the forward pass and the gradient at least every
/// kProgressInterval seconds (chunks done, time left), and the stop request polled between chunks.
void watch_fisher(FisherOptions& options, const Progress& progress);

/// Whether a signal asked the command to stop, agreed by every rank (rank 0's decision).
bool stop_agreed(const World& world);

}  // namespace cli
}  // namespace natgrad
