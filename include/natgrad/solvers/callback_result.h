/// \file callback_result.h
/// \brief What a solver's progress callback answers: go on, or stop (conjugate gradient, Lanczos, the
/// stochastic estimators).
///
/// \code
/// opt.callback = [](const natgrad::SpectrumProgress& p) {
///   return p.products < 100 ? natgrad::CallbackResult::keep_going : natgrad::CallbackResult::stop;
/// };
/// \endcode
#pragma once

namespace natgrad {

/// The answer of an iteration or progress callback. `stop` ends the computation at that point; what it
/// had completed is returned, and its Summary says it was stopped.
enum class CallbackResult { keep_going, stop };

}  // namespace natgrad
