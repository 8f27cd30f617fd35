// `natgrad solve --compare empirical,mc,diagonal,kfac`: each approximation's product error over F's top
// eigenvectors and the cosine of its damped direction with the solved one, against the same quantities
// formed densely here (the empirical and Monte-Carlo Fishers from the backprop Jacobian and the formula
// H_n or the documented label key, the diagonal, Eigen's eigenvectors and solves; K-FAC's direction from its
// damped inverse, whose factors test_kfac checks against hand-formed ones), and the combinations refused.
#include "cli_fixture.h"

#include <natgrad/curvature/kfac.h>

#include <Eigen/Cholesky>
#include <Eigen/Eigenvalues>
#include <nlohmann/json.hpp>

using namespace natgrad;
using namespace natgrad::test;
using namespace natgrad::test::cli_fixture;

namespace {

double cosine(const Vec<double>& a, const Vec<double>& b) { return a.dot(b) / (a.norm() * b.norm()); }

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
  const Mat<double> F = dense_fisher(model, theta, data, l.m.likelihood, FisherKind::exact);
  const Mat<double> Femp = dense_fisher(model, theta, data, l.m.likelihood, FisherKind::empirical);
  Mat<double> Fmc = Mat<double>::Zero(P, P);
  const Mat<double> J = jacobian_by_backprop(model, theta, data.inputs);
  const Mat<double> Z = model.predict(theta.data(), data.inputs);
  for (Index n = 0; n < N; ++n) {
    const Mat<double> Jn = J.middleRows(n * C, C);
    Fmc += Jn.transpose() * mc_output_fisher(l.m.likelihood, Z.col(n), /*seed=*/0, n, 1) * Jn / double(N);
  }
  FisherOptions fo;
  fo.damping = lambda;
  const FisherOperator<double> op(model, theta, l.m.likelihood, data, fo);
  const Vec<double> g = op.gradient();
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
  KfacApproximation<double> K(op);
  K.set_damping(lambda);
  Vec<double> dk(P);
  K.apply(g.data(), dk.data());
  Mat<double> Kdense(P, P);
  for (Index j = 0; j < P; ++j) {
    const Vec<double> e = Vec<double>::Unit(P, j);
    Vec<double> y(P);
    K.multiply(e.data(), y.data());
    Kdense.col(j) = y;
  }
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
  for (std::size_t i = 0; i < 4; ++i) {
    SCOPED_TRACE(want[i].kind);
    const auto& e = j["compare"][i];
    EXPECT_EQ(e["kind"].get<std::string>(), want[i].kind);
    EXPECT_NEAR(e["product_relative_error"].get<double>(), want[i].error, 1e-6 * want[i].error);
    EXPECT_NEAR(e["direction_cosine"].get<double>(), want[i].cos, 1e-7);
    EXPECT_GE(e["time_s"].get<double>(), 0.0);
    EXPECT_EQ(e["products"].get<Index>() > 0, i < 2);  // the operators' products; none for diagonal and K-FAC
  }
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
