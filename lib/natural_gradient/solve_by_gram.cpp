// The Gram solver inside solve_natural_gradient: the exact direction for each damping from G = UUᵀ
// (curvature/fisher_gram.h), checked by one product each, and the exact spectrum and condition numbers.
#include "natural_gradient/solve_by_gram.h"

#include <natgrad/curvature/fisher_gram.h>

#include <algorithm>
#include <chrono>
#include <cmath>

#include "core/fail.h"
#include "core/format_number.h"

namespace natgrad {

const char* to_string(SolverKind kind) {
  switch (kind) {
    case SolverKind::cg: return "cg";
    case SolverKind::smw: return "smw";
    case SolverKind::automatic: return "auto";
  }
  return "unknown";
}

SolverKind solver_from_string(const std::string& name) {
  if (name == "cg") return SolverKind::cg;
  if (name == "smw") return SolverKind::smw;
  if (name == "auto") return SolverKind::automatic;
  detail::fail("unknown solver \"" + name + "\" (cg, smw or auto)");
}

namespace detail {

std::string gram_ruled_out(const NaturalGradientOptions& o) {
  if (o.preconditioner != PreconditionerKind::none)
    return std::string("preconditioner ") + to_string(o.preconditioner) + " is moot for an exact solve";
  if (o.deflate > 0) return "deflate " + std::to_string(o.deflate) + " is moot for an exact solve";
  const std::vector<double> dampings = o.dampings.size() > 1 ? o.dampings : std::vector<double>{o.fisher.damping};
  for (double l : dampings)
    if (!(l > 0))
      return "damping " + format_number(l) + " leaves F + λI singular on a minibatch (F has rank below P): give λ > 0";
  return "";
}

template <typename Scalar>
bool gram_fits(const Network<Scalar>& model, Index curvature_samples, const NaturalGradientOptions& o,
               bool automatic, std::string* why) {
  const Index R = FisherGram<Scalar>::rows_for(model, curvature_samples, o.fisher.kind, o.fisher.mc_samples);
  const std::size_t bytes = FisherGram<Scalar>::required_bytes(model, curvature_samples, o.fisher).total();
  *why = std::to_string(R) + " rows, " + format_bytes(double(bytes));
  if (automatic && R > o.gram_max_rows) {
    *why += ": more than gram_max_rows " + std::to_string(o.gram_max_rows);
    return false;
  }
  if (o.gram_max_bytes > 0 && bytes > o.gram_max_bytes) {
    *why += ": more than gram_max_bytes " + format_bytes(double(o.gram_max_bytes));
    return false;
  }
  return true;
}

namespace {
double seconds_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

// ‖g − (F + λI)d‖/‖g‖, with one product, in double.
template <typename Scalar>
double true_residual(FisherOperator<Scalar>& F, double lambda, const Vec<Scalar>& g, const Vec<Scalar>& d) {
  F.set_damping(lambda);
  Vec<Scalar> y(F.rows());
  F.perform_op(d.data(), y.data());
  return (g.template cast<double>() - y.template cast<double>()).norm() / g.template cast<double>().norm();
}
}  // namespace

template <typename Scalar>
void solve_by_gram(FisherOperator<Scalar>& F, bool own_gradient, const NaturalGradientOptions& o,
                   NaturalGradientResult<Scalar>& r) {
  const double restore = F.damping();
  r.solver = SolverKind::smw;
  const FisherGram<Scalar> gram(F);
  r.gram_rows = gram.rows();
  r.time_gram_form_s = gram.form_seconds();
  r.gram_push_through = own_gradient && gram.push_through();
  const bool multi = o.dampings.size() > 1;
  const std::vector<double> dampings = multi ? o.dampings : std::vector<double>{o.fisher.damping};
  std::vector<GramSolution<Scalar>> sol = gram.solve(r.gradient, dampings, own_gradient);
  const double lambda_min = *std::min_element(dampings.begin(), dampings.end());
  for (GramSolution<Scalar>& s : sol) {
    r.time_gram_factor_s += s.factor_s;
    r.time_gram_apply_s += s.apply_s;
    const auto t = std::chrono::steady_clock::now();
    CgSummary cs;
    cs.termination = CgTermination::converged;
    cs.rhs_norm = r.gradient_norm;
    cs.relative_residual = cs.recursive_relative_residual = true_residual(F, s.damping, r.gradient, s.direction);
    cs.operator_applications = 1;
    cs.time_s = s.factor_s + s.apply_s + seconds_since(t);
    cs.message = "exact solve by the Gram of " + std::to_string(gram.rows()) + " rows (" +
                 (r.gram_push_through ? "push-through form" : "Woodbury form") +
                 "); true |g - (F + lambda I)d|/|g| = " + format_number(cs.relative_residual);
    if (multi) {
      DampedSolution<Scalar> d;
      d.damping = s.damping;
      d.cg = cs;
      if (s.damping == lambda_min) {
        r.direction = s.direction;
        r.cg = cs;
      }
      d.direction = std::move(s.direction);
      r.solves.push_back(std::move(d));
    } else {
      r.direction = std::move(s.direction);
      r.cg = cs;
    }
  }
  F.set_damping(restore);

  // The spectrum, exactly: every nonzero eigenvalue of F is one of G's.
  if (o.spectrum_top_k > 0 || o.condition_number) {
    const Index k = o.spectrum_top_k;
    const GramSpectrum s = gram.spectrum(o.compare.empty() ? 0 : k);
    r.exact_eigenvalues = s.eigenvalues;
    r.exact_trace = s.trace;
    r.exact_zero_count = s.zero_count;
    r.time_spectrum_s = s.seconds;
    if (k > 0) {
      SpectrumResult& sp = r.spectrum;
      sp.eigenvalues = Vec<double>::Zero(k);  // beyond the rank, F's eigenvalues are 0 exactly
      const Index nz = std::min<Index>(k, s.eigenvalues.size());
      sp.eigenvalues.head(nz) = s.eigenvalues.head(nz);
      sp.converged = true;
      sp.termination = SpectrumTermination::converged;
      sp.status = "exact: the eigendecomposition of the Gram (" + std::to_string(gram.rows()) + " rows)";
      sp.time_s = s.seconds;
      if (!o.compare.empty() && nz > 0) {
        const auto t = std::chrono::steady_clock::now();
        sp.eigenvectors = gram.eigenvectors(s, nz).template cast<double>();
        r.time_spectrum_s += seconds_since(t);
      }
    }
    if (o.condition_number && s.eigenvalues.size() > 0) {
      auto condition = [&](double lambda) {
        ConditionEstimate c;
        c.lambda_max = s.eigenvalues(0) + lambda;
        c.lambda_min = (s.zero_count > 0 ? 0.0 : s.eigenvalues(s.eigenvalues.size() - 1)) + lambda;
        c.condition_number = c.lambda_max / c.lambda_min;
        c.kind = s.zero_count > 0 ? ConditionMethod::rank_bound : ConditionMethod::lanczos;
        c.exact_min = true;
        c.lambda_min_error = 0;
        c.method = "exact, from the Gram's eigenvalues";
        return c;
      };
      r.condition = condition(multi ? lambda_min : o.fisher.damping);
      r.has_condition = true;
      for (DampedSolution<Scalar>& d : r.solves) {
        d.condition = condition(d.damping);
        d.has_condition = true;
      }
    }
  }
  if (!o.compare.empty() && r.spectrum.eigenvectors.cols() > 0) {
    const auto t = std::chrono::steady_clock::now();
    CgOptions co = o.cg;
    co.callback = nullptr;
    r.compare = compare_approximations(F, r.gradient, r.direction, r.spectrum.eigenvectors, r.spectrum.eigenvalues.head(r.spectrum.eigenvectors.cols()),
                                       o.compare, co);
    r.time_compare_s = seconds_since(t);
  }
  r.spectrum.eigenvectors.resize(0, 0);
}

template bool gram_fits<float>(const Network<float>&, Index, const NaturalGradientOptions&, bool, std::string*);
template bool gram_fits<double>(const Network<double>&, Index, const NaturalGradientOptions&, bool, std::string*);
template void solve_by_gram<float>(FisherOperator<float>&, bool, const NaturalGradientOptions&,
                                   NaturalGradientResult<float>&);
template void solve_by_gram<double>(FisherOperator<double>&, bool, const NaturalGradientOptions&,
                                    NaturalGradientResult<double>&);

}  // namespace detail
}  // namespace natgrad
