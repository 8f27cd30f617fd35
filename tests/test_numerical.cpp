// Numerical failure paths: NaN or Inf born in a layer is reported with the layer and sample where it first
// appears, the solve stops without a direction, and Lanczos on a non-finite operator says so.
#include "test_helpers.h"

#include <natgrad/natural_gradient/solve_natural_gradient.h>
#include <natgrad/solvers/spectrum.h>

#include <Eigen/Eigenvalues>
#include <algorithm>
#include <limits>
#include <vector>

#include "core/link_functions.h"

using namespace natgrad;
using namespace natgrad::test;

namespace {
// x ∈ R² → linear(2, 2) → tanh → linear(2, 2) → linear(2, 2): `big` weights in layer `at` overflow float to Inf
// for sample 3 only (its inputs are larger), and the next linear turns Inf − Inf into NaN.
struct Overflow {
  Network<float> model;
  Vec<float> theta;
  Dataset<float> data;
  explicit Overflow(int at) : model(spec()), theta(Vec<float>::Constant(model.num_params(), 0.5f)) {
    const NamedParam& w = model.named_params()[static_cast<std::size_t>(at == 0 ? 0 : at == 2 ? 2 : 4)];
    theta.segment(w.offset, w.size).setConstant(3e38f);
    data.inputs = Mat<float>::Constant(2, 6, 0.1f);
    data.inputs.col(3).setConstant(50.0f);
    data.labels = {0, 1, 0, 1, 0, 1};
  }
  static ModelSpec spec() {
    ModelSpec s;
    s.input_shape = {2};
    s.layers = {LayerSpec::linear(2, 2), LayerSpec::activation(LayerType::tanh), LayerSpec::linear(2, 2),
                LayerSpec::linear(2, 2)};
    return s;
  }
};
}  // namespace

TEST(NumericalFailures, ALayerProducingInfIsNamedWithItsSample) {
  {
    Overflow o(0);  // 3e38·50·2 overflows in layer 0 for sample 3; tanh(Inf) = 1 hides it downstream
    FisherOperator<float> F(o.model, o.theta, LikelihoodKind::categorical, o.data);
    EXPECT_EQ(F.forward_error(), "the output of layer 0 (linear) is NaN or Inf, first at sample 3");
  }
  {
    Overflow o(3);  // tanh outputs ≈ ±1: layer 3's 3e38 weights overflow for every sample
    FisherOperator<float> F(o.model, o.theta, LikelihoodKind::categorical, o.data);
    EXPECT_EQ(F.forward_error(), "the output of layer 3 (linear) is NaN or Inf, first at sample 0");
    NaturalGradientOptions opt;
    const auto r = solve_natural_gradient(o.model, o.theta, LikelihoodKind::categorical, o.data, opt);
    EXPECT_FALSE(r.ok());
    EXPECT_NE(r.failure.find("layer 3 (linear)"), std::string::npos) << r.failure;
    EXPECT_EQ(r.cg.termination, CgTermination::breakdown);
    EXPECT_EQ(r.cg.breakdown, CgBreakdown::problem_not_finite);  // a breakdown always says which
    EXPECT_NE(r.full_report().find("breakdown:            problem_not_finite"), std::string::npos)
        << r.full_report();
    EXPECT_EQ(r.cg.operator_applications, 0);  // nothing was solved on garbage
  }
  {
    Dataset<float> d;
    d.inputs = Mat<float>::Ones(2, 3);
    d.inputs(1, 2) = std::numeric_limits<float>::quiet_NaN();
    d.labels = {0, 1, 0};
    Network<float> model(Overflow::spec());
    FisherOperator<float> F(model, init_parameters(model, 1), LikelihoodKind::categorical, d);
    EXPECT_EQ(F.forward_error(), "the input is NaN or Inf, first at sample 2");
  }
  {
    // Chunks of 2 samples, searched in parallel: the earliest layer wins over the earliest chunk. Sample 3
    // (chunk 1) overflows in layer 0; sample 4 (chunk 2) has a NaN input, which is earlier in the network.
    FisherOptions chunks;
    chunks.chunk_size = 2;
    Overflow o(0);
    {
      FisherOperator<float> F(o.model, o.theta, LikelihoodKind::categorical, o.data, chunks);
      EXPECT_EQ(F.forward_error(), "the output of layer 0 (linear) is NaN or Inf, first at sample 3");
    }
    o.data.inputs(0, 4) = std::numeric_limits<float>::infinity();
    o.data.inputs(1, 5) = std::numeric_limits<float>::quiet_NaN();
    FisherOperator<float> F(o.model, o.theta, LikelihoodKind::categorical, o.data, chunks);
    EXPECT_EQ(F.forward_error(), "the input is NaN or Inf, first at sample 4");
  }
}

// A finite forward pass whose gradient overflows (float, gaussian: z = W x ≈ 1e30 is finite, the weight
// gradient (z − y) xᵀ ≈ 1e60 is not): the solve checks the gradient before anything else, so neither the
// spectrum (which deflation would compute first) nor CG nor the condition number runs on it.
TEST(NumericalFailures, ANonFiniteGradientStopsTheSolveBeforeTheSpectrumAndCg) {
  ModelSpec spec;
  spec.input_shape = {2};
  spec.layers = {LayerSpec::linear(2, 2)};
  Network<float> model(spec);
  Dataset<float> data = random_dataset(model, 4, LikelihoodKind::gaussian, 1);
  data.inputs.setConstant(1e30f);
  const Vec<float> theta = Vec<float>::Constant(model.num_params(), 0.5f);
  NaturalGradientOptions opt;
  opt.spectrum_top_k = 2;  // with reuse_spectrum, computed before CG to deflate it
  opt.condition_number = true;
  bool called = false;
  opt.on_gradient = [&](double, double) { called = true; };
  const auto r = solve_natural_gradient(model, theta, LikelihoodKind::gaussian, data, opt);
  EXPECT_FALSE(r.ok());
  EXPECT_NE(r.failure.find("the gradient is NaN or Inf"), std::string::npos) << r.failure;
  EXPECT_EQ(r.termination(), NaturalGradientTermination::numerical_failure);
  EXPECT_EQ(r.cg.termination, CgTermination::breakdown);
  EXPECT_EQ(r.cg.breakdown, CgBreakdown::rhs_not_finite);
  EXPECT_EQ(r.cg.operator_applications, 0);
  EXPECT_EQ(r.spectrum.matvecs, 0);
  EXPECT_EQ(r.spectrum.eigenvalues.size(), 0);
  EXPECT_FALSE(r.has_condition);
  EXPECT_EQ(r.deflated, 0);
  EXPECT_FALSE(called);  // progress is reported for a finite gradient only
  EXPECT_TRUE(r.direction.allFinite());
}

TEST(NumericalFailures, FiniteForwardHasNoError) {
  Network<double> model(mlp_spec(3, 4, 2));
  FisherOperator<double> F(model, init_parameters(model, 1), LikelihoodKind::categorical,
                           random_dataset(model, 5, LikelihoodKind::categorical, 2));
  EXPECT_TRUE(F.forward_error().empty());
}

TEST(NumericalFailures, LanczosOnANonFiniteOperatorSaysWhere) {
  struct NanOp {
    using Scalar = double;
    mutable int calls = 0;
    Index rows() const { return 30; }
    void perform_op(const double* x, double* y) const {
      for (int i = 0; i < 30; ++i) y[i] = (i + 1.0) * x[i];
      if (++calls == 7) y[4] = std::numeric_limits<double>::infinity();
    }
  } op;
  SpectrumOptions opt;
  opt.num_eigenvalues = 3;
  const SpectrumResult r = top_eigenvalues(op, opt);
  EXPECT_FALSE(r.converged);
  EXPECT_EQ(r.termination, SpectrumTermination::non_finite);
  EXPECT_NE(r.brief_report().find("Lanczos non_finite"), std::string::npos) << r.brief_report();
  EXPECT_NE(r.status.find("NaN or Inf at product 7"), std::string::npos) << r.status;
}

// ---- Extreme logits: the output curvature and the samplers keep what the precision can represent. ----

namespace {
template <typename Scalar>
Mat<double> exact_output_fisher(LikelihoodKind kind, const std::vector<double>& z) {
  const Index C = static_cast<Index>(z.size());
  Mat<Scalar> Z(C, 1);
  for (Index c = 0; c < C; ++c) Z(c, 0) = static_cast<Scalar>(z[static_cast<std::size_t>(c)]);
  Dataset<Scalar> none;
  none.inputs.resize(0, 1);
  const OutputCurvature<Scalar> H(kind, FisherKind::exact, 1, 0, ConstMatMap<Scalar>(Z.data(), C, 1), none);
  return H.dense(0).template cast<double>();
}

// diag(p) − p pᵀ in long double, the diagonal as p_i Σ_{c≠i} p_c: every entry to ~1e-19 relative.
Mat<double> reference_categorical(const std::vector<double>& z) {
  const std::size_t C = z.size();
  long double m = z[0], s = 0;
  for (double v : z) m = std::max<long double>(m, v);
  std::vector<long double> p(C);
  for (std::size_t c = 0; c < C; ++c) s += (p[c] = std::exp(static_cast<long double>(z[c]) - m));
  Mat<double> H(C, C);
  for (std::size_t i = 0; i < C; ++i)
    for (std::size_t j = 0; j < C; ++j) {
      long double others = 0;  // 1 − p_i as the sum of the other probabilities: no cancellation
      for (std::size_t c = 0; c < C; ++c)
        if (c != i) others += p[c];
      H(Index(i), Index(j)) = double(i == j ? (p[i] / s) * (others / s) : -(p[i] / s) * (p[j] / s));
    }
  return H;
}
}  // namespace

TEST(ExtremeLogits, CategoricalCurvatureKeepsSmallProbabilities) {
  // p₀ = e^{−20}/(1 + e^{−20} + e^{−25}) ≈ 2e-9 is far below float's 6e-8 spacing near 1: recovering p as
  // (p₀ − 1) + 1 made it 0, and p₁ − p₁² for the dominant class cancels to 0 as well. Each diagonal entry
  // must carry the relative accuracy of the type.
  const std::vector<double> z = {0.0, 20.0, -5.0};
  const Mat<double> ref = reference_categorical(z);
  const Mat<double> Hf = exact_output_fisher<float>(LikelihoodKind::categorical, z);
  const Mat<double> Hd = exact_output_fisher<double>(LikelihoodKind::categorical, z);
  for (Index i = 0; i < 3; ++i) {
    EXPECT_LT(std::abs(Hf(i, i) - ref(i, i)), 1e-5 * std::abs(ref(i, i))) << "float, entry " << i;
    EXPECT_LT(std::abs(Hd(i, i) - ref(i, i)), 1e-13 * std::abs(ref(i, i))) << "double, entry " << i;
  }
  // ±80 in float and ±700 in double: finite, symmetric, every row sums to zero (H·1 = p − p·Σp = 0), PSD.
  for (const auto& zz : {std::vector<double>{80, -80, 0, 80}, std::vector<double>{700, -700, 0, 3}}) {
    const Mat<double> H = zz[0] == 80 ? exact_output_fisher<float>(LikelihoodKind::categorical, zz)
                                      : exact_output_fisher<double>(LikelihoodKind::categorical, zz);
    const Mat<double> R = reference_categorical(zz);
    ASSERT_TRUE(H.allFinite());
    EXPECT_LT((H - R).norm(), (zz[0] == 80 ? 1e-6 : 1e-15)) << H;
    EXPECT_LT((H - H.transpose()).norm(), 1e-12);
    EXPECT_GE(Eigen::SelfAdjointEigenSolver<Mat<double>>(H).eigenvalues().minCoeff(), -1e-7);
  }
}

TEST(ExtremeLogits, BernoulliCurvatureIsSigmaTimesOneMinusSigmaToFullRelativeAccuracy) {
  for (double z : {80.0, -80.0, 30.0, -17.0}) {
    const long double zl = z;
    const double ref = double(1.0L / (1.0L + std::exp(-zl)) / (1.0L + std::exp(zl)));  // σ(z) σ(−z)
    const double hf = exact_output_fisher<float>(LikelihoodKind::bernoulli, {z})(0, 0);
    EXPECT_LT(std::abs(hf - ref), 1e-5 * ref) << "float z = " << z;  // 1 − σ(80) was 0 in float
  }
  for (double z : {700.0, -700.0, 40.0}) {
    const long double zl = z;
    const double ref = double(1.0L / (1.0L + std::exp(-zl)) / (1.0L + std::exp(zl)));
    EXPECT_LT(std::abs(exact_output_fisher<double>(LikelihoodKind::bernoulli, {z})(0, 0) - ref), 1e-12 * ref)
        << "double z = " << z;
  }
}

TEST(ExtremeLogits, SampledTargetsAreValidAndFollowTheModel) {
  // One class with all the mass (p rounds to exactly 1 and the others to 0): every draw must be that class.
  // Read back from the score onehot(y) − p = 0, the label was a tie that always said class 0.
  const Index N = 64;
  Mat<float> Z = Mat<float>::Constant(3, N, -80.0f);
  Z.row(1).setConstant(80.0f);
  const Dataset<float> t = sample_targets<float>(LikelihoodKind::categorical, ConstMatMap<float>(Z.data(), 3, N), 5);
  ASSERT_EQ(t.labels.size(), std::size_t(N));
  for (int64_t y : t.labels) EXPECT_EQ(y, 1);
  // Bernoulli at ±80 (and a few moderate logits): targets exactly 0 or 1, accepted by check_targets.
  Mat<double> B(4, N);
  for (Index n = 0; n < N; ++n) B.col(n) << 700.0, -700.0, 0.3, -2.0;
  Dataset<double> bt = sample_targets<double>(LikelihoodKind::bernoulli, ConstMatMap<double>(B.data(), 4, N), 9);
  for (Index n = 0; n < N; ++n) {
    EXPECT_EQ(bt.targets(0, n), 1.0);
    EXPECT_EQ(bt.targets(1, n), 0.0);
    for (Index c = 2; c < 4; ++c) EXPECT_TRUE(bt.targets(c, n) == 0.0 || bt.targets(c, n) == 1.0);
  }
  bt.inputs.resize(0, N);
  EXPECT_NO_THROW(check_targets<double>(LikelihoodKind::bernoulli, bt, 4));
  // The labels are draw 0 of the Monte-Carlo streams: onehot(y) − p is the score sample_scores returns.
  Mat<double> M = Mat<double>::Random(5, 20);
  const Dataset<double> mt = sample_targets<double>(LikelihoodKind::categorical, ConstMatMap<double>(M.data(), 5, 20), 3);
  Mat<double> S(5, 20);
  sample_scores<double>(LikelihoodKind::categorical, ConstMatMap<double>(M.data(), 5, 20), 3, 0, 1,
                        MatMap<double>(S.data(), 5, 20));
  for (Index n = 0; n < 20; ++n) {
    Index y;
    S.col(n).maxCoeff(&y);
    EXPECT_EQ(mt.labels[static_cast<std::size_t>(n)], y);
  }
}

TEST(ExtremeLogits, InverseCdfNeverPicksAClassWithZeroProbability) {
  // Σp rounds below 1 and the last class has p = 0: a uniform draw above Σp fell through to the last class.
  const float p[3] = {0.5f, 0.49999994f, 0.0f};
  EXPECT_EQ(detail::sample_categorical(p, 3, 0.99999999), 1);
  EXPECT_EQ(detail::sample_categorical(p, 3, 0.0), 0);
  const double q[4] = {0.0, 0.25, 0.0, 0.75};
  EXPECT_EQ(detail::sample_categorical(q, 4, 0.0), 1);
  EXPECT_EQ(detail::sample_categorical(q, 4, 0.2499), 1);
  EXPECT_EQ(detail::sample_categorical(q, 4, 0.25), 3);
  EXPECT_EQ(detail::sample_categorical(q, 4, std::nextafter(1.0, 0.0)), 3);
}
