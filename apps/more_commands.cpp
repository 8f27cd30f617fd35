// The table of the commands beyond solve, for `natgrad` (solve-natural-gradient does not link this file).
#include "cli.h"
#include "commands.h"
#include "density_plot.h"

namespace natgrad {
namespace cli {

namespace {
template <int (*F)(Args&, const World&), int (*D)(Args&, const World&)>
int by_dtype(Args& a, const World& world, bool f64) {
  return f64 ? D(a, world) : F(a, world);
}
}  // namespace

const MoreCommands& more_commands() {
  static const MoreCommands table{by_dtype<run_fvp<float>, run_fvp<double>>,
                                  by_dtype<run_spectrum<float>, run_spectrum<double>>,
                                  by_dtype<run_profile<float>, run_profile<double>>, run_info,
                                  by_dtype<run_train<float>, run_train<double>>, can_plot,
                                  run_plot};
  return table;
}

}  // namespace cli
}  // namespace natgrad
