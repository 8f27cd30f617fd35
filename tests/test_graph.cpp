// Graph models: residual connections (fan-out and add), cat, a parameter operand, layer norm, batch norm
// with running statistics, embeddings. The Jacobian of the whole graph by finite differences of its forward
// pass (independent of the R-op and backprop) against the R-op and backprop, the dense Fisher built from it
// against the operator for every likelihood, float against double, thread invariance, and every bad graph.
#include "test_helpers.h"

#include <natgrad/io/model_spec_json.h>

#include <cstring>

using namespace natgrad;
using namespace natgrad::test;

namespace {

const LikelihoodKind kLikelihoods[] = {LikelihoodKind::categorical, LikelihoodKind::gaussian, LikelihoodKind::bernoulli};

LayerSpec with(LayerSpec s, const std::string& id, std::vector<std::string> inputs = {}) {
  s.node(id, std::move(inputs));
  return s;
}

// fc1 feeds three nodes (ln1, res and cat): the cotangents of a value read several times are summed.
ModelSpec residual_mlp(Index C) {
  ModelSpec m;
  m.input_shape = {6};
  LayerSpec shift = LayerSpec::add({"res"});
  shift.parameter = "shift";
  shift.parameter_shape = {8};
  m.layers = {with(LayerSpec::linear(6, 8), "fc1", {"input"}),
              with(LayerSpec::layer_norm({8}), "ln1", {"fc1"}),
              with(LayerSpec::activation(LayerType::gelu), "act", {"ln1"}),
              with(LayerSpec::linear(8, 8), "fc2", {"act"}),
              with(LayerSpec::add({"fc2", "fc1"}), "res"),
              with(shift, "shifted"),
              with(LayerSpec::activation(LayerType::tanh), "t", {"shifted"}),
              with(LayerSpec::cat({"t", "fc1"}), "both"),
              with(LayerSpec::activation(LayerType::dropout), "drop", {"both"}),
              with(LayerSpec::linear(16, C), "out", {"drop"})};
  for (LayerSpec& l : m.layers) l.name = l.id;
  return m;
}

// A stem with a fused tanh + max-pool pair, a basic block with an identity shortcut, a strided block with a
// 1×1 convolution + batch norm shortcut, global average pooling.
ModelSpec small_resnet(Index C) {
  ModelSpec m;
  m.input_shape = {2, 8, 8};
  LayerSpec stem = LayerSpec::conv2d(2, 3, 3);
  stem.padding_same = true;
  m.layers = {with(stem, "stem", {"input"}),
              with(LayerSpec::batch_norm(3), "bn0", {"stem"}),
              with(LayerSpec::activation(LayerType::tanh), "a0", {"bn0"}),
              with(LayerSpec::maxpool2d(2), "pool", {"a0"}),
              with(LayerSpec::conv2d(3, 3, 3, 1, 1, false), "c1", {"pool"}),
              with(LayerSpec::batch_norm(3), "bn1", {"c1"}),
              with(LayerSpec::activation(LayerType::relu), "r1", {"bn1"}),
              with(LayerSpec::conv2d(3, 3, 3, 1, 1, false), "c2", {"r1"}),
              with(LayerSpec::batch_norm(3), "bn2", {"c2"}),
              with(LayerSpec::add({"bn2", "pool"}), "add1"),
              with(LayerSpec::activation(LayerType::silu), "r2", {"add1"}),
              with(LayerSpec::conv2d(3, 4, 3, 2, 1, false), "c3", {"r2"}),
              with(LayerSpec::batch_norm(4), "bn3", {"c3"}),
              with(LayerSpec::conv2d(3, 4, 1, 2, 0, false), "sc", {"r2"}),
              with(LayerSpec::batch_norm(4), "bnsc", {"sc"}),
              with(LayerSpec::add({"bn3", "bnsc"}), "add2"),
              with(LayerSpec::activation(LayerType::relu), "r3", {"add2"}),
              with(LayerSpec::global_avgpool(), "gap", {"r3"}),
              with(LayerSpec::linear(4, C), "fc", {"gap"})};
  for (LayerSpec& l : m.layers) l.name = l.id;
  return m;
}

// Token indices in, a learned position table added (a [5, 3] parameter broadcast over the batch), a linear
// layer and GELU (tanh form) at every position.
ModelSpec token_model(Index C) {
  ModelSpec m;
  m.input_shape = {5};
  LayerSpec pos = LayerSpec::add({"tok"});
  pos.parameter = "pos";
  pos.parameter_shape = {5, 3};
  LayerSpec gelu = LayerSpec::activation(LayerType::gelu);
  gelu.tanh_approximation = true;
  m.layers = {with(LayerSpec::embedding(7, 3), "tok", {"input"}), with(pos, "h"),
              with(LayerSpec::layer_norm({3}), "ln", {"h"}), with(LayerSpec::linear(3, 4), "per_position", {"ln"}),
              with(gelu, "act", {"per_position"}), with(LayerSpec::flatten(), "flat", {"act"}),
              with(LayerSpec::linear(20, C), "head", {"flat"})};
  for (LayerSpec& l : m.layers) l.name = l.id;
  return m;
}

// Products of computed values: a gate a ∘ σ(b), squeeze-and-excitation (a [3, 4, 4] map times its own
// [3, 1, 1] spatial mean, broadcast), a square x ∘ x (one value read twice by one node); upsampling, a
// channels-last permute and reshape into positions, ELU, a sum over positions, Mish and scalar arithmetic.
ModelSpec gated_cnn(Index C) {
  ModelSpec m;
  m.input_shape = {2, 4, 4};
  m.layers = {with(LayerSpec::conv2d(2, 3, 3, 1, 1), "a", {"input"}),
              with(LayerSpec::conv2d(2, 3, 3, 1, 1), "b", {"input"}),
              with(LayerSpec::activation(LayerType::sigmoid), "s", {"b"}),
              with(LayerSpec::mul({"a", "s"}), "gated"),
              with(LayerSpec::mean({2, 3}, true), "squeeze", {"gated"}),
              with(LayerSpec::mul({"gated", "squeeze"}), "excited"),
              with(LayerSpec::upsample({2}), "up", {"excited"}),
              with(LayerSpec::avgpool2d(2), "down", {"up"}),
              with(LayerSpec::permute({0, 2, 3, 1}), "nhwc", {"down"}),
              with(LayerSpec::reshape({16, 3}), "positions", {"nhwc"}),
              with(LayerSpec::linear(3, 4), "per_position", {"positions"}),
              with(LayerSpec::elu(0.8), "e", {"per_position"}),
              with(LayerSpec::mul({"e", "e"}), "square"),
              with(LayerSpec::mean({1}, false, true), "pooled", {"square"}),
              with(LayerSpec::activation(LayerType::mish), "m", {"pooled"}),
              with(LayerSpec::scalar_affine(-0.5, 0.25), "affine", {"m"}),
              with(LayerSpec::linear(4, C), "head", {"affine"})};
  for (LayerSpec& l : m.layers) l.name = l.id;
  return m;
}

// Views (flatten, reshape, identity, dropout), which the R-op and backprop run without a copy: a view of the
// model input, a chain of views, two views of one value (one the first contribution to its cotangent in
// reverse order, one added to it), a view read by two nodes, a merge of views, and a view as the output.
ModelSpec views(Index C) {
  ModelSpec m;
  m.input_shape = {2, 3};
  m.layers = {with(LayerSpec::flatten(), "in_flat", {"input"}),
              with(LayerSpec::linear(6, 8), "fc1", {"in_flat"}),
              with(LayerSpec::reshape({2, 4}), "v1", {"fc1"}),
              with(LayerSpec::flatten(), "v2", {"v1"}),
              with(LayerSpec::activation(LayerType::tanh), "t", {"v2"}),
              with(LayerSpec::activation(LayerType::identity), "id", {"fc1"}),
              with(LayerSpec::add({"t", "id"}), "sum"),
              with(LayerSpec::activation(LayerType::dropout), "d", {"sum"}),
              with(LayerSpec::linear(8, 8), "fc2", {"d"}),
              with(LayerSpec::add({"fc2", "v2"}), "late"),
              with(LayerSpec::activation(LayerType::sigmoid), "s", {"late"}),
              with(LayerSpec::linear(8, C), "head", {"s"}),
              with(LayerSpec::reshape({C}), "out", {"head"})};
  for (LayerSpec& l : m.layers) l.name = l.id;
  return m;
}

struct GraphCase {
  std::string label;
  ModelSpec spec;
  bool tokens = false;
};
std::vector<GraphCase> graph_cases(Index C) {
  return {{"residual_mlp", residual_mlp(C)},
          {"small_resnet", small_resnet(C)},
          {"token_model", token_model(C), true},
          {"gated_cnn", gated_cnn(C)},
          {"views", views(C)}};
}

// Running statistics away from PyTorch's defaults, so that batch norm is not the identity.
template <typename Scalar>
void set_buffers(Network<Scalar>& model, uint64_t seed) {
  for (std::size_t k = 0; k < model.named_buffers().size(); ++k) {
    const NamedBuffer& b = model.named_buffers()[k];
    Vec<Scalar> v = random_vec<Scalar>(shape_size(b.shape), seed + k) * Scalar(0.5);
    if (b.name.find("running_var") != std::string::npos) v = v.array().abs() + Scalar(0.5);
    model.set_buffer(k, v.data());
  }
}

template <typename Scalar>
Dataset<Scalar> graph_data(const Network<Scalar>& model, const GraphCase& gc, Index N, LikelihoodKind lk, uint64_t seed) {
  Dataset<Scalar> d = random_dataset(model, N, lk, seed);
  if (gc.tokens)
    for (Index k = 0; k < d.inputs.size(); ++k) d.inputs.data()[k] = Scalar(CounterRng(seed, 9).bits(k) % 7);
  return d;
}

template <typename Scalar>
Vec<Scalar> graph_theta(const Network<Scalar>& model, uint64_t seed) {
  // Random parameters (not the norms' ones and zeros), so every term of every derivative is exercised.
  return random_vec<Scalar>(model.num_params(), seed) * Scalar(0.7);
}

}  // namespace

TEST(GraphJacobian, RopAndBackpropMatchFiniteDifferencesOfTheWholeGraph) {
  for (const GraphCase& gc : graph_cases(3)) {
    SCOPED_TRACE(gc.label);
    Network<double> model(gc.spec);
    set_buffers(model, 5);
    const Vec<double> theta = graph_theta(model, 6);
    const Dataset<double> data = graph_data(model, gc, 4, LikelihoodKind::categorical, 7);
    const Mat<double> Jfd = jacobian_by_finite_differences(model, theta, data.inputs);
    EXPECT_LT(rel_err_vec(jacobian_by_rop(model, theta, data.inputs), Jfd), 1e-8);
    EXPECT_LT(rel_err_vec(jacobian_by_backprop(model, theta, data.inputs), Jfd), 1e-8);
  }
}

TEST(GraphFisher, OperatorMatchesTheDenseFisherFromFiniteDifferencesForEveryLikelihood) {
  for (const GraphCase& gc : graph_cases(3))
    for (LikelihoodKind lk : kLikelihoods)
      for (FisherKind fk : {FisherKind::exact, FisherKind::empirical}) {
        SCOPED_TRACE(gc.label + " " + to_string(lk) + " " + to_string(fk));
        Network<double> model(gc.spec);
        set_buffers(model, 8);
        const Vec<double> theta = graph_theta(model, 9);
        const Dataset<double> data = graph_data(model, gc, 7, lk, 10);
        const Mat<double> J = jacobian_by_finite_differences(model, theta, data.inputs);
        const Mat<double> Z = model.predict(theta.data(), data.inputs);
        const Index C = model.output_size(), P = model.num_params();
        Mat<double> Fd = Mat<double>::Zero(P, P);
        for (Index n = 0; n < data.size(); ++n) {
          const Mat<double> Jn = J.middleRows(n * C, C);
          Fd.noalias() += Jn.transpose() * dense_output_fisher(lk, fk, Vec<double>(Z.col(n)), data, n) * Jn;
        }
        Fd /= double(data.size());
        FisherOptions opt;
        opt.kind = fk;
        opt.chunk_size = 3;  // several chunks
        FisherOperator<double> F(model, theta, lk, data, opt);
        for (uint64_t s = 0; s < 2; ++s) {
          const Vec<double> v = random_vec<double>(P, 11 + s);
          EXPECT_LT(rel_err_vec(apply(F, v), Fd * v), 1e-7);
        }
        if (fk == FisherKind::empirical) {
          EXPECT_LT(rel_err_vec(F.empirical_fisher_diagonal(), Vec<double>(Fd.diagonal())), 1e-7);
        }
      }
}

TEST(GraphFisher, GradientMatchesFiniteDifferencesOfTheLoss) {
  for (const GraphCase& gc : graph_cases(4)) {
    SCOPED_TRACE(gc.label);
    Network<double> model(gc.spec);
    set_buffers(model, 12);
    const Vec<double> theta = graph_theta(model, 13);
    const Dataset<double> data = graph_data(model, gc, 9, LikelihoodKind::categorical, 14);
    FisherOperator<double> F(model, theta, LikelihoodKind::categorical, data);
    auto loss = [&](const Vec<double>& t) {
      const Mat<double> Z = model.predict(t.data(), data.inputs);
      return nll_sum<double>(LikelihoodKind::categorical, ConstMatMap<double>(Z.data(), Z.rows(), Z.cols()), data, 0) /
             double(data.size());
    };
    const Vec<double> fd = gradient_by_finite_differences(loss, theta);
    EXPECT_LT(rel_err_vec(F.gradient(), fd), 1e-7);
    EXPECT_NEAR(F.loss(), loss(theta), 1e-12);
  }
}

TEST(GraphFisher, FloatAgreesWithDouble) {
  for (const GraphCase& gc : graph_cases(3)) {
    SCOPED_TRACE(gc.label);
    Network<double> md(gc.spec);
    Network<float> mf(gc.spec);
    set_buffers(md, 15);
    set_buffers(mf, 15);
    const Vec<double> td = graph_theta(md, 16);
    const Vec<float> tf = td.cast<float>();
    const Dataset<double> dd = graph_data(md, gc, 11, LikelihoodKind::categorical, 17);
    Dataset<float> df;
    df.inputs = dd.inputs.cast<float>();
    df.labels = dd.labels;
    FisherOperator<double> Fd(md, td, LikelihoodKind::categorical, dd);
    FisherOperator<float> Ff(mf, tf, LikelihoodKind::categorical, df);
    const Vec<double> v = random_vec<double>(md.num_params(), 18);
    EXPECT_LT(rel_err_vec(apply(Ff, Vec<float>(v.cast<float>())).cast<double>(), apply(Fd, v)), 1e-4);
    EXPECT_LT(rel_err_vec(Ff.gradient().cast<double>(), Fd.gradient()), 1e-4);
  }
}

TEST(GraphFisher, OneTwoAndThreeThreadsAreBitIdentical) {
#ifndef NATGRAD_HAVE_OPENMP
  GTEST_SKIP() << "built without OpenMP (NATGRAD_USE_OPENMP=OFF): one thread only, nothing to compare";
#endif
  for (const GraphCase& gc : graph_cases(5))
    for (FisherKind fk : {FisherKind::exact, FisherKind::mc, FisherKind::empirical}) {
      SCOPED_TRACE(gc.label + " " + to_string(fk));
      Network<float> model(gc.spec);
      set_buffers(model, 19);
      const Vec<float> theta = graph_theta(model, 20);
      const Dataset<float> data = graph_data(model, gc, 61, LikelihoodKind::categorical, 21);
      FisherOptions opt;
      opt.kind = fk;
      opt.mc_samples = 2;
      opt.chunk_size = 4;
      std::vector<Vec<float>> products, gradients, diagonals;
      for (int threads : {1, 2, 3}) {
        opt.num_threads = threads;
        FisherOperator<float> F(model, theta, LikelihoodKind::categorical, data, opt);
        products.push_back(apply(F, random_vec<float>(model.num_params(), 22)));
        gradients.push_back(F.gradient());
        diagonals.push_back(F.empirical_fisher_diagonal());
      }
      for (std::size_t t = 1; t < products.size(); ++t) {
        const std::size_t bytes = sizeof(float) * static_cast<std::size_t>(model.num_params());
        EXPECT_EQ(0, std::memcmp(products[0].data(), products[t].data(), bytes));
        EXPECT_EQ(0, std::memcmp(gradients[0].data(), gradients[t].data(), bytes));
        EXPECT_EQ(0, std::memcmp(diagonals[0].data(), diagonals[t].data(), bytes));
      }
    }
}

// The layers of a graph may come in any order in the file; the flat vector follows "parameters" (PyTorch's
// model.parameters() order), not the order the nodes run in.
TEST(GraphSpec, FileOrderAndParameterOrderDoNotChangeTheResults) {
  const ModelSpec ordered = residual_mlp(3);
  ModelSpec shuffled = ordered;
  std::reverse(shuffled.layers.begin(), shuffled.layers.end());
  shuffled.output = "out";
  Network<double> a(ordered), b(shuffled);
  // The same nodes run in the same order; the flat vector follows the file: reversed layer by layer.
  ASSERT_EQ(a.num_layers(), b.num_layers());
  for (std::size_t l = 0; l < a.num_layers(); ++l) EXPECT_EQ(a.node_id(l), b.node_id(l));
  EXPECT_EQ(b.named_params().front().name, "out.weight");
  // With "parameters" in the first file's order, the vectors are interchangeable.
  for (const NamedParam& p : a.named_params()) shuffled.parameter_order.push_back(p.name);
  Network<double> c(shuffled);
  ASSERT_EQ(c.named_params().size(), a.named_params().size());
  for (std::size_t k = 0; k < a.named_params().size(); ++k) {
    EXPECT_EQ(c.named_params()[k].name, a.named_params()[k].name);
    EXPECT_EQ(c.named_params()[k].offset, a.named_params()[k].offset);
  }
  const Vec<double> theta = graph_theta(a, 23);
  const Dataset<double> data = random_dataset(a, 5, LikelihoodKind::categorical, 24);
  EXPECT_EQ(a.predict(theta.data(), data.inputs), c.predict(theta.data(), data.inputs));
}

TEST(GraphSpec, AChainWithExplicitInputsIsTheSameChain) {
  ModelSpec chain = cnn_spec(4), explicit_graph = chain;
  for (std::size_t i = 0; i < explicit_graph.layers.size(); ++i)
    explicit_graph.layers[i].node("n" + std::to_string(i), {i == 0 ? std::string("input") : "n" + std::to_string(i - 1)});
  Network<float> a(chain), b(explicit_graph);
  const Vec<float> theta = init_parameters(a, 25);
  const Dataset<float> data = random_dataset(a, 40, LikelihoodKind::categorical, 26);
  FisherOperator<float> Fa(a, theta, LikelihoodKind::categorical, data), Fb(b, theta, LikelihoodKind::categorical, data);
  const Vec<float> v = random_vec<float>(a.num_params(), 27);
  const Vec<float> ya = apply(Fa, v), yb = apply(Fb, v);
  EXPECT_EQ(0, std::memcmp(ya.data(), yb.data(), sizeof(float) * static_cast<std::size_t>(ya.size())));
  EXPECT_EQ(a.workspace_buffers(), 2);  // a chain ping-pongs between two buffers
}

TEST(GraphSpec, BadGraphsAreOneLineErrorsNamingTheNode) {
  auto parse = [](const std::string& layers, const std::string& extra = "") {
    return parse_model_spec(R"({"input_shape": [4], )" + extra + R"("layers": [)" + layers + "]}", "g.json");
  };
  const std::string lin = R"({"type": "linear", "in_features": 4, "out_features": 4, )";
  EXPECT_ERROR(parse(lin + R"("id": "a", "inputs": ["b"]}, )" + lin + R"("id": "b", "inputs": ["a"]})"),
               "g.json: layer 0 \"a\" (linear): is on a cycle");
  EXPECT_ERROR(parse(lin + R"("id": "a", "inputs": ["nowhere"]})"), "g.json: layer 0 \"a\" (linear): input \"nowhere\" names no node");
  EXPECT_ERROR(parse(lin + R"("id": "a"}, {"type": "linear", "in_features": 4, "out_features": 3, "id": "b", "inputs": ["input"]},
                     {"type": "add", "id": "s", "inputs": ["a", "b"]})"),
               "g.json: layer 2 \"s\" (add): add: operand 1 has shape [3] but operand 0 has [4]");
  EXPECT_ERROR(parse(R"({"type": "flatten", "id": "f"}, {"type": "cat", "id": "c", "inputs": ["f", "f"], "dim": 2})"),
               "layer 1 \"c\" (cat): cat is supported along dimension 1");
  EXPECT_ERROR(parse(lin + R"("id": "a"}, )" + lin + R"("id": "unused", "inputs": ["input"]}, )" + lin + R"("id": "b", "inputs": ["a"]})"),
               "g.json: layer 1 \"unused\" (linear): its output is never used");
  EXPECT_ERROR(parse(R"({"type": "batch_norm", "num_features": 4, "training": true})"), "model.eval()");
  EXPECT_ERROR(parse(lin + R"("id": "a", "name": "a"})", R"("parameters": ["a.bias", "a.weight"], )"),
               "must list node \"a\"'s tensors together and in their order");
  EXPECT_ERROR(parse(lin + R"("id": "a", "name": "m"}, )" + lin + R"("id": "b", "name": "m"})"),
               "the parameter \"m.weight\" is already used by node \"a\" (to share a tensor, name it in \"parameter_names\")");
  EXPECT_ERROR(parse(lin + R"("id": "input"})"), "the id \"input\" is reserved");
  EXPECT_ERROR(parse(lin + R"("id": "a"})", R"("output": "z", )"), "the output \"z\" names no node");
  EXPECT_ERROR(parse(R"({"type": "embedding", "num_embeddings": 5, "embedding_dim": 2, "id": "e"}, {"type": "flatten"},
                        {"type": "linear", "in_features": 8, "out_features": 2}, {"type": "embedding", "num_embeddings": 5, "embedding_dim": 2})"),
               "reads token indices, but its input \"2\" depends on the parameters");
  EXPECT_ERROR(parse(R"({"type": "add", "parameter": "p", "parameter_shape": [3], "inputs": ["input"]})"),
               "does not broadcast to the operands' shape [4]");
  // The shape operations, reductions and products of PyTorch code (issue 25).
  EXPECT_ERROR(parse(R"({"type": "reshape", "shape": [3, 2]})"), "reshape: the shape [3, 2] does not hold the 4 values");
  EXPECT_ERROR(parse(R"({"type": "reshape", "shape": [2, 2]}, {"type": "permute", "dims": [1, 0, 2]})"),
               "counting the batch as 0 and keeping it first");
  EXPECT_ERROR(parse(R"({"type": "reshape", "shape": [2, 2]}, {"type": "permute", "dims": [0, 2, 2]})"),
               "\"dims\" must order all 3 dimensions of [N, 2, 2]");
  EXPECT_ERROR(parse(R"({"type": "mean", "dim": [0]})"), "mean over the batch dimension (0)");
  EXPECT_ERROR(parse(R"({"type": "sum", "dim": 2})"), "sum: dimension 2 does not exist in [N, 4]");
  EXPECT_ERROR(parse(R"({"type": "mean", "dim": [1, 1]})"), "must name distinct dimensions");
  EXPECT_ERROR(parse(R"({"type": "upsample", "scale_factor": 2})"), "upsample reads [C, spatial...] samples");
  EXPECT_ERROR(parse(R"({"type": "reshape", "shape": [2, 2]}, {"type": "upsample", "scale_factor": [2, 2]})"),
               "upsample: 2 scale factors for 1 spatial dimensions");
  EXPECT_ERROR(parse(R"({"type": "reshape", "shape": [2, 2]}, {"type": "upsample", "scale_factor": 2, "mode": "bilinear"})"),
               "\"mode\" must be \"nearest\"");
  EXPECT_ERROR(parse(lin + R"("id": "a"}, {"type": "linear", "in_features": 4, "out_features": 3, "id": "b", "inputs": ["input"]},
                     {"type": "mul", "id": "m", "inputs": ["a", "b"]})"),
               "layer 2 \"m\" (mul): mul: shapes [4] and [3] do not broadcast");
  EXPECT_ERROR(parse(lin + R"("id": "a"}, {"type": "mul", "id": "m", "inputs": ["a"]})"), "multiplies two operands, given 1");
  EXPECT_ERROR(parse(R"({"type": "scalar_affine", "scale": 2, "shift": "one"})"), "\"shift\" must be a number");
}

TEST(GraphSpec, GroupNormKeysRoundTripAndErrorsNameTheNode) {
  auto parse = [](const std::string& shape, const std::string& layer) {
    return parse_model_spec(R"({"input_shape": )" + shape + R"(, "layers": [)" + layer + "]}", "g.json");
  };
  const ModelFile m = parse("[4, 3, 3]", R"({"type": "group_norm", "name": "gn", "num_groups": 2, "num_channels": 4,
                                             "eps": 0.001, "affine": false})");
  const LayerSpec& s = m.spec.layers[0];
  EXPECT_EQ(s.type, LayerType::group_norm);
  EXPECT_EQ(s.num_groups, 2);
  EXPECT_EQ(s.num_channels, 4);
  EXPECT_EQ(s.eps, 0.001);
  EXPECT_FALSE(s.affine);
  EXPECT_EQ(model_spec_to_json(parse_model_spec(model_spec_to_json(m), "again")), model_spec_to_json(m));
  EXPECT_EQ(Network<double>(parse("[4, 3]", R"({"type": "group_norm", "num_groups": 4, "num_channels": 4})").spec)
                .num_params(),
            8);  // affine by default: weight and bias [C]
  EXPECT_ERROR(parse("[6, 2]", R"({"type": "group_norm", "num_groups": 4, "num_channels": 6})"),
               "g.json: layer 0 (group_norm): group_norm's num_channels 6 is not divisible by num_groups 4");
  EXPECT_ERROR(parse("[3, 2, 2]", R"({"type": "group_norm", "num_groups": 2, "num_channels": 4})"),
               "expects input [C, ...] (channels first: [C], [C, L], [C, H, W]) with C = 4 but receives [3, 2, 2]");
  EXPECT_ERROR(parse("[4, 2]", R"({"type": "group_norm", "num_channels": 4})"), "missing key \"num_groups\"");
  EXPECT_ERROR(parse("[4, 2]", R"({"type": "group_norm", "num_groups": 2, "num_channels": 4, "elementwise_affine": true})"),
               "unknown key \"elementwise_affine\"");
}

// A likelihood per position: a model whose output is [T, C] (token model: embedding, layer norm, a linear
// layer at each position). The loss is the mean over the N·T positions; F = 1/(N·T) Σ_n J_nᵀ H_n J_n with H_n
// block-diagonal over positions (exact), the stacked-score outer product s sᵀ (empirical), or 1/S Σ s sᵀ of
// labels drawn independently per position (Monte-Carlo) — written out here from the formulas and the
// documented generator key (seed, sample, counter s·T + t), not from the library.
namespace {
ModelSpec sequence_model(Index T, Index C) {
  ModelSpec m;
  m.input_shape = {T};
  m.layers = {with(LayerSpec::embedding(6, 3), "tok", {"input"}), with(LayerSpec::layer_norm({3}), "ln", {"tok"}),
              with(LayerSpec::linear(3, C), "head", {"ln"})};
  return m;
}

}  // namespace

TEST(PerPositionLikelihood, OperatorMatchesTheDenseFisherForEveryLikelihoodAndKind) {
  const Index T = 4, C = 5, N = 6;
  for (LikelihoodKind lk : kLikelihoods)
    for (FisherKind fk : {FisherKind::exact, FisherKind::empirical, FisherKind::mc}) {
      SCOPED_TRACE(std::string(to_string(lk)) + " " + to_string(fk));
      Network<double> model(sequence_model(T, C));
      ASSERT_EQ(model.output_positions(), T);
      const Vec<double> theta = graph_theta(model, 30);
      Dataset<double> data;
      data.inputs.resize(T, N);
      for (Index k = 0; k < T * N; ++k) data.inputs.data()[k] = double(CounterRng(31, 9).bits(k) % 6);
      fill_targets(data, lk, T * C, 32);  // T·C rows of real targets, or N labels (replaced below)
      if (lk == LikelihoodKind::categorical) {
        data.labels.resize(static_cast<std::size_t>(N * T));
        for (Index k = 0; k < N * T; ++k) data.labels[static_cast<std::size_t>(k)] = int64_t(CounterRng(33, 9).bits(k) % C);
      }
      FisherOptions opt;
      opt.kind = fk;
      opt.mc_samples = 3;
      opt.seed = 7;
      opt.chunk_size = 4;
      FisherOperator<double> F(model, theta, lk, data, opt);
      const Mat<double> J = jacobian_by_finite_differences(model, theta, data.inputs);
      const Mat<double> Z = model.predict(theta.data(), data.inputs);
      Mat<double> Fd = Mat<double>::Zero(model.num_params(), model.num_params());
      for (Index n = 0; n < N; ++n) {
        const Mat<double> Jn = J.middleRows(n * T * C, T * C);
        Fd.noalias() += Jn.transpose() * per_position_fisher(lk, fk, Z.col(n), data, n, T, 7, 3) * Jn;
      }
      Fd /= double(N * T);
      const Vec<double> v = random_vec<double>(model.num_params(), 34);
      EXPECT_LT(rel_err_vec(apply(F, v), Fd * v), 1e-7);
    }
}

TEST(PerPositionLikelihood, LossIsTheMeanOverPositionsAndItsGradientMatchesFiniteDifferences) {
  const Index T = 3, C = 4, N = 5;
  Network<double> model(sequence_model(T, C));
  const Vec<double> theta = graph_theta(model, 40);
  Dataset<double> data;
  data.inputs.resize(T, N);
  for (Index k = 0; k < T * N; ++k) data.inputs.data()[k] = double(k % 6);
  for (Index k = 0; k < N * T; ++k) data.labels.push_back(int64_t((3 * k + 1) % C));
  auto loss = [&](const Vec<double>& t) {  // cross_entropy(logits.view(-1, C), y.view(-1)), written out
    const Mat<double> Z = model.predict(t.data(), data.inputs);
    double total = 0;
    for (Index n = 0; n < N; ++n)
      for (Index p = 0; p < T; ++p) {
        const Vec<double> z = Z.col(n).segment(p * C, C);
        total += std::log(z.array().exp().sum()) - z[data.labels[static_cast<std::size_t>(n * T + p)]];
      }
    return total / double(N * T);
  };
  FisherOperator<double> F(model, theta, LikelihoodKind::categorical, data);
  EXPECT_NEAR(F.loss(), loss(theta), 1e-13);
  const Vec<double> fd = gradient_by_finite_differences(loss, theta);
  EXPECT_LT(rel_err_vec(F.gradient(), fd), 1e-7);
  // A batch whose labels are one per sample, not per position, is refused.
  Dataset<double> wrong = data;
  wrong.labels.resize(static_cast<std::size_t>(N));
  EXPECT_ERROR(FisherOperator<double>(model, theta, LikelihoodKind::categorical, wrong),
               "needs 15 class labels (5 samples × 3 positions), got 5");
}
