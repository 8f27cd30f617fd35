// `natgrad solve --solver smw|auto` and `natgrad spectrum --exact` (issue 26): the directions of one damping
// and of a list against Eigen's dense solves on the dense Fisher (float64), the exact spectrum against the
// dense eigenvalues, what auto says it chose, and the combinations refused with one line and exit 2.
#include "cli_fixture.h"

#include <Eigen/Cholesky>
#include <Eigen/Eigenvalues>
#include <nlohmann/json.hpp>

#include <natgrad/io/safetensors.h>

#include <algorithm>
#include <cmath>

using namespace natgrad;
using namespace natgrad::test;
using namespace natgrad::test::cli_fixture;

TEST_F(Cli, GramSolvesEqualTheDenseSolvesForOneDampingAndForAList) {
  const std::string solve = "solve " + base + " --dtype float64 --solver smw";
  const Result one = run(solve + " --damping 1e-3 --output " + p("g1.safetensors") + " --report " + p("g1.json") +
                         " --spectrum 3");
  ASSERT_EQ(one.code, 0) << one.err;
  const Result list = run(solve + " --damping 1e-1,1e-3,1e-2 --output " + p("gl.safetensors") + " --report " +
                          p("gl.json"));
  ASSERT_EQ(list.code, 0) << list.err;
  Loaded l = load();
  Network<double> model(l.m.spec);
  const Vec<double> theta = l.theta.cast<double>();
  const Dataset<double> data = l.data.cast<double>();
  const Mat<double> Fd = dense_fisher(model, theta, data, l.m.likelihood, FisherKind::exact);
  FisherOperator<double> op(model, theta, l.m.likelihood, data);
  const Vec<double> g = op.gradient();
  auto dense = [&](double lambda) {
    const Mat<double> A = Fd + lambda * Mat<double>::Identity(Fd.rows(), Fd.cols());
    return Vec<double>(A.llt().solve(g));
  };
  const Vec<double> d1 = load_parameters<double>(p("g1.safetensors"), model);
  EXPECT_LT((d1 - dense(1e-3)).norm() / dense(1e-3).norm(), 1e-10);
  const auto j = nlohmann::json::parse(slurp(p("g1.json")));
  EXPECT_EQ(j["solver"], "smw");
  EXPECT_EQ(j["gram"]["form"], "push-through");
  EXPECT_EQ(j["gram"]["rows"].get<Index>(), data.size() * model.output_size());
  EXPECT_LT(j["gram"]["true_relative_residual"].get<double>(), 1e-12);
  EXPECT_EQ(j["cg"]["products"].get<Index>(), 1);
  // The exact spectrum: the top 3 of the dense eigenvalues, the trace, and the zeros.
  Eigen::SelfAdjointEigenSolver<Mat<double>> es(Fd);
  const Index P = Fd.rows();
  const double top = es.eigenvalues()(P - 1);
  for (Index i = 0; i < 3; ++i)
    EXPECT_LT(std::abs(j["spectrum"]["eigenvalues"][i].get<double>() - es.eigenvalues()(P - 1 - i)) / top, 1e-10);
  EXPECT_TRUE(j["spectrum"]["exact"].get<bool>());
  EXPECT_LT(std::abs(j["spectrum"]["trace"].get<double>() - Fd.trace()) / Fd.trace(), 1e-10);
  Index nonzero = 0;
  for (Index i = 0; i < P; ++i) nonzero += es.eigenvalues()(i) > 1e-10 * top ? 1 : 0;
  EXPECT_EQ(j["spectrum"]["nonzero"].get<Index>(), nonzero);
  EXPECT_NEAR(j["condition"]["condition_number"].get<double>(), (top + 1e-3) / 1e-3, 1e-9 * (top + 1e-3) / 1e-3);
  // A list: each damping's file, as the single solves would give it, from one Gram.
  const auto jl = nlohmann::json::parse(slurp(p("gl.json")));
  ASSERT_EQ(jl["solves"].size(), 3u);
  for (const auto& [lambda, file] : std::vector<std::pair<double, std::string>>{
           {1e-1, "gl_1e-01.safetensors"}, {1e-3, "gl_1e-03.safetensors"}, {1e-2, "gl_1e-02.safetensors"}}) {
    SCOPED_TRACE(file);
    const Vec<double> d = load_parameters<double>(p(file), model);
    EXPECT_LT((d - dense(lambda)).norm() / dense(lambda).norm(), 1e-10);
  }
  EXPECT_EQ(list.out.find("multi-shift"), std::string::npos) << list.out;
}

TEST_F(Cli, AutoSaysWhichSolverRanAndSpectrumExactMatchesLanczos) {
  const Result a = run("solve " + base + " --dtype float64 --solver auto --damping 1e-2 --report " + p("auto.json"));
  ASSERT_EQ(a.code, 0) << a.err;
  const auto j = nlohmann::json::parse(slurp(p("auto.json")));
  EXPECT_EQ(j["solver"], "smw");  // a small batch: the Gram
  EXPECT_NE(j["solver_reason"].get<std::string>().find("auto chose smw"), std::string::npos);
  EXPECT_NE(a.out.find("solver: auto chose smw"), std::string::npos) << a.out;
  // auto with a preconditioner: CG, and it says why.
  const Result c = run("solve " + base + " --solver auto --damping 1e-2 --preconditioner diagonal --report " +
                       p("auto_cg.json"));
  ASSERT_EQ(c.code, 0) << c.err;
  const auto jc = nlohmann::json::parse(slurp(p("auto_cg.json")));
  EXPECT_EQ(jc["solver"], "cg");
  EXPECT_NE(jc["solver_reason"].get<std::string>().find("preconditioner diagonal"), std::string::npos);

  const Result e = run("spectrum " + base + " --dtype float64 --exact --top 4 --report " + p("exact.json"));
  ASSERT_EQ(e.code, 0) << e.err;
  const Result lz = run("spectrum " + base + " --dtype float64 --top 4 --report " + p("lanczos.json"));
  ASSERT_EQ(lz.code, 0) << lz.err;
  const auto je = nlohmann::json::parse(slurp(p("exact.json"))), jz = nlohmann::json::parse(slurp(p("lanczos.json")));
  const double top = je["spectrum"]["eigenvalues"][0].get<double>();
  for (int i = 0; i < 4; ++i)
    EXPECT_LT(std::abs(je["spectrum"]["eigenvalues"][i].get<double>() - jz["spectrum"]["eigenvalues"][i].get<double>()) / top,
              1e-8);
  EXPECT_EQ(je["spectrum"]["zero_count"].get<Index>() + je["spectrum"]["nonzero"].get<Index>(),
            je["params"].get<Index>());
  EXPECT_NE(e.out.find("trace of F"), std::string::npos) << e.out;
}

TEST_F(Cli, ExactEigenvectorsAreEigenvectorsOfTheDenseFisherAndCompareRunsOnThem) {
  const Result e = run("spectrum " + base + " --dtype float64 --exact --top 3 --eigenvectors " + p("ev.safetensors") +
                       " --report " + p("ev.json"));
  ASSERT_EQ(e.code, 0) << e.err;
  Loaded l = load();
  Network<double> model(l.m.spec);
  const Mat<double> Fd = dense_fisher(model, Vec<double>(l.theta.cast<double>()), l.data.cast<double>(),
                                      l.m.likelihood, FisherKind::exact);
  const auto j = nlohmann::json::parse(slurp(p("ev.json")));
  const SafetensorsFile f = SafetensorsFile::read(p("ev.safetensors"));
  for (Index i = 0; i < 3; ++i) {
    Vec<double> v(model.num_params());
    for (const NamedParam& np : model.named_params()) {
      ASSERT_EQ(f.info(np.name).shape.front(), 3);
      const std::vector<double> t = f.get<double>(np.name);
      for (Index e = 0; e < np.size; ++e) v[np.offset + e] = t[static_cast<std::size_t>(i * np.size + e)];
    }
    const double mu = j["spectrum"]["eigenvalues"][i].get<double>();
    EXPECT_NEAR(v.norm(), 1.0, 1e-10);
    EXPECT_LT((Fd * v - mu * v).norm() / j["spectrum"]["eigenvalues"][0].get<double>(), 1e-10) << i;
  }
  // --compare on the exact eigenvectors: the comparison is made, K-FAC's product error is finite.
  const Result c = run("solve " + base + " --dtype float64 --solver smw --damping 1e-2 --spectrum 3 --compare kfac "
                       "--report " + p("cmp.json"));
  ASSERT_EQ(c.code, 0) << c.err;
  const auto jc = nlohmann::json::parse(slurp(p("cmp.json")));
  ASSERT_EQ(jc["compare"].size(), 1u);
  EXPECT_GT(jc["compare"][0]["direction_cosine"].get<double>(), 0.0);
  EXPECT_TRUE(std::isfinite(jc["compare"][0]["product_relative_error"].get<double>()));
}

TEST_F(Cli, GramSolverRefusalsAreOneLine) {
  for (const std::string& bad :
       {"solve " + base + " --solver smw --damping 0", "solve " + base + " --solver smw --damping 1e-2 --deflate 2",
        "solve " + base + " --solver smw --damping 1e-2 --preconditioner kfac",
        "solve " + base + " --solver smw --damping 1e-1,0", "solve " + base + " --solver gram --damping 1e-2",
        "spectrum " + base + " --exact --density", "spectrum " + base + " --exact --trace"}) {
    const Result b = run(bad);
    EXPECT_EQ(b.code, 2) << bad << "\n" << b.err;
    EXPECT_EQ(std::count(b.err.begin(), b.err.end(), '\n'), 1) << b.err;
  }
  const Result z = run("solve " + base + " --solver smw --damping 0");
  EXPECT_NE(z.err.find("give λ > 0"), std::string::npos) << z.err;
}

TEST_F(Cli, GramThatDoesNotFitIsRefusedBeforeAnythingRuns) {
  // 2 kB cannot hold the Gram (nor the rest): the estimate names the Gram's part, and nothing is written.
  const Result r = run("solve " + base + " --solver smw --damping 1e-2 --max-memory 0.000002 --output " +
                       p("never.safetensors"));
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("Gram "), std::string::npos) << r.err;
  EXPECT_FALSE(exists(p("never.safetensors")));
}
