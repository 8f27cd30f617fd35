#include <natgrad/natural_gradient/module_spectrum.h>

#include <natgrad/core/interrupted.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <stdexcept>
#include <utility>

#include "solvers/rademacher_probe.h"

namespace natgrad {

namespace {

using Ranges = std::vector<std::pair<Index, Index>>;  // [offset, offset + size) of the module's tensors

// F restricted to a module's entries: F_ll x = S_lᵀ F S_l x, S_l scattering the block into a zero vector.
template <typename Scalar_>
class BlockOperator {
 public:
  using Scalar = Scalar_;
  BlockOperator(const FisherOperator<Scalar>& F, const Ranges& ranges)
      : F_(F), ranges_(ranges), full_(Vec<Scalar>::Zero(F.cols())), out_(F.rows()) {
    for (const auto& r : ranges) n_ += r.second;
  }
  Index rows() const { return n_; }
  Index cols() const { return n_; }
  void perform_op(const Scalar* x, Scalar* y) const {
    Index at = 0;
    for (const auto& r : ranges_) {
      std::copy(x + at, x + at + r.second, full_.data() + r.first);
      at += r.second;
    }
    F_.perform_op(full_.data(), out_.data());
    at = 0;
    for (const auto& r : ranges_) {
      std::copy(out_.data() + r.first, out_.data() + r.first + r.second, y + at);
      std::fill(full_.data() + r.first, full_.data() + r.first + r.second, Scalar(0));
      at += r.second;
    }
  }

 private:
  const FisherOperator<Scalar>& F_;
  const Ranges& ranges_;
  Index n_ = 0;
  mutable Vec<Scalar> full_, out_;
};

std::string module_of(const std::string& name) {
  const auto dot = name.rfind('.');
  return dot == std::string::npos ? name : name.substr(0, dot);
}

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

}  // namespace

bool ModuleSpectrumOptions::is_valid(std::string* why) const {
  auto bad = [&](const std::string& m) {
    if (why) *why = m;
    return false;
  };
  if (probes < 2) return bad("probes must be >= 2, got " + std::to_string(probes));
  if (!(tolerance > 0)) return bad("tolerance must be > 0");
  return true;
}

template <typename Scalar>
ModuleSpectrumResult module_spectrum(const FisherOperator<Scalar>& F, const Mat<double>& eigenvectors,
                                     const ModuleSpectrumOptions& options) {
  std::string why;
  if (!options.is_valid(&why)) throw std::invalid_argument("ModuleSpectrumOptions: " + why);
  const Index P = F.cols();
  if (eigenvectors.cols() > 0 && eigenvectors.rows() != P)
    throw std::invalid_argument("module_spectrum: the eigenvectors have " + std::to_string(eigenvectors.rows()) +
                                " rows for an operator of " + std::to_string(P) + " parameters");
  // The modules in the order their first tensor appears.
  std::vector<Ranges> ranges;
  std::map<std::string, std::size_t> index;
  ModuleSpectrumResult result;
  for (const NamedParam& p : F.model().named_params()) {
    const std::string m = module_of(p.name);
    if (!index.count(m)) {
      index[m] = ranges.size();
      ranges.emplace_back();
      result.modules.emplace_back();
      result.modules.back().module = m;
    }
    ranges[index[m]].push_back({p.offset, p.size});
    result.modules[index[m]].params += p.size;
  }
  const std::size_t L = result.modules.size();
  for (std::size_t l = 0; l < L; ++l)
    for (Index k = 0; k < eigenvectors.cols(); ++k) {
      double mass = 0;
      for (const auto& r : ranges[l]) mass += eigenvectors.col(k).segment(r.first, r.second).squaredNorm();
      result.modules[l].eigenvector_mass.push_back(mass);
    }

  // Block traces from shared probes: per probe and module Σ_{i∈l} v_i (F v)_i, then mean and standard error.
  std::vector<std::vector<double>> samples(L);
  std::vector<double> totals;
  Vec<Scalar> y(P);
  bool stop = false;
  for (Index p = 0; p < options.probes && !stop; ++p) {
    const Vec<double> v = detail::rademacher(P, options.seed, static_cast<uint64_t>(p));
    const Vec<Scalar> vs = v.cast<Scalar>();
    try {
      F.perform_op(vs.data(), y.data());
    } catch (const Interrupted&) {
      stop = true;
      break;
    }
    ++result.trace_products;
    totals.push_back(v.dot(y.template cast<double>()));  // vᵀ F v, as hutchinson_trace forms it
    for (std::size_t l = 0; l < L; ++l) {
      double q = 0;
      for (const auto& r : ranges[l])
        for (Index i = r.first; i < r.first + r.second; ++i) q += v[i] * double(y[i]);
      samples[l].push_back(q);
    }
    if (options.callback) {
      SpectrumProgress info;
      info.phase = "block trace";
      info.products = info.done = p + 1;
      info.products_total = info.total = options.probes;
      stop = options.callback(info) == CallbackResult::stop;
    }
  }
  result.trace = trace_from_samples(totals);  // hutchinson_trace's estimate of the same samples
  result.trace.interrupted = result.trace.probes < options.probes;
  for (std::size_t l = 0; l < L; ++l) {
    const TraceEstimate t = trace_from_samples(samples[l]);
    result.modules[l].trace = t.trace;
    result.modules[l].trace_standard_error = t.standard_error;
  }

  // Each block's top eigenvalue: Lanczos on the block (a single entry is one product).
  Index lanczos_products = 0;
  std::size_t blocks_done = 0;
  for (std::size_t l = 0; l < L; ++l) {
    ModuleSpectrum& s = result.modules[l];
    s.top_eigenvalue = kNaN;
    if (stop) continue;  // (not reached)
    const BlockOperator<Scalar> B(F, ranges[l]);
    auto report = [&](Index products) {
      if (!options.callback) return false;
      SpectrumProgress info;
      info.phase = "block lanczos";
      info.products = lanczos_products + products;
      info.done = static_cast<Index>(l);
      info.total = static_cast<Index>(L);
      return options.callback(info) == CallbackResult::stop;
    };
    if (s.params == 1) {
      const Scalar one(1);
      Scalar fy(0);
      try {
        B.perform_op(&one, &fy);
      } catch (const Interrupted&) {
        stop = true;
        continue;
      }
      s.top_eigenvalue = double(fy);
      s.products = 1;
      lanczos_products += 1;
      ++blocks_done;
      stop = report(s.products);
      continue;
    }
    SpectrumOptions so;
    so.num_eigenvalues = 1;
    so.tolerance = options.tolerance;
    so.callback = [&](const SpectrumProgress& p) {
      return report(p.products) ? CallbackResult::stop : CallbackResult::keep_going;
    };
    const SpectrumResult r = top_eigenvalues(B, so);
    s.products = r.matvecs;
    lanczos_products += r.matvecs;
    if (r.termination == SpectrumTermination::interrupted) {
      stop = true;
      continue;
    }
    s.top_eigenvalue = r.converged ? r.eigenvalues[0] : kNaN;
    ++blocks_done;
  }
  result.products = result.trace_products + lanczos_products;
  result.interrupted = result.trace.interrupted || blocks_done < L;
  return result;
}

template ModuleSpectrumResult module_spectrum<float>(const FisherOperator<float>&, const Mat<double>&,
                                                     const ModuleSpectrumOptions&);
template ModuleSpectrumResult module_spectrum<double>(const FisherOperator<double>&, const Mat<double>&,
                                                      const ModuleSpectrumOptions&);

}  // namespace natgrad
