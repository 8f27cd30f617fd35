// `natgrad profile`: one row per node in the model's order, FLOPs counted here from the layer shapes (not
// from the library's cost model), shares consistent with the times and summing to the whole product, and the
// library's OperatorProfile (on only when asked, counting its products, its thread times within the products'
// wall time).
#include "cli_fixture.h"

#include <natgrad/core/threads.h>

#include <nlohmann/json.hpp>

#include <chrono>
#include <map>

using namespace natgrad;
using namespace natgrad::test;
using namespace natgrad::test::cli_fixture;

TEST_F(Cli, ProfileReportsEveryNode) {
  const Result r = run("profile " + base + " --products 3 --report " + p("prof.json"));
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("gemm/1024"), std::string::npos) << r.out;
  const auto j = nlohmann::json::parse(slurp(p("prof.json")));
  Loaded l = load();
  const Network<float>& model = *l.model;
  ASSERT_EQ(j["nodes"].size(), model.num_layers());
  EXPECT_EQ(j["products"].get<Index>(), 3);
  EXPECT_GT(j["gemm_gflops"].get<double>(), 0.0);
  const double N = 40;
  // conv2d 1→3 3×3 on 5×5 (its input has no tangent: R-op dW·X, backprop the weight gradient only); linear
  // 12→6 and 6→4 (R-op dW·X + W·dX, backprop W^T g and the weight gradient).
  const std::map<std::string, double> flops = {{"0", 2 * 3 * 9 * 25 * N * 2}, {"4", 2 * 12 * 6 * N * 4},
                                               {"6", 2 * 6 * 4 * N * 4}};
  double total = j["curvature_s"].get<double>() + j["reduction_s"].get<double>();
  for (const auto& e : j["nodes"]) total += e["rop_s"].get<double>() + e["backprop_s"].get<double>() + e["gradient_s"].get<double>();
  ASSERT_GT(total, 0.0);
  double shares = 0;
  for (std::size_t i = 0; i < model.num_layers(); ++i) {
    const auto& e = j["nodes"][i];
    SCOPED_TRACE(model.node_id(i));
    shares += e["share"].get<double>();
    EXPECT_EQ(e["node"].get<std::string>(), model.node_id(i));
    EXPECT_EQ(e["op"].get<std::string>(), model.layer(i).name());
    const auto it = flops.find(model.node_id(i));
    EXPECT_DOUBLE_EQ(e["flops_product"].get<double>(), it == flops.end() ? 0.0 : it->second);
    if (it != flops.end()) {
      EXPECT_GT(e["forward_s"].get<double>(), 0.0);
      EXPECT_GT(e["rop_s"].get<double>(), 0.0);
      EXPECT_GT(e["gradient_s"].get<double>(), 0.0);
    }
    const double mine = e["rop_s"].get<double>() + e["backprop_s"].get<double>() + e["gradient_s"].get<double>();
    EXPECT_NEAR(e["share"].get<double>(), mine / total, 1e-9);
  }
  // The nodes' shares and the output curvature's and the reduction's parts of the product's thread time are
  // the whole of it.
  EXPECT_NEAR(shares + (j["curvature_s"].get<double>() + j["reduction_s"].get<double>()) / total, 1.0, 1e-9);
  EXPECT_GT(j["curvature_s"].get<double>(), 0.0);
  EXPECT_GT(j["product_s"].get<double>(), 0.0);
  EXPECT_EQ(run("profile " + base + " --products 0").code, 2);
  const Result refused = run("profile " + base + " --cg-tol 1e-3");
  EXPECT_EQ(refused.code, 2);
  EXPECT_NE(refused.err.find("--cg-tol is not an option of `natgrad profile`"), std::string::npos) << refused.err;
}

TEST(OperatorProfile, OnlyWhenAskedAndCountingProducts) {
  const Network<double> model(mlp_spec(5, 6, 3));
  const Vec<double> theta = init_parameters(model, 1);
  const Dataset<double> data = random_dataset(model, 30, LikelihoodKind::categorical, 2);
  const Vec<double> v = random_vec<double>(theta.size(), 3);
  Vec<double> y(theta.size()), y_profiled(theta.size());
  FisherOptions fo;
  const FisherOperator<double> plain(model, theta, LikelihoodKind::categorical, data, fo);
  fo.profile = true;
  const FisherOperator<double> timed(model, theta, LikelihoodKind::categorical, data, fo);
  plain.perform_op(v.data(), y.data());
  const auto t0 = std::chrono::steady_clock::now();
  timed.perform_op(v.data(), y_profiled.data());
  timed.perform_op(v.data(), y_profiled.data());
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_TRUE(y == y_profiled);  // timing changes no result
  const OperatorProfile off = plain.profile(), on = timed.profile();
  EXPECT_EQ(off.products, 0);
  for (double t : off.rop_s) EXPECT_EQ(t, 0.0);
  EXPECT_EQ(on.products, 2);
  for (std::size_t l : {0u, 2u, 4u}) {  // the linear layers
    EXPECT_GT(on.forward_s[l], 0.0);
    EXPECT_GT(on.rop_s[l], 0.0);
    EXPECT_GT(on.gradient_s[l], 0.0);
  }
  // The passes' times are thread times summed over the operator's T threads, each measured inside a product:
  // together at most T times the products' wall time.
  double passes = on.curvature_s + on.reduction_s;
  for (std::size_t l = 0; l < model.num_layers(); ++l)
    passes += on.rop_s[l] + on.backprop_s[l] + on.gradient_s[l];
  EXPECT_GT(on.curvature_s, 0.0);
  EXPECT_LE(passes, double(resolve_threads(0)) * wall);
  timed.reset_profile();
  const OperatorProfile cleared = timed.profile();
  EXPECT_EQ(cleared.products, 0);
  EXPECT_EQ(cleared.rop_s[0], 0.0);
  EXPECT_GT(cleared.forward_s[0], 0.0);  // the forward pass's times stay
}
