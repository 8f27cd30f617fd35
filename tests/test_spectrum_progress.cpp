// The spectrum tools' progress callback and their stop: top_eigenvalues, hutchinson_trace and slq_density
// report every product, stop where their callback asks (or where the operator throws Interrupted, as a
// stop request makes FisherOperator do), and return what was complete, checked against dense arithmetic on
// the probes drawn from the documented generator key (seed, probe).
#include <natgrad/core/interrupted.h>
#include <natgrad/core/random.h>
#include <natgrad/solvers/spectrum.h>

#include <Eigen/Eigenvalues>

#include "test_helpers.h"

#include <string>
#include <vector>

using namespace natgrad;
using namespace natgrad::test;

namespace {

// A random SPD matrix with a spread spectrum.
DenseOp<double> spd(Index n, uint64_t seed) {
  const Mat<double> B = random_mat<double>(n, n, seed);
  DenseOp<double> A;
  A.A = B * B.transpose() / double(n) + 0.1 * Mat<double>::Identity(n, n);
  return A;
}

// Probe p as the documentation keys it: a Rademacher vector from the counter-based generator at
// (seed, stream(probes, p)).
Vec<double> probe(Index n, uint64_t seed, uint64_t p) {
  const CounterRng rng(seed, rng_stream(RngDomain::probes, p));
  Vec<double> v(n);
  for (Index i = 0; i < n; ++i) v[i] = rng.rademacher(static_cast<uint64_t>(i));
  return v;
}

// The operator of a FisherOperator asked to stop: it throws Interrupted at product `at` (1-based).
struct InterruptedAtProduct {
  using Scalar = double;
  const DenseOp<double>& A;
  Index at;
  mutable Index calls = 0;
  Index rows() const { return A.rows(); }
  Index cols() const { return A.cols(); }
  void perform_op(const double* x, double* y) const {
    if (++calls == at) throw Interrupted("the product was interrupted");
    A.perform_op(x, y);
  }
};

// The callback that records what it saw and asks to stop at product `stop_at` (0: never).
struct Recorder {
  std::vector<SpectrumProgress> seen;
  Index stop_at = 0;
  SpectrumCallback callback() {
    return [this](const SpectrumProgress& p) {
      seen.push_back(p);
      return p.products == stop_at ? CallbackResult::stop : CallbackResult::keep_going;
    };
  }
};

}  // namespace

TEST(SpectrumProgress, HutchinsonStopsAfterTheProbesAskedAndEstimatesFromThem) {
  const Index n = 30, probes = 20;
  const uint64_t seed = 11;
  const DenseOp<double> A = spd(n, 3);
  Recorder rec;
  rec.stop_at = 5;
  const TraceEstimate t = hutchinson_trace(A, probes, seed, rec.callback());
  EXPECT_TRUE(t.interrupted);
  ASSERT_EQ(t.probes, 5);
  EXPECT_EQ(A.calls, 5);
  // The mean and standard error of the first five probes' vᵀAv, formed densely.
  std::vector<double> q;
  for (uint64_t p = 0; p < 5; ++p) {
    const Vec<double> v = probe(n, seed, p);
    q.push_back(v.dot(A.A * v));
  }
  double mean = 0, var = 0;
  for (double x : q) mean += x / 5;
  for (double x : q) var += (x - mean) * (x - mean) / 4;
  EXPECT_NEAR(t.trace, mean, 1e-12 * mean);
  EXPECT_NEAR(t.standard_error, std::sqrt(var / 5), 1e-10 * std::sqrt(var / 5));
  ASSERT_EQ(rec.seen.size(), 5u);
  for (std::size_t k = 0; k < rec.seen.size(); ++k) {
    EXPECT_EQ(std::string(rec.seen[k].phase), "hutchinson");
    EXPECT_EQ(rec.seen[k].products, Index(k + 1));
    EXPECT_EQ(rec.seen[k].done, Index(k + 1));
    EXPECT_EQ(rec.seen[k].products_total, probes);
    EXPECT_EQ(rec.seen[k].total, probes);
  }
  // Run to the end, the callback only watching: every probe, not interrupted.
  Recorder watch;
  const TraceEstimate all = hutchinson_trace(A, probes, seed, watch.callback());
  EXPECT_FALSE(all.interrupted);
  EXPECT_EQ(all.probes, probes);
  EXPECT_EQ(watch.seen.size(), std::size_t(probes));
  // The operator's Interrupted at product 4: the three probes before it.
  const TraceEstimate cut = hutchinson_trace(InterruptedAtProduct{A, 4}, probes, seed);
  EXPECT_TRUE(cut.interrupted);
  EXPECT_EQ(cut.probes, 3);
  EXPECT_NEAR(cut.trace, (q[0] + q[1] + q[2]) / 3, 1e-12 * cut.trace);
  // A stop before a second probe leaves no standard error; before the first, no estimate.
  EXPECT_TRUE(std::isnan(hutchinson_trace(InterruptedAtProduct{A, 2}, probes, seed).standard_error));
  EXPECT_TRUE(std::isnan(hutchinson_trace(InterruptedAtProduct{A, 1}, probes, seed).trace));
}

// SLQ's first moment is exact per probe: Gauss quadrature with m ≥ 1 nodes integrates t exactly, so a probe's
// Σ τ_k² θ_k = qᵀAq for q = v/‖v‖, ‖v‖² = n. The density of a stopped run is that of its completed probes.
TEST(SpectrumProgress, SlqStopsWithinAProbeAndKeepsTheCompletedOnes) {
  const Index n = 40, steps = 6, probes = 5;
  const uint64_t seed = 7;
  const DenseOp<double> A = spd(n, 5);
  auto dense_moment = [&](Index count) {
    double m = 0;
    for (Index p = 0; p < count; ++p) {
      const Vec<double> v = probe(n, seed, static_cast<uint64_t>(p));
      m += v.dot(A.A * v) / double(n) / double(count);
    }
    return m;
  };
  auto weight_sum = [](const SpectralDensity& d) {
    double s = 0;
    for (double w : d.weights) s += w;
    return s;
  };
  // Stopped at product 14: probe 2 (0-based) is under way at its second step and is dropped.
  Recorder rec;
  rec.stop_at = 14;
  const SpectralDensity d = slq_density(A, steps, probes, seed, 100, 0, rec.callback());
  EXPECT_TRUE(d.interrupted);
  EXPECT_EQ(d.probes, 2);
  EXPECT_EQ(d.matvecs, 14);
  EXPECT_EQ(d.nodes.size(), std::size_t(2 * steps));
  EXPECT_NEAR(weight_sum(d), 1.0, 1e-12);
  EXPECT_NEAR(d.first_moment, dense_moment(2), 1e-10 * dense_moment(2));
  ASSERT_EQ(rec.seen.size(), 14u);
  for (std::size_t k = 0; k < rec.seen.size(); ++k) {
    EXPECT_EQ(std::string(rec.seen[k].phase), "slq");
    EXPECT_EQ(rec.seen[k].products, Index(k + 1));
    EXPECT_EQ(rec.seen[k].products_total, probes * steps);
    EXPECT_EQ(rec.seen[k].done, Index(k + 1) / steps);  // a probe counts as done at its last product
    EXPECT_EQ(rec.seen[k].total, probes);
  }
  // Stopped at the last product of probe 1: that probe is complete and kept.
  Recorder at_end;
  at_end.stop_at = 2 * steps;
  const SpectralDensity e = slq_density(A, steps, probes, seed, 100, 0, at_end.callback());
  EXPECT_TRUE(e.interrupted);
  EXPECT_EQ(e.probes, 2);
  EXPECT_NEAR(e.first_moment, dense_moment(2), 1e-10 * dense_moment(2));
  // The operator's Interrupted at product 9 (probe 1, step 3): probe 0 alone.
  const SpectralDensity f = slq_density(InterruptedAtProduct{A, 9}, steps, probes, seed, 100);
  EXPECT_TRUE(f.interrupted);
  EXPECT_EQ(f.probes, 1);
  EXPECT_NEAR(weight_sum(f), 1.0, 1e-12);
  EXPECT_NEAR(f.first_moment, dense_moment(1), 1e-10 * dense_moment(1));
  // Before any probe is done: an empty density, said to be interrupted.
  const SpectralDensity none = slq_density(InterruptedAtProduct{A, 2}, steps, probes, seed, 100);
  EXPECT_TRUE(none.interrupted);
  EXPECT_EQ(none.probes, 0);
  EXPECT_TRUE(none.nodes.empty());
  EXPECT_TRUE(none.density.empty());
  // Uninterrupted: all probes, the dense mean over all of them.
  const SpectralDensity full = slq_density(A, steps, probes, seed, 100);
  EXPECT_FALSE(full.interrupted);
  EXPECT_EQ(full.probes, probes);
  EXPECT_NEAR(full.first_moment, dense_moment(probes), 1e-10 * dense_moment(probes));
}

TEST(SpectrumProgress, LanczosReportsEveryProductAndStopsWhenAsked) {
  const Index n = 60;
  const DenseOp<double> A = spd(n, 9);
  SpectrumOptions opt;
  opt.num_eigenvalues = 3;
  Recorder watch;
  opt.callback = watch.callback();
  const SpectrumResult full = top_eigenvalues(A, opt);
  ASSERT_TRUE(full.converged);
  const Vec<double> ev = Eigen::SelfAdjointEigenSolver<Mat<double>>(A.A).eigenvalues();
  for (Index i = 0; i < 3; ++i) EXPECT_NEAR(full.eigenvalues[i], ev[n - 1 - i], 1e-9 * ev[n - 1]);
  ASSERT_EQ(watch.seen.size(), std::size_t(full.matvecs));
  for (std::size_t k = 0; k < watch.seen.size(); ++k) {
    EXPECT_EQ(std::string(watch.seen[k].phase), "lanczos");
    EXPECT_EQ(watch.seen[k].products, Index(k + 1));
    EXPECT_EQ(watch.seen[k].products_total, 0);  // not known in advance
  }
  // Asked to stop at product 7: interrupted there, no eigenvalues, the count and the reason in the Summary.
  Recorder rec;
  rec.stop_at = 7;
  opt.callback = rec.callback();
  const SpectrumResult r = top_eigenvalues(A, opt);
  EXPECT_EQ(r.termination, SpectrumTermination::interrupted);
  EXPECT_FALSE(r.converged);
  EXPECT_EQ(r.matvecs, 7);
  EXPECT_EQ(r.eigenvalues.size(), 0);
  EXPECT_EQ(std::string(to_string(r.termination)), "interrupted");
  EXPECT_NE(r.status.find("after 7 products"), std::string::npos) << r.status;
  // The operator's own Interrupted (a FisherOperator asked to stop) ends the same way.
  opt.callback = nullptr;
  const SpectrumResult s = top_eigenvalues(InterruptedAtProduct{A, 4}, opt);
  EXPECT_EQ(s.termination, SpectrumTermination::interrupted);
  EXPECT_EQ(s.matvecs, 3);
}
