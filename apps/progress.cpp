#include "progress.h"

#include "signals.h"

#include <algorithm>
#include <cstring>
#include <memory>
#include <string>

namespace natgrad {
namespace cli {

namespace {

// What a progress callback remembers of the phase it is reporting.
struct PhaseState {
  std::string phase;
  Index last_products = 0, first_products = 0;
  double first_time = 0, last_line = -1e300;
};

}  // namespace

SpectrumCallback spectrum_callback(const Progress& progress, const World& world) {
  auto state = std::make_shared<PhaseState>();
  const Progress* pr = &progress;
  const World* w = &world;
  return [state, pr, w](const SpectrumProgress& p) {
    const double t = pr->elapsed();
    PhaseState& s = *state;
    // A new phase, or the same phase run again (its product count restarts).
    const bool fresh = s.phase != p.phase || p.products <= s.last_products;
    if (fresh) {
      s.phase = p.phase;
      s.first_products = p.products;
      s.first_time = t;
      s.last_line = -1e300;
    }
    s.last_products = p.products;
    if (fresh || t - s.last_line >= kProgressInterval) {
      s.last_line = t;
      const double phase_s = t - s.first_time;
      const char* unit = std::strcmp(p.phase, "block lanczos") == 0 ? "blocks" : "probes";
      const std::string units =
          p.total > 0 ? ", " + std::to_string(p.done) + " of " + std::to_string(p.total) + " " + unit + " done" : "";
      if (p.products_total > 0 && p.products > s.first_products) {
        // The rate since the phase's first report, over the products still to come.
        const double eta = phase_s / double(p.products - s.first_products) * double(p.products_total - p.products);
        pr->line("%s: %lld of %lld products%s, eta %.0f s", p.phase, static_cast<long long>(p.products),
                 static_cast<long long>(p.products_total), units.c_str(), eta);
      } else if (p.products_total > 0) {
        pr->line("%s: %lld of %lld products%s", p.phase, static_cast<long long>(p.products),
                 static_cast<long long>(p.products_total), units.c_str());
      } else {
        pr->line("%s: %lld products%s, %.1f s", p.phase, static_cast<long long>(p.products), units.c_str(), phase_s);
      }
    }
    return stop_agreed(*w) ? CallbackResult::stop : CallbackResult::keep_going;
  };
}

void watch_fisher(FisherOptions& options, const Progress& progress) {
  struct State {
    const char* phase = nullptr;
    double start = 0, last = 0;
  };
  auto state = std::make_shared<State>();
  const Progress* pr = &progress;
  // A line at least every kProgressInterval seconds, with the time left at the rate so far.
  options.on_progress = [state, pr](const char* phase, Index done, Index total) {
    const double t = pr->elapsed();
    State& s = *state;
    if (phase != s.phase) {  // the first chunk of a pass: its start is about one chunk ago
      s.phase = phase;
      s.start = s.last = t;
    }
    if (t - s.last < kProgressInterval || done == total) return;
    s.last = t;
    const double eta = (t - s.start) / double(std::max<Index>(done - 1, 1)) * double(total - done);
    pr->line("%s: %lld of %lld chunks, eta %.0f s", phase, static_cast<long long>(done),
             static_cast<long long>(total), eta);
  };
  options.stop_requested = [] { return stop_asked(); };
}

bool stop_agreed(const World& world) { return world.comm().broadcast(stop_asked()); }

}  // namespace cli
}  // namespace natgrad
