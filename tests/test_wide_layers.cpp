// The blocked parameter gradient against a reference that shares nothing with it, on layers wide enough to
// use it. Phase B of a product (fisher_operator.h) splits a linear layer's weight gradient into blocks of
// about 256 × 256 and gives a convolution one partial gradient per sample group; every other dense,
// finite-difference and PyTorch reference in the suite uses layers at most 32 wide, so one block and, mostly,
// one group. Here:
//   - an MLP 520 → 300 → 520 → 5: the 300 × 520 weight splits into 2 × 3 blocks of 150 × 174/172 and the
//     520 × 300 one into 3 × 2 blocks of 174/172 × 150 (ragged last blocks), the biases ride on the first
//     block column;
//   - a CNN 3×16×16 → conv 3→16 → conv 16→16 (3 × 3, stride 1: the Winograd path) → conv 16→8 (stride 2)
//     → linear 512 → 4, with chunks of 8 samples over 36 (five sample groups, the last one ragged) and with
//     the default chunks.
// The reference, in double:
//   J_n v    central differences of the forward pass along v: (f(θ + εv̂) − f(θ − εv̂)) / 2ε · ‖v‖;
//   J_nᵀ w   a per-sample reverse pass written here from the layer formulas (loops, no GEMM, no blocks);
//   H_n      the likelihood formulas, Monte-Carlo labels drawn here from the documented key (test_helpers.h);
// F v = 1/N Σ_n J_nᵀ H_n J_n v + λ v and ∇L = 1/N Σ_n J_nᵀ (softmax(z_n) − e_{y_n}). The reverse pass is
// first checked against the finite differences (⟨w, J v⟩ = ⟨Jᵀ w, v⟩) and the forward pass written here
// against the library's, so the reference is validated by the forward pass alone.
#include "test_helpers.h"

#include <vector>

using namespace natgrad;
using namespace natgrad::test;

namespace {

// One layer of the reference network: linear (W [out, in] row-major, then the bias), conv2d (W [O, C, k, k]
// row-major, then the bias; input C × H × W, output O × Ho × Wo, CHW order), tanh, or flatten (CHW is already
// the order a linear layer reads).
struct RefLayer {
  enum Kind { linear, conv, tanh, flatten } kind;
  Index in = 0, out = 0;                           // linear: features; conv: channels
  Index H = 0, W = 0, k = 0, stride = 1, pad = 0;  // conv input side and geometry
  Index Ho() const { return (H + 2 * pad - k) / stride + 1; }
  Index Wo() const { return (W + 2 * pad - k) / stride + 1; }
  Index num_params() const {
    return kind == linear ? out * in + out : kind == conv ? out * in * k * k + out : 0;
  }
  LayerSpec spec() const {
    if (kind == linear) return LayerSpec::linear(in, out);
    if (kind == conv) return LayerSpec::conv2d(in, out, k, stride, pad);
    if (kind == flatten) return LayerSpec::flatten();
    return LayerSpec::activation(LayerType::tanh);
  }
};

struct RefNet {
  std::vector<RefLayer> layers;
  Shape input_shape;
  ModelSpec spec() const {
    ModelSpec s;
    s.input_shape = input_shape;
    for (const RefLayer& l : layers) s.layers.push_back(l.spec());
    return s;
  }

  // The activations of one sample: acts[0] = x, acts[l + 1] = layer l's output.
  std::vector<Vec<double>> forward(const Vec<double>& theta, const Vec<double>& x) const {
    std::vector<Vec<double>> acts{x};
    Index off = 0;
    for (const RefLayer& l : layers) {
      const Vec<double>& a = acts.back();
      const double* w = theta.data() + off;
      Vec<double> y;
      if (l.kind == RefLayer::flatten) {
        y = a;
      } else if (l.kind == RefLayer::tanh) {
        y = a.array().tanh().matrix();
      } else if (l.kind == RefLayer::linear) {
        y.resize(l.out);
        for (Index r = 0; r < l.out; ++r) {
          double s = w[l.out * l.in + r];
          for (Index c = 0; c < l.in; ++c) s += w[r * l.in + c] * a[c];
          y[r] = s;
        }
      } else {
        const Index Ho = l.Ho(), Wo = l.Wo(), K = l.in * l.k * l.k;
        y.resize(l.out * Ho * Wo);
        for (Index o = 0; o < l.out; ++o)
          for (Index i = 0; i < Ho; ++i)
            for (Index j = 0; j < Wo; ++j) {
              double s = w[l.out * K + o];
              for (Index c = 0; c < l.in; ++c)
                for (Index p = 0; p < l.k; ++p)
                  for (Index q = 0; q < l.k; ++q) {
                    const Index h = i * l.stride - l.pad + p, v = j * l.stride - l.pad + q;
                    if (h >= 0 && h < l.H && v >= 0 && v < l.W)
                      s += w[o * K + (c * l.k + p) * l.k + q] * a[(c * l.H + h) * l.W + v];
                  }
              y[(o * Ho + i) * Wo + j] = s;
            }
      }
      off += l.num_params();
      acts.push_back(std::move(y));
    }
    return acts;
  }

  // grad += J_nᵀ g for the sample whose activations are `acts` (g: the output cotangent).
  void add_vjp(const Vec<double>& theta, const std::vector<Vec<double>>& acts, Vec<double> g,
               Vec<double>& grad) const {
    Index off = theta.size();
    for (std::size_t li = layers.size(); li-- > 0;) {
      const RefLayer& l = layers[li];
      off -= l.num_params();
      const Vec<double>& a = acts[li];
      const double* w = theta.data() + off;
      double* gw = grad.data() + off;
      Vec<double> ga = Vec<double>::Zero(a.size());
      if (l.kind == RefLayer::flatten) {
        ga = g;
      } else if (l.kind == RefLayer::tanh) {
        ga = g.array() * (1 - acts[li + 1].array().square());
      } else if (l.kind == RefLayer::linear) {
        for (Index r = 0; r < l.out; ++r) {
          gw[l.out * l.in + r] += g[r];
          for (Index c = 0; c < l.in; ++c) {
            gw[r * l.in + c] += g[r] * a[c];
            ga[c] += w[r * l.in + c] * g[r];
          }
        }
      } else {
        const Index Ho = l.Ho(), Wo = l.Wo(), K = l.in * l.k * l.k;
        for (Index o = 0; o < l.out; ++o)
          for (Index i = 0; i < Ho; ++i)
            for (Index j = 0; j < Wo; ++j) {
              const double go = g[(o * Ho + i) * Wo + j];
              gw[l.out * K + o] += go;
              for (Index c = 0; c < l.in; ++c)
                for (Index p = 0; p < l.k; ++p)
                  for (Index q = 0; q < l.k; ++q) {
                    const Index h = i * l.stride - l.pad + p, v = j * l.stride - l.pad + q;
                    if (h < 0 || h >= l.H || v < 0 || v >= l.W) continue;
                    gw[o * K + (c * l.k + p) * l.k + q] += go * a[(c * l.H + h) * l.W + v];
                    ga[(c * l.H + h) * l.W + v] += w[o * K + (c * l.k + p) * l.k + q] * go;
                  }
            }
      }
      g = std::move(ga);
    }
  }
};

RefNet wide_mlp() {
  RefNet n;
  n.input_shape = {520};
  n.layers = {{RefLayer::linear, 520, 300},
              {RefLayer::tanh},
              {RefLayer::linear, 300, 520},
              {RefLayer::tanh},
              {RefLayer::linear, 520, 5}};
  return n;
}

RefNet wide_cnn() {
  RefNet n;
  n.input_shape = {3, 16, 16};
  n.layers = {{RefLayer::conv, 3, 16, 16, 16, 3, 1, 1},
              {RefLayer::tanh},
              {RefLayer::conv, 16, 16, 16, 16, 3, 1, 1},
              {RefLayer::tanh},
              {RefLayer::conv, 16, 8, 16, 16, 3, 2, 1},
              {RefLayer::tanh},
              {RefLayer::flatten},
              {RefLayer::linear, 8 * 8 * 8, 4}};
  return n;
}

// The reference quantities of one problem (double, categorical likelihood).
struct Reference {
  const RefNet& net;
  const Network<double>& model;
  const Vec<double>& theta;
  const Dataset<double>& data;
  std::vector<std::vector<Vec<double>>> acts;  // per sample
  Mat<double> Z;                               // C × N, the library's forward pass

  Reference(const RefNet& n, const Network<double>& m, const Vec<double>& t, const Dataset<double>& d)
      : net(n), model(m), theta(t), data(d), Z(m.predict(t.data(), d.inputs)) {
    for (Index s = 0; s < d.size(); ++s) acts.push_back(net.forward(theta, d.inputs.col(s)));
  }
  Index N() const { return data.size(); }

  // J v for every sample (C × N) by central differences of the library's forward pass.
  Mat<double> jv(const Vec<double>& v) const {
    const double eps = 1e-5, scale = v.norm();
    const Vec<double> up = theta + eps / scale * v, down = theta - eps / scale * v;
    return (model.predict(up.data(), data.inputs) - model.predict(down.data(), data.inputs)) *
           (scale / (2 * eps));
  }
  // Σ_n J_nᵀ W_n by the hand-written reverse pass.
  Vec<double> jtw(const Mat<double>& W) const {
    Vec<double> g = Vec<double>::Zero(theta.size());
    for (Index n = 0; n < N(); ++n) net.add_vjp(theta, acts[static_cast<std::size_t>(n)], W.col(n), g);
    return g;
  }
  // (F + λI) v with H_n = h(n) (C × C).
  template <typename HOf>
  Vec<double> fv(const Vec<double>& v, double lambda, HOf h) const {
    const Mat<double> U = jv(v);
    Mat<double> W(U.rows(), U.cols());
    for (Index n = 0; n < N(); ++n) W.col(n) = h(n) * U.col(n) / double(N());
    return jtw(W) + lambda * v;
  }
  Vec<double> gradient() const {
    Mat<double> S(Z.rows(), N());
    for (Index n = 0; n < N(); ++n) {
      Vec<double> p = (Z.col(n).array() - Z.col(n).maxCoeff()).exp();
      p /= p.sum();
      p[data.labels[static_cast<std::size_t>(n)]] -= 1;
      S.col(n) = p / double(N());
    }
    return jtw(S);
  }
  double loss() const {
    double l = 0;
    for (Index n = 0; n < N(); ++n) {
      const double m = Z.col(n).maxCoeff();
      l += m + std::log((Z.col(n).array() - m).exp().sum()) - Z(data.labels[static_cast<std::size_t>(n)], n);
    }
    return l / double(N());
  }
};

void check_problem(const RefNet& net, Index N, const std::vector<Index>& chunk_sizes) {
  const ModelSpec spec = net.spec();
  const Network<double> model(spec);
  const Network<float> model_f(spec);
  Index P = 0;
  for (const RefLayer& l : net.layers) P += l.num_params();
  ASSERT_EQ(model.num_params(), P);
  // Float parameters and inputs, so the float operator sees exactly the point the double reference uses.
  const Vec<float> theta_f = init_parameters(model_f, 5);
  const Vec<double> theta = theta_f.cast<double>();
  Dataset<float> data_f;
  data_f.inputs = random_mat<float>(model.input_size(), N, 6);
  fill_targets(data_f, LikelihoodKind::categorical, model.output_size(), 7);
  const Dataset<double> data = data_f.cast<double>();
  const Reference ref(net, model, theta, data);

  // The reference validated: its forward pass is the library's, its reverse pass the adjoint of J by
  // finite differences.
  Mat<double> Zr(model.output_size(), N);
  for (Index n = 0; n < N; ++n) Zr.col(n) = ref.acts[static_cast<std::size_t>(n)].back();
  ASSERT_LT(rel_err_vec(Zr, ref.Z), 1e-13);
  for (uint64_t s = 0; s < 2; ++s) {
    const Vec<double> v = random_vec<double>(P, 20 + s);
    const Mat<double> W = random_mat<double>(model.output_size(), N, 30 + s);
    const double lhs = (W.array() * ref.jv(v).array()).sum(), rhs = ref.jtw(W).dot(v);
    ASSERT_LT(rel_err(lhs, rhs), 1e-8) << "the hand-written reverse pass is not the adjoint of J";
  }

  const double lambda = 0.05;
  const Vec<double> v = random_vec<double>(P, 40);
  const uint64_t seed = 11;
  const int S = 3;
  auto exact_h = [&](Index n) {
    return dense_output_fisher(LikelihoodKind::categorical, FisherKind::exact, Vec<double>(ref.Z.col(n)),
                               data, n);
  };
  auto empirical_h = [&](Index n) {
    return dense_output_fisher(LikelihoodKind::categorical, FisherKind::empirical, Vec<double>(ref.Z.col(n)),
                               data, n);
  };
  auto mc_h = [&](Index n) {
    return mc_output_fisher(LikelihoodKind::categorical, ref.Z.col(n), seed, n, S);
  };
  const Vec<double> want_exact = ref.fv(v, lambda, exact_h), want_emp = ref.fv(v, lambda, empirical_h),
                    want_mc = ref.fv(v, lambda, mc_h), want_grad = ref.gradient();
  const double want_loss = ref.loss();
  // The gradient once more by a central difference of the loss along u (the loss from the forward pass).
  {
    const Vec<double> u = random_vec<double>(P, 50);
    const double eps = 1e-5 / u.norm();
    auto loss_at = [&](const Vec<double>& t) {
      const Reference r(net, model, t, data);
      return r.loss();
    };
    const double directional = (loss_at(theta + eps * u) - loss_at(theta - eps * u)) / (2 * eps);
    ASSERT_LT(rel_err(directional, want_grad.dot(u)), 1e-7);
  }

  for (Index chunk : chunk_sizes) {
    SCOPED_TRACE("chunk_size " + std::to_string(chunk) + " (0: the default)");
    struct Case {
      FisherKind kind;
      const Vec<double>* want;
    };
    for (const Case& c : {Case{FisherKind::exact, &want_exact}, Case{FisherKind::empirical, &want_emp},
                          Case{FisherKind::mc, &want_mc}}) {
      SCOPED_TRACE(to_string(c.kind));
      FisherOptions opt;
      opt.kind = c.kind;
      opt.mc_samples = S;
      opt.seed = seed;
      opt.damping = lambda;
      opt.chunk_size = chunk;
      const FisherOperator<double> F(model, theta, LikelihoodKind::categorical, data, opt);
      EXPECT_LT(rel_err_vec(apply(F, v), *c.want), 1e-8);
      const FisherOperator<float> Ff(model_f, theta_f, LikelihoodKind::categorical, data_f, opt);
      EXPECT_LT(rel_err_vec(apply(Ff, Vec<float>(v.cast<float>())), *c.want), 1e-5);
      if (c.kind == FisherKind::exact) {
        EXPECT_LT(rel_err_vec(F.gradient(), want_grad), 1e-10);
        EXPECT_LT(rel_err(F.loss(), want_loss), 1e-13);
        EXPECT_LT(rel_err_vec(Ff.gradient(), want_grad), 1e-5);
      }
    }
  }
}

}  // namespace

// The phase-B weight blocks of linear layers: 2 × 3 and 3 × 2 blocks with ragged edges.
TEST(WideLayers, LinearWeightBlocksAgainstAnUnblockedReference) { check_problem(wide_mlp(), 24, {0, 7}); }

// The phase-B sample groups of convolutions: five groups of chunks of 8 over 36 samples (the last one of 4),
// and the default chunking.
TEST(WideLayers, ConvolutionSampleGroupsAgainstAnUnblockedReference) {
  check_problem(wide_cnn(), 36, {8, 0});
}
