// One function per command; each returns the process exit status.
#pragma once

#include "options.h"
#include "world.h"

namespace natgrad {
namespace cli {

template <typename Scalar>
int run_solve(Args& a, const World& world);
template <typename Scalar>
int run_fvp(Args& a, const World& world);
template <typename Scalar>
int run_spectrum(Args& a, const World& world);
/// spectrum --exact (exact_spectrum_command.cpp).
template <typename Scalar>
int run_exact_spectrum(Args& a, const World& world);
template <typename Scalar>
int run_profile(Args& a, const World& world);
int run_info(Args& a);
/// natgrad train (train_command.cpp).
template <typename Scalar>
int run_train(Args& a, const World& world);
/// natgrad plot (plot_command.cpp).
int run_plot(Args& a);

}  // namespace cli
}  // namespace natgrad
