// One function per command; each returns the process exit status.
#pragma once

#include "options.h"

namespace natgrad {
namespace cli {

template <typename Scalar>
int run_solve(Args& a);
template <typename Scalar>
int run_fvp(Args& a);
template <typename Scalar>
int run_spectrum(Args& a);
int run_info(Args& a);

}  // namespace cli
}  // namespace natgrad
