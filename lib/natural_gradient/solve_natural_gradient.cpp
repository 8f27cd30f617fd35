// solve_natural_gradient: the forward passes and the gradient, then the direction (CG with one preconditioner
// chosen up front, or multi-shift CG over several dampings), then the diagnostics (spectrum, condition
// number, comparisons).
#include <natgrad/core/interrupted.h>
#include <natgrad/curvature/kfac.h>
#include <natgrad/natural_gradient/damped_condition.h>
#include <natgrad/natural_gradient/solve_natural_gradient.h>
#include <natgrad/solvers/deflation_preconditioner.h>
#include <natgrad/solvers/multi_shift_cg.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <limits>
#include <memory>
#include <new>
#include <sstream>
#include <stdexcept>
#include <utility>
#include <variant>

#include "core/fail.h"
#include "core/format_number.h"
#include "natural_gradient/solve_by_gram.h"

namespace natgrad {

// Every rule about a solve's options lives here; a message names the fields (and the field's value) as a
// user sets them, "deflate 4 and preconditioner diagonal do not combine", so that the command line can name
// its own options in their place.
bool NaturalGradientOptions::is_valid(std::string* why) const {
  auto bad = [&](const std::string& m) {
    if (why) *why = m;
    return false;
  };
  std::string part;
  if (!fisher.is_valid(&part)) return bad("fisher." + part);
  if (!cg.is_valid(&part)) return bad("cg." + part);
  if (batch < 0) return bad("batch must be >= 0, got " + std::to_string(batch));
  if (curvature_batch < 0) return bad("curvature_batch must be >= 0, got " + std::to_string(curvature_batch));
  if (batch > 0 && curvature_batch > batch)
    return bad("curvature_batch " + std::to_string(curvature_batch) + " exceeds batch " +
               std::to_string(batch));
  if (!(preconditioner_exponent >= 0 && preconditioner_exponent <= 1))
    return bad("preconditioner_exponent must be in [0, 1], got " +
               detail::format_number(preconditioner_exponent));
  if (spectrum_top_k < 0) return bad("spectrum_top_k must be >= 0, got " + std::to_string(spectrum_top_k));
  if (deflate < 0) return bad("deflate must be >= 0, got " + std::to_string(deflate));
  if (deflate > 0 && preconditioner != PreconditionerKind::none)
    return bad("deflate " + std::to_string(deflate) + " and preconditioner " + to_string(preconditioner) +
               " do not combine: choose one");
  // Several dampings: multi-shift CG, whose shifted systems share one Krylov space.
  if (dampings.size() == 1) return bad("dampings holds one value: set fisher.damping instead");
  for (std::size_t i = 0; i < dampings.size(); ++i) {
    if (!(dampings[i] >= 0) || !std::isfinite(dampings[i]))
      return bad("every damping must be finite and >= 0, got " + detail::format_number(dampings[i]));
    for (std::size_t j = 0; j < i; ++j)
      if (dampings[j] == dampings[i]) return bad("damping " + detail::format_number(dampings[i]) + " is listed twice");
  }
  if (dampings.size() > 1 && (deflate > 0 || preconditioner != PreconditionerKind::none))
    return bad("several dampings (multi-shift CG) and " +
               (deflate > 0 ? "deflate " + std::to_string(deflate)
                            : std::string("preconditioner ") + to_string(preconditioner)) +
               " do not combine: the shifted systems would share no Krylov space");
  if (solver == SolverKind::smw) {
    const std::string no = detail::gram_ruled_out(*this);
    if (!no.empty()) return bad("solver smw: " + no);
  }
  if (gram_max_rows < 1) return bad("gram_max_rows must be >= 1, got " + std::to_string(gram_max_rows));
  // The comparisons: damped directions (F itself is singular) and products on F's top eigenvectors.
  for (std::size_t i = 0; i < compare.size(); ++i)
    for (std::size_t j = 0; j < i; ++j)
      if (compare[j] == compare[i])
        return bad(std::string("compare lists ") + to_string(compare[i]) + " twice");
  if (!compare.empty()) {
    if (!dampings.empty())
      return bad("compare needs one fisher.damping > 0, not a list (F itself is singular)");
    if (!(fisher.damping > 0))
      return bad("compare needs fisher.damping > 0 (F itself is singular), got " +
                 detail::format_number(fisher.damping));
    if (spectrum_top_k <= 0)
      return bad("compare needs spectrum_top_k > 0: products are compared on F's top eigenvectors");
  }
  return true;
}

bool NaturalGradientOptions::is_valid(Index num_params, std::string* why) const {
  if (!is_valid(why)) return false;
  auto bad = [&](const std::string& m) {
    if (why) *why = m;
    return false;
  };
  // Lanczos finds at most P − 1 eigenpairs of a P × P operator.
  if (spectrum_top_k >= num_params)
    return bad("spectrum_top_k " + std::to_string(spectrum_top_k) + " must be below the parameter count " +
               std::to_string(num_params));
  if (deflate >= num_params)
    return bad("deflate " + std::to_string(deflate) + " must be below the parameter count " +
               std::to_string(num_params));
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

namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// F itself, its damping set to 0 while this lives: the spectrum and the condition number are F's, not
// F + λI's.
template <typename Scalar>
class Undamped {
 public:
  explicit Undamped(FisherOperator<Scalar>& F) : F_(F), lambda_(F.damping()) { F_.set_damping(0); }
  ~Undamped() { F_.set_damping(lambda_); }
  Undamped(const Undamped&) = delete;
  Undamped& operator=(const Undamped&) = delete;
  double damping() const { return lambda_; }  // the λ it restores

 private:
  FisherOperator<Scalar>& F_;
  double lambda_;
};

// The eigenpairs of F that deflate CG: `deflate`, or the spectrum's when it is reused; none with a
// preconditioner or several dampings (is_valid refuses deflate > 0 with either).
Index deflation_count(const NaturalGradientOptions& o) {
  if (o.preconditioner != PreconditionerKind::none || o.dampings.size() > 1) return 0;
  return std::max(o.deflate, o.reuse_spectrum ? o.spectrum_top_k : 0);
}

// CG's preconditioner: one of these per solve, applied through one std::visit.
template <typename Scalar>
using AnyPreconditioner = std::variant<IdentityPreconditioner<Scalar>, DiagonalPreconditioner<Scalar>,
                                       KfacApproximation<Scalar>, DeflationPreconditioner<Scalar>>;

// What the result keeps of a spectrum computed for deflation: spectrum_top_k eigenvalues (the `deflate`
// of them when no spectrum was asked for), and the eigenvectors only for the comparisons (the preconditioner
// holds its own copy, in the solve's precision).
void keep_reported(SpectrumResult& s, const NaturalGradientOptions& o) {
  if (o.compare.empty()) s.eigenvectors.resize(0, 0);
  if (o.spectrum_top_k > 0 && s.eigenvalues.size() > o.spectrum_top_k) {
    s.eigenvalues.conservativeResize(o.spectrum_top_k);
    if (s.eigenvectors.cols() > o.spectrum_top_k)
      s.eigenvectors.conservativeResize(Eigen::NoChange, o.spectrum_top_k);
  }
}

// The preconditioner the options ask for. Deflation computes F's top eigenpairs first (into r.spectrum)
// and starts CG from the solution on their span (into r.direction, with cg.warm_start); when Lanczos does
// not converge, CG runs without a preconditioner.
template <typename Scalar>
AnyPreconditioner<Scalar> choose_preconditioner(FisherOperator<Scalar>& F, const NaturalGradientOptions& o,
                                                NaturalGradientResult<Scalar>& r, CgOptions& cg) {
  using Any = AnyPreconditioner<Scalar>;
  if (o.preconditioner == PreconditionerKind::diagonal)  // Martens: (diag(F̂_emp) + λ)^α
    return Any(std::in_place_type<DiagonalPreconditioner<Scalar>>, F.empirical_fisher_diagonal(),
               o.fisher.damping, o.preconditioner_exponent);
  if (o.preconditioner == PreconditionerKind::kfac) {  // from the curvature batch; π-split damping
    Any M(std::in_place_type<KfacApproximation<Scalar>>, F);
    std::get<KfacApproximation<Scalar>>(M).set_damping(o.fisher.damping);
    return M;
  }
  const Index k = deflation_count(o);
  if (k == 0) return Any(std::in_place_type<IdentityPreconditioner<Scalar>>, F.rows());
  const auto t = Clock::now();
  {
    const Undamped<Scalar> undamped(F);
    SpectrumOptions so = o.spectrum;
    so.num_eigenvalues = std::max(k, o.spectrum_top_k);
    so.compute_eigenvectors = true;
    r.spectrum = top_eigenvalues(F, so);
  }
  r.time_spectrum_s = seconds_since(t);
  if (!r.spectrum.converged) {
    keep_reported(r.spectrum, o);
    return Any(std::in_place_type<IdentityPreconditioner<Scalar>>, F.rows());
  }
  Any M(std::in_place_type<DeflationPreconditioner<Scalar>>, r.spectrum.eigenvectors.leftCols(k),
        r.spectrum.eigenvalues.head(k), F.damping());
  std::get<DeflationPreconditioner<Scalar>>(M).initial_guess(r.gradient.data(), r.direction.data());
  cg.warm_start = true;
  r.deflated = k;
  keep_reported(r.spectrum, o);
  return M;
}

// One damping: (F + λI) d = g by CG with the chosen preconditioner.
template <typename Scalar>
void solve_one_damping(FisherOperator<Scalar>& F, const NaturalGradientOptions& o, CgOptions cg,
                       CgWorkspace<Scalar>& ws, NaturalGradientResult<Scalar>& r) {
  const AnyPreconditioner<Scalar> M = choose_preconditioner(F, o, r, cg);
  r.cg = std::visit(
      [&](const auto& m) { return conjugate_gradient(F, m, r.gradient.data(), r.direction.data(), cg, ws); },
      M);
}

// Several dampings from the Krylov space of the smallest: multi-shift CG on F + λ_min I with the shifts
// λ_j − λ_min (multi_shift_cg.h). direction and cg are then the smallest damping's.
template <typename Scalar>
void solve_several_dampings(FisherOperator<Scalar>& F, const NaturalGradientOptions& o, const CgOptions& cg,
                            NaturalGradientResult<Scalar>& r) {
  const double lambda_min = *std::min_element(o.dampings.begin(), o.dampings.end());
  F.set_damping(lambda_min);
  std::vector<double> shifts;
  for (double l : o.dampings) shifts.push_back(l - lambda_min);
  std::vector<Vec<Scalar>> x;
  std::vector<CgSummary> summaries =
      multi_shift_conjugate_gradient(F, shifts, r.gradient.data(), x, cg, &r.multi_shift_products);
  r.solves.reserve(shifts.size());  // (no copies of directions when the list grows)
  for (std::size_t j = 0; j < shifts.size(); ++j) {
    DampedSolution<Scalar> d;
    d.damping = o.dampings[j];
    d.direction = std::move(x[j]);
    d.cg = std::move(summaries[j]);
    if (d.damping == lambda_min) {
      r.direction = d.direction;
      r.cg = d.cg;
    }
    r.solves.push_back(std::move(d));
  }
}

// After the solve: F's top-k spectrum (unless deflation computed it before CG), the condition number of
// each F + λI (λ_max from the spectrum when it is known), and the approximations compared with F on its top
// eigenvectors and the direction just solved for.
template <typename Scalar>
void diagnose(FisherOperator<Scalar>& F, const NaturalGradientOptions& o, NaturalGradientResult<Scalar>& r) {
  auto t = Clock::now();
  {
    const Undamped<Scalar> undamped(F);
    const double lambda = undamped.damping();
    if (o.spectrum_top_k > 0 && deflation_count(o) == 0) {
      SpectrumOptions so = o.spectrum;
      so.num_eigenvalues = o.spectrum_top_k;
      so.compute_eigenvectors = !o.compare.empty();
      r.spectrum = top_eigenvalues(F, so);
    }
    if (o.condition_number) {
      const double known_max = r.spectrum.eigenvalues.size() > 0 ? r.spectrum.eigenvalues[0] : std::nan("");
      r.condition = damped_condition_number(F, lambda, known_max);
      r.has_condition = true;
      // Every damping's (λ_max and the null space are shared: cheap after the first).
      for (DampedSolution<Scalar>& d : r.solves) {
        d.condition = d.damping == lambda ? r.condition : damped_condition_number(F, d.damping, known_max);
        d.has_condition = true;
      }
    }
  }
  r.time_spectrum_s += seconds_since(t);
  if (!o.compare.empty() && r.spectrum.eigenvectors.cols() > 0 && r.failure.empty()) {
    t = Clock::now();
    CgOptions co = o.cg;
    co.callback = nullptr;
    r.compare = compare_approximations(F, r.gradient, r.direction, r.spectrum.eigenvectors,
                                       r.spectrum.eigenvalues, o.compare, co);
    r.time_compare_s = seconds_since(t);
  }
  r.spectrum.eigenvectors.resize(0, 0);
}

}  // namespace

template <typename Scalar>
NaturalGradientResult<Scalar> solve_natural_gradient(const Network<Scalar>& model, Vec<Scalar> theta,
                                                     LikelihoodKind likelihood, const BatchShare<Scalar>& batch,
                                                     const BatchShare<Scalar>& curvature,
                                                     const NaturalGradientOptions& options) {
  const auto t0 = Clock::now();
  std::string why;
  if (!options.is_valid(model.num_params(), &why)) detail::fail("NaturalGradientOptions: " + why);
  if (options.batch != 0 || options.curvature_batch != 0)
    detail::fail("NaturalGradientOptions: batch and curvature_batch must be 0 when the shares are given");
  if (!batch.data || !curvature.data) detail::fail("a BatchShare without data");
  const Communicator& comm = options.fisher.communicator ? *options.fisher.communicator : serial_communicator();
  const Index N = batch.total > 0 ? batch.total : batch.data->size();
  const Index Nc = curvature.total > 0 ? curvature.total : curvature.data->size();
  if (Nc > N)
    detail::fail("curvature_batch " + std::to_string(Nc) + " exceeds the batch " + std::to_string(N));

  // 1. The forward passes, the loss and the gradient; NaN or Inf in any of them ends the solve here.
  NaturalGradientResult<Scalar> r;
  r.samples = N;
  r.curvature_samples = Nc;
  // The solver: the Gram's when asked and it may run (smw refuses otherwise, before any pass), else CG.
  SolverKind chosen = SolverKind::cg;
  if (options.solver != SolverKind::cg) {
    const bool automatic = options.solver == SolverKind::automatic;
    const std::string no = detail::gram_ruled_out(options);
    if (!automatic && !no.empty()) detail::fail("solver smw: " + no);
    std::string size;
    const bool fits = no.empty() && detail::gram_fits(model, Nc, options, automatic, &size);
    if (!automatic && !fits)
      detail::fail("solver smw: the Gram of " + size + " (raise gram_max_bytes, or use cg)");
    chosen = fits ? SolverKind::smw : SolverKind::cg;
    r.solver_reason = automatic ? std::string("auto chose ") + to_string(chosen) + ": " + (no.empty() ? size : no)
                                : "the Gram of " + size;
  }
  // The curvature operator; when the curvature share is the batch share it also gives the gradient.
  const bool one_operator = curvature.data == batch.data && curvature.first == batch.first && Nc == N;
  auto share_options = [&](const BatchShare<Scalar>& s, Index total) {
    FisherOptions o = options.fisher;
    o.first_sample = s.first;
    o.total_samples = total;
    return o;
  };
  auto t = Clock::now();
  std::unique_ptr<FisherOperator<Scalar>> full;
  if (!one_operator)
    full = std::make_unique<FisherOperator<Scalar>>(model, theta, likelihood, *batch.data, share_options(batch, N));
  FisherOperator<Scalar> F(model, std::move(theta), likelihood, *curvature.data, share_options(curvature, Nc));
  r.time_forward_s = seconds_since(t);
  t = Clock::now();
  FisherOperator<Scalar>& G = full ? *full : F;
  // (The same on every rank: the operators agree on it.) Nothing is solved on it, and the CG summary says
  // why it did not run.
  auto failed_before_cg = [&](const std::string& failure, CgBreakdown kind, double value) {
    r.failure = failure;
    r.cg.termination = CgTermination::breakdown;
    r.cg.breakdown = kind;
    r.cg.breakdown_value = value;
    r.cg.message = "not run: " + failure;
    r.direction = Vec<Scalar>::Zero(F.rows());
    r.time_total_s = seconds_since(t0);
    return r;
  };
  for (const FisherOperator<Scalar>* op : {&std::as_const(G), &std::as_const(F)})
    if (!op->forward_error().empty())
      return failed_before_cg("forward pass: " + op->forward_error(), CgBreakdown::problem_not_finite,
                              std::nan(""));
  r.loss = G.loss();
  r.gradient = G.take_gradient();  // moved out: the solve keeps one copy of g
  r.gradient_norm = double(r.gradient.norm());
  r.time_gradient_s = seconds_since(t);
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

  if (chosen == SolverKind::smw) {  // 2'. the exact direction(s), spectrum and comparisons from the Gram
    t = Clock::now();
    detail::solve_by_gram(F, one_operator, options, r);
    r.time_cg_s = seconds_since(t) - r.time_spectrum_s - r.time_compare_s;
    r.time_total_s = seconds_since(t0);
    return r;
  }

  // 2. The direction: CG with one preconditioner, or multi-shift CG over several dampings.
  t = Clock::now();
  const bool multi = options.dampings.size() > 1;
  const bool preconditioned =
      options.preconditioner != PreconditionerKind::none || deflation_count(options) > 0;
  CgWorkspace<Scalar> ws;
  std::string no_memory;
  try {
    if (!multi) ws.resize(F.rows(), preconditioned);
    r.direction = Vec<Scalar>::Zero(F.rows());
  } catch (const std::bad_alloc&) {  // (CG's workspace and the direction: what the memory estimate counts)
    const std::size_t bytes = (multi ? 0 : CgWorkspace<Scalar>::required_bytes(F.rows(), preconditioned)) +
                              static_cast<std::size_t>(F.rows()) * sizeof(Scalar);
    no_memory = "out of memory allocating conjugate gradient's vectors (" +
                std::to_string(bytes / sizeof(Scalar) / static_cast<std::size_t>(F.rows())) + " x " +
                std::to_string(F.rows()) + " parameters, " + detail::format_bytes(double(bytes)) + ")";
  }
  no_memory = comm.first_error(no_memory);  // every rank stops if one cannot go on
  if (!no_memory.empty()) throw std::runtime_error(no_memory);
  // Replicated CG: every rank holds the same vectors and takes the same decisions; a stop asked by the
  // callback (a signal) is rank 0's decision, on every rank at the same iteration.
  CgOptions cg = options.cg;
  if (comm.size() > 1) {
    cg.callback = [&](const CgIterationInfo& info) {
      const bool stop = options.cg.callback && options.cg.callback(info) == CallbackResult::stop;
      return comm.broadcast(stop) ? CallbackResult::stop : CallbackResult::keep_going;
    };
  }
  try {
    if (multi)
      solve_several_dampings(F, options, cg, r);
    else
      solve_one_damping(F, options, cg, ws, r);
  } catch (const Interrupted& e) {  // (CG catches its own: this one stopped the spectrum or a preconditioner)
    r.interrupted = std::string("before CG started: ") + e.what();
    r.cg = CgSummary();
    r.cg.termination = CgTermination::user_stop;
    r.cg.message = "interrupted " + r.interrupted;
    r.cg.rhs_norm = r.gradient_norm;
    r.direction.setZero();
    r.deflated = 0;
  }
  r.time_cg_s = seconds_since(t) - r.time_spectrum_s;
  if (r.cg.is_numerical_failure()) r.failure = "conjugate gradient: " + r.cg.message;
  for (const DampedSolution<Scalar>& d : r.solves)
    if (r.failure.empty() && d.cg.is_numerical_failure())
      r.failure = "conjugate gradient (damping " + detail::format_number(d.damping) + "): " + d.cg.message;

  // 3. The diagnostics, skipped after a stop request (the user wants the iterate now).
  if ((options.spectrum_top_k > 0 || options.condition_number) && r.cg.termination != CgTermination::user_stop) {
    try {
      diagnose(F, options, r);
    } catch (const Interrupted& e) {
      r.interrupted =
          std::string("after CG: ") + e.what() + " (the diagnostics that had not finished are skipped)";
      r.spectrum.eigenvectors.resize(0, 0);
    }
  }
  r.time_total_s = seconds_since(t0);
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
