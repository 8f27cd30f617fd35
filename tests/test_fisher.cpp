// The matrix-free Fisher-vector product against a dense F = 1/N Σ J_nᵀ H_n J_n whose Jacobian comes from
// backprop and whose H_n comes from the likelihood formulas; its symmetry and semi-definiteness; the
// Monte-Carlo estimate's 1/√S convergence; the loss gradient against finite differences; float against
// double; and bit-identical results for 1 and 2 threads.
#include <Eigen/Eigenvalues>
#include <cstring>
#include <numeric>
#include <stdexcept>
#include <tuple>

#include "curvature/fisher_plan.h"
#include "test_helpers.h"

using namespace natgrad;
using namespace natgrad::test;

namespace {
struct ModelCase {
  std::string label;
  ModelSpec spec;
};
std::vector<ModelCase> model_cases(Index C) {
  return {{"mlp", mlp_spec(5, 6, C)}, {"mlp_relu", mlp_spec(4, 5, C, LayerType::relu)}, {"cnn", cnn_spec(C)}};
}
const LikelihoodKind kLikelihoods[] = {LikelihoodKind::categorical, LikelihoodKind::gaussian, LikelihoodKind::bernoulli};
}  // namespace

template <typename Scalar>
class FisherProduct : public ::testing::Test {};
using ScalarTypes = ::testing::Types<float, double>;
TYPED_TEST_SUITE(FisherProduct, ScalarTypes);

TYPED_TEST(FisherProduct, JacobianFromRopEqualsJacobianFromBackprop) {
  using Scalar = TypeParam;
  for (const auto& mc : model_cases(3)) {
    SCOPED_TRACE(mc.label);
    Network<Scalar> model(mc.spec);
    const Vec<Scalar> theta = init_parameters(model, 1);
    const Mat<Scalar> X = random_mat<Scalar>(model.input_size(), 4, 2);
    EXPECT_LT(rel_err_vec(jacobian_by_rop(model, theta, X), jacobian_by_backprop(model, theta, X)),
              Tol<Scalar>::dense);
  }
}

TYPED_TEST(FisherProduct, ExactAndEmpiricalMatchTheDenseFisher) {
  using Scalar = TypeParam;
  for (const auto& mc : model_cases(3))
    for (LikelihoodKind lk : kLikelihoods)
      for (FisherKind fk : {FisherKind::exact, FisherKind::empirical}) {
        SCOPED_TRACE(mc.label + " " + to_string(lk) + " " + to_string(fk));
        Network<Scalar> model(mc.spec);
        const Vec<Scalar> theta = init_parameters(model, 3);
        const Dataset<Scalar> data = random_dataset(model, 7, lk, 4);
        FisherOptions opt;
        opt.kind = fk;
        opt.chunk_size = 3;  // several chunks
        FisherOperator<Scalar> F(model, theta, lk, data, opt);
        const Mat<double> Fd = dense_fisher(model, theta, data, lk, fk);
        for (uint64_t s = 0; s < 3; ++s) {
          const Vec<Scalar> v = random_vec<Scalar>(model.num_params(), 10 + s);
          EXPECT_LT(rel_err_vec(apply(F, v), Fd * v.template cast<double>()), Tol<Scalar>::dense);
        }
        // Damping adds λ v.
        F.set_damping(0.25);
        const Vec<Scalar> v = random_vec<Scalar>(model.num_params(), 20);
        const Vec<double> ref = Fd * v.template cast<double>() + 0.25 * v.template cast<double>();
        EXPECT_LT(rel_err_vec(apply(F, v), ref), Tol<Scalar>::dense);
        EXPECT_EQ(F.num_products(), 4);
      }
}

TYPED_TEST(FisherProduct, SymmetricAndPositiveSemidefinite) {
  using Scalar = TypeParam;
  for (const auto& mc : model_cases(4))
    for (FisherKind fk : {FisherKind::exact, FisherKind::mc, FisherKind::empirical}) {
      SCOPED_TRACE(mc.label + " " + to_string(fk));
      Network<Scalar> model(mc.spec);
      const Vec<Scalar> theta = init_parameters(model, 5);
      const Dataset<Scalar> data = random_dataset(model, 6, LikelihoodKind::categorical, 6);
      FisherOptions opt;
      opt.kind = fk;
      opt.mc_samples = 3;
      FisherOperator<Scalar> F(model, theta, LikelihoodKind::categorical, data, opt);
      for (uint64_t s = 0; s < 4; ++s) {
        const Vec<Scalar> u = random_vec<Scalar>(model.num_params(), 30 + s), v = random_vec<Scalar>(model.num_params(), 40 + s);
        const Vec<Scalar> Fu = apply(F, u), Fv = apply(F, v);
        EXPECT_LT(rel_err(u.template cast<double>().dot(Fv.template cast<double>()),
                          Fu.template cast<double>().dot(v.template cast<double>())),
                  Tol<Scalar>::dense);
        const double vFv = v.template cast<double>().dot(Fv.template cast<double>());
        EXPECT_GE(vFv, -Tol<Scalar>::dense * Fv.template cast<double>().norm() * v.template cast<double>().norm());
      }
    }
}

TEST(DenseReference, FiniteDifferenceJacobianAgreesWithBackpropAndRop) {
  // The references of this file build J by the library's backprop; here that J is checked against central
  // differences of the forward pass alone, and the dense Fisher from the finite-difference J against the
  // operator.
  for (const auto& mc : model_cases(3)) {
    SCOPED_TRACE(mc.label);
    Network<double> model(mc.spec);
    const Vec<double> theta = init_parameters(model, 3);
    for (LikelihoodKind lk : kLikelihoods) {
      const Dataset<double> data = random_dataset(model, 5, lk, 4);
      const Mat<double> Jfd = jacobian_by_finite_differences(model, theta, data.inputs);
      EXPECT_LT((Jfd - jacobian_by_backprop(model, theta, data.inputs)).norm() / Jfd.norm(), 1e-7);
      EXPECT_LT((Jfd - jacobian_by_rop(model, theta, data.inputs)).norm() / Jfd.norm(), 1e-7);
      const Mat<double> Z = model.predict(theta.data(), data.inputs);
      const Index C = model.output_size();
      Mat<double> Fd = Mat<double>::Zero(model.num_params(), model.num_params());
      for (Index n = 0; n < data.size(); ++n)
        Fd += Jfd.middleRows(n * C, C).transpose() *
              dense_output_fisher(lk, FisherKind::exact, Vec<double>(Z.col(n)), data, n) * Jfd.middleRows(n * C, C);
      Fd /= double(data.size());
      FisherOperator<double> F(model, theta, lk, data);
      const Vec<double> v = random_vec<double>(model.num_params(), 21);
      EXPECT_LT(rel_err_vec(apply(F, v), Fd * v), 1e-7) << to_string(lk);
    }
  }
}

TEST(MonteCarloFisher, MatchesTheDenseFisherOfIndependentlyDrawnLabels) {
  // The same labels, drawn in the test from the documented key, give the same Monte-Carlo Fisher: checks the
  // sampler itself, not only its statistics.
  for (LikelihoodKind lk : kLikelihoods) {
    SCOPED_TRACE(to_string(lk));
    Network<double> model(mlp_spec(3, 5, 4));
    const Vec<double> theta = init_parameters(model, 4);
    const Dataset<double> data = random_dataset(model, 9, lk, 5);
    FisherOptions opt;
    opt.kind = FisherKind::mc;
    opt.mc_samples = 3;
    opt.seed = 77;
    opt.chunk_size = 4;
    FisherOperator<double> F(model, theta, lk, data, opt);
    const Mat<double> J = jacobian_by_finite_differences(model, theta, data.inputs);
    const Mat<double> Z = model.predict(theta.data(), data.inputs);
    Mat<double> Fd = Mat<double>::Zero(model.num_params(), model.num_params());
    for (Index n = 0; n < data.size(); ++n)
      Fd += J.middleRows(n * 4, 4).transpose() * mc_output_fisher(lk, Z.col(n), 77, n, 3) * J.middleRows(n * 4, 4);
    Fd /= double(data.size());
    const Vec<double> v = random_vec<double>(model.num_params(), 6);
    EXPECT_LT(rel_err_vec(apply(F, v), Fd * v), 1e-7);
  }
}

TEST(MonteCarloFisher, ErrorFallsLikeOneOverSqrtS) {
  // E‖F̂_S v − F v‖² = σ²/S for the average of S independent label draws, so the RMS error over seeds times
  // √S estimates the same σ for every S. With 24 seeds the RMS estimate has a relative spread of about
  // 1/√48 ≈ 15%, so a band of [0.6, 1.6] around the S = 1 value is a ~3σ bound.
  Network<double> model(mlp_spec(4, 5, 4));
  const Vec<double> theta = init_parameters(model, 7);
  const Dataset<double> data = random_dataset(model, 10, LikelihoodKind::categorical, 8);
  const Vec<double> v = random_vec<double>(model.num_params(), 9);
  FisherOperator<double> exact(model, theta, LikelihoodKind::categorical, data);
  const Vec<double> Fv = apply(exact, v);
  const int seeds = 24;
  std::vector<double> scaled;
  for (int S : {1, 16, 256, 4096}) {
    double sq = 0;
    Vec<double> mean = Vec<double>::Zero(v.size());
    for (int k = 0; k < seeds; ++k) {
      FisherOptions opt;
      opt.kind = FisherKind::mc;
      opt.mc_samples = S;
      opt.seed = 1000 + static_cast<uint64_t>(k);
      FisherOperator<double> F(model, theta, LikelihoodKind::categorical, data, opt);
      const Vec<double> y = apply(F, v);
      sq += (y - Fv).squaredNorm();
      mean += y / seeds;
    }
    const double rms = std::sqrt(sq / seeds);
    scaled.push_back(rms * std::sqrt(double(S)));
    // The seed average is an S·seeds-sample estimate: it converges to the exact product too.
    EXPECT_LT((mean - Fv).norm(), 4 * rms / std::sqrt(double(seeds))) << "S = " << S;
    if (S == 4096) EXPECT_LT(rms / Fv.norm(), 0.05);
  }
  for (std::size_t i = 1; i < scaled.size(); ++i) {
    EXPECT_GT(scaled[i] / scaled[0], 0.6) << "S index " << i;
    EXPECT_LT(scaled[i] / scaled[0], 1.6) << "S index " << i;
  }
  // One S = 1 product is not the exact one.
  FisherOptions opt;
  opt.kind = FisherKind::mc;
  FisherOperator<double> one(model, theta, LikelihoodKind::categorical, data, opt);
  EXPECT_GT(rel_err_vec(apply(one, v), Fv), 1e-2);
}

TEST(MonteCarloFisher, GaussianAndBernoulliAreUnbiased) {
  for (LikelihoodKind lk : {LikelihoodKind::gaussian, LikelihoodKind::bernoulli}) {
    SCOPED_TRACE(to_string(lk));
    Network<double> model(mlp_spec(3, 4, 3));
    const Vec<double> theta = init_parameters(model, 11);
    const Dataset<double> data = random_dataset(model, 5, lk, 12);
    const Vec<double> v = random_vec<double>(model.num_params(), 13);
    const Vec<double> Fv = apply(FisherOperator<double>(model, theta, lk, data), v);
    FisherOptions opt;
    opt.kind = FisherKind::mc;
    opt.mc_samples = 1 << 16;
    const Vec<double> y = apply(FisherOperator<double>(model, theta, lk, data, opt), v);
    // Relative error of a 65536-draw average: ~1/256 times the per-draw spread (≈ 1–2 here).
    EXPECT_LT(rel_err_vec(y, Fv), 0.02);
  }
}

TYPED_TEST(FisherProduct, LossGradientMatchesFiniteDifferences) {
  // The reference is always central differences of the loss in double precision at the same parameters
  // (float differences are dominated by rounding); the tolerance is the type's.
  using Scalar = TypeParam;
  const double tol = std::is_same<Scalar, float>::value ? 1e-4 : 1e-6;
  for (const auto& mc : model_cases(3))
    for (LikelihoodKind lk : kLikelihoods) {
      SCOPED_TRACE(mc.label + " " + to_string(lk));
      Network<Scalar> model(mc.spec);
      Network<double> md(mc.spec);
      const Vec<Scalar> theta = init_parameters(model, 14);
      const Dataset<Scalar> data = random_dataset(model, 5, lk, 15);
      const Dataset<double> dd = data.template cast<double>();
      FisherOperator<Scalar> F(model, theta, lk, data);
      auto loss_at = [&](const Vec<double>& th) {
        const Mat<double> Z = md.predict(th.data(), dd.inputs);
        return nll_sum<double>(lk, ConstMatMap<double>(Z.data(), Z.rows(), Z.cols()), dd, 0) / dd.size();
      };
      const Vec<double> th = theta.template cast<double>();
      EXPECT_LT(rel_err(F.loss(), loss_at(th)), tol);
      const double h = 1e-6;
      Vec<double> fd(model.num_params());
      for (Index k = 0; k < model.num_params(); ++k) {
        Vec<double> tp = th, tm = th;
        tp[k] += h;
        tm[k] -= h;
        fd[k] = (loss_at(tp) - loss_at(tm)) / (2 * h);
      }
      EXPECT_LT(rel_err_vec(F.gradient(), fd), tol);
    }
}

TEST(FisherPrecision, FloatAgreesWithDouble) {
  for (const auto& mc : model_cases(4))
    for (FisherKind fk : {FisherKind::exact, FisherKind::mc, FisherKind::empirical}) {
      SCOPED_TRACE(mc.label + " " + to_string(fk));
      Network<double> md(mc.spec);
      Network<float> mf(mc.spec);
      const Vec<double> theta = init_parameters(md, 16);
      const Dataset<double> data = random_dataset(md, 9, LikelihoodKind::categorical, 17);
      FisherOptions opt;
      opt.kind = fk;
      opt.mc_samples = 2;
      FisherOperator<double> Fd(md, theta, LikelihoodKind::categorical, data, opt);
      FisherOperator<float> Ff(mf, theta.cast<float>(), LikelihoodKind::categorical, data.cast<float>(), opt);
      const Vec<double> v = random_vec<double>(md.num_params(), 18);
      EXPECT_LT(rel_err_vec(apply(Ff, Vec<float>(v.cast<float>())), apply(Fd, v)), 1e-4);
      EXPECT_LT(rel_err_vec(Ff.gradient(), Fd.gradient()), 1e-4);
    }
}

TYPED_TEST(FisherProduct, OneAndTwoThreadsAreBitIdentical) {
#ifndef NATGRAD_HAVE_OPENMP
  GTEST_SKIP() << "built without OpenMP (NATGRAD_USE_OPENMP=OFF): one thread only, nothing to compare";
#endif
  using Scalar = TypeParam;
  for (const auto& mc : model_cases(5))
    for (FisherKind fk : {FisherKind::exact, FisherKind::mc, FisherKind::empirical}) {
      SCOPED_TRACE(mc.label + " " + to_string(fk));
      Network<Scalar> model(mc.spec);
      const Vec<Scalar> theta = init_parameters(model, 19);
      const Dataset<Scalar> data = random_dataset(model, 61, LikelihoodKind::categorical, 20);
      FisherOptions opt;
      opt.kind = fk;
      opt.mc_samples = 3;
      opt.chunk_size = 4;  // 16 chunks
      opt.damping = 1e-3;
      opt.num_threads = 1;
      FisherOperator<Scalar> F1(model, theta, LikelihoodKind::categorical, data, opt);
      opt.num_threads = 2;
      FisherOperator<Scalar> F2(model, theta, LikelihoodKind::categorical, data, opt);
      const Vec<Scalar> v = random_vec<Scalar>(model.num_params(), 21);
      const Vec<Scalar> y1 = apply(F1, v), y2 = apply(F2, v);
      EXPECT_EQ(0, std::memcmp(y1.data(), y2.data(), sizeof(Scalar) * y1.size()));
      EXPECT_EQ(0, std::memcmp(F1.gradient().data(), F2.gradient().data(), sizeof(Scalar) * y1.size()));
      EXPECT_EQ(F1.loss(), F2.loss());
      const Vec<Scalar> d1 = F1.empirical_fisher_diagonal(), d2 = F2.empirical_fisher_diagonal();
      EXPECT_EQ(0, std::memcmp(d1.data(), d2.data(), sizeof(Scalar) * d1.size()));
    }
}

TEST(FisherDiagonal, EmpiricalDiagonalMatchesDenseEmpiricalFisher) {
  for (const auto& mc : model_cases(3)) {
    SCOPED_TRACE(mc.label);
    Network<double> model(mc.spec);
    const Vec<double> theta = init_parameters(model, 22);
    const Dataset<double> data = random_dataset(model, 7, LikelihoodKind::categorical, 23);
    FisherOperator<double> F(model, theta, LikelihoodKind::categorical, data);
    const Mat<double> Fe = dense_fisher(model, theta, data, LikelihoodKind::categorical, FisherKind::empirical);
    EXPECT_LT(rel_err_vec(F.empirical_fisher_diagonal(), Vec<double>(Fe.diagonal())), 1e-10);
  }
}

TEST(FisherOperatorRebind, EqualsAFreshOperatorAtTheNewParameters) {
  for (FisherKind fk : {FisherKind::exact, FisherKind::mc, FisherKind::empirical}) {
    SCOPED_TRACE(to_string(fk));
    Network<float> model(cnn_spec(4));
    const Vec<float> a = init_parameters(model, 30), b = init_parameters(model, 31);
    const Dataset<float> data = random_dataset(model, 37, LikelihoodKind::categorical, 32);
    FisherOptions opt;
    opt.kind = fk;
    opt.mc_samples = 2;
    FisherOperator<float> F(model, a, LikelihoodKind::categorical, data, opt);
    const Vec<float> v = random_vec<float>(model.num_params(), 33);
    const Vec<float> before = apply(F, v);
    F.gradient();
    F.rebind(b);
    FisherOperator<float> fresh(model, b, LikelihoodKind::categorical, data, opt);
    EXPECT_EQ(apply(F, v), apply(fresh, v));
    EXPECT_EQ(F.gradient(), fresh.gradient());  // the cached gradient was invalidated
    EXPECT_EQ(F.loss(), fresh.loss());
    EXPECT_NE(apply(F, v), before);
    EXPECT_THROW(F.rebind(Vec<float>(b.head(3))), std::invalid_argument);
  }
}

TEST(FisherOperatorLoss, WithoutTheGradientHasTheGradientPathsBitsForAnyThreadCount) {
  // loss() alone runs no reverse pass; it sums the same per-chunk losses in the same order as gradient(), so
  // the two agree bit for bit (its value against an independent sum: LossGradientMatchesFiniteDifferences).
  for (LikelihoodKind lk : kLikelihoods) {
    SCOPED_TRACE(to_string(lk));
    Network<float> model(mlp_spec(6, 7, 4));
    const Vec<float> theta = init_parameters(model, 40);
    const Dataset<float> data = random_dataset(model, 3000, lk, 41);  // several chunks
    FisherOptions one, three;
    one.num_threads = 1;
    three.num_threads = 3;
    const FisherOperator<float> with_gradient(model, theta, lk, data, one);
    with_gradient.gradient();
    const double reference = with_gradient.loss();
    ASSERT_GT(detail::FisherPlan::make(model, data.size(), one).num_chunks, 1);
    for (const FisherOptions& o : {one, three}) {
      const FisherOperator<float> alone(model, theta, lk, data, o);
      EXPECT_EQ(alone.loss(), reference);
      EXPECT_EQ(alone.gradient(), with_gradient.gradient());
      EXPECT_EQ(alone.loss(), reference);
    }
  }
}

TEST(FisherOperatorAlignment, ProductsDoNotDependOnWhereTheCallersVectorsLie) {
  // Vectors a caller did not allocate with Eigen (NumPy's, a std::vector's slice) may start at any float:
  // the product through x and y one and three floats past Eigen's alignment equals the aligned one bit for bit.
  for (FisherKind fk : {FisherKind::exact, FisherKind::mc, FisherKind::empirical})
    for (const auto& mc : model_cases(4)) {
      SCOPED_TRACE(mc.label + " " + to_string(fk));
      Network<float> model(mc.spec);
      const Vec<float> theta = init_parameters(model, 50);
      const Dataset<float> data = random_dataset(model, 300, LikelihoodKind::categorical, 51);
      FisherOptions o;
      o.kind = fk;
      o.damping = 1e-2;
      const FisherOperator<float> F(model, theta, LikelihoodKind::categorical, data, o);
      expect_product_ignores_alignment(F, 52);
    }
}

TEST(FisherOptionsDefaults, DependOnTheProblemNotOnThreads) {
  FisherOptions o;
  EXPECT_EQ(o.chunk_for(1000), 32);   // ⌈1000/64⌉ = 16, clamped below at 32: 32 chunks
  EXPECT_EQ(o.chunk_for(256), 32);
  EXPECT_EQ(o.chunk_for(10), 32);
  EXPECT_EQ(o.chunk_for(8000), 128);  // 63 chunks
  EXPECT_EQ(o.chunk_for(100000), 256);
  o.chunk_size = 7;
  EXPECT_EQ(o.chunk_for(1000), 7);
  // The plan (chunks, tasks, buffers) is the same whatever the thread count.
  Network<float> model(mlp_spec(784, 1024, 10));
  FisherOptions a, b;
  a.num_threads = 1;
  b.num_threads = 8;
  const detail::FisherPlan pa = detail::FisherPlan::make(model, 1000, a),
                           pb = detail::FisherPlan::make(model, 1000, b);
  EXPECT_EQ(pa.num_chunks, 16);  // linear layers hold the work: chunks of at least 64
  EXPECT_EQ(pa.tasks.size(), pb.tasks.size());
  EXPECT_EQ(pa.cotangent_size, pb.cotangent_size);
  EXPECT_EQ(pa.partial_size, 0);  // linear layers split into weight blocks: no partial gradients
}

TEST(FisherOperatorErrors, RejectsBadInput) {
  Network<double> model(mlp_spec(3, 4, 2));
  const Vec<double> theta = init_parameters(model, 1);
  const Dataset<double> data = random_dataset(model, 4, LikelihoodKind::categorical, 2);
  auto message = [&](auto f) {
    try {
      f();
    } catch (const std::invalid_argument& e) {
      return std::string(e.what());
    }
    return std::string("no exception");
  };
  EXPECT_NE(message([&] { FisherOperator<double>(model, Vec<double>(theta.head(5)), LikelihoodKind::categorical, data); })
                .find("parameter vector has 5 entries but the model has " + std::to_string(model.num_params())),
            std::string::npos);
  FisherOptions opt;
  opt.damping = -1;
  EXPECT_NE(message([&] { FisherOperator<double>(model, theta, LikelihoodKind::categorical, data, opt); }).find("damping"),
            std::string::npos);
  opt = FisherOptions();
  opt.kind = FisherKind::mc;
  opt.mc_samples = 0;
  EXPECT_NE(message([&] { FisherOperator<double>(model, theta, LikelihoodKind::categorical, data, opt); }).find("mc_samples"),
            std::string::npos);
  Dataset<double> bad = data;
  bad.labels[2] = 7;
  EXPECT_NE(message([&] { FisherOperator<double>(model, theta, LikelihoodKind::categorical, bad); })
                .find("class label 7 of sample 2 is outside [0, 2)"),
            std::string::npos);
  Dataset<double> wrong = data;
  wrong.inputs = Mat<double>::Zero(5, 4);
  EXPECT_NE(message([&] { FisherOperator<double>(model, theta, LikelihoodKind::categorical, wrong); }).find("5 features"),
            std::string::npos);
}

// Every requested thread does its share of a product: with 8 threads (oversubscribed here, which is fine:
// the work is counted, not timed) each thread's multiply-adds are within 25% of the mean, on the benchmark
// MLP at B = 1000 and the benchmark CNN at B = 256, and the product is bit-identical to one thread's.
TEST(FisherParallelism, EightThreadsShareTheWorkAndMatchOneThreadBitForBit) {
#ifndef NATGRAD_HAVE_OPENMP
  GTEST_SKIP() << "built without OpenMP (NATGRAD_USE_OPENMP=OFF): one thread only";
#endif
  ModelSpec mlp;
  mlp.input_shape = {784};
  mlp.layers = {LayerSpec::linear(784, 1024), LayerSpec::activation(LayerType::tanh), LayerSpec::linear(1024, 1024),
                LayerSpec::activation(LayerType::tanh), LayerSpec::linear(1024, 10)};
  ModelSpec cnn;
  cnn.input_shape = {1, 28, 28};
  cnn.layers = {LayerSpec::conv2d(1, 32, 3, 1, 1), LayerSpec::activation(LayerType::relu), LayerSpec::maxpool2d(2),
                LayerSpec::conv2d(32, 64, 3, 1, 1), LayerSpec::activation(LayerType::relu), LayerSpec::maxpool2d(2),
                LayerSpec::flatten(), LayerSpec::linear(3136, 128), LayerSpec::activation(LayerType::relu),
                LayerSpec::linear(128, 10)};
  // Depthwise (multiplier 1, and 2 with stride 2) and pointwise convolutions: one GEMM per group.
  auto depthwise = [](Index in, Index out, Index stride) {
    LayerSpec s = LayerSpec::conv2d(in, out, 3, stride, 1);
    s.groups = in;
    return s;
  };
  ModelSpec separable;
  separable.input_shape = {8, 12, 12};
  separable.layers = {depthwise(8, 8, 1), LayerSpec::activation(LayerType::relu), LayerSpec::conv2d(8, 16, 1),
                      LayerSpec::activation(LayerType::relu), depthwise(16, 32, 2), LayerSpec::activation(LayerType::relu),
                      LayerSpec::global_avgpool(), LayerSpec::linear(32, 10)};
  for (const auto& [name, spec, N] : {std::make_tuple("MLP", mlp, Index(1000)), std::make_tuple("CNN", cnn, Index(256)),
                                      std::make_tuple("separable CNN", separable, Index(256))}) {
    SCOPED_TRACE(name);
    Network<float> model(spec);
    const Vec<float> theta = init_parameters(model, 1);
    const Dataset<float> data = random_dataset(model, N, LikelihoodKind::categorical, 2);
    const Vec<float> v = random_vec<float>(model.num_params(), 3);
    FisherOptions opt;
    opt.damping = 1e-3;
    opt.num_threads = 1;
    FisherOperator<float> F1(model, theta, LikelihoodKind::categorical, data, opt);
    opt.num_threads = 8;
    FisherOperator<float> F8(model, theta, LikelihoodKind::categorical, data, opt);
    const Vec<float> y1 = apply(F1, v), y8 = apply(F8, v);
    EXPECT_EQ(0, std::memcmp(y1.data(), y8.data(), sizeof(float) * y1.size()));
    const std::vector<double>& w = F8.work_per_thread();
    ASSERT_EQ(w.size(), 8u);
    const double mean = std::accumulate(w.begin(), w.end(), 0.0) / 8;
    EXPECT_NEAR(std::accumulate(w.begin(), w.end(), 0.0), F1.work_per_thread()[0], 1e-6 * mean * 8);
    std::cout << "[ info ] " << name << " multiply-adds per thread / mean:";
    for (double x : w) {
      std::cout << " " << x / mean;
      EXPECT_GT(x, 0.75 * mean);
      EXPECT_LT(x, 1.25 * mean);
    }
    std::cout << "\n";
  }
}

// Long one-off passes report progress: the forward pass at construction and gradient(), chunk by chunk up to
// the total; products do not.
TEST(FisherProgress, ForwardAndGradientReportTheirChunks) {
  Network<double> model(mlp_spec(4, 6, 3));
  const Vec<double> theta = init_parameters(model, 1);
  const Dataset<double> data = random_dataset(model, 50, LikelihoodKind::categorical, 2);
  std::vector<std::pair<std::string, Index>> calls;
  FisherOptions opt;
  opt.chunk_size = 8;  // 7 chunks
  opt.num_threads = 1;
  Index total = 0;
  opt.on_progress = [&](const char* phase, Index done, Index all) {
    calls.emplace_back(phase, done);
    total = all;
  };
  FisherOperator<double> F(model, theta, LikelihoodKind::categorical, data, opt);
  ASSERT_EQ(calls.size(), 7u);
  EXPECT_EQ(calls.back(), std::make_pair(std::string("forward"), Index(7)));
  EXPECT_EQ(total, 7);
  calls.clear();
  F.gradient();
  ASSERT_EQ(calls.size(), 7u);
  EXPECT_EQ(calls.front(), std::make_pair(std::string("gradient"), Index(1)));
  calls.clear();
  apply(F, random_vec<double>(F.cols(), 3));
  EXPECT_TRUE(calls.empty());
}

// FisherOptions::stop_requested: a stop requested after k chunks ends the forward pass (the constructor, a
// rebind), gradient() and a product with Interrupted naming the pass and the k chunks done. The operator
// stays usable: the same product and gradient afterwards equal those of an operator that was never stopped,
// bit for bit; after an interrupted rebind it refuses to compute until a rebind completes.
namespace {
// What Interrupted says when f throws it ("not interrupted" otherwise).
template <typename F>
std::string interruption(F f) {
  try {
    f();
  } catch (const Interrupted& e) {
    return e.what();
  }
  return "not interrupted";
}
}  // namespace

TEST(FisherStop, InterruptsEachPassAfterTheChunksDoneAndLeavesTheOperatorUsable) {
  Network<double> model(mlp_spec(6, 8, 3));
  const Vec<double> theta = init_parameters(model, 1), theta2 = init_parameters(model, 2);
  const Dataset<double> data = random_dataset(model, 40, LikelihoodKind::categorical, 2);
  const Vec<double> v = random_vec<double>(model.num_params(), 3);
  FisherOptions plain;
  plain.chunk_size = 8;   // 5 chunks
  plain.num_threads = 1;  // chunks in order: the k-th poll comes before chunk k
  plain.damping = 0.1;
  FisherOperator<double> reference(model, theta, LikelihoodKind::categorical, data, plain);
  const Vec<double> y_ref = apply(reference, v), g_ref = reference.gradient();

  long polls = 0, allowed = 0;  // the stop is requested at poll number `allowed` (counting from 0)
  FisherOptions opt = plain;
  opt.stop_requested = [&] { return polls++ >= allowed; };
  auto stop_after = [&](long k) {
    polls = 0;
    allowed = k;
  };
  stop_after(2);
  EXPECT_EQ(
      interruption([&] { FisherOperator<double>(model, theta, LikelihoodKind::categorical, data, opt); }),
      "the forward pass was interrupted after 2 of 5 chunks");
  stop_after(1000);
  FisherOperator<double> F(model, theta, LikelihoodKind::categorical, data, opt);
  Vec<double> y = Vec<double>::Constant(model.num_params(), 7.0);  // an interrupted product leaves it so
  stop_after(3);
  EXPECT_EQ(interruption([&] { F.gradient(); }), "the gradient was interrupted after 3 of 5 chunks");
  stop_after(1);
  EXPECT_EQ(interruption([&] { F.perform_op(v.data(), y.data()); }),
            "the product was interrupted after 1 of 5 chunks");
  stop_after(0);
  EXPECT_EQ(interruption([&] { F.perform_op(v.data(), y.data()); }),
            "the product was interrupted after 0 of 5 chunks");
  EXPECT_EQ(F.num_products(), 0);
  EXPECT_TRUE((y.array() == 7.0).all()) << "an interrupted product wrote to y";
  stop_after(1000);
  EXPECT_EQ(0, std::memcmp(apply(F, v).data(), y_ref.data(), sizeof(double) * y_ref.size()));
  EXPECT_EQ(0, std::memcmp(F.gradient().data(), g_ref.data(), sizeof(double) * g_ref.size()));
  // An interrupted rebind leaves an incomplete forward pass: the operator refuses to use it.
  stop_after(4);
  EXPECT_EQ(interruption([&] { F.rebind(theta2); }), "the forward pass was interrupted after 4 of 5 chunks");
  EXPECT_THROW(F.perform_op(v.data(), y.data()), std::logic_error);
  EXPECT_THROW(F.gradient(), std::logic_error);
  stop_after(1000);
  F.rebind(theta);
  EXPECT_EQ(0, std::memcmp(apply(F, v).data(), y_ref.data(), sizeof(double) * y_ref.size()));
}

// A progress callback that throws stops the pass, and its exception reaches the caller, type and all, instead
// of ending the process inside the parallel region: in the forward pass (one thread: the forward pass's
// chunks are taken dynamically, so with two a worker may take them all and the first thread never report) and
// in gradient() with two threads (each takes a fixed range of chunks, the first thread reports its own).
TEST(FisherStop, AnExceptionFromTheProgressCallbackReachesTheCaller) {
  Network<double> model(mlp_spec(6, 8, 3));
  const Vec<double> theta = init_parameters(model, 1);
  const Dataset<double> data = random_dataset(model, 40, LikelihoodKind::categorical, 2);
  FisherOptions opt;
  opt.chunk_size = 8;  // 5 chunks
  opt.num_threads = 1;
  opt.on_progress = [](const char* phase, Index done, Index) {
    if (done >= 3) throw std::out_of_range(std::string(phase) + " display failed");
  };
  EXPECT_THROW(FisherOperator<double>(model, theta, LikelihoodKind::categorical, data, opt),
               std::out_of_range);
  opt.num_threads = 2;
  opt.on_progress = [](const char* phase, Index, Index) {
    if (std::string(phase) == "gradient") throw std::out_of_range("gradient display failed");
  };
  const FisherOperator<double> F(model, theta, LikelihoodKind::categorical, data, opt);
  EXPECT_THROW(F.gradient(), std::out_of_range);
}

// take_gradient moves the gradient out: the loss stays, and a later gradient() computes the same vector.
TEST(FisherOperatorTakeGradient, MovesTheGradientOutAndKeepsTheLoss) {
  Network<double> model(mlp_spec(5, 7, 3));
  const Vec<double> theta = init_parameters(model, 40);
  const Dataset<double> data = random_dataset(model, 11, LikelihoodKind::categorical, 41);
  FisherOperator<double> F(model, theta, LikelihoodKind::categorical, data);
  const double loss = F.loss();
  const Vec<double> g = F.take_gradient();
  EXPECT_EQ(F.loss(), loss);
  EXPECT_EQ(F.gradient(), g);
  EXPECT_EQ(FisherOperator<double>(model, theta, LikelihoodKind::categorical, data).gradient(), g);
}

// Above 64 MiB of logits the exact categorical curvature recomputes softmax(z) in each product instead of
// keeping it: the same H u bit for bit, per sample and per position.
TEST(OutputCurvatureMemory, RecomputedProbabilitiesGiveTheSameProductBitForBit) {
  for (Index T : {1, 3}) {
    const Index C = 7, N = 9;
    const Mat<float> Z = random_mat<float>(C * T, N, 50) * 6.0f;
    Dataset<float> data;
    data.inputs = Mat<float>::Zero(1, N);
    const Mat<float> U = random_mat<float>(C * T, N, 51);
    OutputCurvature<float> kept(LikelihoodKind::categorical, FisherKind::exact, 1, 0,
                                ConstMatMap<float>(Z.data(), Z.rows(), N), data, T, true);
    OutputCurvature<float> recomputed(LikelihoodKind::categorical, FisherKind::exact, 1, 0,
                                      ConstMatMap<float>(Z.data(), Z.rows(), N), data, T, false);
    Mat<float> a(C * T, N), b(C * T, N);
    kept.apply(0, ConstMatMap<float>(U.data(), U.rows(), N), MatMap<float>(a.data(), a.rows(), N));
    recomputed.apply(0, ConstMatMap<float>(U.data(), U.rows(), N), MatMap<float>(b.data(), b.rows(), N));
    EXPECT_EQ(a, b);
    // Columns 4 … 8 alone (a chunk starting inside the batch).
    Mat<float> c(C * T, 5);
    recomputed.apply(4, ConstMatMap<float>(U.data() + 4 * U.rows(), U.rows(), 5), MatMap<float>(c.data(), c.rows(), 5));
    EXPECT_EQ(c, a.rightCols(5));
  }
  EXPECT_TRUE(FisherOperator<float>::keeps_probabilities(16 * 1024 * 1024));
  EXPECT_FALSE(FisherOperator<float>::keeps_probabilities(16 * 1024 * 1024 + 1));
}
