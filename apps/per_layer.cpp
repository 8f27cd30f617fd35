#include "per_layer.h"

#include <natgrad/solvers/detail/double_operator.h>
#include <natgrad/solvers/top_eigenvalues.h>

#include <cmath>
#include <map>
#include <utility>

namespace natgrad {
namespace cli {

namespace {

using Ranges = std::vector<std::pair<Index, Index>>;  // [offset, offset + size) of the module's tensors

// F restricted to a module's entries: x is scattered into a zero vector, multiplied, and gathered back.
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

}  // namespace

template <typename Scalar>
std::vector<ModuleSpectrum> per_module_spectrum(const FisherOperator<Scalar>& F, const Mat<double>& eigenvectors,
                                                Index probes, uint64_t seed, Index* trace_products,
                                                TraceEstimate* trace) {
  // The modules in the order their first tensor appears.
  std::vector<std::string> order;
  std::map<std::string, Ranges> ranges;
  for (const NamedParam& p : F.model().named_params()) {
    const std::string m = module_of(p.name);
    if (!ranges.count(m)) order.push_back(m);
    ranges[m].push_back({p.offset, p.size});
  }
  std::vector<ModuleSpectrum> out;
  for (const std::string& m : order) {
    ModuleSpectrum s;
    s.module = m;
    for (const auto& r : ranges[m]) s.params += r.second;
    for (Index k = 0; k < eigenvectors.cols(); ++k) {
      double mass = 0;
      for (const auto& r : ranges[m]) mass += eigenvectors.col(k).segment(r.first, r.second).squaredNorm();
      s.eigenvector_mass.push_back(mass);
    }
    out.push_back(s);
  }
  // Block traces from shared probes: per probe and module Σ_{i∈l} v_i (F v)_i, then mean and standard error.
  const Index P = F.cols();
  std::vector<std::vector<double>> samples(out.size());
  std::vector<double> totals;
  Vec<Scalar> y(P);
  for (Index p = 0; p < probes; ++p) {
    const Vec<double> v = detail::rademacher(P, seed, static_cast<uint64_t>(p));
    const Vec<Scalar> vs = v.cast<Scalar>();
    F.perform_op(vs.data(), y.data());
    if (trace) totals.push_back(v.dot(y.template cast<double>()));  // vᵀ F v, as hutchinson_trace forms it
    for (std::size_t l = 0; l < out.size(); ++l) {
      double q = 0;
      for (const auto& r : ranges[out[l].module])
        for (Index i = r.first; i < r.first + r.second; ++i) q += v[i] * double(y[i]);
      samples[l].push_back(q);
    }
  }
  *trace_products = probes;
  if (trace) *trace = trace_from_samples(totals);  // hutchinson_trace's estimate of the same samples
  for (std::size_t l = 0; l < out.size(); ++l) {
    const TraceEstimate t = trace_from_samples(samples[l]);
    out[l].trace = t.trace;
    out[l].trace_standard_error = t.standard_error;
  }
  // Each block's top eigenvalue: Lanczos on the block (a single entry is one product).
  for (ModuleSpectrum& s : out) {
    const BlockOperator<Scalar> B(F, ranges[s.module]);
    if (s.params == 1) {
      const Scalar one(1);
      Scalar fy(0);
      B.perform_op(&one, &fy);
      s.top_eigenvalue = double(fy);
      s.products = 1;
      continue;
    }
    SpectrumOptions so;
    so.num_eigenvalues = 1;
    const SpectrumResult r = top_eigenvalues(B, so);
    s.top_eigenvalue = r.converged ? r.eigenvalues[0] : std::nan("");
    s.products = r.matvecs;
  }
  return out;
}

nlohmann::ordered_json per_module_json(const std::vector<ModuleSpectrum>& modules) {
  nlohmann::ordered_json j = nlohmann::ordered_json::array();
  for (const ModuleSpectrum& s : modules) {
    nlohmann::ordered_json m;
    m["module"] = s.module;
    m["parameters"] = s.params;
    m["top_eigenvalue"] = std::isfinite(s.top_eigenvalue) ? nlohmann::ordered_json(s.top_eigenvalue) : nullptr;
    m["trace"] = s.trace;
    m["trace_standard_error"] = s.trace_standard_error;
    m["eigenvector_mass"] = s.eigenvector_mass;
    m["products"] = s.products;
    j.push_back(m);
  }
  return j;
}

template std::vector<ModuleSpectrum> per_module_spectrum<float>(const FisherOperator<float>&, const Mat<double>&,
                                                                Index, uint64_t, Index*, TraceEstimate*);
template std::vector<ModuleSpectrum> per_module_spectrum<double>(const FisherOperator<double>&, const Mat<double>&,
                                                                 Index, uint64_t, Index*, TraceEstimate*);

}  // namespace cli
}  // namespace natgrad
