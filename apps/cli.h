// The natgrad command line (README.md, docs/formats.md), shared by `natgrad` and `solve-natural-gradient`.
#pragma once

namespace natgrad {
namespace cli {

/// Runs `natgrad <command> …`; with solve_only, the arguments are those of `natgrad solve`.
/// Returns the process exit code: 0 on success, 1 on bad input or failure, 2 on a usage error.
int run(int argc, char** argv, bool solve_only);

}  // namespace cli
}  // namespace natgrad
