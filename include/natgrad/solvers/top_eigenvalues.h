/// \file top_eigenvalues.h
/// \brief The k largest eigenvalues (and eigenvectors) of a symmetric operator by Spectra's Lanczos, in
/// double precision whatever the operator's scalar.
///
/// \code
/// natgrad::SpectrumOptions opt;
/// opt.num_eigenvalues = 10;
/// natgrad::SpectrumResult r = natgrad::top_eigenvalues(F, opt);   // r.eigenvalues descending
/// \endcode
#pragma once

#include <natgrad/core/types.h>
#include <natgrad/solvers/operator_ref.h>
#include <natgrad/solvers/spectrum_progress.h>

#include <algorithm>
#include <cstddef>
#include <string>
#include <type_traits>

namespace natgrad {

/// The scalar in which Spectra keeps the Lanczos basis and reorthogonalizes against it.
///
/// Every Lanczos step passes over the whole basis about three times (two Vᵀf and one V h), so the basis
/// costs memory bandwidth in proportion to its scalar's size: in double, on a float operator of 1.86M
/// parameters, those passes took 43% of mlp/spectrum_top10 (docs/solvers.md). A float operator's products
/// are themselves accurate only to a few units of float rounding, which a float basis matches.
enum class LanczosBasis {
  /// The operator's scalar when the tolerance is at least 1e-5, otherwise double. (On the benchmark MLP a
  /// float basis put the top-10 eigenvalues within 2e-6 of the float64 reference, a double basis within
  /// 3e-8.)
  automatic,
  double_precision,   ///< double whatever the operator's scalar
  operator_precision  ///< the operator's scalar (float for a float operator)
};

struct SpectrumOptions {
  /// k, the number of largest eigenvalues. Range [1, n − 1]. Default 10.
  Index num_eigenvalues = 10;
  /// Lanczos basis size; 0 chooses min(n, max(2k + 1, 20)). Range (k, n] otherwise. Default 0.
  Index ncv = 0;
  /// Maximum implicit restarts. Default 1000.
  Index max_restarts = 1000;
  /// Relative accuracy of the Ritz values. Default 1e-10.
  double tolerance = 1e-10;
  /// Also return the eigenvectors. Default false.
  bool compute_eigenvectors = false;
  /// Precision of the Lanczos basis. Default automatic.
  LanczosBasis basis = LanczosBasis::automatic;
  /// Called after every operator product with the count so far (phase "lanczos"; the total is not known in
  /// advance); returning CallbackResult::stop ends the computation there (termination `interrupted`, no
  /// eigenvalues: Lanczos has none to give before its Ritz values converge). Optional.
  SpectrumCallback callback;

  bool is_valid(Index n, std::string* why) const;
};

/// The Lanczos basis size top_eigenvalues uses on an n × n operator: options.ncv, or when it is 0
/// min(n, max(2k + 1, 20)).
inline Index lanczos_ncv(Index n, const SpectrumOptions& options) {
  return options.ncv > 0 ? options.ncv : std::min(n, std::max<Index>(2 * options.num_eigenvalues + 1, 20));
}

/// What top_eigenvalues holds at its peak on an n × n operator whose scalar has `scalar_bytes`, with the
/// basis in `basis_bytes` per entry (sizeof(double), or the operator's when basis_in_operator_precision()):
/// Spectra's n × ncv basis (lanczos_ncv), the k-column temporary of a restart (V·Q), the residual, the start
/// vector and up to eight work vectors (measured), and four ncv × ncv matrices in double (the tridiagonal
/// matrix, the restart's Q, the Ritz vectors of the small problem and its eigensolver's; measured: 1.5 of
/// them at n = 3000, ncv = 60); the adapter's two operator-scalar vectors when the basis
/// scalar is not the operator's; and the k eigenvectors converted to double from a narrower basis.
std::size_t spectrum_required_bytes(Index n, const SpectrumOptions& options, std::size_t scalar_bytes,
                                    std::size_t basis_bytes = sizeof(double));

/// Why top_eigenvalues stopped.
enum class SpectrumTermination {
  converged,      ///< all k Ritz values met the tolerance
  not_converged,  ///< max_restarts reached first
  non_finite,     ///< the operator returned NaN or Inf
  failed,         ///< Spectra reported a numerical failure (or threw)
  interrupted,    ///< the callback asked to stop, or the operator threw Interrupted (a stop request)
};
const char* to_string(SpectrumTermination t);

/// What top_eigenvalues found, Summary-style: a termination kind, a message with the numbers, the counts.
struct SpectrumResult {
  Vec<double> eigenvalues;   ///< descending; empty unless converged
  Mat<double> eigenvectors;  ///< n × k, if asked
  Index matvecs = 0;         ///< operator applications used
  Index restarts = 0;
  SpectrumTermination termination = SpectrumTermination::failed;
  bool converged = false;  ///< termination == converged
  std::string status;      ///< "converged", or what went wrong, with the numbers
  double time_s = 0;

  /// One line: termination, eigenvalue count, products, restarts, time.
  std::string brief_report() const;
  /// Several lines: the above, the message and every eigenvalue.
  std::string full_report() const;
};

/// Whether top_eigenvalues keeps its basis in the operator's scalar rather than double.
template <typename Op>
bool basis_in_operator_precision(const SpectrumOptions& options) {
  if (std::is_same<typename Op::Scalar, double>::value) return true;
  return options.basis == LanczosBasis::operator_precision ||
         (options.basis == LanczosBasis::automatic && options.tolerance >= 1e-5);
}

/// The k largest eigenvalues of the operator view (operator_ref.h): the body every top_eigenvalues call
/// runs, compiled in the library for float and double.
SpectrumResult top_eigenvalues(const OperatorRef<float>& op, const SpectrumOptions& options);
SpectrumResult top_eigenvalues(const OperatorRef<double>& op, const SpectrumOptions& options);

/// The k largest eigenvalues (and optionally eigenvectors) of a symmetric operator whose scalar is float or
/// double. Throws std::invalid_argument for options that are not valid for its size
/// (SpectrumOptions::is_valid).
template <typename Op>
SpectrumResult top_eigenvalues(const Op& op, const SpectrumOptions& options) {
  NATGRAD_CHECK_OPERATOR(Op);
  NATGRAD_CHECK_SOLVER_SCALAR(typename Op::Scalar);
  return top_eigenvalues(OperatorRef<typename Op::Scalar>(op), options);
}

}  // namespace natgrad
