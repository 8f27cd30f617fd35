// `natgrad solve --damping l1,l2,...`: every damping's direction (one file each, named by %.0e) against
// Eigen's dense solve of (F + λ I) d = g on the dense Fisher, the report's `solves` list, the products of
// the smallest damping alone (float64), and the combinations refused.
#include "cli_fixture.h"

#include <Eigen/Cholesky>
#include <Eigen/Eigenvalues>
#include <nlohmann/json.hpp>

#include <algorithm>

using namespace natgrad;
using namespace natgrad::test;
using namespace natgrad::test::cli_fixture;

TEST_F(Cli, SeveralDampingsFromOneKrylovSpaceAgainstTheDenseSolves) {
  const std::string solve = "solve " + base + " --dtype float64 --cg-tol 1e-10";
  const Result r = run(solve + " --damping 1e-1,1e-3,1e-2 --output " + p("md.safetensors") + " --report " +
                       p("md.json") + " --spectrum 3");
  ASSERT_EQ(r.code, 0) << r.err;
  Loaded l = load();
  Network<double> model(l.m.spec);
  const Vec<double> theta = l.theta.cast<double>();
  const Dataset<double> data = l.data.cast<double>();
  const Mat<double> Fd = dense_fisher(model, theta, data, l.m.likelihood, FisherKind::exact);
  FisherOperator<double> op(model, theta, l.m.likelihood, data);
  const Vec<double> g = op.gradient();
  const auto j = nlohmann::json::parse(slurp(p("md.json")));
  ASSERT_EQ(j["solves"].size(), 3u);
  const std::vector<std::pair<double, std::string>> expected = {
      {1e-1, "md_1e-01.safetensors"}, {1e-3, "md_1e-03.safetensors"}, {1e-2, "md_1e-02.safetensors"}};
  Index most = 0;
  for (std::size_t i = 0; i < expected.size(); ++i) {
    const double lambda = expected[i].first;
    SCOPED_TRACE("damping " + std::to_string(lambda));
    const auto& e = j["solves"][i];
    EXPECT_EQ(e["damping"].get<double>(), lambda);
    EXPECT_TRUE(e["cg"]["converged"].get<bool>()) << e["cg"]["message"];
    EXPECT_LE(e["cg"]["relative_residual"].get<double>(), 1e-10);
    EXPECT_EQ(e["output"].get<std::string>(), p(expected[i].second));
    const Vec<double> d = load_parameters<double>(p(expected[i].second), model);
    const Mat<double> A = Fd + lambda * Mat<double>::Identity(Fd.rows(), Fd.cols());
    const Vec<double> ref = A.llt().solve(g);
    EXPECT_LT((d - ref).norm() / ref.norm(), 1e-8);
    // The condition number of F + λI: (λ_max + λ) / λ (the softmax shift makes F singular).
    Eigen::SelfAdjointEigenSolver<Mat<double>> es(Fd);
    const double want = (es.eigenvalues()[Fd.rows() - 1] + lambda) / lambda;
    EXPECT_NEAR(e["condition"]["condition_number"].get<double>(), want, 1e-7 * want);
    most = std::max(most, e["cg"]["iterations"].get<Index>());
  }
  // The smallest damping needs the most iterations; the whole run needs its products and one residual check
  // per damping (in float64 no system needs finishing), the same products as a plain CG at that damping
  // plus the two other checks.
  EXPECT_EQ(most, j["solves"][1]["cg"]["iterations"].get<Index>());
  EXPECT_EQ(j["multi_shift_products"].get<Index>(), most + 3);
  const Result plain = run(solve + " --damping 1e-3 --report " + p("plain.json"));
  ASSERT_EQ(plain.code, 0) << plain.err;
  const auto jp = nlohmann::json::parse(slurp(p("plain.json")));
  EXPECT_EQ(j["multi_shift_products"].get<Index>(), jp["cg"]["products"].get<Index>() + 2);
  EXPECT_EQ(j["cg"]["iterations"].get<Index>(), most);  // "cg" is the smallest damping's
  EXPECT_NE(r.out.find("damping 0.001: CG converged"), std::string::npos) << r.out;
  EXPECT_FALSE(exists(p("md.safetensors")));

  // Refused, with nothing written: a preconditioner, deflation, a list elsewhere than solve, duplicates,
  // two dampings that would share a file name, and a malformed list.
  for (const std::string& bad :
       {solve + " --damping 1e-1,1e-2 --preconditioner diagonal", solve + " --damping 1e-1,1e-2 --deflate 2",
        "fvp " + base + " --vector " + p("v.safetensors") + " --damping 1e-1,1e-2",
        "spectrum " + base + " --damping 1e-1,1e-2", solve + " --damping 1e-2,1e-2",
        solve + " --damping 1e-3,1.2e-3 --output " + p("clash.safetensors"), solve + " --damping 1e-2,,1e-1",
        solve + " --damping 1e-2,abc", solve + " --damping 1e-2,-1"}) {
    const Result b = run(bad);
    EXPECT_EQ(b.code, 2) << bad << "\n" << b.err;
    EXPECT_EQ(std::count(b.err.begin(), b.err.end(), '\n'), 1) << b.err;
  }
  EXPECT_FALSE(exists(p("clash_1e-03.safetensors")));
}
