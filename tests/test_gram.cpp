// FisherGram (issue 26): the exact damped solves and the exact nonzero spectrum through G = UUᵀ, against a
// dense Fisher built from the backprop Jacobian (double, each row one backprop: no finite differences) and H_n
// written out from docs/math.md's formulas, solved with Eigen's dense Cholesky and eigensolver on the P × P
// matrix. Chains (the Kronecker identity), a CNN (explicit rows for convolutions), a sequence model with
// attention, a tied head and ignored positions (explicit rows, T > 1); every likelihood and Fisher kind. The
// operator's quadratic forms vᵢᵀFvⱼ (R-op passes only) against the same dense Fisher.
#include "test_helpers.h"

#include <natgrad/curvature/fisher_gram.h>

#include "solvers/tiled_cholesky.h"  // (lib/, private)

#include <Eigen/Cholesky>
#include <Eigen/Eigenvalues>

using namespace natgrad;
using namespace natgrad::test;

namespace {

const LikelihoodKind kLikelihoods[] = {LikelihoodKind::categorical, LikelihoodKind::gaussian, LikelihoodKind::bernoulli};
const FisherKind kKinds[] = {FisherKind::exact, FisherKind::mc, FisherKind::empirical};

LayerSpec with(LayerSpec s, const std::string& id, std::vector<std::string> inputs = {}) {
  s.node(id, std::move(inputs));
  return s;
}

// Tokens, a position table, layer norm, attention without a mask, a residual add, and a head tied to the token
// embedding: every node but the head's is explicit rows, T = 3 positions.
ModelSpec sequence_model(Index T, Index V, Index E) {
  ModelSpec m;
  m.input_shape = {T};
  LayerSpec pos = LayerSpec::add({"tok"});
  pos.parameter = "pos";
  pos.parameter_shape = {T, E};
  m.layers = {with(LayerSpec::embedding(V, E), "tok", {"input"}),
              with(pos, "h0"),
              with(LayerSpec::layer_norm({E}), "ln", {"h0"}),
              with(LayerSpec::multihead_attention(E, 2, "", true), "attn", {"ln"}),
              with(LayerSpec::add({"h0", "attn"}), "h1"),
              with(LayerSpec::linear(E, V, false), "head", {"h1"})};
  m.layers.back().param_names = {"tok.weight"};
  for (LayerSpec& l : m.layers) l.name = l.id;
  return m;
}

struct Case {
  std::string label;
  ModelSpec spec;
  Index T = 1;  // positions
};

std::vector<Case> cases() {
  return {{"mlp", mlp_spec(5, 6, 3)}, {"cnn", cnn_spec(3)}, {"sequence", sequence_model(3, 5, 4), 3}};
}

// Data for N samples; with T > 1 categorical labels per position, a few of them ignored (−100).
Dataset<double> data_for(const Network<double>& model, const Case& c, Index N, LikelihoodKind lk, uint64_t seed) {
  Dataset<double> d = random_dataset(model, N, lk, seed);
  if (c.T > 1) {
    const Index V = model.output_size() / c.T;
    for (Index k = 0; k < d.inputs.size(); ++k) d.inputs.data()[k] = double(CounterRng(seed, 9).bits(k) % V);
    if (lk == LikelihoodKind::categorical) {
      d.labels.clear();
      for (Index k = 0; k < N * c.T; ++k)
        d.labels.push_back(k % 5 == 3 ? kIgnoreIndex : int64_t(CounterRng(seed, 10).bits(k) % V));
    }
  }
  return d;
}

// F = 1/M Σ_n J_nᵀ H_n J_n, dense, from the backprop Jacobian and the written-out H_n.
Mat<double> dense_reference(const Network<double>& model, const Vec<double>& theta, const Dataset<double>& data,
                            LikelihoodKind lk, FisherKind fk, Index T, uint64_t seed, int S) {
  const Index C = model.output_size(), N = data.size(), P = model.num_params();
  const Mat<double> J = jacobian_by_backprop(model, theta, data.inputs);
  const Mat<double> Z = model.predict(theta.data(), data.inputs);
  Mat<double> F = Mat<double>::Zero(P, P);
  double M = double(N * T);
  if (lk == LikelihoodKind::categorical && T > 1) M = double(counted_labels(data.labels));
  for (Index n = 0; n < N; ++n) {
    const Vec<double> z = Z.col(n);
    Mat<double> H;
    if (T > 1) {
      Dataset<double> shown = data;  // an ignored position's label read as 0, then its rows and columns zeroed
      for (int64_t& y : shown.labels) y = y == kIgnoreIndex ? 0 : y;
      H = per_position_fisher(lk, fk, z, shown, n, T, seed, S);
      if (lk == LikelihoodKind::categorical)
        for (Index t = 0; t < T; ++t)
          if (data.labels[static_cast<std::size_t>(n * T + t)] == kIgnoreIndex) {
            H.middleRows(t * (C / T), C / T).setZero();
            H.middleCols(t * (C / T), C / T).setZero();
          }
    } else if (fk == FisherKind::mc) {
      H = mc_output_fisher(lk, z, seed, n, S);
    } else {
      H = dense_output_fisher(lk, fk, z, data, n);
    }
    const Mat<double> Jn = J.middleRows(n * C, C);
    F.noalias() += Jn.transpose() * H * Jn;
  }
  return F / M;
}

// Every case, likelihood and kind (one real-valued likelihood per position suffices for T > 1) on N samples:
// body(c, lk, fk, model, theta, data, options) with the operator's options (2 draws, seed 11, chunks of 3).
template <typename Body>
void for_every_case(Index N, Body body) {
  for (const Case& c : cases())
    for (LikelihoodKind lk : kLikelihoods)
      for (FisherKind fk : kKinds) {
        if (c.T > 1 && lk == LikelihoodKind::bernoulli) continue;
        SCOPED_TRACE(c.label + " " + to_string(lk) + " " + to_string(fk));
        const Network<double> model(c.spec);
        const Vec<double> theta = random_vec<double>(model.num_params(), 3) * 0.7;
        const Dataset<double> data = data_for(model, c, N, lk, 5);
        FisherOptions opt;
        opt.kind = fk;
        opt.mc_samples = 2;
        opt.seed = 11;
        opt.chunk_size = 3;
        body(c, lk, fk, model, theta, data, opt);
      }
}

}  // namespace

TEST(FisherQuadraticForms, EqualTheDenseFishersForEveryLikelihoodKindAndModel) {
  for_every_case(7, [](const Case& c, LikelihoodKind lk, FisherKind fk, const Network<double>& model,
                       const Vec<double>& theta, const Dataset<double>& data, FisherOptions opt) {
    opt.damping = 0.5;  // not part of the forms
    const FisherOperator<double> F(model, theta, lk, data, opt);
    const Mat<double> Fd = dense_reference(model, theta, data, lk, fk, c.T, opt.seed, opt.mc_samples);
    const Index P = model.num_params();
    const Vec<double> a = random_vec<double>(P, 20), b = random_vec<double>(P, 21), z = Vec<double>::Zero(P);
    const Eigen::MatrixXd Q = F.quadratic_forms({a.data(), b.data(), z.data()});
    ASSERT_EQ(Q.rows(), 3);
    ASSERT_EQ(Q.cols(), 3);
    const Vec<double>* v[] = {&a, &b, &z};
    const double scale = a.dot(Fd * a);
    ASSERT_GT(scale, 0);
    for (int i = 0; i < 3; ++i)
      for (int j = 0; j < 3; ++j)
        EXPECT_LT(std::abs(Q(i, j) - v[i]->dot(Fd * *v[j])) / scale, 1e-12) << i << j;
    EXPECT_EQ(F.quadratic_forms({}).size(), 0);
  });
}

TEST(FisherQuadraticForms, AreBitIdenticalForAnyThreadCountAndWhereverTheVectorsLie) {
  for (FisherKind fk : kKinds) {
    SCOPED_TRACE(to_string(fk));
    Network<float> model(cnn_spec(4));
    const Vec<float> theta = init_parameters(model, 30);
    const Dataset<float> data =
        random_dataset(model, 300, LikelihoodKind::categorical, 31);  // several chunks
    const Index P = model.num_params();
    const Vec<float> a = random_vec<float>(P, 32), b = random_vec<float>(P, 33);
    std::vector<float> shifted(static_cast<std::size_t>(2 * P + 8));  // b one float past its alignment
    std::copy(b.data(), b.data() + P, shifted.begin() + 1);
    Eigen::MatrixXd first;
    for (int threads : {1, 3}) {
      FisherOptions o;
      o.kind = fk;
      o.num_threads = threads;
      const FisherOperator<float> F(model, theta, LikelihoodKind::categorical, data, o);
      const Eigen::MatrixXd Q = F.quadratic_forms({a.data(), b.data()});
      if (threads == 1) first = Q;
      EXPECT_EQ(Q, first);
      EXPECT_EQ(F.quadratic_forms({a.data(), shifted.data() + 1}), first);
      EXPECT_EQ(Q(0, 1), Q(1, 0));
      // Against the operator's own product to float's rounding (the exact values: the test above).
      const Vec<float> Fa = apply(F, a);
      EXPECT_LT(std::abs(Q(0, 1) - double(b.dot(Fa))) / std::abs(Q(0, 0)), 1e-4);
    }
  }
}

TEST(FisherGram, SolvesAndSpectraEqualTheDenseFisherForEveryLikelihoodAndKind) {
  for_every_case(4, [](const Case& c, LikelihoodKind lk, FisherKind fk, const Network<double>& model,
                       const Vec<double>& theta, const Dataset<double>& data, FisherOptions opt) {
    FisherOperator<double> F(model, theta, lk, data, opt);
    const Mat<double> Fd = dense_reference(model, theta, data, lk, fk, c.T, opt.seed, opt.mc_samples);
    const Index P = model.num_params();
    FisherGram<double> gram(F);
    EXPECT_EQ(gram.rows(), FisherGram<double>::rows_for(model, 4, fk, 2));
    EXPECT_EQ(gram.push_through(), fk != FisherKind::mc);

    // The spectrum: every nonzero eigenvalue, the trace, eigenvectors.
    Eigen::SelfAdjointEigenSolver<Mat<double>> eig(Fd);
    const Vec<double> ev = eig.eigenvalues().reverse();
    const GramSpectrum s = gram.spectrum(3);
    ASSERT_GT(s.eigenvalues.size(), 0);
    const double top = ev(0);
    EXPECT_LT(std::abs(s.eigenvalues(0) - top) / top, 1e-10);
    for (Index i = 0; i < s.eigenvalues.size(); ++i)
      EXPECT_LT(std::abs(s.eigenvalues(i) - ev(i)) / top, 1e-10);
    for (Index i = s.eigenvalues.size(); i < P; ++i) EXPECT_LT(std::abs(ev(i)) / top, 1e-10) << i;
    EXPECT_LT(std::abs(s.trace - Fd.trace()) / Fd.trace(), 1e-10);
    EXPECT_EQ(s.zero_count, P - s.eigenvalues.size());
    const Mat<double> V = gram.eigenvectors(s, std::min<Index>(3, s.eigenvalues.size()));
    for (Index i = 0; i < V.cols(); ++i) {
      EXPECT_NEAR(V.col(i).norm(), 1.0, 1e-10);
      EXPECT_LT((Fd * V.col(i) - s.eigenvalues(i) * V.col(i)).norm() / top, 1e-10);
    }

    // Solves: the operator's gradient (push-through where it applies) and a vector outside U's rows.
    const Vec<double> g = F.gradient(), b = random_vec<double>(P, 7);
    for (bool own : {true, false}) {
      const Vec<double>& rhs = own ? g : b;
      const std::vector<GramSolution<double>> sol = gram.solve(rhs, {1e-1, 1e-3}, own);
      ASSERT_EQ(sol.size(), 2u);
      for (const GramSolution<double>& x : sol) {
        Mat<double> A = Fd;
        A.diagonal().array() += x.damping;
        const Vec<double> d = A.llt().solve(rhs);
        EXPECT_LT(rel_err_vec(x.direction, d), 1e-10)
            << "damping " << x.damping << (own ? " gradient" : " random");
      }
    }
  });
}

TEST(FisherGram, GramIsBitIdenticalForOneAndThreeThreads) {
  for (const Case& c : cases()) {
    SCOPED_TRACE(c.label);
    Network<double> model(c.spec);
    const Vec<double> theta = random_vec<double>(model.num_params(), 13) * 0.7;
    const Dataset<double> data = data_for(model, c, 37, LikelihoodKind::categorical, 14);
    std::vector<Mat<double>> grams;
    std::vector<Vec<double>> directions;
    for (int threads : {1, 3}) {
      FisherOptions opt;
      opt.num_threads = threads;
      FisherOperator<double> F(model, theta, LikelihoodKind::categorical, data, opt);
      FisherGram<double> gram(F);
      grams.push_back(gram.matrix());
      directions.push_back(gram.solve(F.gradient(), {1e-2}, true)[0].direction);
    }
    EXPECT_TRUE(grams[0] == grams[1]);
    EXPECT_TRUE(directions[0] == directions[1]);
  }
}

TEST(FisherGram, RefusesADampingOfZeroAndAWrongSize) {
  Network<double> model(mlp_spec(4, 5, 3));
  const Vec<double> theta = random_vec<double>(model.num_params(), 1);
  const Dataset<double> data = random_dataset(model, 6, LikelihoodKind::categorical, 2);
  FisherOperator<double> F(model, theta, LikelihoodKind::categorical, data);
  FisherGram<double> gram(F);
  EXPECT_NE(error_of([&] { gram.solve(F.gradient(), {0.0}, true); }).find("damping > 0"), std::string::npos);
  EXPECT_NE(error_of([&] { gram.solve(Vec<double>::Zero(3), {1e-3}, false); }).find("parameters"), std::string::npos);
}

TEST(FisherGram, FloatAgreesWithDouble) {
  const ModelSpec spec = mlp_spec(5, 6, 3);
  Network<double> md(spec);
  Network<float> mf(spec);
  const Vec<double> td = random_vec<double>(md.num_params(), 21) * 0.7;
  const Dataset<double> dd = random_dataset(md, 9, LikelihoodKind::categorical, 22);
  Dataset<float> df;
  df.inputs = dd.inputs.cast<float>();
  df.labels = dd.labels;
  FisherOperator<double> Fd(md, td, LikelihoodKind::categorical, dd);
  FisherOperator<float> Ff(mf, td.cast<float>(), LikelihoodKind::categorical, df);
  FisherGram<double> gd(Fd);
  FisherGram<float> gf(Ff);
  EXPECT_LT(rel_err_vec(gf.matrix(), gd.matrix()), 1e-5);
  const Vec<double> d = gd.solve(Fd.gradient(), {1e-2}, true)[0].direction;
  const Vec<float> f = gf.solve(Ff.gradient(), {1e-2}, true)[0].direction;
  EXPECT_LT(rel_err_vec(f.cast<double>(), d), 1e-3);
}

TEST(TiledCholesky, EqualsEigensLltForAnyThreadCountAndRefusesAnIndefiniteMatrix) {
  const Index n = 601;  // tiles of 128: a partial last tile
  const Mat<double> X = random_mat<double>(n, n + 5, 3);
  const Mat<double> A = X * X.transpose() + 1e-3 * Mat<double>::Identity(n, n);
  const Mat<double> L = A.llt().matrixL();
  std::vector<Mat<double>> factors;
  for (int threads : {1, 3}) {
    Mat<double> T = A;
    ASSERT_TRUE(detail::tiled_cholesky(T, threads, 128));
    const Mat<double> Lt = T.triangularView<Eigen::Lower>();
    EXPECT_LT(rel_err_vec(Lt, L), 1e-12);
    factors.push_back(Lt);
    const Vec<double> b = random_vec<double>(n, 4);
    EXPECT_LT(rel_err_vec(detail::cholesky_solve(T, b), Vec<double>(A.llt().solve(b))), 1e-10);
  }
  EXPECT_TRUE(factors[0] == factors[1]);
  Mat<double> bad = A;
  bad(400, 400) = -1;
  EXPECT_FALSE(detail::tiled_cholesky(bad, 2, 128));
}
