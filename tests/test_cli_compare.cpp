// `natgrad solve --compare empirical,mc,diagonal,kfac`: each approximation's product error over F's top
// eigenvectors and the cosine of its damped direction with the solved one, against the same quantities
// formed densely here from the forward pass alone: the exact, empirical and Monte-Carlo Fishers from the
// finite-difference Jacobian and the formula H_n or the documented label key, the diagonal, K-FAC's
// Kronecker factors formed by hand from the fixture's layer formulas (as tests/test_kfac.cpp does), Eigen's
// eigenvectors and solves; the times and product counts the report gives; and the combinations refused.
#include "cli_fixture.h"

#include <Eigen/Cholesky>
#include <Eigen/Eigenvalues>
#include <nlohmann/json.hpp>

#include <cmath>

using namespace natgrad;
using namespace natgrad::test;
using namespace natgrad::test::cli_fixture;

namespace {

double cosine(const Vec<double>& a, const Vec<double>& b) { return a.dot(b) / (a.norm() * b.norm()); }

using RowMat = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

// One K-FAC block: the weight (rows × cols row-major, then `rows` bias entries) at `offset`, its factors
// A ((cols + 1) square: the layer input with a trailing 1) and G (rows square).
struct KronBlock {
  Index offset, rows, cols;
  Mat<double> A, G;
};

// The fixture's K-FAC factors (kfac.h: exact kind, closed-form factor of H_n), by hand from the layer
// formulas of cli_fixture.h's model — conv 1→3 (3 × 3, padding 1) on 5 × 5, tanh, avgpool 2, flatten, linear
// 12 → 6, GELU (erf), linear 6 → 4:
//   A = 1/(N R) Σ_{n,r} ã_nr ã_nrᵀ over the layer's R input positions (a conv's 25 patches, ã = [a; 1]),
//   G = 1/N Σ_n Σ_r M_nr H_n M_nrᵀ, M_nr = (∂z_n/∂y_nr)ᵀ at output position r of the layer
// (Σ_k g_k g_kᵀ over the closed-form factor's columns L_k, H_n = Σ_k L_k L_kᵀ, is M H Mᵀ).
std::vector<KronBlock> hand_kfac(const Network<double>& model, const Vec<double>& theta,
                                 const Dataset<double>& data) {
  auto tensor = [&](const std::string& name) {
    for (const NamedParam& p : model.named_params())
      if (p.name == name)
        return Mat<double>(
            Eigen::Map<const RowMat>(theta.data() + p.offset, p.shape[0], p.size / p.shape[0]));
    ADD_FAILURE() << "no parameter " << name;
    return Mat<double>();
  };
  const Mat<double> Wc = tensor("0.weight"), bc = tensor("0.bias"), W1 = tensor("4.weight"),
                    b1 = tensor("4.bias"), W2 = tensor("6.weight"), b2 = tensor("6.bias");
  std::vector<KronBlock> blocks = {
      {model.param_offset(0), 3, 9, Mat<double>::Zero(10, 10), Mat<double>::Zero(3, 3)},
      {model.param_offset(4), 6, 12, Mat<double>::Zero(13, 13), Mat<double>::Zero(6, 6)},
      {model.param_offset(6), 4, 6, Mat<double>::Zero(7, 7), Mat<double>::Zero(4, 4)}};
  const Index N = data.size();
  Mat<double> Z(4, N);
  for (Index n = 0; n < N; ++n) {
    const Vec<double> x = data.inputs.col(n);
    Mat<double> patches(25, 10);  // row r = i·5 + j: the 3 × 3 window at (i, j), then 1
    for (Index i = 0; i < 5; ++i)
      for (Index j = 0; j < 5; ++j) {
        for (Index a = 0; a < 3; ++a)
          for (Index b = 0; b < 3; ++b) {
            const Index h = i - 1 + a, w = j - 1 + b;
            patches(i * 5 + j, a * 3 + b) = h < 0 || h >= 5 || w < 0 || w >= 5 ? 0.0 : x[h * 5 + w];
          }
        patches(i * 5 + j, 9) = 1;
      }
    Vec<double> y0(75), pooled(12);  // [3, 5, 5] and [3, 2, 2]
    for (Index o = 0; o < 3; ++o)
      for (Index r = 0; r < 25; ++r) y0[o * 25 + r] = Wc.row(o).dot(patches.row(r).head(9)) + bc(o, 0);
    const Vec<double> a1 = y0.array().tanh().matrix();
    Mat<double> pool = Mat<double>::Zero(12, 75);  // pooled = pool · a1
    for (Index o = 0; o < 3; ++o)
      for (Index pi = 0; pi < 2; ++pi)
        for (Index pj = 0; pj < 2; ++pj)
          for (Index di = 0; di < 2; ++di)
            for (Index dj = 0; dj < 2; ++dj)
              pool(o * 4 + pi * 2 + pj, o * 25 + (2 * pi + di) * 5 + 2 * pj + dj) = 0.25;
    pooled = pool * a1;
    const Vec<double> y1 = W1 * pooled + b1;
    const Vec<double> Phi = y1.unaryExpr([](double t) { return 0.5 * (1 + std::erf(t / std::sqrt(2.0))); });
    const Vec<double> phi = ((-0.5 * y1.array().square()).exp() / std::sqrt(2 * M_PI)).matrix();
    const Vec<double> a2 = y1.cwiseProduct(Phi);
    Z.col(n) = W2 * a2 + b2;
    const Mat<double> H =
        dense_output_fisher(LikelihoodKind::categorical, FisherKind::exact, Vec<double>(Z.col(n)), data, n);
    // ∂z/∂y1 = W2 diag(GELU'(y1)), GELU'(y) = Φ(y) + y φ(y); ∂z/∂y0 = ∂z/∂y1 · W1 · pool · diag(1 − a1²).
    const Mat<double> dz_dy1 = W2 * (Phi + y1.cwiseProduct(phi)).asDiagonal();
    const Mat<double> dz_dy0 =
        dz_dy1 * W1 * pool * Mat<double>((1 - a1.array().square()).matrix().asDiagonal());
    blocks[0].A += patches.transpose() * patches / 25.0;
    for (Index r = 0; r < 25; ++r) {
      Mat<double> M(3, 4);
      for (Index o = 0; o < 3; ++o) M.row(o) = dz_dy0.col(o * 25 + r).transpose();
      blocks[0].G += M * H * M.transpose();
    }
    Vec<double> t1(13), t2(7);
    t1 << pooled, 1.0;
    t2 << a2, 1.0;
    blocks[1].A += t1 * t1.transpose();
    blocks[1].G += dz_dy1.transpose() * H * dz_dy1;
    blocks[2].A += t2 * t2.transpose();
    blocks[2].G += H;
  }
  // The hand-written forward pass is the model's.
  EXPECT_LT(rel_err_vec(Z, model.predict(theta.data(), data.inputs)), 1e-13);
  for (KronBlock& b : blocks) {
    b.A /= double(N);
    b.G /= double(N);
  }
  return blocks;
}

// The K-FAC matrix densely in the parameter order: A ⊗ G per block (entry (o, c) of a block's rows × (cols +
// 1) matrix V, the bias as column `cols`, is parameter offset + o·cols + c, or offset + rows·cols + o),
// undamped or with the π-split damping (A + π√λ I) ⊗ (G + √λ/π I), π = √((tr A / dim A) / (tr G / dim G)).
Mat<double> dense_kfac(const std::vector<KronBlock>& blocks, Index P, double lambda) {
  Mat<double> K = Mat<double>::Zero(P, P);
  for (const KronBlock& b : blocks) {
    const Index d = b.A.rows(), m = b.rows;
    const double pi = std::sqrt((b.A.trace() / double(d)) / (b.G.trace() / double(m)));
    const Mat<double> A = b.A + pi * std::sqrt(lambda) * Mat<double>::Identity(d, d);
    const Mat<double> G = b.G + std::sqrt(lambda) / pi * Mat<double>::Identity(m, m);
    auto index = [&](Index o, Index c) {
      return b.offset + (c < b.cols ? o * b.cols + c : b.rows * b.cols + o);
    };
    for (Index o = 0; o < m; ++o)
      for (Index c = 0; c < d; ++c)
        for (Index o2 = 0; o2 < m; ++o2)
          for (Index c2 = 0; c2 < d; ++c2) K(index(o, c), index(o2, c2)) = G(o, o2) * A(c, c2);
  }
  return K;
}

}  // namespace

TEST_F(Cli, CompareApproximationsAgainstDenseOnes) {
  const double lambda = 1e-2;
  const Index k = 3;
  const Result r = run("solve " + base + " --dtype float64 --cg-tol 1e-11 --damping 1e-2 --spectrum 3 "
                       "--compare empirical,mc,diagonal,kfac --report " + p("cmp.json"));
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("approximations of F"), std::string::npos) << r.out;
  Loaded l = load();
  Network<double> model(l.m.spec);
  const Vec<double> theta = l.theta.cast<double>();
  const Dataset<double> data = l.data.cast<double>();
  const Index P = model.num_params(), N = data.size(), C = model.output_size();
  const Mat<double> I = Mat<double>::Identity(P, P);
  // Every Fisher from the finite-difference Jacobian and the formulas H_n (Monte-Carlo: one label per
  // sample from the documented key, seed 0).
  const Mat<double> J = jacobian_by_finite_differences(model, theta, data.inputs);
  const Mat<double> Z = model.predict(theta.data(), data.inputs);
  Mat<double> F = Mat<double>::Zero(P, P), Femp = F, Fmc = F;
  for (Index n = 0; n < N; ++n) {
    const Mat<double> Jn = J.middleRows(n * C, C);
    const Vec<double> zn = Z.col(n);
    F +=
        Jn.transpose() * dense_output_fisher(l.m.likelihood, FisherKind::exact, zn, data, n) * Jn / double(N);
    Femp += Jn.transpose() * dense_output_fisher(l.m.likelihood, FisherKind::empirical, zn, data, n) * Jn /
            double(N);
    Fmc += Jn.transpose() * mc_output_fisher(l.m.likelihood, zn, /*seed=*/0, n, 1) * Jn / double(N);
  }
  const Vec<double> g = gradient_by_finite_differences(
      [&](const Vec<double>& t) {
        return categorical_nll(model.predict(t.data(), data.inputs), data.labels);
      },
      theta);
  const Vec<double> d = (F + lambda * I).llt().solve(g);
  const Eigen::SelfAdjointEigenSolver<Mat<double>> es(F);
  auto product_error = [&](const Mat<double>& A) {
    double worst = 0;
    for (Index i = 0; i < k; ++i) {
      const double theta_i = es.eigenvalues()[P - 1 - i];
      const Vec<double> u = es.eigenvectors().col(P - 1 - i);
      worst = std::max(worst, (A * u - theta_i * u).norm() / theta_i);
    }
    return worst;
  };
  const std::vector<KronBlock> kfac = hand_kfac(model, theta, data);
  const Mat<double> Kdense = dense_kfac(kfac, P, 0);
  const Vec<double> dk = dense_kfac(kfac, P, lambda).llt().solve(g);
  // (The blocks cover every parameter: no diagonal part.)
  ASSERT_EQ(kfac.back().offset + kfac.back().rows * (kfac.back().cols + 1), P);
  const Mat<double> Fdiag = Femp.diagonal().asDiagonal();
  struct Want {
    const char* kind;
    double error, cos;
  };
  const Want want[] = {
      {"empirical", product_error(Femp), cosine((Femp + lambda * I).llt().solve(g), d)},
      {"mc", product_error(Fmc), cosine((Fmc + lambda * I).llt().solve(g), d)},
      {"diagonal", product_error(Fdiag), cosine((Fdiag + lambda * I).llt().solve(g), d)},
      {"kfac", product_error(Kdense), cosine(dk, d)},
  };
  const auto j = nlohmann::json::parse(slurp(p("cmp.json")));
  ASSERT_EQ(j["compare"].size(), 4u);
  double rows_s = 0;
  for (std::size_t i = 0; i < 4; ++i) {
    SCOPED_TRACE(want[i].kind);
    const auto& e = j["compare"][i];
    EXPECT_EQ(e["kind"].get<std::string>(), want[i].kind);
    EXPECT_NEAR(e["product_relative_error"].get<double>(), want[i].error, 1e-6 * want[i].error);
    EXPECT_NEAR(e["direction_cosine"].get<double>(), want[i].cos, 1e-7);
    // Every approximation does work (forms a diagonal or factors, or runs products): a positive time.
    EXPECT_GT(e["time_s"].get<double>(), 0.0);
    rows_s += e["time_s"].get<double>();
    // The empirical and Monte-Carlo operators' products: one per top eigenvector for the product error, then
    // their own damped CG (one per iteration, and the recomputed true residual); none for diagonal and K-FAC,
    // which are formed without F's products.
    if (i < 2) {
      const Index iterations = e["cg_iterations"].get<Index>();
      EXPECT_GT(iterations, 0);
      EXPECT_GE(e["products"].get<Index>(), k + iterations + 1);
      EXPECT_LE(e["products"].get<Index>(), k + 2 * iterations + 2);
    } else {
      EXPECT_EQ(e["products"].get<Index>(), 0);
    }
  }
  // The rows' times are parts of the report's compare time, which is part of the total: the rows add up to it
  // up to what happens between them (microseconds: moving a row into the list; the slack allows for the
  // process being descheduled there on a busy machine), and the phases to at most the total.
  const auto& t = j["timing_s"];
  const double compare_s = t["compare"].get<double>();
  EXPECT_LE(rows_s, compare_s + 1e-9);
  EXPECT_GE(rows_s, 0.9 * compare_s - 0.05) << "the compare time is not the rows' times";
  EXPECT_LE(t["forward"].get<double>() + t["gradient"].get<double>() + t["cg"].get<double>() +
                t["spectrum"].get<double>() + compare_s,
            t["total"].get<double>() + 1e-9);
  // (The approximations differ from F here, so the test cannot pass with a copy of the exact direction.)
  for (const Want& w : want) EXPECT_LT(w.cos, 0.9999) << w.kind;
}

TEST_F(Cli, CompareRefusals) {
  const std::string solve = "solve " + base;
  struct Case {
    std::string args, message;
  };
  const Case cases[] = {
      {" --spectrum 3 --compare kfac,foo", "unknown approximation"},
      {" --spectrum 3 --compare kfac,kfac", "twice"},
      {" --compare kfac", "--spectrum"},
      {" --spectrum 3 --damping 0 --compare kfac", "damping > 0"},
      {" --spectrum 3 --damping 1e-1,1e-2 --compare kfac", "damping > 0"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.args);
    const Result r = run(solve + c.args);
    EXPECT_EQ(r.code, 2);
    EXPECT_NE(r.err.find(c.message), std::string::npos) << r.err;
  }
  const Result pre = run(solve + " --deflate 2 --preconditioner kfac");
  EXPECT_EQ(pre.code, 2);
  EXPECT_NE(pre.err.find("do not combine"), std::string::npos) << pre.err;
}
