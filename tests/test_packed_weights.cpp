// Weights packed once per pass (PackedWeights, network.h): a Fisher-vector product runs the same weight GEMMs
// on every chunk of samples, and packs each weight once for all of them instead of once per chunk.
//   - gemm_packed (lib/core/gemm.h) on an operand packed piece by piece, in any order, equals Eigen's own
//     product bit for bit, for both storage orders, shapes on both sides of Eigen's depth and column blocks,
//     row counts off the kernel's panel, float and double;
//   - the R-op and backprop on packed weights equal the same passes packing per chunk bit for bit, and do
//     read the packed operands (packed from other parameters they give other results);
//   - the plan packs the linear nodes whose chunks have few GEMM columns, within its budget.
#include "core/gemm.h"
#include "curvature/fisher_plan.h"
#include "test_helpers.h"

using namespace natgrad;
using namespace natgrad::test;

template <typename Scalar>
class PackedLhsGemm : public ::testing::Test {};
using ScalarTypes = ::testing::Types<float, double>;
TYPED_TEST_SUITE(PackedLhsGemm, ScalarTypes);

TYPED_TEST(PackedLhsGemm, EqualsEigensProductBitForBit) {
  using Scalar = TypeParam;
  using RowMat = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  using Buffer = std::vector<Scalar, Eigen::aligned_allocator<Scalar>>;
  struct Shape3 {
    Index m, n, k;
  };
  // Depths above Eigen's depth block (on AVX-512 at most 936 for float and 872 for double: two or more
  // blocks), rows that are not a multiple of the kernel's panel and more than one packing piece, more columns
  // than its column block (700 at depth 600), one column, a depth of one.
  for (Shape3 s : {Shape3{1024, 64, 1024}, Shape3{300, 40, 2000}, Shape3{10, 97, 1024}, Shape3{527, 3, 77},
                   Shape3{100, 700, 600}, Shape3{33, 1, 700}, Shape3{61, 17, 1}}) {
    const Mat<Scalar> A = random_mat<Scalar>(s.m, s.k, 1), B = random_mat<Scalar>(s.k, s.n, 2);
    const RowMat Ar = A, Br = B;
    const Mat<Scalar> C0 = random_mat<Scalar>(s.m, s.n, 3);
    for (bool a_row : {false, true})
      for (bool b_row : {false, true})
        for (bool accumulate : {false, true}) {
          SCOPED_TRACE(std::to_string(s.m) + "x" + std::to_string(s.n) + "x" + std::to_string(s.k) +
                       (a_row ? " A row-major" : " A col-major") +
                       (b_row ? ", B row-major" : ", B col-major") + (accumulate ? " +=" : " ="));
          Mat<Scalar> expected = accumulate ? C0 : Mat<Scalar>::Zero(s.m, s.n);
          expected.noalias() += A * B;

          detail::PackedLhs<Scalar> P(s.m, s.k);
          Buffer packed(static_cast<std::size_t>(P.size()));
          P.data = packed.data();
          const auto a = a_row ? detail::row_major(Ar.data(), s.k) : detail::col_major(A.data(), s.m);
          for (Index p = P.pieces(); p-- > 0;) detail::pack_lhs(a, P, p);  // any order, any thread
          Buffer pack(static_cast<std::size_t>(detail::gemm_packed_rhs_size(P, s.n)) + 1);
          EXPECT_LE(detail::gemm_packed_rhs_size(P, s.n), detail::gemm_pack_size<Scalar>(s.m, s.n, s.k));
          Mat<Scalar> C = accumulate ? C0 : Mat<Scalar>::Constant(s.m, s.n, Scalar(7));
          const auto b = b_row ? detail::row_major(Br.data(), s.n) : detail::col_major(B.data(), s.k);
          detail::gemm_packed(s.n, P, b, C.data(), s.m, accumulate, pack.data() + 1);  // unaligned space
          if (s.n > 1) {
            EXPECT_TRUE((C.array() == expected.array()).all())
                << "max difference " << (C - expected).cwiseAbs().maxCoeff();
          } else {
            // One column: Eigen runs a matrix-vector product, which sums in another order; `gemm` (packing
            // per call, itself checked against Eigen's product in test_allocation) runs the same kernel.
            Mat<Scalar> G = accumulate ? C0 : Mat<Scalar>::Zero(s.m, s.n);
            Buffer gpack(static_cast<std::size_t>(detail::gemm_pack_size<Scalar>(s.m, s.n, s.k)));
            detail::gemm(s.m, s.n, s.k, a, b, G.data(), s.m, accumulate, gpack.data());
            EXPECT_TRUE((C.array() == G.array()).all());
            EXPECT_LT(rel_err_vec(C, expected), (std::is_same<Scalar, float>::value ? 1e-5 : 1e-13));
          }
        }
  }
}

namespace {
// Runs the R-op and backprop over every chunk with and without packed weights (packed from theta_p and v_p)
// and reports whether every output and stored cotangent is the same bit for bit.
template <typename Scalar>
bool passes_equal_with_packed(const Network<Scalar>& model, const Vec<Scalar>& theta, const Vec<Scalar>& v,
                              const Vec<Scalar>& theta_p, const Vec<Scalar>& v_p, Index N, Index chunk) {
  const Mat<Scalar> X = random_mat<Scalar>(model.input_size(), N, 4);
  ForwardCache<Scalar> cache = model.make_cache(X);
  model.forward(theta.data(), cache, 0, N);
  PackedWeights<Scalar> packed = model.make_packed_weights(std::vector<bool>(model.num_layers(), true));
  for (Index p = 0; p < packed.pieces(); ++p) model.pack_weights(theta_p.data(), v_p.data(), p, packed);
  Workspace<Scalar> plain = model.make_workspace(chunk), fast = model.make_workspace(chunk);
  CotangentCache<Scalar> cot_plain = model.make_cotangents(N), cot_fast = model.make_cotangents(N);
  const Mat<Scalar> gZ = random_mat<Scalar>(model.output_size(), N, 5);
  const Index C = model.output_size();
  bool equal = true;
  for (Index c0 = 0; c0 < N; c0 += chunk) {
    const Index n = std::min(chunk, N - c0);
    model.jvp(theta.data(), v.data(), cache, c0, n, plain);
    model.jvp(theta.data(), v.data(), cache, c0, n, fast, &packed);
    equal = equal && (ConstMatMap<Scalar>(plain.result(), C, n).array() ==
                      ConstMatMap<Scalar>(fast.result(), C, n).array())
                         .all();
    const ConstMatMap<Scalar> g(gZ.data() + c0 * C, C, n);
    model.backprop_cotangents(theta.data(), cache, c0, n, g, cot_plain, plain);
    model.backprop_cotangents(theta.data(), cache, c0, n, g, cot_fast, fast, &packed);
  }
  for (std::size_t l = 0; l < model.num_layers(); ++l)
    equal = equal && (cot_plain.g[l].array() == cot_fast.g[l].array()).all();
  return equal;
}

// Linear nodes reading the model input (dW only) and hidden values (dW, W, Wᵀ); a sequence input (each
// sample 5 rows of 24: 5 GEMM columns per sample); a graph whose linear reads a convolution's output.
std::vector<std::pair<const char*, ModelSpec>> packed_models() {
  ModelSpec seq;
  seq.input_shape = {5, 24};
  seq.layers = {LayerSpec::linear(24, 70), LayerSpec::activation(LayerType::gelu), LayerSpec::linear(70, 24),
                LayerSpec::layer_norm({24}), LayerSpec::linear(24, 7, false)};
  return {{"mlp 300-520-520-5", mlp_spec(300, 520, 5)}, {"sequence", seq}, {"cnn", cnn_spec(4)}};
}
}  // namespace

template <typename Scalar>
class PackedWeightsPasses : public ::testing::Test {};
TYPED_TEST_SUITE(PackedWeightsPasses, ScalarTypes);

TYPED_TEST(PackedWeightsPasses, EqualPackingPerChunkBitForBitAndReadThePackedOperands) {
  using Scalar = TypeParam;
  for (const auto& [label, spec] : packed_models()) {
    SCOPED_TRACE(label);
    Network<Scalar> model(spec);
    std::vector<bool> all(model.num_layers(), true);
    ASSERT_GT(model.packed_weights_size(all), 0);
    const Vec<Scalar> theta = init_parameters(model, 1), v = random_vec<Scalar>(model.num_params(), 2);
    // 45 samples in chunks of 16: two full chunks and a shorter one.
    EXPECT_TRUE(passes_equal_with_packed(model, theta, v, theta, v, 45, 16));
    // Operands packed from other θ and v give other results: the passes read them.
    const Vec<Scalar> theta2 = init_parameters(model, 3), v2 = random_vec<Scalar>(model.num_params(), 4);
    EXPECT_FALSE(passes_equal_with_packed(model, theta, v, theta2, v, 45, 16));
    EXPECT_FALSE(passes_equal_with_packed(model, theta, v, theta, v2, 45, 16));
  }
}

// The plan packs a linear node's weights when its chunks have fewer than 512 GEMM columns, and only within
// 64 MiB of packed weights (dW, W and Wᵀ), the earliest nodes first.
TEST(FisherPlanPacking, PacksLinearNodesOnChunksOfFewColumnsWithinItsBudget) {
  {  // 784-1024-1024-10 on 1000 samples: chunks of 64 columns, 3 × 1.85M floats packed (22 MB)
    Network<float> model(mlp_spec(784, 1024, 10));
    const auto plan = detail::FisherPlan::make(model, 1000, FisherOptions());
    EXPECT_EQ(plan.chunk_size, 64);
    for (std::size_t l = 0; l < model.num_layers(); ++l)
      EXPECT_EQ(plan.packed[l], model.packs_weights(l)) << l;
    std::vector<bool> all(model.num_layers(), true);
    EXPECT_EQ(plan.packed_size, model.packed_weights_size(all));
    // dW of the first (its input has no tangent), dW, W and Wᵀ of the others: at least their parameters.
    EXPECT_GE(plan.packed_size, 784 * 1024 + 3 * (1024 * 1024 + 1024 * 10));
  }
  {  // A sequence of 512 rows per sample: 512 columns even in chunks of one sample
    ModelSpec seq;
    seq.input_shape = {512, 16};
    seq.layers = {LayerSpec::linear(16, 16)};
    Network<float> model(seq);
    const auto plan = detail::FisherPlan::make(model, 100, FisherOptions());
    EXPECT_FALSE(plan.packed[0]);
    EXPECT_EQ(plan.packed_size, 0);
  }
  {  // Two 2048 × 2048 weights (3 × 16 MiB packed each): the first fits in 64 MiB, the second does not
    Network<float> model(mlp_spec(64, 2048, 2048));
    const auto plan = detail::FisherPlan::make(model, 1000, FisherOptions());
    EXPECT_TRUE(plan.packed[0]);   // 64 → 2048 (dW only)
    EXPECT_TRUE(plan.packed[2]);   // 2048 → 2048
    EXPECT_FALSE(plan.packed[4]);  // 2048 → 2048
    EXPECT_LE(double(plan.packed_size) * sizeof(float), 64.0 * 1024 * 1024);
  }
}
