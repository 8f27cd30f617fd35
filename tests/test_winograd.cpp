// The Winograd F(m×m, 3×3) convolutions (3×3, stride 1, ≥ 16 channels each way) against a direct convolution
// written here as loops over the definition, in double arithmetic: the forward pass, the R-op and the backprop
// (input cotangent, weight and bias gradients), in float and double, over paddings 0–2, odd and even maps,
// several sample blocks and a last block shorter than the others — through conv2d layers (whose tile size
// follows the map) and through the private WinogradConv3x3 with each tile size, 2×2 and 4×4, on every map.
// The finite-difference and adjoint tests of every layer (test_layers.cpp) cover the same convolutions again.
#include "model/winograd_conv.h"
#include "test_helpers.h"

#include <functional>
#include <memory>

using namespace natgrad;
using namespace natgrad::test;

namespace {

struct Geometry {
  Index C, O, H, W, pad, n;
  bool bias;
};

// y[n][o][i][j] = b[o] + Σ_{c,r,s} w[o][c][r][s] x[n][c][i + r − pad][j + s − pad], zero outside the image.
struct Direct {
  Geometry g;
  Index Ho() const { return g.H + 2 * g.pad - 2; }
  Index Wo() const { return g.W + 2 * g.pad - 2; }
  template <typename F>
  void taps(F f) const {  // f(n, o, c, i, j, r, s, input index) over every tap inside the image
    for (Index n = 0; n < g.n; ++n)
      for (Index o = 0; o < g.O; ++o)
        for (Index c = 0; c < g.C; ++c)
          for (Index i = 0; i < Ho(); ++i)
            for (Index j = 0; j < Wo(); ++j)
              for (Index r = 0; r < 3; ++r)
                for (Index s = 0; s < 3; ++s) {
                  const Index ih = i + r - g.pad, iw = j + s - g.pad;
                  if (ih < 0 || ih >= g.H || iw < 0 || iw >= g.W) continue;
                  f(n, o, c, i, j, r, s, ((n * g.C + c) * g.H + ih) * g.W + iw);
                }
  }
  Index out(Index n, Index o, Index i, Index j) const { return ((n * g.O + o) * Ho() + i) * Wo() + j; }
  Index weight(Index o, Index c, Index r, Index s) const { return ((o * g.C + c) * 3 + r) * 3 + s; }

  Mat<double> forward(const Vec<double>& theta, const Mat<double>& x) const {
    Mat<double> y = Mat<double>::Zero(g.O * Ho() * Wo(), g.n);
    taps([&](Index n, Index o, Index c, Index i, Index j, Index r, Index s, Index xi) {
      y.data()[out(n, o, i, j)] += theta[weight(o, c, r, s)] * x.data()[xi];
    });
    if (g.bias)
      for (Index n = 0; n < g.n; ++n)
        for (Index o = 0; o < g.O; ++o)
          for (Index p = 0; p < Ho() * Wo(); ++p) y.data()[out(n, o, 0, 0) + p] += theta[g.O * g.C * 9 + o];
    return y;
  }
  // The transpose: gx[xi] = Σ w gy, gw = Σ x gy, gb = Σ gy.
  void backward(const Vec<double>& theta, const Mat<double>& x, const Mat<double>& gy, Mat<double>& gx,
                Vec<double>& gtheta) const {
    gx = Mat<double>::Zero(x.rows(), x.cols());
    gtheta = Vec<double>::Zero(theta.size());
    taps([&](Index n, Index o, Index c, Index i, Index j, Index r, Index s, Index xi) {
      gx.data()[xi] += theta[weight(o, c, r, s)] * gy.data()[out(n, o, i, j)];
      gtheta[weight(o, c, r, s)] += x.data()[xi] * gy.data()[out(n, o, i, j)];
    });
    if (g.bias)
      for (Index n = 0; n < g.n; ++n)
        for (Index o = 0; o < g.O; ++o)
          for (Index p = 0; p < Ho() * Wo(); ++p) gtheta[g.O * g.C * 9 + o] += gy.data()[out(n, o, 0, 0) + p];
  }
};

template <typename Scalar>
Mat<Scalar> cast(const Mat<double>& m) {
  return m.template cast<Scalar>();
}

// One API's passes over n samples: through a conv2d layer (weights then bias in θ), or through the private
// WinogradConv3x3 with a given tile size (no bias: the layer adds it). dx or gx/gθ may be null.
template <typename Scalar>
struct Passes {
  Index in, out, P;
  std::size_t scratch_size;
  std::function<void(const Scalar* theta, const Scalar* x, Scalar* y, Scalar* scratch)> forward;
  std::function<void(const Scalar* theta, const Scalar* dtheta, const Scalar* x, const Scalar* y,
                     const Scalar* dx, Scalar* dy, Scalar* scratch)>
      jvp;
  std::function<void(const Scalar* theta, const Scalar* x, const Scalar* y, const Scalar* gy, Scalar* gx,
                     Scalar* gtheta, Scalar* scratch)>
      vjp;
};

template <typename Scalar>
Passes<Scalar> layer_passes(const Geometry& geo) {
  const Direct ref{geo};
  std::shared_ptr<Layer<Scalar>> layer = make_layer<Scalar>(LayerSpec::conv2d(geo.C, geo.O, 3, 1, geo.pad, geo.bias),
                                                            Shape{geo.C, geo.H, geo.W}, "conv");
  EXPECT_EQ(layer->output_shape(), (Shape{geo.O, ref.Ho(), ref.Wo()}));
  const Index in = layer->input_size(), out = layer->output_size(), n = geo.n;
  Passes<Scalar> p{in, out, layer->num_params(), static_cast<std::size_t>(layer->scratch_size(n)), {}, {}, {}};
  p.forward = [=](const Scalar* theta, const Scalar* x, Scalar* y, Scalar*) {
    layer->forward(theta, ConstMatMap<Scalar>(x, in, n), MatMap<Scalar>(y, out, n), nullptr);
  };
  p.jvp = [=](const Scalar* theta, const Scalar* dtheta, const Scalar* x, const Scalar* y, const Scalar* dx,
              Scalar* dy, Scalar* scratch) {
    layer->jvp(theta, dtheta, ConstMatMap<Scalar>(x, in, n), ConstMatMap<Scalar>(y, out, n), nullptr, dx,
               MatMap<Scalar>(dy, out, n), scratch);
  };
  p.vjp = [=](const Scalar* theta, const Scalar* x, const Scalar* y, const Scalar* gy, Scalar* gx, Scalar* gtheta,
              Scalar* scratch) {
    layer->vjp(theta, ConstMatMap<Scalar>(x, in, n), ConstMatMap<Scalar>(y, out, n), nullptr,
               ConstMatMap<Scalar>(gy, out, n), gx, gtheta, scratch);
  };
  return p;
}

template <typename Scalar>
Passes<Scalar> tile_passes(const Geometry& geo, Index tile) {
  const Direct ref{geo};
  std::shared_ptr<detail::WinogradConv3x3<Scalar>> conv =
      detail::WinogradConv3x3<Scalar>::make(geo.C, geo.O, geo.H, geo.W, geo.pad, geo.pad, ref.Ho(), ref.Wo(), tile);
  EXPECT_EQ(conv->tile(), tile);
  const Index n = geo.n;
  Passes<Scalar> p{geo.C * geo.H * geo.W, geo.O * ref.Ho() * ref.Wo(), geo.O * geo.C * 9,
                   static_cast<std::size_t>(conv->scratch_size(n)), {}, {}, {}};
  p.forward = [=](const Scalar* w, const Scalar* x, Scalar* y, Scalar* scratch) {
    conv->forward(w, nullptr, x, n, y, scratch);
  };
  p.jvp = [=](const Scalar* w, const Scalar* dw, const Scalar* x, const Scalar*, const Scalar* dx, Scalar* dy,
              Scalar* scratch) { conv->jvp(w, dw, nullptr, x, dx, n, dy, scratch); };
  p.vjp = [=](const Scalar* w, const Scalar* x, const Scalar*, const Scalar* gy, Scalar* gx, Scalar* gw,
              Scalar* scratch) { conv->vjp(w, x, gy, n, gx, gw, nullptr, scratch); };
  return p;
}

// Every pass against the direct convolution: forward; R-op with and without an input tangent; backprop, whose
// parameter gradient accumulates onto what gθ holds, and which gives the same numbers for either output alone.
template <typename Scalar>
void check(const Geometry& geo, const Passes<Scalar>& conv, uint64_t seed) {
  const Direct ref{geo};
  const Index in = conv.in, out = conv.out, P = conv.P, n = geo.n;
  // Round the inputs to float so that both precisions see the same numbers.
  const Mat<double> x = random_mat<float>(in, n, seed).template cast<double>(),
                    dx = random_mat<float>(in, n, seed + 1).template cast<double>(),
                    gy = random_mat<float>(out, n, seed + 2).template cast<double>();
  const Vec<double> theta = (random_vec<float>(P, seed + 3) * 0.3f).template cast<double>(),
                    dtheta = random_vec<float>(P, seed + 4).template cast<double>();
  // Float: F(4×4, 3×3)'s transforms (entries up to 8 and 1/24) lose about an order of magnitude over
  // F(2×2, 3×3)'s, measured 2.4e-6 on the weight gradient of the 28×28 case.
  const double tol = std::is_same<Scalar, double>::value ? 1e-13 : 1e-5;

  const Mat<Scalar> xs = cast<Scalar>(x), dxs = cast<Scalar>(dx), gys = cast<Scalar>(gy);
  const Vec<Scalar> ts = theta.template cast<Scalar>(), dts = dtheta.template cast<Scalar>();
  std::vector<Scalar> scratch(conv.scratch_size);
  Mat<Scalar> y(out, n), dy(out, n), dy_w(out, n), gx(in, n);
  conv.forward(ts.data(), xs.data(), y.data(), scratch.data());
  EXPECT_LT(rel_err_vec(y, ref.forward(theta, x)), tol) << "forward";

  // R-op: conv(x, dθ) + dbias + conv(dx, θ) without θ's bias; and with no input tangent (a first layer),
  // conv(x, dθ) + dbias.
  conv.jvp(ts.data(), dts.data(), xs.data(), y.data(), dxs.data(), dy.data(), scratch.data());
  Vec<double> theta_nobias = theta;
  if (geo.bias) theta_nobias.tail(geo.O).setZero();
  EXPECT_LT(rel_err_vec(dy, ref.forward(dtheta, x) + ref.forward(theta_nobias, dx)), tol) << "R-op";
  conv.jvp(ts.data(), dts.data(), xs.data(), y.data(), nullptr, dy_w.data(), scratch.data());
  EXPECT_LT(rel_err_vec(dy_w, ref.forward(dtheta, x)), tol) << "R-op without an input tangent";

  Mat<double> gx_ref;
  Vec<double> g_ref;
  ref.backward(theta, x, gy, gx_ref, g_ref);
  Vec<Scalar> gtheta = Vec<Scalar>::Constant(P, Scalar(0.25));
  conv.vjp(ts.data(), xs.data(), y.data(), gys.data(), gx.data(), gtheta.data(), scratch.data());
  EXPECT_LT(rel_err_vec(gx, gx_ref), tol) << "input cotangent";
  EXPECT_LT(rel_err_vec(gtheta, (g_ref.array() + 0.25).matrix()), tol) << "parameter gradient";
  Mat<Scalar> gx_only(in, n);
  conv.vjp(ts.data(), xs.data(), y.data(), gys.data(), gx_only.data(), nullptr, scratch.data());
  EXPECT_EQ(gx_only, gx);
  Vec<Scalar> g_only = Vec<Scalar>::Constant(P, Scalar(0.25));
  conv.vjp(ts.data(), xs.data(), y.data(), gys.data(), nullptr, g_only.data(), scratch.data());
  EXPECT_EQ(g_only, gtheta);
}

const std::vector<Geometry> geometries = {
    {16, 16, 6, 6, 1, 3, true},     // even map, "same" padding
    {16, 17, 5, 7, 0, 2, false},    // odd output (3 × 5): the last tile row and column are cropped
    {17, 16, 4, 5, 2, 2, true},     // padding 2: outputs larger than the input
    {16, 16, 14, 14, 1, 13, true},  // 49 tiles: blocks of 6 samples, the last one of 1
    {32, 16, 28, 28, 1, 3, false},  // 196 tiles: blocks of 2, the last of 1; 4×4 tiles in a layer
    {16, 16, 9, 11, 1, 2, true},    // 4×4 tiles cropped in both directions
};

}  // namespace

TEST(Winograd, FloatMatchesTheDirectConvolution) {
  for (const Geometry& g : geometries) {
    SCOPED_TRACE(testing::Message() << g.C << "->" << g.O << " " << g.H << "x" << g.W << " pad " << g.pad);
    check(g, layer_passes<float>(g), 1);
  }
}

TEST(Winograd, DoubleMatchesTheDirectConvolution) {
  for (const Geometry& g : geometries) {
    SCOPED_TRACE(testing::Message() << g.C << "->" << g.O << " " << g.H << "x" << g.W << " pad " << g.pad);
    check(g, layer_passes<double>(g), 1);
  }
}

TEST(Winograd, EachTileSizeMatchesTheDirectConvolution) {
  for (const Geometry& g : geometries)
    for (Index tile : {2, 4}) {
      SCOPED_TRACE(testing::Message() << g.C << "->" << g.O << " " << g.H << "x" << g.W << " pad " << g.pad
                                      << ", tiles " << tile);
      const Geometry nb{g.C, g.O, g.H, g.W, g.pad, g.n, false};
      check(nb, tile_passes<float>(nb, tile), 11);
      check(nb, tile_passes<double>(nb, tile), 11);
    }
}

TEST(Winograd, LayersPickTheirTileSizeFromTheMap) {
  // 4×4 tiles where they need at most 0.6 of the 2×2 tiles' products.
  EXPECT_EQ(detail::WinogradConv3x3<float>::default_tile(28, 28), 4);
  EXPECT_EQ(detail::WinogradConv3x3<float>::default_tile(14, 14), 2);
  EXPECT_EQ(detail::WinogradConv3x3<float>::default_tile(6, 6), 2);
  EXPECT_EQ(detail::WinogradConv3x3<float>::default_tile(56, 56), 4);
}
