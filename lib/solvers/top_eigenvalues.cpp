// top_eigenvalues' body: Spectra's Lanczos on the operator presented in the basis precision, compiled for
// float and double operators behind the operator view (operator_ref.h).
#include <Spectra/SymEigsSolver.h>
#include <natgrad/core/interrupted.h>
#include <natgrad/solvers/top_eigenvalues.h>

#include <chrono>
#include <functional>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>

#include "solvers/arnoldi_op.h"
#include "solvers/basis_operator.h"

namespace natgrad {

namespace {

// Lanczos with its basis in the scalar B.
template <typename B, typename S>
SpectrumResult top_in(const OperatorRef<S>& op, const SpectrumOptions& options) {
  const auto start = std::chrono::steady_clock::now();
  const Index n = op.rows(), k = options.num_eigenvalues;
  const Index ncv = lanczos_ncv(n, options);
  // A stop asked by the callback unwinds Spectra as the operator's own Interrupted would (Spectra keeps no
  // state that outlives compute()).
  std::function<void(Index)> on_product;
  if (options.callback)
    on_product = [&options](Index n) {
      SpectrumProgress p;
      p.phase = "lanczos";
      p.products = n;
      if (options.callback(p) == CallbackResult::stop)
        throw Interrupted("Lanczos was stopped after " + std::to_string(n) + " products");
    };
  detail::BasisOperator<OperatorRef<S>, B> dop(op, 0, 1, std::move(on_product));
  Spectra::SymEigsSolver<detail::BasisOperator<OperatorRef<S>, B>> solver(dop, k, ncv);
  SpectrumResult r;
  Index nconv = 0;
  std::string thrown, interrupted;
  try {
    solver.init();
    nconv = solver.compute(Spectra::SortRule::LargestAlge, options.max_restarts, options.tolerance,
                           Spectra::SortRule::LargestAlge);
  } catch (const Interrupted& e) {
    interrupted = e.what();
  } catch (const std::exception& e) {  // Spectra throws on some numerical failures
    thrown = e.what();
  }
  if (!interrupted.empty()) {
    r.termination = SpectrumTermination::interrupted;
    r.matvecs = dop.count();
    r.restarts = solver.num_iterations();
    r.status = "interrupted: " + interrupted;
    r.time_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    return r;
  }
  r.converged =
      thrown.empty() && dop.first_non_finite() == 0 && solver.info() == Spectra::CompInfo::Successful;
  r.termination = dop.first_non_finite()                              ? SpectrumTermination::non_finite
                  : !thrown.empty()                                   ? SpectrumTermination::failed
                  : r.converged                                       ? SpectrumTermination::converged
                  : solver.info() == Spectra::CompInfo::NotConverging ? SpectrumTermination::not_converged
                                                                      : SpectrumTermination::failed;
  r.matvecs = dop.count();
  r.restarts = solver.num_iterations();
  r.status = dop.first_non_finite() ? "the operator returned NaN or Inf at product " +
                                          std::to_string(dop.first_non_finite()) + " of the Lanczos iteration"
             : !thrown.empty() ? "Lanczos failed: " + thrown
             : r.converged     ? "converged"
             : solver.info() == Spectra::CompInfo::NotConverging
                 ? "not converged: " + std::to_string(nconv) + " of " + std::to_string(k) +
                       " eigenvalues met the tolerance within " + std::to_string(options.max_restarts) +
                       " restarts"
                 : "numerical failure in Lanczos (NaN or Inf in the operator?)";
  if (r.converged) {
    r.eigenvalues = solver.eigenvalues().template cast<double>();
    if (options.compute_eigenvectors) {
      if constexpr (std::is_same<B, double>::value)
        r.eigenvectors = solver.eigenvectors();  // moved: no second n × k copy
      else
        r.eigenvectors = solver.eigenvectors().template cast<double>();
    }
  }
  r.time_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return r;
}

template <typename S>
SpectrumResult top(const OperatorRef<S>& op, const SpectrumOptions& options) {
  std::string why;
  if (!options.is_valid(op.rows(), &why)) throw std::invalid_argument("SpectrumOptions: " + why);
  if (basis_in_operator_precision<OperatorRef<S>>(options)) return top_in<S>(op, options);
  return top_in<double>(op, options);
}

}  // namespace

SpectrumResult top_eigenvalues(const OperatorRef<float>& op, const SpectrumOptions& options) {
  return top(op, options);
}

SpectrumResult top_eigenvalues(const OperatorRef<double>& op, const SpectrumOptions& options) {
  return top(op, options);
}

}  // namespace natgrad
