#include <natgrad/natural_gradient/solve_natural_gradient.h>
#include <natgrad/solvers/multi_shift_cg.h>

#include <utility>

#include <natgrad/core/detail/format_number.h>
#include <natgrad/natural_gradient/damped_condition.h>
#include <natgrad/curvature/kfac.h>
#include <natgrad/solvers/deflation_preconditioner.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <limits>
#include <memory>
#include <new>
#include <sstream>
#include <stdexcept>
#include "core/fail.h"

namespace natgrad {

bool NaturalGradientOptions::is_valid(std::string* why) const {
  auto bad = [&](const std::string& m) {
    if (why) *why = m;
    return false;
  };
  if (!fisher.is_valid(why)) return false;
  if (!cg.is_valid(why)) return false;
  if (batch < 0) return bad("batch must be >= 0, got " + std::to_string(batch));
  if (curvature_batch < 0) return bad("curvature_batch must be >= 0, got " + std::to_string(curvature_batch));
  if (batch > 0 && curvature_batch > batch)
    return bad("curvature_batch (" + std::to_string(curvature_batch) + ") exceeds batch (" +
               std::to_string(batch) + ")");
  if (!(preconditioner_exponent >= 0 && preconditioner_exponent <= 1))
    return bad("preconditioner_exponent must be in [0, 1], got " + std::to_string(preconditioner_exponent));
  if (spectrum_top_k < 0) return bad("spectrum_top_k must be >= 0");
  if (deflate < 0) return bad("deflate must be >= 0, got " + std::to_string(deflate));
  if (deflate > 0 && preconditioner != PreconditionerKind::none)
    return bad(std::string("deflation and the ") + to_string(preconditioner) +
               " preconditioner do not combine: choose one");
  if (dampings.size() == 1) return bad("dampings holds one value: set fisher.damping instead");
  for (std::size_t i = 0; i < dampings.size(); ++i) {
    if (!(dampings[i] >= 0) || !std::isfinite(dampings[i]))
      return bad("every damping must be finite and >= 0, got " + detail::format_number(dampings[i]));
    for (std::size_t j = 0; j < i; ++j)
      if (dampings[j] == dampings[i]) return bad("damping " + detail::format_number(dampings[i]) + " is listed twice");
  }
  if (dampings.size() > 1 && (deflate > 0 || preconditioner != PreconditionerKind::none))
    return bad("several dampings (multi-shift CG) combine with neither deflation nor a preconditioner: "
               "the shifted systems would share no Krylov space");
  if (!compare.empty()) {
    if (!(fisher.damping > 0) || !dampings.empty())
      return bad("comparing approximations needs one damping > 0 (F itself is singular)");
    if (spectrum_top_k <= 0)
      return bad("comparing approximations needs spectrum_top_k > 0: products are compared on F's top eigenvectors");
  }
  return true;
}

template <typename Scalar>
NaturalGradientResult<Scalar> solve_natural_gradient(const Network<Scalar>& model,
                                                     Vec<Scalar> theta, LikelihoodKind likelihood,
                                                     const Dataset<Scalar>& data,
                                                     const NaturalGradientOptions& options) {
  std::string why;
  if (!options.is_valid(&why)) detail::fail("NaturalGradientOptions: " + why);
  if (options.fisher.communicator && options.fisher.communicator->size() > 1)
    detail::fail("solve_natural_gradient over a whole Dataset is one process's solve, but fisher.communicator has " +
                 std::to_string(options.fisher.communicator->size()) +
                 " ranks: give each rank its share with the BatchShare overload");
  const Index N = options.batch > 0 ? options.batch : data.size();
  if (N == 0) detail::fail("the batch is empty");
  if (N > data.size())
    detail::fail("batch " + std::to_string(N) + " exceeds the " + std::to_string(data.size()) +
                                " samples in the data");
  const Index Nc = options.curvature_batch > 0 ? options.curvature_batch : N;
  if (Nc > N)
    detail::fail("curvature_batch " + std::to_string(Nc) + " exceeds the batch " +
                                std::to_string(N));
  // The caller's data serves as is when the batch is all of it; only a proper prefix is copied.
  Dataset<Scalar> prefix, curvature_prefix;
  if (N < data.size()) prefix = data.head(N);
  const Dataset<Scalar>& batch = N < data.size() ? prefix : data;
  // (Not `Nc == N ? batch : batch.head(Nc)`: a conditional with a temporary on one side copies the other.)
  if (Nc < N) curvature_prefix = batch.head(Nc);
  NaturalGradientOptions shared = options;
  shared.batch = shared.curvature_batch = 0;
  shared.fisher.communicator = nullptr;
  return solve_natural_gradient(model, std::move(theta), likelihood, BatchShare<Scalar>{&batch, 0, N},
                                BatchShare<Scalar>{Nc < N ? &curvature_prefix : &batch, 0, Nc}, shared);
}

template <typename Scalar>
NaturalGradientResult<Scalar> solve_natural_gradient(const Network<Scalar>& model, Vec<Scalar> theta,
                                                     LikelihoodKind likelihood, const BatchShare<Scalar>& batch,
                                                     const BatchShare<Scalar>& curvature,
                                                     const NaturalGradientOptions& options) {
  using clock = std::chrono::steady_clock;
  auto seconds = [](clock::time_point a) { return std::chrono::duration<double>(clock::now() - a).count(); };
  const auto t0 = clock::now();
  std::string why;
  if (!options.is_valid(&why)) detail::fail("NaturalGradientOptions: " + why);
  if (options.batch != 0 || options.curvature_batch != 0)
    detail::fail("NaturalGradientOptions: batch and curvature_batch must be 0 when the shares are given");
  if (!batch.data || !curvature.data) detail::fail("a BatchShare without data");
  const Communicator& comm = options.fisher.communicator ? *options.fisher.communicator : serial_communicator();
  const Index N = batch.total > 0 ? batch.total : batch.data->size();
  const Index Nc = curvature.total > 0 ? curvature.total : curvature.data->size();
  if (Nc > N)
    detail::fail("curvature_batch " + std::to_string(Nc) + " exceeds the batch " + std::to_string(N));

  NaturalGradientResult<Scalar> r;
  r.samples = N;
  r.curvature_samples = Nc;
  // The curvature operator; when the curvature share is the batch share it also gives the gradient.
  const bool one_operator = curvature.data == batch.data && curvature.first == batch.first && Nc == N;
  auto share_options = [&](const BatchShare<Scalar>& s, Index total) {
    FisherOptions o = options.fisher;
    o.first_sample = s.first;
    o.total_samples = total;
    return o;
  };
  auto t = clock::now();
  std::unique_ptr<FisherOperator<Scalar>> full;
  if (!one_operator)
    full = std::make_unique<FisherOperator<Scalar>>(model, theta, likelihood, *batch.data, share_options(batch, N));
  FisherOperator<Scalar> F(model, std::move(theta), likelihood, *curvature.data, share_options(curvature, Nc));
  r.time_forward_s = seconds(t);
  t = clock::now();
  FisherOperator<Scalar>& G = full ? *full : F;
  // NaN or Inf before CG (the same on every rank: the operators agree on it): nothing is solved on it, and
  // the CG summary says why it did not run.
  auto failed_before_cg = [&](const std::string& failure, CgBreakdown kind, double value) {
    r.failure = failure;
    r.cg.termination = CgTermination::breakdown;
    r.cg.breakdown = kind;
    r.cg.breakdown_value = value;
    r.cg.message = "not run: " + failure;
    r.direction = Vec<Scalar>::Zero(F.rows());
    r.time_total_s = seconds(t0);
    return r;
  };
  for (const FisherOperator<Scalar>* op : {&std::as_const(G), &std::as_const(F)})
    if (!op->forward_error().empty())
      return failed_before_cg("forward pass: " + op->forward_error(), CgBreakdown::problem_not_finite,
                              std::nan(""));
  r.loss = G.loss();
  r.gradient = G.take_gradient();  // moved out: the solve keeps one copy of g
  r.gradient_norm = double(r.gradient.norm());
  r.time_gradient_s = seconds(t);
  // (The forward pass was finite: the likelihood or the backward pass overflowed.)
  if (!std::isfinite(r.gradient_norm))
    return failed_before_cg(
        "the gradient is NaN or Inf (|g| = " + detail::format_number(r.gradient_norm) +
            "; the forward pass was finite: the likelihood or the backward pass overflowed)",
        CgBreakdown::rhs_not_finite, r.gradient_norm);
  if (!std::isfinite(r.loss))
    return failed_before_cg("the loss is " + detail::format_number(r.loss) +
                                " (the forward pass was finite: the likelihood overflowed)",
                            CgBreakdown::problem_not_finite, r.loss);
  if (options.on_gradient) options.on_gradient(r.loss, r.gradient_norm);
  full.reset();  // the full batch's activations and slots are not needed by the solve

  t = clock::now();
  CgWorkspace<Scalar> ws;
  const bool preconditioned = options.preconditioner != PreconditionerKind::none;
  // Deflation: the top eigenpairs of F first (the spectrum asked for, or `deflate` of them), then CG
  // preconditioned by them from the solution on their span.
  const bool multi = options.dampings.size() > 1;
  const Index deflation = preconditioned || multi
                              ? 0 : std::max(options.deflate, options.reuse_spectrum ? options.spectrum_top_k : 0);
  std::string no_memory;
  try {
    if (!multi) ws.resize(F.rows(), preconditioned || deflation > 0);
    r.direction = Vec<Scalar>::Zero(F.rows());
  } catch (const std::bad_alloc&) {
    const int vectors = preconditioned || deflation > 0 ? 6 : 5;
    no_memory = "out of memory allocating conjugate gradient's vectors (" + std::to_string(vectors) + " x " +
                std::to_string(F.rows()) + " parameters, " +
                detail::format_bytes(double(vectors) * double(F.rows()) * sizeof(Scalar)) + ")";
  }
  no_memory = comm.first_error(no_memory);  // every rank stops if one cannot go on
  if (!no_memory.empty()) throw std::runtime_error(no_memory);
  // Replicated CG: every rank holds the same vectors and takes the same decisions; a stop asked by the
  // callback (a signal) is rank 0's decision, on every rank at the same iteration.
  CgOptions cg_options = options.cg;
  if (comm.size() > 1) {
    cg_options.callback = [&](const CgIterationInfo& info) {
      const bool stop = options.cg.callback && options.cg.callback(info) == CallbackResult::stop;
      return comm.broadcast(stop) ? CallbackResult::stop : CallbackResult::keep_going;
    };
  }
  std::unique_ptr<DeflationPreconditioner<Scalar>> deflator;
  if (deflation > 0) {
    const auto ts = clock::now();
    const double lambda = F.damping();
    F.set_damping(0);  // the spectrum of F itself
    SpectrumOptions so = options.spectrum;
    so.num_eigenvalues = std::max(deflation, options.spectrum_top_k);
    so.compute_eigenvectors = true;
    r.spectrum = top_eigenvalues(F, so);
    F.set_damping(lambda);
    if (r.spectrum.converged) {
      const Index k = deflation;
      deflator = std::make_unique<DeflationPreconditioner<Scalar>>(r.spectrum.eigenvectors.leftCols(k),
                                                                   r.spectrum.eigenvalues.head(k), lambda);
      r.deflated = k;
      deflator->initial_guess(r.gradient.data(), r.direction.data());
      cg_options.warm_start = true;
    }
    if (options.compare.empty())
      r.spectrum.eigenvectors.resize(0, 0);  // (kept in the preconditioner, in the solve's precision)
    if (options.spectrum_top_k > 0 && r.spectrum.eigenvalues.size() > options.spectrum_top_k) {
      r.spectrum.eigenvalues.conservativeResize(options.spectrum_top_k);
      if (r.spectrum.eigenvectors.cols() > options.spectrum_top_k)
        r.spectrum.eigenvectors.conservativeResize(Eigen::NoChange, options.spectrum_top_k);
    }
    r.time_spectrum_s = seconds(ts);
    t = clock::now();
  }
  if (multi) {
    // Every damping from the Krylov space of the smallest: F + λ_min I, shifted by λ_j − λ_min.
    const double lambda_min = *std::min_element(options.dampings.begin(), options.dampings.end());
    F.set_damping(lambda_min);
    std::vector<double> shifts;
    for (double l : options.dampings) shifts.push_back(l - lambda_min);
    std::vector<Vec<Scalar>> x;
    std::vector<CgSummary> summaries = multi_shift_conjugate_gradient(F, shifts, r.gradient.data(), x, cg_options, &r.multi_shift_products);
    r.solves.reserve(shifts.size());  // (no copies of directions when the list grows)
    for (std::size_t j = 0; j < shifts.size(); ++j) {
      DampedSolution<Scalar> d;
      d.damping = options.dampings[j];
      d.direction = std::move(x[j]);
      d.cg = std::move(summaries[j]);
      if (d.damping == lambda_min) {
        r.direction = d.direction;
        r.cg = d.cg;
      }
      r.solves.push_back(std::move(d));
    }
  } else if (options.preconditioner == PreconditionerKind::kfac) {
    KfacApproximation<Scalar> K(F);  // (built from the curvature batch; its time counts as CG's)
    K.set_damping(options.fisher.damping);
    r.cg = conjugate_gradient(F, K, r.gradient.data(), r.direction.data(), cg_options, ws);
  } else if (preconditioned) {
    DiagonalPreconditioner<Scalar> M(F.empirical_fisher_diagonal(), options.fisher.damping,
                                     options.preconditioner_exponent);
    r.cg = conjugate_gradient(F, M, r.gradient.data(), r.direction.data(), cg_options, ws);
  } else if (deflator) {
    r.cg = conjugate_gradient(F, *deflator, r.gradient.data(), r.direction.data(), cg_options, ws);
  } else {
    r.cg = conjugate_gradient(F, IdentityPreconditioner<Scalar>(F.rows()), r.gradient.data(),
                              r.direction.data(), cg_options, ws);
  }
  deflator.reset();
  r.time_cg_s = seconds(t);
  if (r.cg.is_numerical_failure()) r.failure = "conjugate gradient: " + r.cg.message;
  for (const DampedSolution<Scalar>& d : r.solves)
    if (r.failure.empty() && d.cg.is_numerical_failure())
      r.failure = "conjugate gradient (damping " + detail::format_number(d.damping) + "): " + d.cg.message;

  // A stop asked by the callback (a signal: the user wants the iterate now) skips the spectrum.
  if ((options.spectrum_top_k > 0 || options.condition_number) && r.cg.termination != CgTermination::user_stop) {
    t = clock::now();
    const double lambda = F.damping();
    F.set_damping(0);  // the spectrum of F itself
    if (options.spectrum_top_k > 0 && deflation == 0) {
      SpectrumOptions so = options.spectrum;
      so.num_eigenvalues = options.spectrum_top_k;
      so.compute_eigenvectors = !options.compare.empty();
      r.spectrum = top_eigenvalues(F, so);
    }
    if (options.condition_number) {
      // (λ_max is the spectrum's when it is known)
      const double known_max = r.spectrum.eigenvalues.size() > 0 ? r.spectrum.eigenvalues[0] : std::nan("");
      r.condition = damped_condition_number(F, lambda, known_max);
      r.has_condition = true;
      for (DampedSolution<Scalar>& d : r.solves) {  // (λ_max and the null space are shared: cheap after the first)
        d.condition = d.damping == lambda ? r.condition : damped_condition_number(F, d.damping, known_max);
        d.has_condition = true;
      }
    }
    F.set_damping(lambda);
    r.time_spectrum_s += seconds(t);
    // The approximations against F, on its top eigenvectors and the direction just solved for.
    if (!options.compare.empty() && r.spectrum.eigenvectors.cols() > 0 && r.failure.empty()) {
      t = clock::now();
      CgOptions co = options.cg;
      co.callback = nullptr;
      r.compare = compare_approximations(F, r.gradient, r.direction, r.spectrum.eigenvectors,
                                         r.spectrum.eigenvalues, options.compare, co);
      r.time_compare_s = seconds(t);
    }
    r.spectrum.eigenvectors.resize(0, 0);
  }
  r.time_total_s = seconds(t0);
  return r;
}

const char* to_string(NaturalGradientTermination t) {
  switch (t) {
    case NaturalGradientTermination::solved: return "solved";
    case NaturalGradientTermination::not_converged: return "not_converged";
    case NaturalGradientTermination::numerical_failure: return "numerical_failure";
  }
  return "unknown";
}

template <typename Scalar>
std::string NaturalGradientResult<Scalar>::brief_report() const {
  char buf[320];
  std::snprintf(buf, sizeof buf,
                "natural gradient %s: loss %.8g, |g| %.6e, CG %lld iterations, |b - Ax|/|b| = %.3e, %.3f s",
                to_string(termination()), loss, gradient_norm, static_cast<long long>(cg.iterations),
                cg.relative_residual, time_total_s);
  return buf;
}

template <typename Scalar>
std::string NaturalGradientResult<Scalar>::full_report() const {
  std::ostringstream os;
  os << brief_report() << "\n";
  if (!ok()) os << "failure: " << failure << "\n";
  os << "samples " << samples << ", curvature on " << curvature_samples << "\n" << cg.full_report();
  if (spectrum.matvecs > 0) os << spectrum.full_report();
  if (has_condition) os << condition.full_report();
  os << "timing (s): forward " << time_forward_s << ", gradient " << time_gradient_s << ", cg " << time_cg_s
     << ", spectrum " << time_spectrum_s << ", total " << time_total_s << "\n";
  return os.str();
}

template struct NaturalGradientResult<float>;
template struct NaturalGradientResult<double>;

template NaturalGradientResult<float> solve_natural_gradient<float>(const Network<float>&,
                                                                    Vec<float>, LikelihoodKind,
                                                                    const Dataset<float>&,
                                                                    const NaturalGradientOptions&);
template NaturalGradientResult<double> solve_natural_gradient<double>(const Network<double>&,
                                                                      Vec<double>, LikelihoodKind,
                                                                      const Dataset<double>&,
                                                                      const NaturalGradientOptions&);
template NaturalGradientResult<float> solve_natural_gradient<float>(const Network<float>&, Vec<float>, LikelihoodKind,
                                                                    const BatchShare<float>&, const BatchShare<float>&,
                                                                    const NaturalGradientOptions&);
template NaturalGradientResult<double> solve_natural_gradient<double>(const Network<double>&, Vec<double>,
                                                                      LikelihoodKind, const BatchShare<double>&,
                                                                      const BatchShare<double>&,
                                                                      const NaturalGradientOptions&);

}  // namespace natgrad
