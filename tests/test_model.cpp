// Model construction: chaining checks with readable messages, PyTorch state_dict naming and layout, and
// PyTorch-style initialization bounds.
#include "test_helpers.h"

using namespace natgrad;
using namespace natgrad::test;

namespace {
std::string construction_error(const ModelSpec& spec) {
  try {
    Network<double> m(spec);
  } catch (const std::invalid_argument& e) {
    return e.what();
  }
  return "no exception";
}
}  // namespace

TEST(Sequential, RejectsLayersThatDoNotChain) {
  ModelSpec s;
  s.input_shape = {784};
  s.layers = {LayerSpec::linear(784, 32), LayerSpec::activation(LayerType::relu), LayerSpec::linear(16, 10)};
  EXPECT_EQ(construction_error(s), "layer 2 (linear): linear expects input shape [16] but receives [32]");

  ModelSpec c;
  c.input_shape = {1, 28, 28};
  c.layers = {LayerSpec::conv2d(3, 8, 3)};
  EXPECT_EQ(construction_error(c),
            "layer 0 (conv2d): conv2d expects input shape [3, H, W] but receives [1, 28, 28]");

  ModelSpec f;
  f.input_shape = {1, 28, 28};
  f.layers = {LayerSpec::linear(784, 10)};
  EXPECT_NE(construction_error(f).find("add a flatten layer"), std::string::npos);

  ModelSpec p;
  p.input_shape = {4, 3, 3};
  p.layers = {LayerSpec::maxpool2d(5)};
  EXPECT_EQ(construction_error(p),
            "layer 0 (maxpool2d): maxpool2d kernel 5x5 is larger than its input [4, 3, 3]");
}

TEST(Sequential, ShapesAndParameterOrderFollowPyTorch) {
  Network<float> m(cnn_spec(10));
  // conv 2→3 k3 p1 on 6×6 → [3,6,6]; pool → [3,3,3]; conv 3→4 k2 → [4,2,2]; flatten → [16]; linear → [10]
  EXPECT_EQ(m.layer(0).output_shape(), (Shape{3, 6, 6}));
  EXPECT_EQ(m.layer(2).output_shape(), (Shape{3, 3, 3}));
  EXPECT_EQ(m.layer(3).output_shape(), (Shape{4, 2, 2}));
  EXPECT_EQ(m.layer(5).output_shape(), (Shape{16}));
  const auto& p = m.named_params();
  ASSERT_EQ(p.size(), 5u);
  EXPECT_EQ(p[0].name, "0.weight");
  EXPECT_EQ(p[0].shape, (Shape{3, 2, 3, 3}));
  EXPECT_EQ(p[1].name, "0.bias");
  EXPECT_EQ(p[1].offset, 54);
  EXPECT_EQ(p[2].name, "3.weight");  // no bias on layer 3
  EXPECT_EQ(p[3].name, "6.weight");
  EXPECT_EQ(p[4].name, "6.bias");
  EXPECT_EQ(m.num_params(), 54 + 3 + 48 + 160 + 10);
}

TEST(Sequential, LinearWeightIsRowMajorOutByIn) {
  // y = W x + b with W[o][i] at offset o·in + i, as torch.nn.Linear's weight.flatten().
  ModelSpec s;
  s.input_shape = {3};
  s.layers = {LayerSpec::linear(3, 2)};
  Network<double> m(s);
  Vec<double> theta(8);
  theta << 1, 2, 3, 4, 5, 6, 10, 20;
  Mat<double> x(3, 1);
  x << 1, 0, -1;
  const Mat<double> y = m.predict(theta.data(), x);
  EXPECT_EQ(y(0, 0), 1 - 3 + 10);
  EXPECT_EQ(y(1, 0), 4 - 6 + 20);
}

TEST(Sequential, ConvolutionMatchesADirectSum) {
  // A direct 6-loop convolution as the reference for im2col + GEMM, over strides, paddings and kernels that
  // take each im2col path: stride 1 with "same" width (one shifted copy per tap, including kernels taller
  // than the padded band and 1 × 1), and the row-by-row general case (strided, rectangular, "valid").
  struct Case {
    Index C, H, W, O, kh, kw, sh, sw, ph, pw;
  };
  for (const Case& k : {Case{2, 5, 4, 3, 3, 2, 2, 2, 1, 1}, Case{2, 5, 4, 3, 3, 3, 1, 1, 1, 1},
                        Case{3, 4, 6, 2, 5, 5, 1, 1, 2, 2}, Case{1, 2, 3, 2, 5, 3, 1, 1, 2, 1},
                        Case{2, 3, 3, 4, 1, 1, 1, 1, 0, 0}, Case{2, 6, 5, 3, 3, 3, 1, 1, 0, 0},
                        Case{2, 4, 5, 3, 3, 5, 1, 1, 0, 2}}) {
    SCOPED_TRACE("C" + std::to_string(k.C) + " " + std::to_string(k.H) + "x" + std::to_string(k.W) + " k" +
                 std::to_string(k.kh) + "x" + std::to_string(k.kw) + " s" + std::to_string(k.sh) + " p" +
                 std::to_string(k.ph) + "," + std::to_string(k.pw));
    ModelSpec s;
    s.input_shape = {k.C, k.H, k.W};
    LayerSpec c = LayerSpec::conv2d(k.C, k.O, k.kh, k.sh, k.ph);
    c.kernel_w = k.kw;
    c.stride_w = k.sw;
    c.padding_w = k.pw;
    s.layers = {c};
    Network<double> m(s);
    const Vec<double> theta = random_vec<double>(m.num_params(), 3);
    const Mat<double> x = random_mat<double>(k.C * k.H * k.W, 3, 4);
    const Mat<double> y = m.predict(theta.data(), x);
    const Index Ho = (k.H + 2 * k.ph - k.kh) / k.sh + 1, Wo = (k.W + 2 * k.pw - k.kw) / k.sw + 1;
    ASSERT_EQ(y.rows(), k.O * Ho * Wo);
    for (Index n = 0; n < x.cols(); ++n)
      for (Index o = 0; o < k.O; ++o)
        for (Index oh = 0; oh < Ho; ++oh)
          for (Index ow = 0; ow < Wo; ++ow) {
            double acc = theta[k.O * k.C * k.kh * k.kw + o];
            for (Index ci = 0; ci < k.C; ++ci)
              for (Index i = 0; i < k.kh; ++i)
                for (Index j = 0; j < k.kw; ++j) {
                  const Index ih = oh * k.sh - k.ph + i, iw = ow * k.sw - k.pw + j;
                  if (ih < 0 || ih >= k.H || iw < 0 || iw >= k.W) continue;
                  acc += theta[((o * k.C + ci) * k.kh + i) * k.kw + j] * x((ci * k.H + ih) * k.W + iw, n);
                }
            EXPECT_NEAR(y((o * Ho + oh) * Wo + ow, n), acc, 1e-12);
          }
  }
}

// Sequential runs an activation followed by a max-pool as one fused pass; it must equal running the two
// layers one after the other through the Layer interface: bit for bit for the R-op, and to rounding for
// backprop where overlapping pool windows reorder a sum.
TEST(Sequential, FusedActivationAndMaxPoolEqualLayerByLayer) {
  for (LayerType act : {LayerType::relu, LayerType::tanh, LayerType::gelu, LayerType::sigmoid})
    for (Index pool_kernel : {2, 3}) {
      SCOPED_TRACE(std::string(to_string(act)) + " pool " + std::to_string(pool_kernel));
      ModelSpec s;
      s.input_shape = {2, 7, 7};
      s.layers = {LayerSpec::conv2d(2, 3, 3, 1, 1), LayerSpec::activation(act),
                  LayerSpec::maxpool2d(pool_kernel, 2), LayerSpec::flatten()};
      s.layers.push_back(LayerSpec::linear(3 * 3 * 3, 4));
      Network<double> m(s);
      const Vec<double> theta = random_vec<double>(m.num_params(), 1),
                        v = random_vec<double>(m.num_params(), 2);
      const Index n = 5;
      auto cache = m.make_cache(random_mat<double>(m.input_size(), n, 3));
      m.forward(theta.data(), cache, 0, n);
      auto ws = m.make_workspace(n);
      Index scratch_size = 0;
      for (std::size_t l = 0; l < m.num_layers(); ++l)
        scratch_size = std::max(scratch_size, m.layer(l).scratch_size(n));
      Workspace<double>::Buffer scratch(static_cast<std::size_t>(scratch_size));

      // Reference: each layer's own jvp, then each layer's own vjp, chained by hand.
      Mat<double> t;  // tangent entering the current layer (empty: zero)
      for (std::size_t l = 0; l < m.num_layers(); ++l) {
        const Layer<double>& L = m.layer(l);
        Mat<double> out(L.output_size(), n);
        const int32_t* aux = L.aux_per_sample() ? cache.aux[l].data() : nullptr;
        L.jvp(theta.data() + m.param_offset(l), v.data() + m.param_offset(l),
              ConstMatMap<double>(cache.acts[l].data(), L.input_size(), n),
              ConstMatMap<double>(cache.acts[l + 1].data(), L.output_size(), n), aux,
              t.size() ? t.data() : nullptr, MatMap<double>(out.data(), out.rows(), n), scratch.data());
        t = out;
      }
      m.jvp(theta.data(), v.data(), cache, 0, n, ws);
      EXPECT_TRUE((ConstMatMap<double>(ws.result(), m.output_size(), n).array() == t.array()).all());

      const Mat<double> gz = random_mat<double>(m.output_size(), n, 4);
      Vec<double> g_ref = Vec<double>::Zero(m.num_params()), g = Vec<double>::Zero(m.num_params());
      Mat<double> gy = gz;
      for (std::size_t l = m.num_layers(); l-- > 0;) {
        const Layer<double>& L = m.layer(l);
        Mat<double> gx(L.input_size(), n);
        const int32_t* aux = L.aux_per_sample() ? cache.aux[l].data() : nullptr;
        L.vjp(theta.data() + m.param_offset(l), ConstMatMap<double>(cache.acts[l].data(), L.input_size(), n),
              ConstMatMap<double>(cache.acts[l + 1].data(), L.output_size(), n), aux,
              ConstMatMap<double>(gy.data(), L.output_size(), n), l > 0 ? gx.data() : nullptr,
              L.num_params() ? g_ref.data() + m.param_offset(l) : nullptr, scratch.data());
        gy = gx;
      }
      m.vjp(theta.data(), cache, 0, n, ConstMatMap<double>(gz.data(), m.output_size(), n), g.data(), ws);
      if (pool_kernel == 2)
        EXPECT_TRUE((g.array() == g_ref.array()).all());
      else
        EXPECT_LT(rel_err_vec(g, g_ref), 1e-14);
    }
}

TEST(Sequential, WrongParameterVectorSizeIsRejected) {
  Network<double> m(mlp_spec(3, 4, 2));
  try {
    m.check_params(7);
    FAIL() << "no exception";
  } catch (const std::invalid_argument& e) {
    EXPECT_EQ(std::string(e.what()), "parameter vector has 7 entries but the model has " +
                                         std::to_string(m.num_params()) + " parameters");
  }
}

TEST(Initialization, UniformWithinOneOverSqrtFanIn) {
  Network<double> m(cnn_spec(10));
  const Vec<double> a = init_parameters(m, 0), b = init_parameters(m, 0), c = init_parameters(m, 1);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
  for (const NamedParam& p : m.named_params()) {
    const Index fan_in = p.name == "0.weight" || p.name == "0.bias" ? 18 : p.name[0] == '3' ? 12 : 16;
    const double bound = 1.0 / std::sqrt(double(fan_in));
    const auto seg = a.segment(p.offset, p.size);
    EXPECT_LE(seg.cwiseAbs().maxCoeff(), bound) << p.name;
    if (p.size >= 40) EXPECT_GT(seg.cwiseAbs().maxCoeff(), 0.8 * bound) << p.name;  // spans the range
  }
}

// Internal invariants are checked in every build: a chunk wider than the workspace aborts with the failed
// condition instead of writing past the buffers.
TEST(ModelInvariantsDeathTest, AChunkWiderThanTheWorkspaceAborts) {
  Network<double> model(mlp_spec(3, 4, 2));
  const Vec<double> theta = init_parameters(model, 1);
  auto cache = model.make_cache(Mat<double>::Ones(3, 8));
  model.forward(theta.data(), cache, 0, 8);
  auto ws = model.make_workspace(4);
  EXPECT_DEATH(model.jvp(theta.data(), theta.data(), cache, 0, 8, ws), "internal error: n <= ws.max_cols");
  EXPECT_DEATH(model.forward(theta.data(), cache, 4, 8), "internal error: .*col0 \\+ n <= cache.acts\\[0\\].cols\\(\\)");
}
