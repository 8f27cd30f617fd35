// Numerical failure paths: NaN or Inf born in a layer is reported with the layer and sample where it first
// appears, the solve stops without a direction, and Lanczos on a non-finite operator says so.
#include "test_helpers.h"

#include <natgrad/natural_gradient/solve_natural_gradient.h>
#include <natgrad/solvers/spectrum.h>

#include <limits>

using namespace natgrad;
using namespace natgrad::test;

namespace {
// x ∈ R² → linear(2, 2) → tanh → linear(2, 2) → linear(2, 2): `big` weights in layer `at` overflow float to Inf
// for sample 3 only (its inputs are larger), and the next linear turns Inf − Inf into NaN.
struct Overflow {
  Sequential<float> model;
  Vec<float> theta;
  Dataset<float> data;
  explicit Overflow(int at) : model(spec()), theta(Vec<float>::Constant(model.num_params(), 0.5f)) {
    const NamedParam& w = model.named_params()[static_cast<std::size_t>(at == 0 ? 0 : at == 2 ? 2 : 4)];
    theta.segment(w.offset, w.size).setConstant(3e38f);
    data.inputs = Mat<float>::Constant(2, 6, 0.1f);
    data.inputs.col(3).setConstant(50.0f);
    data.labels = {0, 1, 0, 1, 0, 1};
  }
  static ModelSpec spec() {
    ModelSpec s;
    s.input_shape = {2};
    s.layers = {LayerSpec::linear(2, 2), LayerSpec::activation(LayerType::tanh), LayerSpec::linear(2, 2),
                LayerSpec::linear(2, 2)};
    return s;
  }
};
}  // namespace

TEST(NumericalFailures, ALayerProducingInfIsNamedWithItsSample) {
  {
    Overflow o(0);  // 3e38·50·2 overflows in layer 0 for sample 3; tanh(Inf) = 1 hides it downstream
    FisherOperator<float> F(o.model, o.theta, LikelihoodKind::categorical, o.data);
    EXPECT_EQ(F.forward_error(), "the output of layer 0 (linear) is NaN or Inf, first at sample 3");
  }
  {
    Overflow o(3);  // tanh outputs ≈ ±1: layer 3's 3e38 weights overflow for every sample
    FisherOperator<float> F(o.model, o.theta, LikelihoodKind::categorical, o.data);
    EXPECT_EQ(F.forward_error(), "the output of layer 3 (linear) is NaN or Inf, first at sample 0");
    NaturalGradientOptions opt;
    const auto r = solve_natural_gradient(o.model, o.theta, LikelihoodKind::categorical, o.data, opt);
    EXPECT_FALSE(r.ok());
    EXPECT_NE(r.failure.find("layer 3 (linear)"), std::string::npos) << r.failure;
    EXPECT_EQ(r.cg.termination, CgTermination::breakdown);
    EXPECT_EQ(r.cg.operator_applications, 0);  // nothing was solved on garbage
  }
  {
    Dataset<float> d;
    d.inputs = Mat<float>::Ones(2, 3);
    d.inputs(1, 2) = std::numeric_limits<float>::quiet_NaN();
    d.labels = {0, 1, 0};
    Sequential<float> model(Overflow::spec());
    FisherOperator<float> F(model, init_parameters(model, 1), LikelihoodKind::categorical, d);
    EXPECT_EQ(F.forward_error(), "the input is NaN or Inf, first at sample 2");
  }
  {
    // Chunks of 2 samples, searched in parallel: the earliest layer wins over the earliest chunk. Sample 3
    // (chunk 1) overflows in layer 0; sample 4 (chunk 2) has a NaN input, which is earlier in the network.
    FisherOptions chunks;
    chunks.chunk_size = 2;
    Overflow o(0);
    {
      FisherOperator<float> F(o.model, o.theta, LikelihoodKind::categorical, o.data, chunks);
      EXPECT_EQ(F.forward_error(), "the output of layer 0 (linear) is NaN or Inf, first at sample 3");
    }
    o.data.inputs(0, 4) = std::numeric_limits<float>::infinity();
    o.data.inputs(1, 5) = std::numeric_limits<float>::quiet_NaN();
    FisherOperator<float> F(o.model, o.theta, LikelihoodKind::categorical, o.data, chunks);
    EXPECT_EQ(F.forward_error(), "the input is NaN or Inf, first at sample 4");
  }
}

TEST(NumericalFailures, FiniteForwardHasNoError) {
  Sequential<double> model(mlp_spec(3, 4, 2));
  FisherOperator<double> F(model, init_parameters(model, 1), LikelihoodKind::categorical,
                           random_dataset(model, 5, LikelihoodKind::categorical, 2));
  EXPECT_TRUE(F.forward_error().empty());
}

TEST(NumericalFailures, LanczosOnANonFiniteOperatorSaysWhere) {
  struct NanOp {
    using Scalar = double;
    mutable int calls = 0;
    Index rows() const { return 30; }
    void perform_op(const double* x, double* y) const {
      for (int i = 0; i < 30; ++i) y[i] = (i + 1.0) * x[i];
      if (++calls == 7) y[4] = std::numeric_limits<double>::infinity();
    }
  } op;
  SpectrumOptions opt;
  opt.num_eigenvalues = 3;
  const SpectrumResult r = top_eigenvalues(op, opt);
  EXPECT_FALSE(r.converged);
  EXPECT_NE(r.status.find("NaN or Inf at product 7"), std::string::npos) << r.status;
}
