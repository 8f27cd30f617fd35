// Every layer type: the R-op and backprop against central finite differences of the forward pass, and the
// adjoint identity ⟨gY, J·(dX, dθ)⟩ = ⟨Jᵀ gY, (dX, dθ)⟩.
#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "test_helpers.h"

using namespace natgrad;
using namespace natgrad::test;

namespace {

struct LayerCase {
  std::string label;
  LayerSpec spec;
  Shape input;
};

std::vector<LayerCase> layer_cases() {
  LayerSpec strided = LayerSpec::conv2d(2, 3, 3, 2, 0, false);
  strided.kernel_w = 2;  // a rectangular kernel
  LayerSpec pool3 = LayerSpec::maxpool2d(3, 2);
  LayerSpec pool3_padded = pool3;  // torchvision's ResNet stem: MaxPool2d(3, 2, padding=1)
  pool3_padded.padding_h = pool3_padded.padding_w = 1;
  LayerSpec same5 = LayerSpec::conv2d(2, 3, 5, 1, 2);
  same5.kernel_w = 3;
  same5.padding_w = 1;
  LayerSpec same_odd = LayerSpec::conv2d(2, 3, 3, 1, 0);
  same_odd.kernel_w = 5;
  same_odd.padding_same = true;
  LayerSpec gelu_tanh = LayerSpec::activation(LayerType::gelu);
  gelu_tanh.tanh_approximation = true;
  auto grouped = [](LayerSpec s, Index groups) {
    s.groups = groups;
    return s;
  };
  LayerSpec grouped_strided = grouped(LayerSpec::conv2d(4, 6, 3, 2, 0, false), 2);
  grouped_strided.kernel_w = 2;
  LayerSpec depthwise_same = grouped(LayerSpec::conv2d(4, 4, 3, 1, 0), 4);
  depthwise_same.kernel_w = 5;
  depthwise_same.padding_same = true;
  LayerSpec conv1d_same = LayerSpec::conv1d(2, 3, 5);
  conv1d_same.padding_same = true;
  return {
      {"linear", LayerSpec::linear(5, 4), {5}},
      {"linear_nobias", LayerSpec::linear(6, 3, false), {6}},
      {"conv2d_pad", LayerSpec::conv2d(2, 3, 3, 1, 1), {2, 5, 5}},
      {"conv2d_stride_nobias", strided, {2, 6, 5}},
      {"conv2d_same_5x3", same5, {2, 4, 6}},
      // Big enough that samples are processed in blocks of 2 (3 samples: blocks of 2 and 1) and of 1, where
      // the GEMM reads and writes the CHW tensors in place.
      {"conv2d_blocks_of_2", LayerSpec::conv2d(8, 2, 3, 1, 1), {8, 13, 13}},
      {"conv2d_blocks_of_1", LayerSpec::conv2d(8, 2, 3, 1, 1), {8, 16, 16}},
      // 3×3 stride 1 with 16 channels each way: Winograd F(2×2, 3×3) (test_winograd.cpp)
      {"conv2d_winograd", LayerSpec::conv2d(16, 16, 3, 1, 1), {16, 4, 6}},
      {"conv2d_winograd_odd_nopad_nobias", LayerSpec::conv2d(16, 17, 3, 1, 0, false), {16, 5, 4}},
      {"relu", LayerSpec::activation(LayerType::relu), {2, 3, 3}},
      {"tanh", LayerSpec::activation(LayerType::tanh), {7}},
      {"sigmoid", LayerSpec::activation(LayerType::sigmoid), {7}},
      {"gelu", LayerSpec::activation(LayerType::gelu), {7}},
      {"softplus", LayerSpec::activation(LayerType::softplus), {7}},
      {"leaky_relu", LayerSpec::leaky_relu(0.2), {2, 3, 3}},
      {"leaky_relu_negative_slope", LayerSpec::leaky_relu(-0.3), {2, 3, 3}},  // not monotone
      {"leaky_relu_slope_above_1",
       LayerSpec::leaky_relu(1.7),
       {8}},  // (an odd count would put 0 on the grid)
      {"flatten", LayerSpec::flatten(), {2, 3, 3}},
      {"maxpool2d", LayerSpec::maxpool2d(2), {2, 4, 4}},
      {"maxpool2d_k3s2", pool3, {2, 7, 7}},
      {"maxpool2d_k3s2_padding1", pool3_padded, {2, 6, 7}},
      {"avgpool2d", LayerSpec::avgpool2d(2), {2, 4, 6}},
      {"silu", LayerSpec::activation(LayerType::silu), {7}},
      {"gelu_tanh", gelu_tanh, {7}},
      {"linear_on_sequence", LayerSpec::linear(4, 3), {5, 4}},
      {"linear_on_sequence_nobias", LayerSpec::linear(3, 2, false), {2, 2, 3}},
      {"identity", LayerSpec::activation(LayerType::identity), {2, 3}},
      {"dropout_eval", LayerSpec::activation(LayerType::dropout), {5}},
      {"global_avgpool", LayerSpec::global_avgpool(), {3, 2, 4}},
      {"global_avgpool_keepdim", LayerSpec::global_avgpool(true), {3, 3, 3}},
      {"conv2d_padding_same_3x5", same_odd, {2, 4, 6}},
      // A kernel wider than the image: most taps of every window read padding (window2d.h's clamped ranges).
      {"conv2d_kernel_wider_than_image", LayerSpec::conv2d(1, 2, 5, 1, 2), {1, 2, 1}},
      {"layer_norm_last_dim", LayerSpec::layer_norm({4}), {3, 4}},
      {"layer_norm_two_dims", LayerSpec::layer_norm({2, 3}, 1e-3), {2, 2, 3}},
      {"layer_norm_no_affine", LayerSpec::layer_norm({6}, 1e-5, false), {6}},
      {"batch_norm_2d", LayerSpec::batch_norm(3), {3, 2, 2}},
      {"batch_norm_1d", LayerSpec::batch_norm(4, 1e-3), {4}},
      {"batch_norm_1d_sequence_no_affine", LayerSpec::batch_norm(3, 1e-5, false), {3, 4}},
      {"elu", LayerSpec::elu(), {2, 3, 3}},
      {"elu_alpha_0.7", LayerSpec::elu(0.7), {8}},  // (an odd count would put the kink at 0 on the grid)
      {"mish", LayerSpec::activation(LayerType::mish), {2, 4}},
      {"scalar_affine", LayerSpec::scalar_affine(-0.5, 2.0), {2, 3}},
      {"reshape", LayerSpec::reshape({3, 6}), {2, 3, 3}},
      {"permute_channels_last", LayerSpec::permute({0, 2, 3, 1}), {2, 3, 4}},
      {"permute_transpose", LayerSpec::permute({0, 2, 1}), {3, 5}},
      {"mean_over_tokens", LayerSpec::mean({1}), {4, 3}},
      {"mean_spatial_keepdim", LayerSpec::mean({2, 3}, true), {2, 3, 4}},
      {"mean_last", LayerSpec::mean({3}), {2, 3, 4}},
      {"sum_over_time", LayerSpec::mean({2}, false, true), {3, 4}},
      {"sum_keepdim", LayerSpec::mean({1, 3}, true, true), {2, 3, 2}},
      {"upsample_2", LayerSpec::upsample({2}), {2, 3, 3}},
      {"upsample_2x3", LayerSpec::upsample({2, 3}), {2, 2, 3}},
      {"upsample_1d", LayerSpec::upsample({3}), {2, 4}},
      {"group_norm_one_group_2d", LayerSpec::group_norm(1, 4), {4, 2, 3}},
      {"group_norm_two_groups_2d", LayerSpec::group_norm(2, 6, 1e-3), {6, 2, 2}},
      {"group_norm_instance_2d", LayerSpec::group_norm(3, 3), {3, 3, 2}},
      {"group_norm_instance_2d_no_affine", LayerSpec::group_norm(2, 2, 1e-5, false), {2, 2, 3}},
      {"group_norm_three_groups_1d", LayerSpec::group_norm(3, 6), {6, 4}},
      {"group_norm_two_groups_1d_no_affine", LayerSpec::group_norm(2, 4, 1e-5, false), {4, 5}},
      {"group_norm_instance_1d", LayerSpec::group_norm(4, 4), {4, 3}},
      {"group_norm_channels_only", LayerSpec::group_norm(2, 6), {6}},  // [N, C] as nn.GroupNorm accepts
      // Grouped and depthwise convolutions (one GEMM per group) and conv1d (conv2d on [C, 1, L]).
      {"conv2d_groups_2", grouped(LayerSpec::conv2d(4, 6, 3, 1, 1), 2), {4, 5, 5}},
      {"conv2d_groups_2_stride_3x2_nobias", grouped_strided, {4, 6, 5}},
      {"conv2d_depthwise", grouped(LayerSpec::conv2d(4, 4, 3, 1, 1), 4), {4, 5, 5}},
      {"conv2d_depthwise_multiplier_2_stride_2", grouped(LayerSpec::conv2d(3, 6, 3, 2, 1), 3), {3, 6, 7}},
      {"conv2d_depthwise_same_3x5", depthwise_same, {4, 4, 6}},
      {"conv2d_groups_4_blocks_of_2", grouped(LayerSpec::conv2d(8, 4, 3, 1, 1), 4), {8, 13, 13}},
      {"conv2d_depthwise_16_not_winograd", grouped(LayerSpec::conv2d(16, 16, 3, 1, 1), 16), {16, 4, 6}},
      {"conv1d_pad", LayerSpec::conv1d(4, 3, 3, 1, 1), {4, 7}},
      {"conv1d_stride_2_nobias", LayerSpec::conv1d(4, 3, 3, 2, 0, false), {4, 9}},
      {"conv1d_padding_same", conv1d_same, {2, 6}},
      {"conv1d_depthwise_multiplier_2", grouped(LayerSpec::conv1d(4, 8, 3, 1, 1), 4), {4, 6}},
  };
}

// A layer with its buffers (batch norm's running statistics) set to non-trivial values: means in ±0.5,
// variances in [0.5, 1.5].
template <typename Scalar>
std::unique_ptr<Layer<Scalar>> make_test_layer(const LayerCase& lc, uint64_t seed) {
  auto layer = make_layer<Scalar>(lc.spec, lc.input, lc.label);
  if (auto* b = layer->template as<Buffers<Scalar>>()) {
    const std::vector<ParamTensor> buffers = b->buffer_tensors();
    for (std::size_t i = 0; i < buffers.size(); ++i) {
      Vec<Scalar> v = random_vec<Scalar>(shape_size(buffers[i].shape), seed + i) * Scalar(0.5);
      if (buffers[i].name == "running_var") v = v.array().abs() + Scalar(0.5);
      b->set_buffer(i, v.data());
    }
  }
  return layer;
}

// Inputs on a shuffled grid with spacing 2/K: no two entries are within a finite-difference step of each
// other or of zero, so relu, leaky_relu and max-pool are differentiable along the whole stencil.
template <typename Scalar>
Mat<Scalar> grid_inputs(Index rows, Index cols, uint64_t seed) {
  const Index K = rows * cols;
  std::vector<Index> perm(static_cast<std::size_t>(K));
  std::iota(perm.begin(), perm.end(), 0);
  const CounterRng rng(seed, 5);
  std::sort(perm.begin(), perm.end(), [&](Index a, Index b) { return rng.bits(a) < rng.bits(b); });
  Mat<Scalar> X(rows, cols);
  for (Index k = 0; k < K; ++k) X.data()[k] = static_cast<Scalar>(-2.0 + 4.0 * (perm[k] + 0.5) / K);
  return X;
}

template <typename Scalar>
Mat<Scalar> run_forward(const Layer<Scalar>& l, const Vec<Scalar>& theta, const Mat<Scalar>& X) {
  Mat<Scalar> Y(l.output_size(), X.cols());
  std::vector<int32_t> aux(static_cast<std::size_t>(l.aux_per_sample() * X.cols()));
  l.forward(theta.data(), ConstMatMap<Scalar>(X.data(), X.rows(), X.cols()),
            MatMap<Scalar>(Y.data(), Y.rows(), Y.cols()), aux.data());
  return Y;
}

}  // namespace

template <typename Scalar>
class LayerDerivatives : public ::testing::Test {};
using ScalarTypes = ::testing::Types<float, double>;
TYPED_TEST_SUITE(LayerDerivatives, ScalarTypes);

TYPED_TEST(LayerDerivatives, RopBackpropAndAdjointAgainstFiniteDifferences) {
  using Scalar = TypeParam;
  using T = Tol<Scalar>;
  // Finite differences in float need a larger step than the cancellation-free double default.
  const double h = std::is_same<Scalar, float>::value ? 1e-3 : T::fd_step;
  uint64_t seed = 1;
  for (const LayerCase& lc : layer_cases()) {
    SCOPED_TRACE(lc.label);
    auto layer = make_test_layer<Scalar>(lc, 100 + seed);
    const Index n = 3, in = layer->input_size(), out = layer->output_size(), P = layer->num_params();
    const Mat<Scalar> X = grid_inputs<Scalar>(in, n, ++seed);
    const Vec<Scalar> theta = random_vec<Scalar>(P, ++seed) * Scalar(0.5);
    const Mat<Scalar> dX = random_mat<Scalar>(in, n, ++seed);
    const Vec<Scalar> dtheta = random_vec<Scalar>(P, ++seed);
    const Mat<Scalar> gY = random_mat<Scalar>(out, n, ++seed);

    Mat<Scalar> Y(out, n);
    std::vector<int32_t> aux(static_cast<std::size_t>(layer->aux_per_sample() * n));
    layer->forward(theta.data(), ConstMatMap<Scalar>(X.data(), in, n), MatMap<Scalar>(Y.data(), out, n),
                   aux.data());
    std::vector<Scalar> scratch(static_cast<std::size_t>(layer->scratch_size(n)) + 1);

    // R-op
    Mat<Scalar> dY(out, n);
    layer->jvp(theta.data(), dtheta.data(), ConstMatMap<Scalar>(X.data(), in, n),
               ConstMatMap<Scalar>(Y.data(), out, n), aux.data(), dX.data(),
               MatMap<Scalar>(dY.data(), out, n), scratch.data());
    const Mat<Scalar> fd = (run_forward<Scalar>(*layer, theta + Scalar(h) * dtheta, X + Scalar(h) * dX) -
                            run_forward<Scalar>(*layer, theta - Scalar(h) * dtheta, X - Scalar(h) * dX)) /
                           Scalar(2 * h);
    EXPECT_LT(rel_err_vec(dY, fd), T::fd) << "R-op vs finite differences";

    // Backprop: the gradient of φ(X, θ) = ⟨gY, f(X; θ)⟩, coordinate by coordinate.
    Mat<Scalar> gX(in, n);
    Vec<Scalar> gtheta = Vec<Scalar>::Zero(P);
    layer->vjp(theta.data(), ConstMatMap<Scalar>(X.data(), in, n), ConstMatMap<Scalar>(Y.data(), out, n),
               aux.data(), ConstMatMap<Scalar>(gY.data(), out, n), gX.data(), P ? gtheta.data() : nullptr,
               scratch.data());
    auto phi = [&](const Vec<Scalar>& th, const Mat<Scalar>& x) {
      return double((gY.array() * run_forward<Scalar>(*layer, th, x).array()).sum());
    };
    Mat<Scalar> fd_gX(in, n);
    for (Index k = 0; k < X.size(); ++k) {
      Mat<Scalar> xp = X, xm = X;
      xp.data()[k] += Scalar(h);
      xm.data()[k] -= Scalar(h);
      fd_gX.data()[k] = Scalar((phi(theta, xp) - phi(theta, xm)) / (2 * h));
    }
    EXPECT_LT(rel_err_vec(gX, fd_gX), T::fd) << "input cotangent vs finite differences";
    if (P > 0) {
      Vec<Scalar> fd_gtheta(P);
      for (Index k = 0; k < P; ++k) {
        Vec<Scalar> tp = theta, tm = theta;
        tp[k] += Scalar(h);
        tm[k] -= Scalar(h);
        fd_gtheta[k] = Scalar((phi(tp, X) - phi(tm, X)) / (2 * h));
      }
      EXPECT_LT(rel_err_vec(gtheta, fd_gtheta), T::fd) << "parameter cotangent vs finite differences";
    }

    // Adjoint identity ⟨gY, dY⟩ = ⟨gX, dX⟩ + ⟨gθ, dθ⟩.
    const double lhs = (gY.template cast<double>().array() * dY.template cast<double>().array()).sum();
    const double rhs = (gX.template cast<double>().array() * dX.template cast<double>().array()).sum() +
                       (P ? gtheta.template cast<double>().dot(dtheta.template cast<double>()) : 0.0);
    EXPECT_LT(rel_err(lhs, rhs), T::adjoint) << lhs << " vs " << rhs;
  }
}

TYPED_TEST(LayerDerivatives, ZeroInputTangentIsTheSameAsAnExplicitZero) {
  using Scalar = TypeParam;
  for (const LayerCase& lc : layer_cases()) {
    SCOPED_TRACE(lc.label);
    auto layer = make_test_layer<Scalar>(lc, 7);
    const Index n = 2, in = layer->input_size(), out = layer->output_size(), P = layer->num_params();
    const Mat<Scalar> X = grid_inputs<Scalar>(in, n, 3), zero = Mat<Scalar>::Zero(in, n);
    const Vec<Scalar> theta = random_vec<Scalar>(P, 4), dtheta = random_vec<Scalar>(P, 5);
    const Mat<Scalar> Y = run_forward<Scalar>(*layer, theta, X);
    std::vector<int32_t> aux(static_cast<std::size_t>(layer->aux_per_sample() * n));
    Mat<Scalar> Y2(out, n);
    layer->forward(theta.data(), ConstMatMap<Scalar>(X.data(), in, n), MatMap<Scalar>(Y2.data(), out, n),
                   aux.data());
    std::vector<Scalar> scratch(static_cast<std::size_t>(layer->scratch_size(n)) + 1);
    Mat<Scalar> a(out, n), b(out, n);
    layer->jvp(theta.data(), dtheta.data(), ConstMatMap<Scalar>(X.data(), in, n),
               ConstMatMap<Scalar>(Y.data(), out, n), aux.data(), nullptr, MatMap<Scalar>(a.data(), out, n),
               scratch.data());
    layer->jvp(theta.data(), dtheta.data(), ConstMatMap<Scalar>(X.data(), in, n),
               ConstMatMap<Scalar>(Y.data(), out, n), aux.data(), zero.data(),
               MatMap<Scalar>(b.data(), out, n), scratch.data());
    EXPECT_EQ(a, b);
  }
}

// Max-pooling forward against a window-by-window reference, as PyTorch defines it: the first maximum in
// row-major window order wins, and a NaN wins over numbers. The inputs take few distinct values (many ties)
// and include NaNs; kernels cover the unrolled 2 × 2 / stride-2 path and the general one.
TEST(Pooling, MaxPoolPicksTheFirstMaximumAndPropagatesNaN) {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  struct Case {
    Index k, s;
    Shape in;
  };
  for (const Case& c :
       {Case{2, 2, {3, 6, 8}}, Case{2, 2, {2, 7, 5}}, Case{3, 2, {2, 7, 7}}, Case{2, 1, {2, 5, 4}}}) {
    SCOPED_TRACE("kernel " + std::to_string(c.k) + " stride " + std::to_string(c.s));
    auto layer = make_layer<double>(LayerSpec::maxpool2d(c.k, c.s), c.in, "pool");
    const Index n = 3, C = c.in[0], H = c.in[1], W = c.in[2];
    Mat<double> X(layer->input_size(), n);
    const CounterRng rng(7, 1);
    for (Index q = 0; q < X.size(); ++q) {
      const uint64_t r = rng.bits(uint64_t(q));
      X.data()[q] = r % 23 == 0 ? nan : double(int(r % 4) - 1);  // -1, 0, 1, 2 and a few NaNs
    }
    Mat<double> Y(layer->output_size(), n);
    std::vector<int32_t> arg(static_cast<std::size_t>(layer->aux_per_sample() * n));
    layer->forward(nullptr, ConstMatMap<double>(X.data(), X.rows(), n), MatMap<double>(Y.data(), Y.rows(), n),
                   arg.data());
    const Index Ho = layer->output_shape()[1], Wo = layer->output_shape()[2];
    for (Index j = 0; j < n; ++j)
      for (Index ch = 0; ch < C; ++ch)
        for (Index oh = 0; oh < Ho; ++oh)
          for (Index ow = 0; ow < Wo; ++ow) {
            Index best = -1;
            for (Index i = 0; i < c.k; ++i)
              for (Index jj = 0; jj < c.k; ++jj) {
                const Index q = (ch * H + oh * c.s + i) * W + ow * c.s + jj;
                const double v = X(q, j);
                if (best < 0) {
                  best = q;
                  continue;
                }
                const double m = X(best, j);
                if (std::isnan(m)) continue;
                if (std::isnan(v) || v > m) best = q;
              }
            const Index o = (ch * Ho + oh) * Wo + ow;
            EXPECT_EQ(arg[static_cast<std::size_t>(j * Y.rows() + o)], best)
                << "sample " << j << " output " << o;
            const double want = X(best, j), got = Y(o, j);
            EXPECT_TRUE(std::isnan(want) ? std::isnan(got) : got == want);
          }
  }
}

// Above PyTorch's threshold (x > 20) softplus is the identity, so its R-op and backprop pass tangents through
// unchanged; just below it, log1p(eˣ) with derivative σ(x).
TEST(LayerEdges, SoftplusAboveItsThresholdIsTheIdentity) {
  auto layer = make_layer<double>(LayerSpec::activation(LayerType::softplus), {4}, "softplus");
  Mat<double> X(4, 2);
  X.col(0) << 20.5, 25, 100, 700;
  X.col(1) << 19.5, 19.9, 3, -30;
  const Vec<double> none;
  const Mat<double> Y = run_forward<double>(*layer, none, X);
  for (Index k = 0; k < 4; ++k) EXPECT_EQ(Y(k, 0), X(k, 0));
  EXPECT_NEAR(Y(0, 1), std::log1p(std::exp(19.5)), 1e-12);
  EXPECT_NEAR(Y(3, 1), std::exp(-30.0), 1e-25);
  const Mat<double> dX = Mat<double>::Constant(4, 2, 2.0);
  Mat<double> dY(4, 2);
  std::vector<double> scratch(16);
  layer->jvp(nullptr, nullptr, ConstMatMap<double>(X.data(), 4, 2), ConstMatMap<double>(Y.data(), 4, 2), nullptr,
             dX.data(), MatMap<double>(dY.data(), 4, 2), scratch.data());
  for (Index k = 0; k < 4; ++k) EXPECT_EQ(dY(k, 0), 2.0);
  EXPECT_NEAR(dY(0, 1), 2.0 / (1.0 + std::exp(-19.5)), 1e-12);
  Mat<double> gX(4, 2);
  layer->vjp(nullptr, ConstMatMap<double>(X.data(), 4, 2), ConstMatMap<double>(Y.data(), 4, 2), nullptr,
             ConstMatMap<double>(dX.data(), 4, 2), gX.data(), nullptr, scratch.data());
  EXPECT_EQ(gX, dY);
}

TEST(LayerEdges, MaxPoolRefusesInputsItsInt32ArgmaxCannotAddress) {
  try {
    make_layer<float>(LayerSpec::maxpool2d(2), {1, 50000, 50000}, "layer 3 (maxpool2d)");
    ADD_FAILURE() << "no error";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("2500000000 elements per sample, more than its int32 argmax"),
              std::string::npos) << e.what();
  }
  EXPECT_NO_THROW(make_layer<float>(LayerSpec::avgpool2d(2), {1, 50000, 50000}, "avgpool keeps no indices"));
}

// The empirical Fisher diagonal's per-layer pass (the SquaredGradients capability): Σ_n (∂ℓ_n/∂θ)² equals the
// squares of per-sample parameter cotangents from vjp (which the finite-difference test above checks), summed
// over samples. Every layer type with parameters here has the capability.
TYPED_TEST(LayerDerivatives, SquaredGradientsAreTheSquaresOfPerSampleGradients) {
  using Scalar = TypeParam;
  for (const LayerCase& lc : layer_cases()) {
    auto layer = make_test_layer<Scalar>(lc, 11);
    const Index n = 3, in = layer->input_size(), out = layer->output_size(), P = layer->num_params();
    if (P == 0) continue;
    SCOPED_TRACE(lc.label);
    const auto* squared = layer->template as<SquaredGradients<Scalar>>();
    ASSERT_NE(squared, nullptr);
    const Mat<Scalar> X = grid_inputs<Scalar>(in, n, 12), gY = random_mat<Scalar>(out, n, 13);
    const Vec<Scalar> theta = random_vec<Scalar>(P, 14);
    const Mat<Scalar> Y = run_forward<Scalar>(*layer, theta, X);
    std::vector<int32_t> aux(static_cast<std::size_t>(layer->aux_per_sample() * n));
    std::vector<Scalar> scratch(static_cast<std::size_t>(layer->scratch_size(n)) + 1),
        squared_scratch(static_cast<std::size_t>(squared->squared_grads_scratch_size(n)) + 1);
    Vec<Scalar> expected = Vec<Scalar>::Zero(P), got = Vec<Scalar>::Zero(P);
    for (Index j = 0; j < n; ++j) {
      Vec<Scalar> g = Vec<Scalar>::Zero(P);
      layer->vjp(theta.data(), ConstMatMap<Scalar>(X.col(j).data(), in, 1), ConstMatMap<Scalar>(Y.col(j).data(), out, 1),
                 aux.data(), ConstMatMap<Scalar>(gY.col(j).data(), out, 1), nullptr, g.data(), scratch.data());
      expected.array() += g.array().square();
    }
    squared->accumulate_squared_grads(theta.data(), ConstMatMap<Scalar>(X.data(), in, n),
                                      ConstMatMap<Scalar>(gY.data(), out, n), got.data(),
                                      squared_scratch.data());
    EXPECT_LT(rel_err_vec(got, expected), Tol<Scalar>::adjoint);
  }
}

// The BlockGradient capability (linear): the blocks of a tiling of the weight (uneven edges, so blocks of
// several shapes), each with its bias rows when it starts at column 0, assemble the parameter gradient vjp
// gives (which the finite-difference test above checks), and a block touches nothing outside itself.
TYPED_TEST(LayerDerivatives, GradientBlocksAssembleTheParameterGradient) {
  using Scalar = TypeParam;
  int blocked = 0;
  for (const LayerCase& lc : layer_cases()) {
    auto layer = make_test_layer<Scalar>(lc, 31);
    const auto* blocks = layer->template as<BlockGradient<Scalar>>();
    if (!blocks) continue;
    SCOPED_TRACE(lc.label);
    ++blocked;
    const Index n = 3, in = layer->input_size(), out = layer->output_size(), P = layer->num_params();
    const Mat<Scalar> X = grid_inputs<Scalar>(in, n, 32), gY = random_mat<Scalar>(out, n, 33);
    const Vec<Scalar> theta = random_vec<Scalar>(P, 34);
    const Mat<Scalar> Y = run_forward<Scalar>(*layer, theta, X);
    std::vector<Scalar> scratch(static_cast<std::size_t>(layer->scratch_size(n)) + 1);
    Vec<Scalar> expected = Vec<Scalar>::Zero(P);
    layer->vjp(theta.data(), ConstMatMap<Scalar>(X.data(), in, n), ConstMatMap<Scalar>(Y.data(), out, n),
               nullptr, ConstMatMap<Scalar>(gY.data(), out, n), nullptr, expected.data(), scratch.data());
    const auto [R, K] = blocks->grad_grid();
    ASSERT_GE(P, R * K);
    const Scalar sentinel = Scalar(1e30);
    Vec<Scalar> got = Vec<Scalar>::Constant(P, sentinel);
    for (Index r0 = 0; r0 < R; r0 += 2)
      for (Index c0 = 0; c0 < K; c0 += 3) {
        const Index m = std::min<Index>(2, R - r0), k = std::min<Index>(3, K - c0);
        std::vector<Scalar> pack(static_cast<std::size_t>(blocks->grad_block_scratch(m, k, n)) + 1);
        Vec<Scalar> alone = Vec<Scalar>::Constant(P, sentinel);
        blocks->grad_block(ConstMatMap<Scalar>(X.data(), in, n), ConstMatMap<Scalar>(gY.data(), out, n), r0,
                           m, c0, k, alone.data(), pack.data());
        for (Index i = 0; i < P; ++i) {
          const bool weight = i < R * K && i / K >= r0 && i / K < r0 + m && i % K >= c0 && i % K < c0 + k;
          const bool bias = i >= R * K && c0 == 0 && i - R * K >= r0 && i - R * K < r0 + m;
          if (weight || bias)
            got[i] = alone[i];
          else
            EXPECT_EQ(alone[i], sentinel) << "block (" << r0 << ", " << c0 << ") wrote entry " << i;
        }
      }
    EXPECT_LT(rel_err_vec(got, expected), Tol<Scalar>::adjoint);
  }
  EXPECT_GE(blocked, 3);  // linear, without bias, on a sequence
}

// Embedding: the input holds token indices, so only the table has derivatives. The R-op and backprop against
// finite differences in the table, the adjoint identity, the padding row's zero gradient, and the squared
// per-sample gradients with a token repeated in a sample (summed before squaring).
TYPED_TEST(LayerDerivatives, EmbeddingAgainstFiniteDifferencesInItsTable) {
  using Scalar = TypeParam;
  const double h = std::is_same<Scalar, float>::value ? 1e-3 : Tol<Scalar>::fd_step;
  for (Index padding : {Index(-1), Index(2)}) {
    LayerSpec spec = LayerSpec::embedding(5, 3);
    spec.padding_idx = padding;
    auto layer = make_layer<Scalar>(spec, {4}, "embedding");
    ASSERT_EQ(layer->output_shape(), (Shape{4, 3}));
    ASSERT_NE(layer->template as<TokenInput<Scalar>>(), nullptr);  // not differentiable
    Mat<Scalar> X(4, 2);
    X << 0, 4, 2, 1, 4, 1, 2, 1;  // sample 0: 0 2 4 2 (token 2 twice); sample 1: 4 1 1 1
    const Index P = layer->num_params(), out = layer->output_size();
    const Vec<Scalar> theta = random_vec<Scalar>(P, 21), dtheta = random_vec<Scalar>(P, 22);
    const Mat<Scalar> gY = random_mat<Scalar>(out, 2, 23);
    const Mat<Scalar> Y = run_forward<Scalar>(*layer, theta, X);
    Mat<Scalar> dY(out, 2);
    layer->jvp(theta.data(), dtheta.data(), ConstMatMap<Scalar>(X.data(), 4, 2), ConstMatMap<Scalar>(Y.data(), out, 2),
               nullptr, nullptr, MatMap<Scalar>(dY.data(), out, 2), nullptr);
    Mat<Scalar> fd = (run_forward<Scalar>(*layer, theta + Scalar(h) * dtheta, X) -
                      run_forward<Scalar>(*layer, theta - Scalar(h) * dtheta, X)) / Scalar(2 * h);
    if (padding >= 0)  // the padding row is a constant: no tangent where it is read (sample 0, positions 1, 3)
      for (Index t : {1, 3}) fd.block(t * 3, 0, 3, 1).setZero();
    EXPECT_LT(rel_err_vec(dY, fd), Tol<Scalar>::fd);
    Vec<Scalar> gtheta = Vec<Scalar>::Zero(P);
    layer->vjp(theta.data(), ConstMatMap<Scalar>(X.data(), 4, 2), ConstMatMap<Scalar>(Y.data(), out, 2), nullptr,
               ConstMatMap<Scalar>(gY.data(), out, 2), nullptr, gtheta.data(), nullptr);
    const double lhs = (gY.template cast<double>().array() * dY.template cast<double>().array()).sum();
    EXPECT_LT(rel_err(lhs, double(gtheta.template cast<double>().dot(dtheta.template cast<double>()))), Tol<Scalar>::adjoint);
    if (padding >= 0) EXPECT_EQ(gtheta.segment(padding * 3, 3).norm(), Scalar(0));
    // Per sample: sample 0's gradient for token 2 is gY(positions 1 and 3) summed, then squared.
    Vec<Scalar> expected = Vec<Scalar>::Zero(P), got = Vec<Scalar>::Zero(P);
    for (Index j = 0; j < 2; ++j) {
      Vec<Scalar> g = Vec<Scalar>::Zero(P);
      layer->vjp(theta.data(), ConstMatMap<Scalar>(X.col(j).data(), 4, 1), ConstMatMap<Scalar>(Y.col(j).data(), out, 1),
                 nullptr, ConstMatMap<Scalar>(gY.col(j).data(), out, 1), nullptr, g.data(), nullptr);
      expected.array() += g.array().square();
    }
    layer->template as<SquaredGradients<Scalar>>()->accumulate_squared_grads(
        theta.data(), ConstMatMap<Scalar>(X.data(), 4, 2), ConstMatMap<Scalar>(gY.data(), out, 2), got.data(),
        nullptr);
    EXPECT_LT(rel_err_vec(got, expected), Tol<Scalar>::adjoint);
  }
}

TEST(LayerEdges, EmbeddingRefusesIndicesOutsideItsTable) {
  auto embedding = make_layer<double>(LayerSpec::embedding(5, 2), {3}, "tok");
  const auto* layer = embedding->as<TokenInput<double>>();
  Mat<double> X(3, 2);
  X << 0, 1, 4, 5, 2, 3;  // sample 1, position 1 holds 5
  EXPECT_ERROR(layer->check_input(ConstMatMap<double>(X.data(), 3, 2)),
               "sample 1, position 1: token index 5 is not an integer in [0, 5) (the vocabulary of 5 embeddings)");
  X(1, 1) = 1.5;
  EXPECT_ERROR(layer->check_input(ConstMatMap<double>(X.data(), 3, 2)), "is not an integer in [0, 5)");
  X(1, 1) = 4;
  EXPECT_NO_THROW(layer->check_input(ConstMatMap<double>(X.data(), 3, 2)));
}

// Group norm's forward against its definition, written out per sample: channel c of group g = c / (C/G) is
// w_c (x − μ_g)/√(σ²_g + ε) + b_c, with μ_g and the biased σ²_g over the group's (C/G)·S entries (the
// derivatives are checked against finite differences of this forward above).
TEST(LayerEdges, GroupNormForwardIsItsDefinition) {
  const Index C = 6, S = 5, n = 2;
  for (const Index G : {Index(1), Index(2), Index(3), Index(6)})
    for (const bool affine : {true, false}) {
      SCOPED_TRACE(std::to_string(G) + (affine ? " affine" : ""));
      auto layer = make_layer<double>(LayerSpec::group_norm(G, C, 1e-3, affine), {C, 1, S}, "gn");
      const Mat<double> X = random_mat<double>(C * S, n, 21, -2, 3);
      const Vec<double> theta = random_vec<double>(affine ? 2 * C : 0, 22);
      const Mat<double> Y = run_forward<double>(*layer, theta, X);
      Mat<double> expected(C * S, n);
      const Index per = C / G * S;
      for (Index j = 0; j < n; ++j)
        for (Index g = 0; g < G; ++g) {
          double mean = 0, var = 0;
          for (Index k = 0; k < per; ++k) mean += X(g * per + k, j) / double(per);
          for (Index k = 0; k < per; ++k) var += (X(g * per + k, j) - mean) * (X(g * per + k, j) - mean) / double(per);
          for (Index k = 0; k < per; ++k) {
            const Index c = (g * per + k) / S;
            const double xhat = (X(g * per + k, j) - mean) / std::sqrt(var + 1e-3);
            expected(g * per + k, j) = affine ? theta[c] * xhat + theta[C + c] : xhat;
          }
        }
      EXPECT_LT(rel_err_vec(Y, expected), 1e-13);
    }
}

// A grouped convolution is the one-group convolution whose weight is zero between channels of different
// groups (PyTorch's definition): its output, input cotangent and weight gradient (on the in-group entries)
// against that dense convolution's, for grouped, depthwise and depthwise-multiplier shapes, 2-D and 1-D.
TEST(GroupedConvolution, IsTheDenseConvolutionWithZeroCrossGroupWeights) {
  struct Case {
    LayerSpec spec;
    Shape input;
  };
  auto grouped = [](LayerSpec s, Index groups) {
    s.groups = groups;
    return s;
  };
  const std::vector<Case> cases = {{grouped(LayerSpec::conv2d(4, 6, 3, 1, 1), 2), {4, 5, 5}},
                                   {grouped(LayerSpec::conv2d(4, 4, 3, 2, 1), 4), {4, 7, 6}},
                                   {grouped(LayerSpec::conv2d(3, 6, 2, 1, 0, false), 3), {3, 4, 5}},
                                   {grouped(LayerSpec::conv2d(16, 32, 3, 1, 1), 16), {16, 6, 6}},
                                   {grouped(LayerSpec::conv1d(4, 6, 3, 2, 1), 2), {4, 9}}};
  for (const Case& c : cases) {
    const LayerSpec& s = c.spec;
    SCOPED_TRACE(std::string(to_string(s.type)) + " groups " + std::to_string(s.groups));
    LayerSpec dense_spec = s;
    dense_spec.groups = 1;
    auto layer = make_layer<double>(s, c.input, "grouped");
    auto dense = make_layer<double>(dense_spec, c.input, "dense");
    EXPECT_EQ(layer->template as<KroneckerFactors<double>>(), nullptr);  // groups > 1: K-FAC's diagonal
    ASSERT_NE(layer->template as<SquaredGradients<double>>(), nullptr);
    ASSERT_EQ(layer->output_shape(), dense->output_shape());
    const Index O = s.out_channels, C = s.in_channels, G = s.groups, Cg = C / G, Og = O / G;
    const Index taps = s.type == LayerType::conv1d ? s.kernel_w : s.kernel_h * s.kernel_w;
    Shape wshape = layer->param_tensors()[0].shape;
    EXPECT_EQ(wshape[0], O);
    EXPECT_EQ(wshape[1], Cg);
    const Vec<double> theta = random_vec<double>(layer->num_params(), 41);
    Vec<double> theta_dense = Vec<double>::Zero(dense->num_params());
    // dense weight (o, c, t) = grouped weight (o, c − g·Cg, t) when c is in o's group g, else 0; same bias
    for (Index o = 0; o < O; ++o)
      for (Index cl = 0; cl < Cg; ++cl)
        for (Index t = 0; t < taps; ++t) theta_dense[(o * C + (o / Og) * Cg + cl) * taps + t] = theta[(o * Cg + cl) * taps + t];
    if (s.bias) theta_dense.tail(O) = theta.tail(O);
    const Index n = 3, in = layer->input_size(), out = layer->output_size();
    const Mat<double> X = random_mat<double>(in, n, 42), gY = random_mat<double>(out, n, 43);
    const Mat<double> Y = run_forward<double>(*layer, theta, X), Yd = run_forward<double>(*dense, theta_dense, X);
    EXPECT_LT(rel_err_vec(Y, Yd), 1e-13);
    std::vector<double> scratch(static_cast<std::size_t>(std::max(layer->scratch_size(n), dense->scratch_size(n))) + 1);
    Mat<double> gX(in, n), gXd(in, n);
    Vec<double> gt = Vec<double>::Zero(layer->num_params()), gtd = Vec<double>::Zero(dense->num_params());
    layer->vjp(theta.data(), ConstMatMap<double>(X.data(), in, n), ConstMatMap<double>(Y.data(), out, n), nullptr,
               ConstMatMap<double>(gY.data(), out, n), gX.data(), gt.data(), scratch.data());
    dense->vjp(theta_dense.data(), ConstMatMap<double>(X.data(), in, n), ConstMatMap<double>(Yd.data(), out, n),
               nullptr, ConstMatMap<double>(gY.data(), out, n), gXd.data(), gtd.data(), scratch.data());
    EXPECT_LT(rel_err_vec(gX, gXd), 1e-13);
    Vec<double> gt_from_dense(layer->num_params());
    for (Index o = 0; o < O; ++o)
      for (Index cl = 0; cl < Cg; ++cl)
        for (Index t = 0; t < taps; ++t) gt_from_dense[(o * Cg + cl) * taps + t] = gtd[(o * C + (o / Og) * Cg + cl) * taps + t];
    if (s.bias) gt_from_dense.tail(O) = gtd.tail(O);
    EXPECT_LT(rel_err_vec(gt, gt_from_dense), 1e-13);
  }
}

// conv1d on [C, L] is conv2d on [C, 1, L] with a 1 × k kernel: the same parameters (weight [O, C, k] and
// [O, C, 1, k] share their layout), the same outputs; and with one group it keeps K-FAC's factors.
TEST(GroupedConvolution, Conv1dIsConv2dOnOneRow) {
  for (bool same : {false, true}) {
    LayerSpec one = LayerSpec::conv1d(3, 5, 3, same ? 1 : 2, same ? 0 : 1);
    one.padding_same = same;
    LayerSpec two = LayerSpec::conv2d(3, 5, 1, same ? 1 : 2, 0);
    two.kernel_w = 3;
    two.padding_w = same ? 0 : 1;
    two.padding_same = same;
    auto l1 = make_layer<double>(one, {3, 8}, "conv1d");
    auto l2 = make_layer<double>(two, {3, 1, 8}, "conv2d");
    EXPECT_EQ(l1->type(), LayerType::conv1d);
    EXPECT_EQ(l1->param_tensors()[0].shape, (Shape{5, 3, 3}));
    EXPECT_EQ(l1->output_shape(), (Shape{5, l2->output_shape()[2]}));
    EXPECT_EQ(l1->output_shape()[1], same ? 8 : 4);
    EXPECT_NE(l1->template as<KroneckerFactors<double>>(), nullptr);
    ASSERT_EQ(l1->num_params(), l2->num_params());
    const Vec<double> theta = random_vec<double>(l1->num_params(), 51);
    const Mat<double> X = random_mat<double>(24, 2, 52);
    EXPECT_EQ(run_forward<double>(*l1, theta, X), run_forward<double>(*l2, theta, X));
  }
}

TEST(LayerEdges, NewLayersRefuseWhatTheyCannotRepresent) {
  LayerSpec bn = LayerSpec::batch_norm(3);
  bn.training = true;
  EXPECT_ERROR(make_layer<double>(bn, {3, 4, 4}, "bn"), "model.eval()");
  EXPECT_ERROR(make_layer<double>(LayerSpec::batch_norm(4), {3, 4, 4}, "bn"), "num_features 4");
  LayerSpec same_even = LayerSpec::conv2d(1, 1, 2);
  same_even.padding_same = true;
  EXPECT_ERROR(make_layer<double>(same_even, {1, 5, 5}, "c"), "pads asymmetrically");
  LayerSpec groups3 = LayerSpec::conv2d(6, 4, 3);
  groups3.groups = 3;
  EXPECT_ERROR(make_layer<double>(groups3, {6, 5, 5}, "c"), "out_channels (4) divisible by groups");
  LayerSpec conv1d_even_same = LayerSpec::conv1d(2, 2, 4);
  conv1d_even_same.padding_same = true;
  EXPECT_ERROR(make_layer<double>(conv1d_even_same, {2, 5}, "c"), "with an even kernel (4)");
  EXPECT_ERROR(make_layer<double>(LayerSpec::conv1d(2, 2, 3), {2, 1, 5}, "c"), "expects input shape [2, L]");
  LayerSpec drop = LayerSpec::activation(LayerType::dropout);
  drop.training = true;
  EXPECT_ERROR(make_layer<double>(drop, {4}, "d"), "model.eval()");
  EXPECT_ERROR(make_layer<double>(LayerSpec::layer_norm({3}), {3, 4}, "ln"), "not the trailing part");
  EXPECT_ERROR(make_layer<double>(LayerSpec::group_norm(4, 6), {6, 2, 2}, "gn"),
               "num_channels 6 is not divisible by num_groups 4");
  EXPECT_ERROR(make_layer<double>(LayerSpec::group_norm(2, 4), {6, 2, 2}, "gn"),
               "group_norm with num_channels 4 expects input [C, ...]");
  EXPECT_ERROR(make_layer<double>(LayerSpec::group_norm(0, 4), {4, 3}, "gn"), "num_groups >= 1");
  EXPECT_ERROR(make_layer<double>(LayerSpec::group_norm(2, 4, 0.0), {4, 3}, "gn"), "eps must be positive");
  auto layer = make_layer<double>(LayerSpec::batch_norm(2), {2}, "bn");
  const double bad[2] = {1.0, -0.5};
  EXPECT_ERROR(layer->as<Buffers<double>>()->set_buffer(1, bad), "entry 1 is a negative variance");
}
