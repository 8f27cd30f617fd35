// Causal self-attention and a tiny GPT: the attention output against attention written out here in plain
// loops, the R-op and backprop against finite differences of the forward pass, the dense Fisher (exact,
// empirical, Monte-Carlo) from a finite-difference Jacobian against the operator, the Monte-Carlo product's
// 1/√S decay, causality (a later token changes no earlier output nor the gradient of earlier positions),
// float against double, thread invariance, and the mask checks.
#include "test_helpers.h"

#include <cstring>
#include <limits>

using namespace natgrad;
using namespace natgrad::test;

namespace {

LayerSpec with(LayerSpec s, const std::string& id, std::vector<std::string> inputs = {}) {
  s.node(id, std::move(inputs));
  s.name = id;
  return s;
}

// Token and position embeddings, one pre-norm block (layer norm, attention, residual; layer norm, MLP,
// residual), a final layer norm and a head over the vocabulary at every position.
ModelSpec tiny_gpt(Index T, Index V, Index E, Index H, bool causal = true, bool bias = true, bool tied = false) {
  ModelSpec m;
  m.input_shape = {T};
  LayerSpec pos = LayerSpec::add({"tok"});
  pos.parameter = "pos";
  pos.parameter_shape = {T, E};
  LayerSpec gelu = LayerSpec::activation(LayerType::gelu);
  gelu.tanh_approximation = true;
  m.layers = {with(LayerSpec::embedding(V, E), "tok", {"input"}),
              with(pos, "h0"),
              with(LayerSpec::layer_norm({E}), "ln1", {"h0"}),
              with(LayerSpec::multihead_attention(E, H, causal ? "mask" : "", bias), "attn", {"ln1"}),
              with(LayerSpec::add({"h0", "attn"}), "h1"),
              with(LayerSpec::layer_norm({E}), "ln2", {"h1"}),
              with(LayerSpec::linear(E, 2 * E), "fc", {"ln2"}),
              with(gelu, "act", {"fc"}),
              with(LayerSpec::linear(2 * E, E), "proj", {"act"}),
              with(LayerSpec::add({"h1", "proj"}), "h2"),
              with(LayerSpec::layer_norm({E}), "lnf", {"h2"}),
              with(LayerSpec::linear(E, V, false), "head", {"lnf"})};
  if (tied) m.layers.back().param_names = {"tok.weight"};  // GPT-2's output layer is the token embedding
  return m;
}

template <typename Scalar>
Dataset<Scalar> token_data(Index T, Index V, Index N, uint64_t seed) {
  Dataset<Scalar> d;
  d.inputs.resize(T, N);
  for (Index k = 0; k < T * N; ++k) d.inputs.data()[k] = Scalar(CounterRng(seed, 1).bits(k) % V);
  for (Index k = 0; k < T * N; ++k) d.labels.push_back(int64_t(CounterRng(seed, 2).bits(k) % V));
  return d;
}

template <typename Scalar>
Vec<Scalar> gpt_theta(const Network<Scalar>& model, uint64_t seed) {
  return random_vec<Scalar>(model.num_params(), seed) * Scalar(0.7);
}

// softmax(q kᵀ/√d (+ causal mask)) v per head, from the [T, 3E] projections of one sample, in plain loops.
Mat<double> reference_attention(const Mat<double>& qkv /* 3E × T */, Index H, bool causal) {
  const Index E = qkv.rows() / 3, T = qkv.cols(), d = E / H;
  Mat<double> y = Mat<double>::Zero(E, T);
  for (Index h = 0; h < H; ++h)
    for (Index i = 0; i < T; ++i) {
      std::vector<double> w(static_cast<std::size_t>(T), 0.0);
      double top = -std::numeric_limits<double>::infinity(), sum = 0;
      for (Index j = 0; j < T; ++j) {
        if (causal && j > i) continue;
        double s = 0;
        for (Index c = 0; c < d; ++c) s += qkv(h * d + c, i) * qkv(E + h * d + c, j);
        w[static_cast<std::size_t>(j)] = s / std::sqrt(double(d));
        top = std::max(top, w[static_cast<std::size_t>(j)]);
      }
      for (Index j = 0; j < T; ++j) {
        if (causal && j > i) continue;
        w[static_cast<std::size_t>(j)] = std::exp(w[static_cast<std::size_t>(j)] - top);
        sum += w[static_cast<std::size_t>(j)];
      }
      for (Index j = 0; j < T; ++j) {
        if (causal && j > i) continue;
        for (Index c = 0; c < d; ++c) y(h * d + c, i) += w[static_cast<std::size_t>(j)] / sum * qkv(2 * E + h * d + c, j);
      }
    }
  return y;
}

// The attention core on its own: [T, 3E] projections in, [T, E] out, H heads, a causal mask or none.
std::unique_ptr<Layer<double>> attention_core(Index T, Index E, Index H, bool causal) {
  LayerSpec core = LayerSpec::activation(LayerType::attention);
  core.num_heads = H;
  if (causal) core.attn_mask = "mask";
  return make_layer<double>(core, {T, 3 * E}, "attention");
}

}  // namespace

TEST(Attention, OutputMatchesAttentionWrittenOutInLoops) {
  for (bool causal : {true, false}) {
    SCOPED_TRACE(causal ? "causal" : "no mask");
    const Index T = 5, E = 6, H = 3, N = 3;
    auto layer = attention_core(T, E, H, causal);
    const Mat<double> X = random_mat<double>(3 * E * T, N, 1) * 2.0;
    Mat<double> Y(E * T, N);
    layer->forward(nullptr, ConstMatMap<double>(X.data(), X.rows(), N), MatMap<double>(Y.data(), Y.rows(), N), nullptr);
    for (Index n = 0; n < N; ++n) {
      const Mat<double> qkv = Eigen::Map<const Mat<double>>(X.col(n).data(), 3 * E, T);
      const Mat<double> ref = reference_attention(qkv, H, causal);
      EXPECT_LT(rel_err_vec(Vec<double>(Y.col(n)), Vec<double>(Eigen::Map<const Vec<double>>(ref.data(), E * T))), 1e-14);
    }
  }
}

// The layer on its own (which recomputes the probabilities) against finite differences of its forward pass;
// inside a network, where the probabilities are kept from the forward pass, the TinyGpt tests check it.
TEST(Attention, RopAndBackpropMatchFiniteDifferences) {
  for (bool causal : {true, false}) {
    SCOPED_TRACE(causal ? "causal" : "no mask");
    const Index T = 4, E = 4, H = 2, N = 2;
    auto layer = attention_core(T, E, H, causal);
    const Index in = 3 * E * T, out = E * T;
    const Mat<double> X = random_mat<double>(in, N, 2) * 1.5;
    auto f = [&](const Mat<double>& x) {
      Mat<double> y(out, N);
      layer->forward(nullptr, ConstMatMap<double>(x.data(), in, N), MatMap<double>(y.data(), out, N), nullptr);
      return y;
    };
    Mat<double> Y = f(X);
    const Mat<double> dX = random_mat<double>(in, N, 3);
    const double h = 1e-6;
    const Mat<double> fd = (f(X + h * dX) - f(X - h * dX)) / (2 * h);
    std::vector<double> scratch(static_cast<std::size_t>(layer->scratch_size(N)));
    Mat<double> dY(out, N);
    layer->jvp(nullptr, nullptr, ConstMatMap<double>(X.data(), in, N), ConstMatMap<double>(Y.data(), out, N), nullptr,
               dX.data(), MatMap<double>(dY.data(), out, N), scratch.data());
    EXPECT_LT(rel_err_vec(Vec<double>(Eigen::Map<const Vec<double>>(dY.data(), out * N)),
                          Vec<double>(Eigen::Map<const Vec<double>>(fd.data(), out * N))), 1e-8);
    // Backprop is the adjoint: <gY, J dX> = <Jᵀ gY, dX>, with J dX from finite differences.
    const Mat<double> gY = random_mat<double>(out, N, 4);
    Mat<double> gX(in, N);
    layer->vjp(nullptr, ConstMatMap<double>(X.data(), in, N), ConstMatMap<double>(Y.data(), out, N), nullptr,
               ConstMatMap<double>(gY.data(), out, N), gX.data(), nullptr, scratch.data());
    EXPECT_LT(rel_err((gY.array() * fd.array()).sum(), (gX.array() * dX.array()).sum()), 1e-8);
  }
}

TEST(TinyGpt, RopAndBackpropMatchFiniteDifferencesOfTheWholeModel) {
  for (bool causal : {true, false})
    for (bool bias : {true, false}) {
      SCOPED_TRACE(std::string(causal ? "causal" : "no mask") + (bias ? " with biases" : " without biases"));
      Network<double> model(tiny_gpt(4, 5, 4, 2, causal, bias));
      ASSERT_EQ(model.output_positions(), 4);
      const Vec<double> theta = gpt_theta(model, 5);
      const Dataset<double> data = token_data<double>(4, 5, 3, 6);
      const Mat<double> Jfd = jacobian_by_finite_differences(model, theta, data.inputs);
      EXPECT_LT(rel_err_vec(jacobian_by_rop(model, theta, data.inputs), Jfd), 1e-8);
      EXPECT_LT(rel_err_vec(jacobian_by_backprop(model, theta, data.inputs), Jfd), 1e-8);
    }
}

TEST(TinyGpt, ParametersHavePyTorchsNamesAndOrder) {
  Network<double> model(tiny_gpt(4, 5, 4, 2));
  std::vector<std::string> names;
  for (const NamedParam& p : model.named_params()) names.push_back(p.name);
  const std::vector<std::string> expected{"tok.weight", "pos", "ln1.weight", "ln1.bias", "attn.in_proj_weight",
                                          "attn.in_proj_bias", "attn.out_proj.weight", "attn.out_proj.bias",
                                          "ln2.weight", "ln2.bias", "fc.weight", "fc.bias", "proj.weight",
                                          "proj.bias", "lnf.weight", "lnf.bias", "head.weight"};
  EXPECT_EQ(names, expected);
  ASSERT_EQ(model.named_buffers().size(), 1u);
  EXPECT_EQ(model.named_buffers()[0].name, "mask");
  EXPECT_EQ(model.named_buffers()[0].shape, (Shape{4, 4}));
  EXPECT_EQ(model.saved_per_sample(), 2 * 4 * 4 + 4 * 8);  // heads × T × T probabilities, GELU's φ' at T × 2E
}

TEST(TinyGpt, OperatorMatchesTheDenseFisherFromFiniteDifferences) {
  const Index T = 4, V = 5, N = 5;
  for (bool tied : {false, true}) {
  SCOPED_TRACE(tied ? "tied embeddings" : "untied");
  Network<double> model(tiny_gpt(T, V, 4, 2, true, true, tied));
  const Vec<double> theta = gpt_theta(model, 7);
  const Dataset<double> data = token_data<double>(T, V, N, 8);
  const Mat<double> J = jacobian_by_finite_differences(model, theta, data.inputs);
  const Mat<double> Z = model.predict(theta.data(), data.inputs);
  for (FisherKind fk : {FisherKind::exact, FisherKind::empirical, FisherKind::mc}) {
    SCOPED_TRACE(to_string(fk));
    FisherOptions opt;
    opt.kind = fk;
    opt.mc_samples = 2;
    opt.seed = 9;
    opt.chunk_size = 2;
    FisherOperator<double> F(model, theta, LikelihoodKind::categorical, data, opt);
    Mat<double> Fd = Mat<double>::Zero(model.num_params(), model.num_params());
    for (Index n = 0; n < N; ++n) {
      const Mat<double> Jn = J.middleRows(n * T * V, T * V);
      Fd.noalias() += Jn.transpose() * per_position_fisher(LikelihoodKind::categorical, fk, Z.col(n), data, n, T, 9, 2) * Jn;
    }
    Fd /= double(N * T);
    const Vec<double> v = random_vec<double>(model.num_params(), 10);
    EXPECT_LT(rel_err_vec(apply(F, v), Fd * v), 1e-7);
    if (fk == FisherKind::empirical)
      EXPECT_LT(rel_err_vec(F.empirical_fisher_diagonal(), Vec<double>(Fd.diagonal())), 1e-7);
    if (fk == FisherKind::exact) {  // and the gradient, against finite differences of the loss
      auto loss = [&](const Vec<double>& t) {
        const Mat<double> Zt = model.predict(t.data(), data.inputs);
        return nll_sum<double>(LikelihoodKind::categorical, ConstMatMap<double>(Zt.data(), Zt.rows(), Zt.cols()),
                               data, 0, T) / double(N * T);
      };
      const Vec<double> fd = gradient_by_finite_differences(loss, theta);
      EXPECT_LT(rel_err_vec(F.gradient(), fd), 1e-7);
    }
  }
  }
}

TEST(TinyGpt, TiedWeightsAreOneTensorUsedTwice) {
  Network<double> tied(tiny_gpt(4, 5, 4, 2, true, true, true)), untied(tiny_gpt(4, 5, 4, 2));
  EXPECT_EQ(tied.num_params(), untied.num_params() - 5 * 4);  // head.weight is tok.weight
  ASSERT_EQ(tied.tied_names().size(), 1u);
  EXPECT_EQ(tied.tied_names()[0], (std::pair<std::string, std::string>{"head.weight", "tok.weight"}));
  // The tied model is the untied one with both tensors equal: its gradient is the sum of the two.
  Vec<double> tt = gpt_theta(tied, 20);
  Vec<double> tu(untied.num_params());
  const Index E = 4, V = 5, head = untied.num_params() - V * E;
  tu << tt, tt.head(V * E);  // tok.weight is first in both; head.weight last in the untied one
  const Dataset<double> data = token_data<double>(4, 5, 6, 21);
  EXPECT_LT(rel_err_vec(tied.predict(tt.data(), data.inputs), untied.predict(tu.data(), data.inputs)), 1e-15);
  const Vec<double> gu = FisherOperator<double>(untied, tu, LikelihoodKind::categorical, data).gradient();
  Vec<double> expected = gu.head(tied.num_params());
  expected.head(V * E) += gu.segment(head, V * E);
  EXPECT_LT(rel_err_vec(FisherOperator<double>(tied, tt, LikelihoodKind::categorical, data).gradient(), expected), 1e-14);
  // A node that ties only some of its tensors, or to a tensor of another shape, is refused.
  ModelSpec partial = tiny_gpt(4, 5, 4, 2);
  partial.layers.back().bias = true;
  partial.layers.back().param_names = {"tok.weight", "head.bias"};
  EXPECT_ERROR(Network<double>{partial}, "shares only some tensors with node \"tok\"");
  ModelSpec shape = tiny_gpt(4, 5, 4, 2);
  shape.layers.back().param_names = {"fc.weight"};
  EXPECT_ERROR(Network<double>{shape}, "its weight [5, 4] cannot be \"fc.weight\", which has shape [8, 4]");
}

// The Monte-Carlo product's error against the exact one falls as 1/√S: averaged over seeds, 16 times the
// draws gives a quarter of the error (within a factor allowing for the spread of 8 seeds).
TEST(TinyGpt, MonteCarloErrorFallsAsOneOverRootS) {
  Network<double> model(tiny_gpt(4, 5, 4, 2));
  const Vec<double> theta = gpt_theta(model, 11);
  const Dataset<double> data = token_data<double>(4, 5, 6, 12);
  const Vec<double> v = random_vec<double>(model.num_params(), 13);
  const Vec<double> exact = apply(FisherOperator<double>(model, theta, LikelihoodKind::categorical, data), v);
  auto mean_error = [&](int S) {
    double total = 0;
    for (uint64_t seed = 0; seed < 8; ++seed) {
      FisherOptions opt;
      opt.kind = FisherKind::mc;
      opt.mc_samples = S;
      opt.seed = 100 + seed;
      total += (apply(FisherOperator<double>(model, theta, LikelihoodKind::categorical, data, opt), v) - exact).norm();
    }
    return total / 8 / exact.norm();
  };
  const double e1 = mean_error(1), e16 = mean_error(16), e256 = mean_error(256);
  EXPECT_GT(e1 / e16, 2.5);
  EXPECT_LT(e1 / e16, 6.5);
  EXPECT_GT(e16 / e256, 2.5);
  EXPECT_LT(e16 / e256, 6.5);
}

// Changing the last token changes no earlier position's output, nor the gradient of a loss on the earlier
// positions; without the mask it does.
TEST(TinyGpt, TheCausalMaskHolds) {
  const Index T = 5, V = 6;
  for (bool causal : {true, false}) {
    SCOPED_TRACE(causal ? "causal" : "no mask");
    Network<double> model(tiny_gpt(T, V, 4, 2, causal));
    const Vec<double> theta = gpt_theta(model, 14);
    Dataset<double> a = token_data<double>(T, V, 2, 15), b = a;
    for (Index n = 0; n < 2; ++n) b.inputs(T - 1, n) = double((int(a.inputs(T - 1, n)) + 1) % V);
    const Mat<double> za = model.predict(theta.data(), a.inputs), zb = model.predict(theta.data(), b.inputs);
    const Index early = (T - 1) * V;  // outputs of positions 0 … T-2
    const double change = (za.topRows(early) - zb.topRows(early)).cwiseAbs().maxCoeff();
    // The gradient of Σ of the early positions' outputs (a cotangent of ones there, zero at the last).
    auto gradient = [&](const Dataset<double>& d) {
      auto cache = model.make_cache(d.inputs);
      model.forward(theta.data(), cache, 0, 2);
      auto ws = model.make_workspace(2);
      Mat<double> g = Mat<double>::Zero(T * V, 2);
      g.topRows(early).setOnes();
      Vec<double> out = Vec<double>::Zero(model.num_params());
      model.vjp(theta.data(), cache, 0, 2, ConstMatMap<double>(g.data(), T * V, 2), out.data(), ws);
      return out;
    };
    const Vec<double> ga = gradient(a), gb = gradient(b);
    // The token embedding row of the changed token gets no gradient from earlier positions either way; the
    // rest must agree exactly when causal.
    const double gchange = (ga - gb).cwiseAbs().maxCoeff();
    if (causal) {
      EXPECT_EQ(change, 0.0);
      EXPECT_EQ(gchange, 0.0);
    } else {
      EXPECT_GT(change, 1e-6);
      EXPECT_GT(gchange, 1e-6);
    }
  }
}

TEST(TinyGpt, FloatAgreesWithDoubleAndThreadsAreBitIdentical) {
  const Index T = 6, V = 7;
  Network<double> md(tiny_gpt(T, V, 8, 2, true, true, true));  // tied: phase C adds the head's partials
  Network<float> mf(tiny_gpt(T, V, 8, 2, true, true, true));
  const Vec<double> td = gpt_theta(md, 16);
  const Dataset<double> dd = token_data<double>(T, V, 21, 17);
  Dataset<float> df;
  df.inputs = dd.inputs.cast<float>();
  df.labels = dd.labels;
  const Vec<double> v = random_vec<double>(md.num_params(), 18);
  FisherOperator<double> Fd(md, td, LikelihoodKind::categorical, dd);
  std::vector<Vec<float>> products, gradients, diagonals;
  for (int threads : {1, 2, 3}) {
    FisherOptions opt;
    opt.num_threads = threads;
    opt.chunk_size = 4;
    FisherOperator<float> Ff(mf, Vec<float>(td.cast<float>()), LikelihoodKind::categorical, df, opt);
    products.push_back(apply(Ff, Vec<float>(v.cast<float>())));
    gradients.push_back(Ff.gradient());
    diagonals.push_back(Ff.empirical_fisher_diagonal());
  }
  EXPECT_LT(rel_err_vec(products[0].cast<double>(), apply(Fd, v)), 1e-4);
  EXPECT_LT(rel_err_vec(gradients[0].cast<double>(), Fd.gradient()), 1e-4);
#ifdef NATGRAD_HAVE_OPENMP
  const std::size_t bytes = sizeof(float) * static_cast<std::size_t>(mf.num_params());
  for (std::size_t t = 1; t < products.size(); ++t) {
    EXPECT_EQ(0, std::memcmp(products[0].data(), products[t].data(), bytes));
    EXPECT_EQ(0, std::memcmp(gradients[0].data(), gradients[t].data(), bytes));
    EXPECT_EQ(0, std::memcmp(diagonals[0].data(), diagonals[t].data(), bytes));
  }
#endif
}

TEST(AttentionMask, OnlyACausalMaskOfTheRightFormIsAccepted) {
  const Index T = 3;
  const double inf = std::numeric_limits<double>::infinity();
  for (bool as_bool : {false, true}) {
    ModelSpec spec = tiny_gpt(T, 4, 4, 2);
    spec.layers[3].attn_mask_bool = as_bool;
    Network<double> model(spec);
    const double masked = as_bool ? 1.0 : -inf;
    Mat<double> m(T, T);  // row-major [T, T] as in the weights file: m(i, j) at i·T + j
    for (Index i = 0; i < T; ++i)
      for (Index j = 0; j < T; ++j) m(j, i) = j > i ? masked : 0.0;
    EXPECT_NO_THROW(model.set_buffer(0, m.data()));
    Mat<double> open = Mat<double>::Zero(T, T);  // attends to the future
    EXPECT_ERROR(model.set_buffer(0, open.data()), "mask: is not a causal mask: entry (0, 1) is ");
    Mat<double> upper = m.transpose();  // anti-causal
    EXPECT_ERROR(model.set_buffer(0, upper.data()), "is not a causal mask");
  }
  ModelSpec bad = tiny_gpt(T, 4, 6, 4);
  EXPECT_ERROR(Network<double>{bad}, "embed_dim 6 is not divisible by num_heads 4");
  ModelSpec wide = tiny_gpt(T, 4, 4, 2);
  wide.layers[3].embed_dim = 8;
  EXPECT_ERROR(Network<double>{wide}, "attn/in_proj");
}

TEST(AttentionFisher, ProductsDoNotDependOnWhereTheCallersVectorsLie) {
  // As test_fisher's FisherOperatorAlignment, on the GPT (layer norms, attention, tied head): x and y one and
  // three floats past Eigen's alignment give the aligned product bit for bit.
  for (bool tied : {false, true}) {
    SCOPED_TRACE(tied ? "tied" : "untied");
    Network<float> model(tiny_gpt(8, 11, 16, 2, true, true, tied));
    const Dataset<float> data = token_data<float>(8, 11, 40, 60);
    FisherOptions o;
    o.damping = 1e-2;
    const FisherOperator<float> F(model, gpt_theta(model, 61), LikelihoodKind::categorical, data, o);
    expect_product_ignores_alignment(F, 62);
  }
}
