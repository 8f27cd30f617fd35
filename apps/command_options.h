// The options each command registers: solve's own and CG's; fvp, spectrum and profile the model, data and
// Fisher options with their own (not CG's, which they would ignore); info the model and the memory estimate's.
#pragma once

#include "options.h"

#include <CLI/CLI.hpp>

#include <string>

namespace natgrad {
namespace cli {

void add_solve_options(CLI::App* c, Args& a);
void add_fvp_options(CLI::App* c, Args& a);
void add_spectrum_options(CLI::App* c, Args& a);
void add_profile_options(CLI::App* c, Args& a);
void add_info_options(CLI::App* c, Args& a);
/// natgrad train (train_command.cpp).
void add_train_options(CLI::App* c, Args& a);
/// natgrad plot (plot_command.cpp).
void add_plot_options(CLI::App* c, Args& a);

/// The message of a parse error, with a sentence for an option of `natgrad solve` given to another command.
std::string parse_error_message(const CLI::ParseError& e, int argc, char** argv);

}  // namespace cli
}  // namespace natgrad
