/// \file module_spectrum.h
/// \brief The Fisher's diagonal blocks, one per module: each block's top eigenvalue and trace, and how much of
/// each of F's top eigenvectors lies in it.
///
/// A module is a parameter tensor's name up to its last dot ("layer1.0.conv1.weight" → "layer1.0.conv1";
/// a name without a dot is its own module), its tensors taken together, in the order its first tensor
/// appears in the flat vector. For the block F_ll of module l (the rows and columns of its entries):
///   - the top eigenvalue, by Lanczos on F_ll (x scattered into a zero vector, multiplied by F, gathered);
///   - the trace, by Hutchinson with Rademacher probes over all P entries shared by every module:
///     E[Σ_{i∈l} v_i (F v)_i] = tr F_ll, one product of F per probe for all the modules together; the same
///     samples summed over all entries are Hutchinson's estimate of tr F (the same probes and arithmetic as
///     hutchinson_trace(), so the same bits);
///   - per top eigenvector u_k of F (unit columns), its mass Σ_{i∈l} u_{k,i}².
///
/// \code
/// natgrad::FisherOperator<float> F(model, theta, likelihood, data);   // damping 0: F itself
/// natgrad::SpectrumOptions so;
/// so.num_eigenvalues = 3;
/// so.compute_eigenvectors = true;
/// const natgrad::SpectrumResult top = natgrad::top_eigenvalues(F, so);
/// natgrad::ModuleSpectrumOptions mo;
/// mo.probes = 30;
/// const natgrad::ModuleSpectrumResult r = natgrad::module_spectrum(F, top.eigenvectors, mo);
/// for (const natgrad::ModuleSpectrum& m : r.modules)
///   std::printf("%s: top %g, trace %g +- %g\n", m.module.c_str(), m.top_eigenvalue, m.trace, m.trace_standard_error);
/// \endcode
#pragma once

#include <natgrad/curvature/fisher_operator.h>
#include <natgrad/solvers/hutchinson_trace.h>
#include <natgrad/solvers/spectrum_progress.h>
#include <natgrad/solvers/top_eigenvalues.h>

#include <cstdint>
#include <string>
#include <vector>

namespace natgrad {

/// One module's diagonal block F_ll.
struct ModuleSpectrum {
  std::string module;  ///< the tensors' common name ("fc1"; "1" for module 1 of an nn.Sequential)
  Index params = 0;    ///< the block's size: the module's entries
  /// Largest eigenvalue of F_ll, by Lanczos on the block (one product for a single entry); NaN when Lanczos
  /// did not converge or the computation was stopped before this block.
  double top_eigenvalue = 0;
  /// tr F_ll and its standard error, from the shared probes (NaN when fewer than two probes were done).
  double trace = 0, trace_standard_error = 0;
  std::vector<double> eigenvector_mass;  ///< per top eigenvector of F: its squared mass on the module
  Index products = 0;                    ///< the block Lanczos's products
};

struct ModuleSpectrumOptions {
  /// Rademacher probes for the block traces, keyed by (seed, probe) as hutchinson_trace's. Range ≥ 2.
  /// Default 30.
  Index probes = 30;
  /// Seed of the probes. Default 0.
  uint64_t seed = 0;
  /// Relative accuracy of each block's top eigenvalue (SpectrumOptions::tolerance). Range > 0. Default 1e-10.
  double tolerance = 1e-10;
  /// Called after every product of F: phase "block trace" (done/total: probes, products_total known), then
  /// "block lanczos" (done/total: blocks; products of all blocks so far). Returning CallbackResult::stop
  /// ends the computation: the traces are those of the probes completed, the blocks not reached have a NaN
  /// top eigenvalue, and the result says `interrupted` (as it does when F throws Interrupted). Optional.
  SpectrumCallback callback;

  /// True if every field is in range; otherwise false with the reason in *why.
  bool is_valid(std::string* why) const;
};

struct ModuleSpectrumResult {
  std::vector<ModuleSpectrum> modules;  ///< in the order of their first tensor in the flat vector
  TraceEstimate trace;                  ///< Hutchinson's tr F from the same probes
  Index trace_products = 0;             ///< products of the shared probes
  Index products = 0;                   ///< all products of F (probes and block Lanczos)
  bool interrupted = false;             ///< stopped before every probe and block was done
};

/// The diagonal blocks of F (use F with damping 0 for F itself). `eigenvectors`: P × K, F's top-K
/// eigenvectors as unit columns (K may be 0). Collective when F's batch is shared by ranks (every rank calls
/// it; a callback's stop must then be the same on every rank). Throws std::invalid_argument for bad
/// options or an eigenvector matrix whose rows are not P.
template <typename Scalar>
ModuleSpectrumResult module_spectrum(const FisherOperator<Scalar>& F, const Mat<double>& eigenvectors,
                                     const ModuleSpectrumOptions& options);

}  // namespace natgrad
