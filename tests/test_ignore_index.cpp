// Categorical targets equal to the ignore index (−100, PyTorch's cross_entropy default): the positions they
// mark count for nothing. Checked against references that never call the library's masking:
//   - at T = 1, the same batch with those samples removed (a smaller problem the operator has always solved),
//     and the dense Fisher of that reduced batch (test_helpers.h: backprop Jacobian, formula H_n);
//   - for sequences (attention mixes the positions, so nothing can be removed from the input), the dense
//     F = 1/M Σ_n J_nᵀ D_n H_n D_n J_n from central-difference Jacobians in double, D_n zeroing the ignored
//     positions' outputs and M the kept count, with H_n from the formulas and the documented Monte-Carlo key
//     (seed, sample, s·T + t): the kept positions' draws are the ones they have without any ignored label;
//   - K-FAC's factors formed by hand over the kept rows; the damped condition number's rank bound M·C;
//   - an all-ignored batch and any other out-of-range label are errors.
#include <natgrad/curvature/kfac.h>
#include <natgrad/natural_gradient/damped_condition.h>

#include <stdexcept>

#include "test_helpers.h"

namespace natgrad {
namespace test {
namespace {

using RowMat = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

LayerSpec with(LayerSpec s, const std::string& id, std::vector<std::string> inputs = {}) {
  s.node(id, std::move(inputs));
  s.name = id;
  return s;
}

// Tokens [T] → embedding E → causal self-attention (+ residual) → a head over V classes at every position:
// each position's outputs depend on the earlier positions' inputs.
ModelSpec attention_lm(Index T, Index V, Index E) {
  ModelSpec m;
  m.input_shape = {T};
  m.layers = {with(LayerSpec::embedding(V, E), "tok", {"input"}),
              with(LayerSpec::multihead_attention(E, 1, "mask", true), "attn", {"tok"}),
              with(LayerSpec::add({"tok", "attn"}), "h"),
              with(LayerSpec::activation(LayerType::tanh), "act", {"h"}),
              with(LayerSpec::linear(E, V), "head", {"act"})};
  return m;
}

Dataset<double> tokens(Index T, Index V, Index N, uint64_t seed) {
  Dataset<double> d;
  d.inputs.resize(T, N);
  for (Index k = 0; k < T * N; ++k) d.inputs.data()[k] = double(CounterRng(seed, 1).bits(k) % V);
  for (Index k = 0; k < T * N; ++k) d.labels.push_back(int64_t(CounterRng(seed, 2).bits(k) % V));
  return d;
}

Index kept_count(const std::vector<int64_t>& labels) {
  Index m = 0;
  for (int64_t y : labels) m += y != -100;
  return m;
}

// The samples whose label is not −100 (T = 1).
Dataset<double> without_ignored(const Dataset<double>& d) {
  Dataset<double> out;
  std::vector<Index> keep;
  for (Index n = 0; n < d.size(); ++n)
    if (d.labels[static_cast<std::size_t>(n)] != -100) keep.push_back(n);
  out.inputs.resize(d.inputs.rows(), Index(keep.size()));
  for (std::size_t i = 0; i < keep.size(); ++i) {
    out.inputs.col(Index(i)) = d.inputs.col(keep[i]);
    out.labels.push_back(d.labels[static_cast<std::size_t>(keep[i])]);
  }
  return out;
}

Vec<double> product(const FisherOperator<double>& F, const Vec<double>& v) { return apply(F, v); }

// T = 1: loss, gradient, every Fisher kind's product, the empirical diagonal and K-FAC equal those of the
// batch with the ignored samples removed; exact and empirical F also equal the reduced batch's dense Fisher.
TEST(IgnoreIndex, OnePositionEqualsTheBatchWithoutTheIgnoredSamples) {
  const Network<double> model(mlp_spec(5, 6, 3));
  const Vec<double> theta = init_parameters(model, 2);
  Dataset<double> data = random_dataset(model, 11, LikelihoodKind::categorical, 3);
  for (Index n : {1, 4, 5, 9}) data.labels[static_cast<std::size_t>(n)] = -100;
  const Dataset<double> reduced = without_ignored(data);
  ASSERT_EQ(reduced.size(), 7);
  const Vec<double> v = random_vec<double>(model.num_params(), 4);
  for (FisherKind fk : {FisherKind::exact, FisherKind::empirical}) {
    SCOPED_TRACE(to_string(fk));
    FisherOptions fo;
    fo.kind = fk;
    fo.damping = 0.1;
    const FisherOperator<double> F(model, theta, LikelihoodKind::categorical, data, fo);
    const FisherOperator<double> R(model, theta, LikelihoodKind::categorical, reduced, fo);
    EXPECT_EQ(F.counted_positions(), 7);
    EXPECT_LE(rel_err(F.loss(), R.loss()), 1e-14);
    EXPECT_LE(rel_err_vec(F.gradient(), R.gradient()), 1e-13);
    EXPECT_LE(rel_err_vec(product(F, v), product(R, v)), 1e-13);
    EXPECT_LE(rel_err_vec(F.empirical_fisher_diagonal(), R.empirical_fisher_diagonal()), 1e-13);
    // The dense reference of the reduced batch, and the loss from the formula.
    const Mat<double> D = dense_fisher(model, theta, reduced, LikelihoodKind::categorical, fk);
    EXPECT_LE(rel_err_vec(product(F, v), Vec<double>(D * v + 0.1 * v)), 1e-12);
    EXPECT_LE(rel_err(F.loss(), categorical_nll(model.predict(theta.data(), reduced.inputs), reduced.labels)),
              1e-13);
    // Dividing by N instead of M would be far off: the test can tell.
    ASSERT_GT(rel_err(F.loss() * 7.0 / 11.0, R.loss()), 1e-3);
    KfacApproximation<double> KF(F), KR(R);
    KF.set_damping(0.1);
    KR.set_damping(0.1);
    ASSERT_EQ(KF.blocks().size(), KR.blocks().size());
    for (std::size_t b = 0; b < KF.blocks().size(); ++b) {
      EXPECT_LE((KF.blocks()[b].A - KR.blocks()[b].A).norm() / KR.blocks()[b].A.norm(), 1e-13) << b;
      EXPECT_LE((KF.blocks()[b].G - KR.blocks()[b].G).norm() / KR.blocks()[b].G.norm(), 1e-13) << b;
    }
  }
  // Monte-Carlo: the kept samples keep their own keys (sample index n in the whole batch), so the reference
  // draws with those, not with the reduced batch's renumbered ones.
  FisherOptions fo;
  fo.kind = FisherKind::mc;
  fo.mc_samples = 3;
  fo.seed = 7;
  const FisherOperator<double> F(model, theta, LikelihoodKind::categorical, data, fo);
  const Mat<double> J = jacobian_by_backprop(model, theta, data.inputs);
  const Mat<double> Z = model.predict(theta.data(), data.inputs);
  Vec<double> ref = Vec<double>::Zero(model.num_params());
  for (Index n = 0; n < data.size(); ++n) {
    if (data.labels[static_cast<std::size_t>(n)] == -100) continue;
    const Mat<double> Jn = J.middleRows(n * 3, 3);
    ref += Jn.transpose() * (mc_output_fisher(LikelihoodKind::categorical, Z.col(n), 7, n, 3) * (Jn * v));
  }
  EXPECT_LE(rel_err_vec(product(F, v), Vec<double>(ref / 7.0)), 1e-12);
}

// Sequences through attention: the dense Fisher restricted to the kept positions, from central-difference
// Jacobians, for every kind; the loss and gradient from the formulas.
TEST(IgnoreIndex, SequenceAgainstDenseFisherRestrictedToKeptPositions) {
  const Index T = 4, V = 5, E = 4, N = 5;
  const Network<double> model(attention_lm(T, V, E));
  ASSERT_EQ(model.output_positions(), T);
  const Vec<double> theta = random_vec<double>(model.num_params(), 21) * 0.7;
  Dataset<double> data = tokens(T, V, N, 22);
  for (Index k = 0; k < N * T; ++k)
    if (k % 3 == 1 || k / T == 2) data.labels[static_cast<std::size_t>(k)] = -100;  // sample 2: all ignored
  const Index M = kept_count(data.labels);
  ASSERT_EQ(M, 10);
  Dataset<double> filled = data;  // a valid label where ignored, for the formulas (D masks it anyway)
  for (int64_t& y : filled.labels)
    if (y == -100) y = 0;

  const Index P = model.num_params(), TC = T * V;
  const Mat<double> J = jacobian_by_finite_differences(model, theta, data.inputs);
  const Mat<double> Z = model.predict(theta.data(), data.inputs);
  const Vec<double> v = random_vec<double>(P, 23);
  double loss = 0;
  Vec<double> grad = Vec<double>::Zero(P);
  std::vector<Mat<double>> Dn(static_cast<std::size_t>(N));
  for (Index n = 0; n < N; ++n) {
    Vec<double> mask = Vec<double>::Zero(TC), score = Vec<double>::Zero(TC);
    for (Index t = 0; t < T; ++t) {
      const int64_t y = data.labels[static_cast<std::size_t>(n * T + t)];
      if (y == -100) continue;
      mask.segment(t * V, V).setOnes();
      const Vec<double> z = Z.col(n).segment(t * V, V);
      const double m = z.maxCoeff(), lse = m + std::log((z.array() - m).exp().sum());
      loss += lse - z[y];
      score.segment(t * V, V) = (z.array() - lse).exp();
      score[t * V + y] -= 1;
    }
    Dn[static_cast<std::size_t>(n)] = mask.asDiagonal();
    grad += J.middleRows(n * TC, TC).transpose() * score;
  }
  EXPECT_EQ(Dn[2], Mat<double>::Zero(TC, TC));
  const double tol = 1e-7;  // central differences
  for (FisherKind fk : {FisherKind::exact, FisherKind::mc, FisherKind::empirical}) {
    SCOPED_TRACE(to_string(fk));
    FisherOptions fo;
    fo.kind = fk;
    fo.mc_samples = 2;
    fo.seed = 9;
    fo.chunk_size = 2;
    const FisherOperator<double> F(model, theta, LikelihoodKind::categorical, data, fo);
    EXPECT_EQ(F.counted_positions(), M);
    Vec<double> fv = Vec<double>::Zero(P), unmasked = Vec<double>::Zero(P);
    for (Index n = 0; n < N; ++n) {
      const Mat<double> Jn = J.middleRows(n * TC, TC);
      const Mat<double> H = per_position_fisher(LikelihoodKind::categorical, fk, Z.col(n), filled, n, T, 9, 2);
      const Mat<double>& D = Dn[static_cast<std::size_t>(n)];
      fv += Jn.transpose() * (D * H * D * (Jn * v));
      unmasked += Jn.transpose() * (H * (Jn * v));
    }
    fv /= double(M);
    EXPECT_LE(rel_err_vec(product(F, v), fv), tol);
    ASSERT_GT(rel_err_vec(Vec<double>(unmasked / double(M)), fv), 1e3 * tol);  // the masking matters
    ASSERT_GT(rel_err_vec(Vec<double>(fv * double(M) / double(N * T)), fv), 1e3 * tol);  // and M
    EXPECT_LE(rel_err(F.loss(), loss / double(M)), 1e-13);
    EXPECT_LE(rel_err_vec(F.gradient(), Vec<double>(grad / double(M))), tol);
  }
}

// Monte-Carlo keys: with some positions ignored, every other position's H block (its draws) is bit-identical
// to the one of the same batch without an ignored label; the ignored positions' rows and columns are zero.
// Without ignored labels nothing changes at all.
TEST(IgnoreIndex, MonteCarloKeepsEveryOtherPositionsDraws) {
  const Index T = 4, V = 5, E = 4, N = 5;
  const Network<double> model(attention_lm(T, V, E));
  const Vec<double> theta = random_vec<double>(model.num_params(), 31) * 0.7;
  const Dataset<double> full = tokens(T, V, N, 32);
  Dataset<double> data = full;
  for (Index k = 0; k < N * T; ++k)
    if (k % 4 == 0 || k == 7) data.labels[static_cast<std::size_t>(k)] = -100;
  FisherOptions fo;
  fo.kind = FisherKind::mc;
  fo.mc_samples = 3;
  fo.seed = 4;
  const FisherOperator<double> A(model, theta, LikelihoodKind::categorical, full, fo);
  const FisherOperator<double> B(model, theta, LikelihoodKind::categorical, data, fo);
  EXPECT_EQ(A.counted_positions(), N * T);
  for (Index n = 0; n < N; ++n) {
    const Mat<double> HA = A.output_fisher(n), HB = B.output_fisher(n);
    Vec<double> mask(T * V);
    for (Index t = 0; t < T; ++t)
      mask.segment(t * V, V).setConstant(data.labels[static_cast<std::size_t>(n * T + t)] == -100 ? 0.0 : 1.0);
    const Mat<double> expected = mask.asDiagonal() * HA * mask.asDiagonal();
    EXPECT_EQ(HB, expected) << "sample " << n;
    // The documented key, drawn here: the full batch's H is the formula's.
    EXPECT_LE((HA - per_position_fisher(LikelihoodKind::categorical, FisherKind::mc,
                                        model.predict(theta.data(), full.inputs).col(n), full, n, T, 4, 3))
                  .cwiseAbs()
                  .maxCoeff(),
              1e-14);
  }
}

TEST(IgnoreIndex, ABatchInWhichNothingCountsIsAnError) {
  const Network<double> mlp(mlp_spec(5, 6, 3));
  const Vec<double> theta = init_parameters(mlp, 2);
  Dataset<double> data = random_dataset(mlp, 4, LikelihoodKind::categorical, 3);
  data.labels.assign(4, -100);
  for (FisherKind fk : {FisherKind::exact, FisherKind::mc, FisherKind::empirical}) {
    FisherOptions fo;
    fo.kind = fk;
    const std::string e =
        error_of([&] { (void)FisherOperator<double>(mlp, theta, LikelihoodKind::categorical, data, fo); });
    EXPECT_NE(e.find("every target of the batch is the ignore index -100"), std::string::npos) << e;
  }
  EXPECT_THROW(FisherOperator<double>(mlp, theta, LikelihoodKind::categorical, data, {}), std::invalid_argument);
  // A sequence batch, all of it padding.
  const Network<double> lm(attention_lm(3, 5, 4));
  Dataset<double> seq = tokens(3, 5, 2, 1);
  seq.labels.assign(6, -100);
  const std::string e = error_of([&] {
    (void)FisherOperator<double>(lm, random_vec<double>(lm.num_params(), 1), LikelihoodKind::categorical, seq, {});
  });
  EXPECT_NE(e.find("all 6 positions"), std::string::npos) << e;
  // One position that counts is enough.
  seq.labels[4] = 2;
  const FisherOperator<double> F(lm, random_vec<double>(lm.num_params(), 1), LikelihoodKind::categorical, seq, {});
  EXPECT_EQ(F.counted_positions(), 1);
  // Any other negative label, or one ≥ C, is still an error naming the sample (and position).
  data.labels = {0, 1, -5, 2};
  EXPECT_NE(error_of([&] { check_targets(LikelihoodKind::categorical, data, 3, 1); }).find("class label -5 of sample 2"),
            std::string::npos);
  data.labels = {0, 1, 2, 3};
  EXPECT_NE(error_of([&] { check_targets(LikelihoodKind::categorical, data, 3, 1); }).find("class label 3 of sample 3"),
            std::string::npos);
  seq.labels = {0, -100, 1, -1, 2, 3};
  EXPECT_NE(error_of([&] { check_targets(LikelihoodKind::categorical, seq, 5, 3); })
                .find("class label -1 of sample 1, position 0"),
            std::string::npos);
  seq.labels = {0, -100, 1, -100, 2, 3};
  EXPECT_NO_THROW(check_targets(LikelihoodKind::categorical, seq, 5, 3));
}

// K-FAC on a per-position model (linear 4→5, tanh, linear 5→3 on [T = 3, 4]): A over the kept rows only and
// G over the kept positions, each divided by the kept count, formed here by hand.
TEST(IgnoreIndex, KfacFactorsLeaveTheIgnoredRowsOut) {
  const Index T = 3;
  ModelSpec spec;
  spec.input_shape = {T, 4};
  spec.layers = {LayerSpec::linear(4, 5), LayerSpec::activation(LayerType::tanh), LayerSpec::linear(5, 3)};
  const Network<double> model(spec);
  const Vec<double> theta = init_parameters(model, 41);
  Dataset<double> data;
  const Index N = 7;
  data.inputs = random_mat<double>(T * 4, N, 42);
  for (Index i = 0; i < N * T; ++i) data.labels.push_back(i % 5 == 2 || i / T == 4 ? -100 : i % 3);
  const Index M = kept_count(data.labels);
  Dataset<double> filled = data;
  for (int64_t& y : filled.labels)
    if (y == -100) y = 0;
  auto mat = [&](const char* name, Index rows) {
    for (const NamedParam& p : model.named_params())
      if (p.name == name) return Mat<double>(Eigen::Map<const RowMat>(theta.data() + p.offset, rows, p.size / rows));
    return Mat<double>();
  };
  auto vec = [&](const char* name) {
    for (const NamedParam& p : model.named_params())
      if (p.name == name) return Vec<double>(theta.segment(p.offset, p.size));
    return Vec<double>();
  };
  auto one = [](const Vec<double>& a) {
    Vec<double> b(a.size() + 1);
    b << a, 1.0;
    return b;
  };
  const Mat<double> W1 = mat("0.weight", 5), W2 = mat("2.weight", 3);
  const Vec<double> b1 = vec("0.bias"), b2 = vec("2.bias");
  for (FisherKind fk : {FisherKind::exact, FisherKind::mc, FisherKind::empirical}) {
    SCOPED_TRACE(to_string(fk));
    FisherOptions fo;
    fo.kind = fk;
    const FisherOperator<double> F(model, theta, LikelihoodKind::categorical, data, fo);
    const KfacApproximation<double> K(F);
    ASSERT_EQ(K.blocks().size(), 2u);
    Mat<double> A[2] = {Mat<double>::Zero(5, 5), Mat<double>::Zero(6, 6)};
    Mat<double> G[2] = {Mat<double>::Zero(5, 5), Mat<double>::Zero(3, 3)};
    Mat<double> A_all = Mat<double>::Zero(5, 5);
    for (Index n = 0; n < N; ++n) {
      Vec<double> z(T * 3);
      std::vector<Vec<double>> h(T);
      for (Index r = 0; r < T; ++r) {
        const Vec<double> x = data.inputs.col(n).segment(r * 4, 4);
        h[r] = (W1 * x + b1).array().tanh().matrix();
        z.segment(r * 3, 3) = W2 * h[r] + b2;
        A_all += one(x) * one(x).transpose();
        if (data.labels[static_cast<std::size_t>(n * T + r)] == -100) continue;
        A[0] += one(x) * one(x).transpose();
        A[1] += one(h[r]) * one(h[r]).transpose();
      }
      const Mat<double> H = per_position_fisher(LikelihoodKind::categorical, fk, z, filled, n, T, 0, 1);
      for (Index r = 0; r < T; ++r) {
        if (data.labels[static_cast<std::size_t>(n * T + r)] == -100) continue;
        const Mat<double> Hr = H.block(r * 3, r * 3, 3, 3);
        const Mat<double> M1 = Mat<double>((1 - h[r].array().square()).matrix().asDiagonal()) * W2.transpose();
        G[0] += M1 * Hr * M1.transpose();
        G[1] += Hr;
      }
    }
    for (int l = 0; l < 2; ++l) {
      SCOPED_TRACE("block " + std::to_string(l));
      const auto& b = K.blocks()[static_cast<std::size_t>(l)];
      EXPECT_LE((b.A - A[l] / double(M)).cwiseAbs().maxCoeff(), 1e-12 * A[l].cwiseAbs().maxCoeff() / double(M));
      EXPECT_LE((b.G - G[l] / double(M)).cwiseAbs().maxCoeff(), 1e-12 * G[l].cwiseAbs().maxCoeff() / double(M));
    }
    // Every row, or N·T, would differ: the test can tell.
    ASSERT_GT((A_all / double(N * T) - A[0] / double(M)).cwiseAbs().maxCoeff(), 1e-3);
  }
}

// The damped condition number's rank bound counts the kept positions: a model whose last layer is not linear
// (no softmax-shift null space) with N·C ≥ P but M·C < P has λ_min(F) = 0 by the bound, without Lanczos.
TEST(IgnoreIndex, DampedConditionRankBoundUsesTheKeptCount) {
  ModelSpec spec;
  spec.input_shape = {4};
  spec.layers = {LayerSpec::linear(4, 3), LayerSpec::activation(LayerType::tanh)};
  const Network<double> model(spec);  // P = 15
  const Vec<double> theta = init_parameters(model, 5);
  Dataset<double> data = random_dataset(model, 6, LikelihoodKind::categorical, 6);  // N·C = 18 ≥ 15
  for (Index n : {0, 2, 3, 5}) data.labels[static_cast<std::size_t>(n)] = -100;  // M·C = 6 < 15
  FisherOptions fo;
  const FisherOperator<double> F(model, theta, LikelihoodKind::categorical, data, fo);
  const ConditionEstimate c = damped_condition_number(F, 0.5);
  EXPECT_EQ(c.kind, ConditionMethod::rank_bound) << c.method;
  EXPECT_EQ(c.lambda_min, 0.5);
  // Without ignored labels the bound does not apply and Lanczos runs.
  data.labels = {0, 1, 2, 0, 1, 2};
  const FisherOperator<double> G(model, theta, LikelihoodKind::categorical, data, fo);
  EXPECT_NE(damped_condition_number(G, 0.5).kind, ConditionMethod::rank_bound);
}

}  // namespace
}  // namespace test
}  // namespace natgrad
