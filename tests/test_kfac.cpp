// K-FAC (curvature/kfac.h) against factors formed here by hand: A from the layers' inputs (a conv's patches
// unfolded by loops), G from the output Fisher H_n (the formula table, or Monte-Carlo labels drawn from the
// documented generator key) pushed through the hand-written backward pass; the diagonal of tensors K-FAC does
// not cover against the dense Fisher's; the damped inverse against the π-split Kronecker product built
// densely; SPD; exactness on one linear layer with the gaussian likelihood, where F = A ⊗ I, and CG
// preconditioned by it converging in at most two iterations; thread invariance.
#include <natgrad/curvature/kfac.h>
#include <natgrad/natural_gradient/solve_natural_gradient.h>
#include <natgrad/solvers/conjugate_gradient.h>

#include <Eigen/Cholesky>
#include <Eigen/Eigenvalues>

#include "test_helpers.h"

namespace natgrad {
namespace test {
namespace {

using RowMat = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

Mat<double> weight_of(const Network<double>& model, const Vec<double>& theta, const std::string& name) {
  for (const NamedParam& p : model.named_params())
    if (p.name == name) return Eigen::Map<const RowMat>(theta.data() + p.offset, p.shape[0], p.size / p.shape[0]);
  ADD_FAILURE() << "no parameter " << name;
  return Mat<double>();
}
Vec<double> vector_of(const Network<double>& model, const Vec<double>& theta, const std::string& name) {
  for (const NamedParam& p : model.named_params())
    if (p.name == name) return theta.segment(p.offset, p.size);
  ADD_FAILURE() << "no parameter " << name;
  return Vec<double>();
}
Vec<double> with_one(const Vec<double>& a) {
  Vec<double> b(a.size() + 1);
  b << a, 1.0;
  return b;
}
Mat<double> h_of(LikelihoodKind lk, FisherKind fk, const Vec<double>& z, const Dataset<double>& data, Index n) {
  return fk == FisherKind::mc ? mc_output_fisher(lk, z, /*seed=*/0, n, 1) : dense_output_fisher(lk, fk, z, data, n);
}
double max_rel(const Mat<double>& a, const Mat<double>& b) { return (a - b).cwiseAbs().maxCoeff() / b.cwiseAbs().maxCoeff(); }

// The MLP of mlp_spec (linear+bias, tanh, linear without bias, tanh, linear+bias) by hand.
TEST(Kfac, MlpFactorsAgainstHandFormedOnes) {
  for (LikelihoodKind lk : {LikelihoodKind::categorical, LikelihoodKind::gaussian, LikelihoodKind::bernoulli})
    for (FisherKind fk : {FisherKind::exact, FisherKind::mc, FisherKind::empirical}) {
      SCOPED_TRACE(std::string(to_string(lk)) + " " + to_string(fk));
      const Network<double> model(mlp_spec(5, 6, 3));
      const Vec<double> theta = init_parameters(model, 2);
      const Dataset<double> data = random_dataset(model, 9, lk, 3);
      FisherOptions fo;
      fo.kind = fk;
      const FisherOperator<double> F(model, theta, lk, data, fo);
      const KfacApproximation<double> K(F);
      ASSERT_EQ(K.blocks().size(), 3u);
      EXPECT_EQ(K.backprops(), fk == FisherKind::exact ? 3 : 1);

      const Mat<double> W1 = weight_of(model, theta, "0.weight"), W2 = weight_of(model, theta, "2.weight"),
                        W3 = weight_of(model, theta, "4.weight");
      const Vec<double> b1 = vector_of(model, theta, "0.bias"), b3 = vector_of(model, theta, "4.bias");
      const Index N = data.size();
      Mat<double> A[3] = {Mat<double>::Zero(6, 6), Mat<double>::Zero(6, 6), Mat<double>::Zero(7, 7)};
      Mat<double> G[3] = {Mat<double>::Zero(6, 6), Mat<double>::Zero(6, 6), Mat<double>::Zero(3, 3)};
      for (Index n = 0; n < N; ++n) {
        const Vec<double> x = data.inputs.col(n);
        const Vec<double> h1 = (W1 * x + b1).array().tanh().matrix();
        const Vec<double> h2 = (W2 * h1).array().tanh().matrix();
        const Vec<double> z = W3 * h2 + b3;
        const Mat<double> H = h_of(lk, fk, z, data, n);
        const Mat<double> D1 = (1 - h1.array().square()).matrix().asDiagonal();
        const Mat<double> D2 = (1 - h2.array().square()).matrix().asDiagonal();
        const Mat<double> M3 = Mat<double>::Identity(3, 3), M2 = D2 * W3.transpose(), M1 = D1 * W2.transpose() * M2;
        A[0] += with_one(x) * with_one(x).transpose();
        A[1] += h1 * h1.transpose();
        A[2] += with_one(h2) * with_one(h2).transpose();
        G[0] += M1 * H * M1.transpose();
        G[1] += M2 * H * M2.transpose();
        G[2] += M3 * H * M3.transpose();
      }
      for (int l = 0; l < 3; ++l) {
        SCOPED_TRACE("block " + std::to_string(l));
        EXPECT_EQ(K.blocks()[static_cast<std::size_t>(l)].bias, l != 1);
        EXPECT_LT(max_rel(K.blocks()[static_cast<std::size_t>(l)].A, A[l] / double(N)), 1e-12);
        EXPECT_LT(max_rel(K.blocks()[static_cast<std::size_t>(l)].G, G[l] / double(N)), 1e-12);
      }
    }
}

// Above max_closed_form_outputs classes the exact kind's G comes from sampled labels (the operator's seed
// and draws), as the Monte-Carlo Fisher's: one backprop per draw instead of C.
TEST(Kfac, ManyClassesUseSampledLabels) {
  const Network<double> model(mlp_spec(5, 6, 3));
  const Vec<double> theta = init_parameters(model, 2);
  const Dataset<double> data = random_dataset(model, 9, LikelihoodKind::categorical, 3);
  FisherOptions fo;
  fo.mc_samples = 2;
  fo.seed = 5;
  const FisherOperator<double> F(model, theta, LikelihoodKind::categorical, data, fo);
  KfacOptions ko;
  ko.max_closed_form_outputs = 2;
  const KfacApproximation<double> K(F, ko);
  EXPECT_EQ(K.backprops(), 2);
  const Mat<double> Z = model.predict(theta.data(), data.inputs);
  Mat<double> G = Mat<double>::Zero(3, 3);
  for (Index n = 0; n < data.size(); ++n) G += mc_output_fisher(LikelihoodKind::categorical, Z.col(n), 5, n, 2);
  EXPECT_LT(max_rel(K.blocks()[2].G, G / double(data.size())), 1e-12);
  ko.max_closed_form_outputs = -1;
  EXPECT_NE(error_of([&] { KfacApproximation<double>(F, ko); }).find("max_closed_form_outputs"), std::string::npos);
}

// A likelihood per position ("expand"): linear 4→5, tanh, linear 5→3 on [T = 3, 4] inputs, output [3, 3].
// Each position's outputs depend on that position alone, so the cotangent at a layer's position r comes from
// output position r only: the Rademacher signs of the exact kind square away, and G is
// 1/(N T) Σ_n Σ_r M_r H_n[r, r] M_rᵀ exactly; A averages the N·T rows.
TEST(Kfac, SequenceLinearLayersExpandPositions) {
  const Index T = 3;
  ModelSpec spec;
  spec.input_shape = {T, 4};
  spec.layers = {LayerSpec::linear(4, 5), LayerSpec::activation(LayerType::tanh), LayerSpec::linear(5, 3)};
  const Network<double> model(spec);
  ASSERT_EQ(model.output_positions(), T);
  const Vec<double> theta = init_parameters(model, 41);
  Dataset<double> data;
  const Index N = 7;
  data.inputs = random_mat<double>(T * 4, N, 42);
  for (Index i = 0; i < N * T; ++i) data.labels.push_back(i % 3);
  const Mat<double> W1 = weight_of(model, theta, "0.weight"), W2 = weight_of(model, theta, "2.weight");
  const Vec<double> b1 = vector_of(model, theta, "0.bias"), b2 = vector_of(model, theta, "2.bias");
  for (FisherKind fk : {FisherKind::exact, FisherKind::mc}) {
    SCOPED_TRACE(to_string(fk));
    FisherOptions fo;
    fo.kind = fk;
    const FisherOperator<double> F(model, theta, LikelihoodKind::categorical, data, fo);
    const KfacApproximation<double> K(F);
    ASSERT_EQ(K.blocks().size(), 2u);
    EXPECT_EQ(K.blocks()[0].positions, T);
    Mat<double> A[2] = {Mat<double>::Zero(5, 5), Mat<double>::Zero(6, 6)};
    Mat<double> G[2] = {Mat<double>::Zero(5, 5), Mat<double>::Zero(3, 3)};
    for (Index n = 0; n < N; ++n) {
      Vec<double> z(T * 3);
      std::vector<Vec<double>> h(T);
      for (Index r = 0; r < T; ++r) {
        const Vec<double> x = data.inputs.col(n).segment(r * 4, 4);
        h[r] = (W1 * x + b1).array().tanh().matrix();
        z.segment(r * 3, 3) = W2 * h[r] + b2;
        A[0] += with_one(x) * with_one(x).transpose();
        A[1] += with_one(h[r]) * with_one(h[r]).transpose();
      }
      const Mat<double> H = per_position_fisher(LikelihoodKind::categorical, fk, z, data, n, T, 0, 1);
      for (Index r = 0; r < T; ++r) {
        const Mat<double> Hr = H.block(r * 3, r * 3, 3, 3);
        const Mat<double> M1 = Mat<double>((1 - h[r].array().square()).matrix().asDiagonal()) * W2.transpose();
        G[0] += M1 * Hr * M1.transpose();
        G[1] += Hr;
      }
    }
    for (int l = 0; l < 2; ++l) {
      SCOPED_TRACE("block " + std::to_string(l));
      EXPECT_LT(max_rel(K.blocks()[static_cast<std::size_t>(l)].A, A[l] / double(N * T)), 1e-12);
      EXPECT_LT(max_rel(K.blocks()[static_cast<std::size_t>(l)].G, G[l] / double(N * T)), 1e-12);
    }
  }
}

// conv2d 2→3 (3×3, stride 2, padding 1) on [2, 5, 5], flatten, linear 27 → 4: A from patches unfolded here,
// G from the linear layer's weight (the conv's output cotangent is W_linᵀ s), per output pixel.
TEST(Kfac, ConvFactorsAgainstHandUnfoldedPatches) {
  ModelSpec spec;
  spec.input_shape = {2, 5, 5};
  spec.layers = {LayerSpec::conv2d(2, 3, 3, 2, 1), LayerSpec::flatten(), LayerSpec::linear(27, 4)};
  const Network<double> model(spec);
  const Vec<double> theta = init_parameters(model, 5);
  const Dataset<double> data = random_dataset(model, 6, LikelihoodKind::categorical, 1);
  const FisherOperator<double> F(model, theta, LikelihoodKind::categorical, data);
  const KfacApproximation<double> K(F);
  ASSERT_EQ(K.blocks().size(), 2u);
  const auto& conv = K.blocks()[0];
  EXPECT_EQ(conv.positions, 9);
  ASSERT_EQ(conv.A.rows(), 2 * 9 + 1);
  const Mat<double> Wc = weight_of(model, theta, "0.weight"), Wl = weight_of(model, theta, "2.weight");
  const Vec<double> bc = vector_of(model, theta, "0.bias"), bl = vector_of(model, theta, "2.bias");
  Mat<double> A = Mat<double>::Zero(19, 19), G = Mat<double>::Zero(3, 3);
  for (Index n = 0; n < data.size(); ++n) {
    const Vec<double> x = data.inputs.col(n);
    Mat<double> patches(9, 19);  // row p = oh·3 + ow: (c, i, j) then 1
    for (Index oh = 0; oh < 3; ++oh)
      for (Index ow = 0; ow < 3; ++ow)
        for (Index c = 0; c < 2; ++c)
          for (Index i = 0; i < 3; ++i)
            for (Index j = 0; j < 3; ++j) {
              const Index h = oh * 2 - 1 + i, w = ow * 2 - 1 + j;
              patches(oh * 3 + ow, (c * 3 + i) * 3 + j) = h < 0 || h >= 5 || w < 0 || w >= 5 ? 0.0 : x[(c * 5 + h) * 5 + w];
              patches(oh * 3 + ow, 18) = 1;
            }
    Vec<double> y(27);  // [3, 3, 3]
    for (Index o = 0; o < 3; ++o)
      for (Index p = 0; p < 9; ++p) y[o * 9 + p] = Wc.row(o).dot(patches.row(p).head(18)) + bc[o];
    const Vec<double> z = Wl * y + bl;
    const Mat<double> H = dense_output_fisher(LikelihoodKind::categorical, FisherKind::exact, z, data, n);
    A += patches.transpose() * patches;
    for (Index p = 0; p < 9; ++p) {
      Mat<double> M(3, 4);  // ∂z/∂y at pixel p, transposed
      for (Index o = 0; o < 3; ++o) M.row(o) = Wl.col(o * 9 + p).transpose();
      G += M * H * M.transpose();
    }
  }
  EXPECT_LT(max_rel(conv.A, A / double(data.size() * 9)), 1e-12);
  EXPECT_LT(max_rel(conv.G, G / double(data.size())), 1e-12);
}

// Tensors outside the blocks (layer norm's weight and bias) get the exact Fisher's diagonal.
TEST(Kfac, UncoveredTensorsGetTheFishersDiagonal) {
  ModelSpec spec;
  spec.input_shape = {4};
  spec.layers = {LayerSpec::linear(4, 5), LayerSpec::layer_norm({5}), LayerSpec::activation(LayerType::tanh),
                 LayerSpec::linear(5, 3)};
  const Network<double> model(spec);
  Vec<double> theta = init_parameters(model, 7);
  theta += 0.3 * random_vec<double>(theta.size(), 8);  // non-trivial affine parameters
  const Dataset<double> data = random_dataset(model, 8, LikelihoodKind::categorical, 9);
  const FisherOperator<double> F(model, theta, LikelihoodKind::categorical, data);
  const KfacApproximation<double> K(F);
  ASSERT_EQ(K.blocks().size(), 2u);
  const Mat<double> dense = dense_fisher(model, theta, data, LikelihoodKind::categorical, FisherKind::exact);
  const Index off = model.param_offset(1), P = model.layer(1).num_params();
  ASSERT_EQ(P, 10);
  EXPECT_LT(rel_err_vec(K.diagonal().segment(off, P), dense.diagonal().segment(off, P)), 1e-10);
  EXPECT_EQ(K.diagonal().head(off).cwiseAbs().maxCoeff(), 0.0);  // (the blocks' entries)
}

// A grouped convolution's gradient is block-diagonal over its groups, not one Kronecker product (conv2d.cpp):
// it offers no factors, and its weight and bias get the exact Fisher's diagonal like any uncovered tensor.
TEST(Kfac, GroupedConvolutionsGetTheFishersDiagonal) {
  ModelSpec spec;
  spec.input_shape = {4, 4, 4};
  LayerSpec depthwise = LayerSpec::conv2d(4, 8, 3, 1, 1);
  depthwise.groups = 4;
  spec.layers = {depthwise, LayerSpec::activation(LayerType::tanh), LayerSpec::flatten(), LayerSpec::linear(128, 3)};
  const Network<double> model(spec);
  const Vec<double> theta = init_parameters(model, 17);
  const Dataset<double> data = random_dataset(model, 6, LikelihoodKind::categorical, 18);
  const FisherOperator<double> F(model, theta, LikelihoodKind::categorical, data);
  const KfacApproximation<double> K(F);
  ASSERT_EQ(K.blocks().size(), 1u);  // the linear layer only
  const Mat<double> dense = dense_fisher(model, theta, data, LikelihoodKind::categorical, FisherKind::exact);
  const Index P = model.layer(0).num_params();
  ASSERT_EQ(P, 8 * 9 + 8);
  EXPECT_LT(rel_err_vec(K.diagonal().head(P), dense.diagonal().head(P)), 1e-10);
}

// conv1d keeps the factors of one group: the same as the conv2d on [C, 1, L] with a 1 × k kernel and the same
// parameters (whose factors ConvFactorsAgainstHandUnfoldedPatches checks).
TEST(Kfac, Conv1dFactorsAreThoseOfConv2dOnOneRow) {
  ModelSpec one, two;
  one.input_shape = {3, 7};
  two.input_shape = {3, 1, 7};
  LayerSpec c2 = LayerSpec::conv2d(3, 4, 1, 2, 0);
  c2.kernel_w = 3;
  c2.padding_w = 1;
  one.layers = {LayerSpec::conv1d(3, 4, 3, 2, 1), LayerSpec::flatten(), LayerSpec::linear(16, 3)};
  two.layers = {c2, LayerSpec::flatten(), LayerSpec::linear(16, 3)};
  const Network<double> m1(one), m2(two);
  const Vec<double> theta = init_parameters(m1, 19);
  ASSERT_EQ(theta.size(), m2.num_params());
  const Dataset<double> data = random_dataset(m1, 6, LikelihoodKind::categorical, 20);
  const FisherOperator<double> F1(m1, theta, LikelihoodKind::categorical, data),
      F2(m2, theta, LikelihoodKind::categorical, data);
  const KfacApproximation<double> K1(F1), K2(F2);
  ASSERT_EQ(K1.blocks().size(), 2u);
  ASSERT_EQ(K2.blocks().size(), 2u);
  EXPECT_EQ(K1.blocks()[0].positions, 4);
  EXPECT_LT(max_rel(K1.blocks()[0].A, K2.blocks()[0].A), 1e-14);
  EXPECT_LT(max_rel(K1.blocks()[0].G, K2.blocks()[0].G), 1e-14);
}

// The damped inverse against (A + π√λ I) ⊗ (G + √λ/π I) built densely in the parameter order, SPD; the
// undamped product against A ⊗ G.
TEST(Kfac, DampedInverseIsThePiSplitKroneckerProductsInverse) {
  const Network<double> model(mlp_spec(4, 5, 3));
  const Vec<double> theta = init_parameters(model, 11);
  const Dataset<double> data = random_dataset(model, 6, LikelihoodKind::categorical, 12);
  const FisherOperator<double> F(model, theta, LikelihoodKind::categorical, data);
  KfacApproximation<double> K(F);
  const double lambda = 1e-2;
  K.set_damping(lambda);
  const Index P = model.num_params();
  Mat<double> dense_inverse(P, P), dense_product(P, P);
  for (Index j = 0; j < P; ++j) {
    const Vec<double> e = Vec<double>::Unit(P, j);
    Vec<double> z(P);
    K.apply(e.data(), z.data());
    dense_inverse.col(j) = z;
    K.multiply(e.data(), z.data());
    dense_product.col(j) = z;
  }
  Mat<double> expected_inverse = Mat<double>::Zero(P, P), expected_product = Mat<double>::Zero(P, P);
  for (const auto& b : K.blocks()) {
    const Index d = b.A.rows(), m = b.rows;
    const double pi = std::sqrt((b.A.trace() / double(d)) / (b.G.trace() / double(m)));
    const Mat<double> Ad = b.A + pi * std::sqrt(lambda) * Mat<double>::Identity(d, d);
    const Mat<double> Gd = b.G + std::sqrt(lambda) / pi * Mat<double>::Identity(m, m);
    // Entry (o, c) of V (weight row-major, then the bias as column `cols`) is parameter index(o, c).
    auto index = [&](Index o, Index c) { return b.offset + (c < b.cols ? o * b.cols + c : b.rows * b.cols + o); };
    for (Index o = 0; o < m; ++o)
      for (Index c = 0; c < d; ++c)
        for (Index o2 = 0; o2 < m; ++o2)
          for (Index c2 = 0; c2 < d; ++c2) {
            expected_product(index(o, c), index(o2, c2)) = b.G(o, o2) * b.A(c, c2);
            expected_inverse(index(o, c), index(o2, c2)) = Gd(o, o2) * Ad(c, c2);
          }
  }
  expected_inverse = expected_inverse.inverse().eval();
  EXPECT_LT(max_rel(dense_inverse, expected_inverse), 1e-10);
  EXPECT_LT(max_rel(dense_product, expected_product), 1e-12);
  EXPECT_LT(max_rel(dense_inverse, dense_inverse.transpose()), 1e-12);
  const Eigen::SelfAdjointEigenSolver<Mat<double>> eig(0.5 * (dense_inverse + dense_inverse.transpose()));
  EXPECT_GT(eig.eigenvalues().minCoeff(), 0.0);
  // invert(λ): the same damped factors inverted by Cholesky instead of the eigendecomposition.
  K.invert(lambda);
  EXPECT_EQ(K.damping(), lambda);
  for (Index j = 0; j < P; ++j) {
    const Vec<double> e = Vec<double>::Unit(P, j);
    Vec<double> z(P);
    K.apply(e.data(), z.data());
    dense_inverse.col(j) = z;
  }
  EXPECT_LT(max_rel(dense_inverse, expected_inverse), 1e-10);
}

// One linear layer, gaussian likelihood: F = A ⊗ I exactly, so K-FAC at λ = 1e-12 gives the exact
// direction, and CG preconditioned by it converges at once.
// invert(λ) on factors wider than its 64-column blocks (A 151 × 151 and 71 × 71, G 70 × 70: the blocks'
// lower parts and their mirrored upper parts meet): apply(x) against (G + √λ/π I)⁻¹ V (A + π√λ I)⁻¹ per layer
// by Eigen's LU, V the layer's slice of x.
TEST(Kfac, CholeskyInverseOfWideFactorsAgainstDenseLu) {
  const Network<double> model(mlp_spec(150, 70, 3));
  const Vec<double> theta = init_parameters(model, 41);
  const Dataset<double> data = random_dataset(model, 30, LikelihoodKind::categorical, 42);
  const FisherOperator<double> F(model, theta, LikelihoodKind::categorical, data);
  KfacOptions ko;
  ko.decompose = false;
  KfacApproximation<double> K(F, ko);
  const double lambda = 3e-3;
  K.invert(lambda);
  const Vec<double> x = random_vec<double>(model.num_params(), 43);
  Vec<double> z(x.size());
  K.apply(x.data(), z.data());
  ASSERT_EQ(K.blocks().size(), 3u);
  EXPECT_GT(K.blocks()[0].A.rows(), 128);  // three column blocks
  for (const auto& b : K.blocks()) {
    const Index d = b.A.rows(), m = b.rows;
    const double pi = std::sqrt((b.A.trace() / double(d)) / (b.G.trace() / double(m)));
    const Mat<double> Ad = b.A + pi * std::sqrt(lambda) * Mat<double>::Identity(d, d);
    const Mat<double> Gd = b.G + std::sqrt(lambda) / pi * Mat<double>::Identity(m, m);
    Mat<double> V(m, d), Z(m, d);  // weight row-major, then the bias as column `cols`
    for (Index o = 0; o < m; ++o)
      for (Index c = 0; c < d; ++c) {
        const Index i = b.offset + (c < b.cols ? o * b.cols + c : b.rows * b.cols + o);
        V(o, c) = x[i];
        Z(o, c) = z[i];
      }
    const Mat<double> want = Gd.lu().solve(Mat<double>(Ad.lu().solve(V.transpose()).transpose()));
    EXPECT_LT(max_rel(Z, want), 1e-10);
  }
}

TEST(Kfac, ExactOnOneLinearLayerWithGaussianLikelihood) {
  ModelSpec spec;
  spec.input_shape = {4};
  spec.layers = {LayerSpec::linear(4, 3)};
  const Network<double> model(spec);
  const Vec<double> theta = init_parameters(model, 13);
  const Dataset<double> data = random_dataset(model, 20, LikelihoodKind::gaussian, 14);  // A full rank
  const double lambda = 1e-12;
  FisherOptions fo;
  fo.damping = lambda;
  const FisherOperator<double> F(model, theta, LikelihoodKind::gaussian, data, fo);
  KfacApproximation<double> K(F);
  K.set_damping(lambda);
  const Mat<double> dense = dense_fisher(model, theta, data, LikelihoodKind::gaussian, FisherKind::exact);
  const Vec<double>& g = F.gradient();
  const Vec<double> exact = (dense + lambda * Mat<double>::Identity(dense.rows(), dense.cols())).llt().solve(g);
  Vec<double> d(g.size());
  K.apply(g.data(), d.data());
  // The factored damping (A + π√λ I) ⊗ (I + √λ/π I) differs from A ⊗ I + λI by O(√λ) = 1e-6 relative: the
  // direction is exact to that order (a wrong factor would be off by O(1)).
  EXPECT_LT(rel_err_vec(d, exact), 1e-5);

  CgOptions opt;
  opt.relative_tolerance = 1e-8;
  CgWorkspace<double> ws;
  ws.resize(g.size(), true);
  Vec<double> x = Vec<double>::Zero(g.size());
  const CgSummary s = conjugate_gradient(F, K, g.data(), x.data(), opt, ws);
  EXPECT_EQ(s.termination, CgTermination::converged) << s.message;
  EXPECT_LE(s.iterations, 2);
  EXPECT_LT(rel_err_vec(x, exact), 1e-7);
}

// solve_natural_gradient with the kfac preconditioner reaches the dense solution; the options that do not
// combine with it are refused.
TEST(Kfac, PreconditionedSolveReachesTheDenseSolution) {
  const Network<double> model(cnn_spec(4));
  const Vec<double> theta = init_parameters(model, 31);
  const Dataset<double> data = random_dataset(model, 12, LikelihoodKind::categorical, 32);
  NaturalGradientOptions opt;
  opt.fisher.damping = 1e-2;
  opt.cg.relative_tolerance = 1e-10;
  opt.preconditioner = PreconditionerKind::kfac;
  const auto r = solve_natural_gradient(model, theta, LikelihoodKind::categorical, data, opt);
  ASSERT_TRUE(r.ok()) << r.failure;
  EXPECT_TRUE(r.cg.is_converged()) << r.cg.message;
  const Mat<double> F = dense_fisher(model, theta, data, LikelihoodKind::categorical, FisherKind::exact);
  const Vec<double> exact = (F + 1e-2 * Mat<double>::Identity(F.rows(), F.cols())).llt().solve(r.gradient);
  EXPECT_LT(rel_err_vec(r.direction, exact), 1e-8);
  std::string why;
  opt.deflate = 2;
  EXPECT_FALSE(opt.is_valid(&why));
  EXPECT_NE(why.find("do not combine"), std::string::npos) << why;
  opt.deflate = 0;
  opt.dampings = {1e-1, 1e-2};
  EXPECT_FALSE(opt.is_valid(&why));
  opt.dampings.clear();
  opt.compare = {ApproximationKind::kfac};
  EXPECT_FALSE(opt.is_valid(&why));  // no spectrum to compare on
  EXPECT_NE(why.find("spectrum_top_k"), std::string::npos) << why;
}

TEST(Kfac, BitIdenticalForAnyThreadCount) {
  const Network<float> model(cnn_spec(5));
  const Vec<float> theta = init_parameters(model, 21);
  const Dataset<float> data = random_dataset(model, 40, LikelihoodKind::categorical, 22);
  Vec<float> z[2];
  std::vector<Mat<double>> factors[2];
  const int threads[2] = {1, 3};
  for (int k = 0; k < 2; ++k) {
    FisherOptions fo;
    fo.num_threads = threads[k];
    fo.chunk_size = 8;
    const FisherOperator<float> F(model, theta, LikelihoodKind::categorical, data, fo);
    KfacApproximation<float> K(F);
    K.set_damping(1e-3);
    for (const auto& b : K.blocks()) {
      factors[k].push_back(b.A);
      factors[k].push_back(b.G);
    }
    z[k].resize(theta.size());
    const Vec<float> r = random_vec<float>(theta.size(), 23);
    K.apply(r.data(), z[k].data());
  }
  ASSERT_EQ(factors[0].size(), 6u);  // two convolutions and the linear layer
  for (std::size_t i = 0; i < factors[0].size(); ++i) EXPECT_TRUE(factors[0][i] == factors[1][i]) << i;
  EXPECT_TRUE(z[0] == z[1]);
}

// The proposal through the gradient's low rank, s (D G⁻¹)ᵀ(Ã A⁻¹), against apply(g) (itself checked against the
// dense Kronecker inverse above): a chain whose layers are wider than the batch (every block low-rank), a
// sequence model (R = T rows per sample), a CNN (R = the output pixels: none), every
// likelihood; and bit for bit for 1 and 3 threads.
TEST(Kfac, TheGradientsProposalThroughItsLowRankEqualsApply) {
  struct Case {
    std::string label;
    ModelSpec spec;
    Index N;
    bool some_low;
  };
  ModelSpec sequence;
  sequence.input_shape = {3, 4};
  sequence.layers = {LayerSpec::linear(4, 16), LayerSpec::activation(LayerType::tanh), LayerSpec::linear(16, 12)};
  const Case cases[] = {{"mlp", mlp_spec(12, 16, 5), 3, true},
                        {"wide mlp (a 151-column block: two chunks, the bias in the second)", mlp_spec(150, 20, 3), 4,
                         true},
                        {"sequence", sequence, 1, true},
                        {"cnn", cnn_spec(4), 6, false}};
  for (const Case& c : cases)
    for (LikelihoodKind lk : {LikelihoodKind::categorical, LikelihoodKind::gaussian, LikelihoodKind::bernoulli}) {
      SCOPED_TRACE(c.label + " " + to_string(lk));
      const Network<double> model(c.spec);
      const Vec<double> theta = init_parameters(model, 31);
      Dataset<double> data = random_dataset(model, c.N, lk, 32);
      const Index T = model.output_positions(), classes = model.output_size() / T;
      if (lk == LikelihoodKind::categorical && T > 1) {  // a label per position
        data.labels.clear();
        for (Index i = 0; i < c.N * T; ++i) data.labels.push_back((5 * i + 1) % classes);
      }
      FisherOptions fo;
      fo.chunk_size = 2;
      const FisherOperator<double> F(model, theta, lk, data, fo);
      KfacApproximation<double> K(F);
      K.invert(0.3);
      const Vec<double> g = F.gradient();
      Vec<double> low(g.size()), dense(g.size());
      const Index taken = K.apply_gradient(F, g.data(), low.data());
      K.apply(g.data(), dense.data());
      Index expected = 0;
      for (const auto& b : K.blocks()) expected += KfacApproximation<double>::low_rank_cheaper(b, c.N) ? 1 : 0;
      EXPECT_EQ(taken, expected);
      EXPECT_EQ(taken > 0, c.some_low);
      EXPECT_LT(rel_err_vec(low, dense), 1e-12);
    }
  Vec<float> z[2];
  for (int k = 0; k < 2; ++k) {
    const Network<float> model(mlp_spec(40, 64, 10));
    const Vec<float> theta = init_parameters(model, 33);
    const Dataset<float> data = random_dataset(model, 20, LikelihoodKind::categorical, 34);
    FisherOptions fo;
    fo.num_threads = k == 0 ? 1 : 3;
    const FisherOperator<float> F(model, theta, LikelihoodKind::categorical, data, fo);
    KfacApproximation<float> K(F);
    K.invert(0.1);
    z[k].resize(theta.size());
    EXPECT_GT(K.apply_gradient(F, F.gradient().data(), z[k].data()), 0);
  }
  EXPECT_TRUE(z[0] == z[1]);
}

TEST(Kfac, RefusesInvalidDamping) {
  const Network<double> model(mlp_spec(4, 5, 3));
  const Vec<double> theta = init_parameters(model, 1);
  const Dataset<double> data = random_dataset(model, 2, LikelihoodKind::categorical, 2);  // A is rank 2
  const FisherOperator<double> F(model, theta, LikelihoodKind::categorical, data);
  KfacApproximation<double> K(F);
  EXPECT_NE(error_of([&] { K.set_damping(-1); }).find("damping"), std::string::npos);
  EXPECT_NE(error_of([&] { K.set_damping(0); }).find("singular"), std::string::npos);
  Vec<double> r = Vec<double>::Ones(theta.size()), z(theta.size());
  EXPECT_NE(error_of([&] { KfacApproximation<double>(F).apply(r.data(), z.data()); }).find("set_damping"),
            std::string::npos);
}

}  // namespace
}  // namespace test
}  // namespace natgrad
