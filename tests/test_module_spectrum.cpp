// module_spectrum (the Fisher's per-module diagonal blocks) against the dense Fisher built from
// finite-difference-checked Jacobians: each block's top eigenvalue against Eigen's, its trace within three
// standard errors of the dense trace, each top eigenvector's mass; and its stop, which keeps what was done.
#include <natgrad/model/initialization.h>
#include <natgrad/natural_gradient/module_spectrum.h>

#include <Eigen/Eigenvalues>

#include "test_helpers.h"

#include <cmath>
#include <string>
#include <vector>

using namespace natgrad;
using namespace natgrad::test;

namespace {

struct Blocks {
  Network<double> model;
  Vec<double> theta;
  Dataset<double> data;
  Mat<double> Fd;
  std::vector<std::string> modules;
  std::vector<std::vector<Index>> entries;  // per module, its flat indices

  Blocks() : model(cnn_spec(4)), theta(init_parameters(model, 3)), data(random_dataset(model, 12, LikelihoodKind::categorical, 4)) {
    Fd = dense_fisher(model, theta, data, LikelihoodKind::categorical, FisherKind::exact);
    for (const NamedParam& np : model.named_params()) {
      const std::string m = np.name.substr(0, np.name.rfind('.'));
      if (modules.empty() || modules.back() != m) {
        modules.push_back(m);
        entries.emplace_back();
      }
      for (Index e = 0; e < np.size; ++e) entries.back().push_back(np.offset + e);
    }
  }
  Mat<double> block(std::size_t l) const {
    const auto& idx = entries[l];
    Mat<double> B(idx.size(), idx.size());
    for (std::size_t a = 0; a < idx.size(); ++a)
      for (std::size_t b = 0; b < idx.size(); ++b) B(a, b) = Fd(idx[a], idx[b]);
    return B;
  }
};

}  // namespace

TEST(ModuleSpectrum, EachBlockAgainstTheDenseFisher) {
  const Blocks b;
  FisherOperator<double> F(b.model, b.theta, LikelihoodKind::categorical, b.data);
  Eigen::SelfAdjointEigenSolver<Mat<double>> es(b.Fd);
  const Index P = b.Fd.rows(), K = 2;
  const Mat<double> top = es.eigenvectors().rightCols(K).rowwise().reverse();  // u_0 the largest
  ModuleSpectrumOptions opt;
  opt.probes = 400;
  opt.seed = 5;
  const ModuleSpectrumResult r = module_spectrum(F, top, opt);
  EXPECT_FALSE(r.interrupted);
  ASSERT_EQ(r.modules.size(), b.modules.size());
  ASSERT_GE(r.modules.size(), 3u);
  Index lanczos = 0;
  for (std::size_t l = 0; l < b.modules.size(); ++l) {
    const ModuleSpectrum& m = r.modules[l];
    SCOPED_TRACE(b.modules[l]);
    EXPECT_EQ(m.module, b.modules[l]);
    EXPECT_EQ(m.params, Index(b.entries[l].size()));
    const Mat<double> B = b.block(l);
    const double want = Eigen::SelfAdjointEigenSolver<Mat<double>>(B).eigenvalues().maxCoeff();
    EXPECT_NEAR(m.top_eigenvalue, want, 1e-8 * want);
    EXPECT_LE(std::abs(m.trace - B.trace()), 3 * m.trace_standard_error) << m.trace << " vs " << B.trace();
    ASSERT_EQ(m.eigenvector_mass.size(), std::size_t(K));
    for (Index k = 0; k < K; ++k) {
      double mass = 0;
      for (Index i : b.entries[l]) mass += top(i, k) * top(i, k);
      EXPECT_NEAR(m.eigenvector_mass[k], mass, 1e-12);
    }
    lanczos += m.products;
  }
  // The masses of a unit vector over all modules sum to one; the whole trace is Hutchinson's of the same probes.
  for (Index k = 0; k < K; ++k) {
    double sum = 0;
    for (const ModuleSpectrum& m : r.modules) sum += m.eigenvector_mass[k];
    EXPECT_NEAR(sum, 1.0, 1e-12);
  }
  const TraceEstimate t = hutchinson_trace(F, opt.probes, opt.seed);
  EXPECT_EQ(r.trace.trace, t.trace);
  EXPECT_EQ(r.trace.standard_error, t.standard_error);
  EXPECT_LE(std::abs(r.trace.trace - b.Fd.trace()), 3 * r.trace.standard_error);
  EXPECT_EQ(r.trace_products, opt.probes);
  EXPECT_EQ(r.products, opt.probes + lanczos);
  (void)P;
}

TEST(ModuleSpectrum, AStopKeepsWhatWasDone) {
  const Blocks b;
  FisherOperator<double> F(b.model, b.theta, LikelihoodKind::categorical, b.data);
  // Stopped in the first block's Lanczos: traces from every probe, no block's top eigenvalue.
  ModuleSpectrumOptions opt;
  opt.probes = 6;
  std::vector<SpectrumProgress> seen;
  opt.callback = [&](const SpectrumProgress& p) {
    seen.push_back(p);
    return std::string(p.phase) == "block lanczos" && p.products == 3 ? CallbackResult::stop : CallbackResult::keep_going;
  };
  const ModuleSpectrumResult r = module_spectrum(F, Mat<double>(), opt);
  EXPECT_TRUE(r.interrupted);
  EXPECT_FALSE(r.trace.interrupted);
  EXPECT_EQ(r.trace.probes, 6);
  for (const ModuleSpectrum& m : r.modules) {
    EXPECT_TRUE(std::isnan(m.top_eigenvalue)) << m.module;
    EXPECT_TRUE(std::isfinite(m.trace)) << m.module;
  }
  ASSERT_EQ(seen.size(), 9u);  // six probes, then three Lanczos products
  for (Index k = 0; k < 6; ++k) {
    EXPECT_EQ(std::string(seen[k].phase), "block trace");
    EXPECT_EQ(seen[k].done, k + 1);
    EXPECT_EQ(seen[k].products_total, 6);
  }
  for (Index k = 6; k < 9; ++k) {
    EXPECT_EQ(std::string(seen[k].phase), "block lanczos");
    EXPECT_EQ(seen[k].products, k - 5);
    EXPECT_EQ(seen[k].done, 0);
    EXPECT_EQ(seen[k].total, Index(b.modules.size()));
  }
  // Stopped after the first block's Lanczos: that block's value is kept (the dense one), the rest are NaN.
  opt.callback = [&](const SpectrumProgress& p) {
    return std::string(p.phase) == "block lanczos" && p.done == 1 ? CallbackResult::stop : CallbackResult::keep_going;
  };
  const ModuleSpectrumResult one = module_spectrum(F, Mat<double>(), opt);
  EXPECT_TRUE(one.interrupted);
  const double want = Eigen::SelfAdjointEigenSolver<Mat<double>>(b.block(0)).eigenvalues().maxCoeff();
  EXPECT_NEAR(one.modules[0].top_eigenvalue, want, 1e-8 * want);
  for (std::size_t l = 1; l < one.modules.size(); ++l) EXPECT_TRUE(std::isnan(one.modules[l].top_eigenvalue));
  // Stopped at the third probe: the traces of three probes, the same as a three-probe run's.
  opt.callback = [](const SpectrumProgress& p) { return p.products == 3 ? CallbackResult::stop : CallbackResult::keep_going; };
  const ModuleSpectrumResult three = module_spectrum(F, Mat<double>(), opt);
  EXPECT_TRUE(three.interrupted);
  EXPECT_TRUE(three.trace.interrupted);
  EXPECT_EQ(three.trace.probes, 3);
  EXPECT_EQ(three.trace.trace, hutchinson_trace(F, 3, opt.seed).trace);
  for (const ModuleSpectrum& m : three.modules) EXPECT_TRUE(std::isnan(m.top_eigenvalue));
}

TEST(ModuleSpectrum, RefusesBadOptions) {
  const Blocks b;
  FisherOperator<double> F(b.model, b.theta, LikelihoodKind::categorical, b.data);
  ModuleSpectrumOptions opt;
  opt.probes = 1;
  EXPECT_NE(error_of([&] { module_spectrum(F, Mat<double>(), opt); }).find("probes must be >= 2, got 1"), std::string::npos);
  opt.probes = 4;
  EXPECT_NE(error_of([&] { module_spectrum(F, Mat<double>::Zero(3, 1), opt); }).find("the eigenvectors have 3 rows"),
            std::string::npos);
}
