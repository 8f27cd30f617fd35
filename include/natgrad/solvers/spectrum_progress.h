/// \file spectrum_progress.h
/// \brief The progress of a spectrum computation, reported after every operator product, and the callback
/// that receives it and may stop the computation (top_eigenvalues, hutchinson_trace, slq_density,
/// module_spectrum).
///
/// The library prints nothing: a caller that wants progress lines, an estimate of the time left or a stop
/// on a signal does it in the callback. A stop ends the computation after the product just reported; the
/// result holds what was complete (the probes finished, the blocks done) and says it was interrupted.
///
/// \code
/// natgrad::SpectrumCallback cb = [](const natgrad::SpectrumProgress& p) {
///   if (p.products_total > 0) std::printf("%s: %lld of %lld products\n", p.phase, (long long)p.products,
///                                         (long long)p.products_total);
///   return natgrad::CallbackResult::keep_going;
/// };
/// natgrad::TraceEstimate t = natgrad::hutchinson_trace(F, 100, /*seed=*/0, cb);
/// \endcode
#pragma once

#include <natgrad/core/types.h>
#include <natgrad/solvers/callback_result.h>

#include <functional>

namespace natgrad {

/// Where a spectrum computation is, after an operator product.
struct SpectrumProgress {
  /// The phase: "lanczos" (top_eigenvalues), "hutchinson", "slq", "block trace" or "block lanczos"
  /// (module_spectrum). A string literal.
  const char* phase = "";
  /// Operator products of this phase so far (≥ 1).
  Index products = 0;
  /// The products the phase takes in all when that is known in advance (probes × Lanczos steps for SLQ,
  /// the probes for Hutchinson); 0 when it is not (Lanczos stops when its Ritz values converge).
  Index products_total = 0;
  /// Units of the phase completed and asked for: probes (Hutchinson, SLQ, block trace) or diagonal blocks
  /// (block lanczos); both 0 for top_eigenvalues.
  Index done = 0, total = 0;
};

/// Called after every operator product; returning CallbackResult::stop ends the computation there.
using SpectrumCallback = std::function<CallbackResult(const SpectrumProgress&)>;

}  // namespace natgrad
