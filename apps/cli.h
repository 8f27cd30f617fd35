// The natgrad command line (README.md, docs/formats.md), shared by `natgrad` and `solve-natural-gradient`.
#pragma once

namespace natgrad {
namespace cli {

struct Args;
class World;

/// The commands beyond `solve`. They live in the library natgrad_cli, which `natgrad` links and
/// `solve-natural-gradient` does not: the main job builds only what a solve needs.
struct MoreCommands {
  int (*fvp)(Args& a, const World& world, bool f64);
  int (*spectrum)(Args& a, const World& world, bool f64);
  int (*profile)(Args& a, const World& world, bool f64);
  int (*info)(Args& a);
  int (*train)(Args& a, const World& world, bool f64);
  bool (*can_plot)();  ///< whether spectrum --plot, train --plot and plot can draw (PLplot was found)
  int (*plot)(Args& a);  ///< natgrad plot
};

/// fvp, spectrum, profile and info (natgrad_cli).
const MoreCommands& more_commands();

/// Runs `natgrad <command> …` with `more`; without it (nullptr), the arguments are those of `natgrad solve`.
/// Returns the process exit code: 0 on success, 1 on bad input or failure, 2 on a usage error.
int run(int argc, char** argv, const MoreCommands* more);

}  // namespace cli
}  // namespace natgrad
