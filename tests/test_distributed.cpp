// A batch shared by several ranks, in one process: K threads, each a rank with its own share and its own
// operator, joined by a Communicator written here (sums in rank order through shared memory). Against the
// one-process operator on the whole batch (itself checked against the dense Fisher in test_fisher): loss,
// gradient, products, the empirical diagonal, Monte-Carlo labels keyed by the global sample; the ranks'
// agreement on errors and on a solve's stop. Also the share arithmetic and the readers' sample ranges.
// (The MPI build's end-to-end runs under mpirun are tests/mpi_ranks.py.)
#include "test_helpers.h"
#include "thread_communicator.h"

#include <natgrad/curvature/fisher_gram.h>
#include <natgrad/curvature/kfac.h>
#include <natgrad/distributed/communicator.h>
#include <natgrad/io/dataset_io.h>
#include <natgrad/io/safetensors.h>
#include <natgrad/natural_gradient/solve_natural_gradient.h>
#include <natgrad/solvers/hutchinson_trace.h>
#include <natgrad/solvers/slq_density.h>

#include <zlib.h>

#include <fstream>
#include <functional>
#include <limits>
#include <stdexcept>
#include <vector>

namespace natgrad {
namespace {

using test::rel_err;
using test::rel_err_vec;
using test::on_ranks;

// `base` for the rank holding share s of a batch of N samples.
FisherOptions for_share(FisherOptions base, const Communicator& comm, SampleShare s, Index N) {
  base.communicator = &comm;
  base.first_sample = s.first;
  base.total_samples = N;
  return base;
}

TEST(Distributed, SharesAreContiguousCoverTheBatchAndDifferByAtMostOne) {
  for (Index N : {1, 2, 7, 100, 101, 1000})
    for (int K = 1; K <= std::min<Index>(N, 9); ++K) {
      Index next = 0, smallest = N, largest = 0;
      for (int r = 0; r < K; ++r) {
        const SampleShare s = share_of(N, r, K);
        EXPECT_EQ(s.first, next) << N << " " << K;
        next += s.count;
        smallest = std::min(smallest, s.count);
        largest = std::max(largest, s.count);
      }
      EXPECT_EQ(next, N);
      EXPECT_LE(largest - smallest, 1);
      EXPECT_GE(smallest, 1);
    }
}

TEST(Distributed, ReadersKeepExactlyTheRangeAskedFor) {
  const std::string dir = test::make_temp_dir("natgrad_dist");
  Network<double> model(test::mlp_spec(5, 4, 3));
  const Dataset<double> all = test::random_dataset(model, 13, LikelihoodKind::categorical, 5);
  save_dataset(dir + "/d.safetensors", all, {5});
  {
    std::ofstream csv(dir + "/d.csv");
    csv << "a,b,c,d,e,y\n";
    for (Index n = 0; n < all.size(); ++n) {
      for (Index k = 0; k < 5; ++k) csv << all.inputs(k, n) << ",";
      csv << all.labels[static_cast<std::size_t>(n)] << "\n";
    }
  }
  {
    std::ofstream text(dir + "/t.txt", std::ios::binary);
    for (int i = 0; i < 95; ++i) text << char('a' + i % 26);
  }
  for (const std::string file : {"/d.safetensors", "/d.csv"}) {
    const std::string path = dir + file;
    EXPECT_EQ(count_samples(path), 13) << file;
    const Dataset<double> whole = load_dataset<double>(path, {5}, LikelihoodKind::categorical, 3);
    for (auto [first, count] : std::vector<std::pair<Index, Index>>{{0, 4}, {4, 5}, {9, 4}, {12, 1}, {3, 0}}) {
      const Dataset<double> part =
          load_dataset<double>(path, {5}, LikelihoodKind::categorical, 3, Split::train, count, 1, 0, first);
      const Index n = count > 0 ? count : 13 - first;
      ASSERT_EQ(part.size(), n) << file << " " << first;
      EXPECT_EQ(part.inputs, whole.inputs.middleCols(first, n)) << file << " " << first;
      EXPECT_EQ(part.labels, std::vector<int64_t>(whole.labels.begin() + first, whole.labels.begin() + first + n));
    }
    EXPECT_ERROR(load_dataset<double>(path, {5}, LikelihoodKind::categorical, 3, Split::train, 5, 1, 0, 10),
                 "samples [10, 15) lie beyond the 13 samples");
  }
  // The count agrees with what the reader keeps: a header whose first cells are numbers, no header, CRLF
  // line ends and blank lines.
  for (const std::string header : {"0,1,2,3,4,label\r\n", "", "x0,x1,x2,x3,x4,y\n\n"}) {
    const std::string path = dir + "/h.csv";
    {
      std::ofstream csv(path);
      csv << header;
      for (Index n = 0; n < all.size(); ++n) {
        for (Index k = 0; k < 5; ++k) csv << all.inputs(k, n) << ",";
        csv << all.labels[static_cast<std::size_t>(n)] << (n % 4 == 0 ? "\r\n" : "\n") << (n == 6 ? "\n" : "");
      }
    }
    EXPECT_EQ(count_samples(path), 13) << header;
    EXPECT_EQ(load_dataset<double>(path, {5}, LikelihoodKind::categorical, 3).size(), 13) << header;
  }
  // Text: windows of T + 1 = 10 bytes; window w starts at byte 10 w.
  EXPECT_EQ(count_samples(dir + "/t.txt", Split::train, 9), 9);
  const Dataset<double> w = load_dataset<double>(dir + "/t.txt", {9}, LikelihoodKind::categorical, 256,
                                                 Split::train, 2, 9, 9, 3);
  ASSERT_EQ(w.size(), 2);
  EXPECT_EQ(w.inputs(0, 0), double('a' + 30 % 26));
  EXPECT_EQ(w.labels[8], 'a' + 39 % 26);
}

// Fashion-MNIST as Debian installs it (IDX, gzip): the count from the header, a range equal to the same
// columns of a prefix, the last rank's share of the whole file.
TEST(Distributed, FashionMnistShareEqualsTheSameColumnsOfAPrefix) {
  const std::string fm = "/usr/share/datasets/fashion-mnist";
  if (!std::ifstream(fm + "/train-labels-idx1-ubyte.gz"))
    GTEST_SKIP() << fm << " is not installed (apt-get install dataset-fashion-mnist)";
  EXPECT_EQ(count_samples(fm), 60000);
  const Dataset<float> head =
      load_dataset<float>(fm, {1, 28, 28}, LikelihoodKind::categorical, 10, Split::train, 30);
  const Dataset<float> part =
      load_dataset<float>(fm, {1, 28, 28}, LikelihoodKind::categorical, 10, Split::train, 10, 1, 0, 20);
  EXPECT_EQ(part.inputs, head.inputs.middleCols(20, 10));
  EXPECT_EQ(part.labels, std::vector<int64_t>(head.labels.begin() + 20, head.labels.end()));
  // The last rank's share, against the file decompressed here in one piece with zlib (a 16-byte header of
  // magic and three dimensions, then 784 bytes an image).
  const Dataset<float> last =
      load_dataset<float>(fm, {1, 28, 28}, LikelihoodKind::categorical, 10, Split::train, 0, 1, 0, 59990);
  ASSERT_EQ(last.size(), 10);
  gzFile f = gzopen((fm + "/train-images-idx3-ubyte.gz").c_str(), "rb");
  ASSERT_NE(f, nullptr);
  std::vector<uint8_t> bytes(16 + 60000 * 784);
  EXPECT_EQ(gzread(f, bytes.data(), unsigned(bytes.size())), int(bytes.size()));
  gzclose(f);
  for (Index n = 0; n < 10; ++n)
    for (Index k = 0; k < 784; ++k)
      ASSERT_EQ(last.inputs(k, n), float(bytes[std::size_t(16 + (59990 + n) * 784 + k)]) / 255.0f)
          << n << " " << k;
}

struct Case {
  LikelihoodKind likelihood;
  FisherKind kind;
};

class DistributedOperator : public ::testing::TestWithParam<Case> {};

TEST_P(DistributedOperator, EqualsOneProcessOnTheWholeBatch) {
  // (Not a structured binding: clang 14 refuses to capture one in the ranks' lambda.)
  const LikelihoodKind likelihood = GetParam().likelihood;
  const FisherKind kind = GetParam().kind;
  Network<double> model(test::mlp_spec(6, 7, 4));
  const Vec<double> theta = init_parameters(model, 1);
  const Index N = 23;  // no K from 2 to 22 divides it
  const Dataset<double> data = test::random_dataset(model, N, likelihood, 9);
  FisherOptions fo;
  fo.kind = kind;
  fo.mc_samples = 3;
  fo.seed = 5;
  fo.damping = 0.25;
  fo.num_threads = 1;
  FisherOperator<double> one(model, theta, likelihood, data, fo);
  const Vec<double> v = test::random_vec<double>(one.cols(), 3);
  Vec<double> y1(one.rows());
  one.perform_op(v.data(), y1.data());
  const Vec<double> diag1 = one.empirical_fisher_diagonal();
  KfacApproximation<double> kfac1(one);
  kfac1.set_damping(0.25);
  Vec<double> k1(one.rows());
  kfac1.apply(v.data(), k1.data());
  for (int K : {2, 3, 5}) {
    std::vector<Vec<double>> y(static_cast<std::size_t>(K)), g(y), diag(y), kfac(y);
    std::vector<double> loss(static_cast<std::size_t>(K));
    const auto errors = on_ranks(K, [&](int r, const Communicator& comm) {
      const SampleShare s = share_of(N, r, K);
      FisherOperator<double> F(model, theta, likelihood, data.slice(s.first, s.count), for_share(fo, comm, s, N));
      auto& yr = y[static_cast<std::size_t>(r)];
      yr.resize(F.rows());
      F.perform_op(v.data(), yr.data());
      loss[static_cast<std::size_t>(r)] = F.loss();
      g[static_cast<std::size_t>(r)] = F.gradient();
      diag[static_cast<std::size_t>(r)] = F.empirical_fisher_diagonal();
      KfacApproximation<double> kf(F);  // factors summed over the ranks
      kf.set_damping(0.25);
      kfac[static_cast<std::size_t>(r)].resize(F.rows());
      kf.apply(v.data(), kfac[static_cast<std::size_t>(r)].data());
      EXPECT_EQ(F.total_samples(), N);
      EXPECT_EQ(F.num_samples(), s.count);
    });
    for (int r = 0; r < K; ++r) {
      const auto i = static_cast<std::size_t>(r);
      ASSERT_EQ(errors[i], "") << "rank " << r;
      EXPECT_LE(rel_err_vec(y[i], y1), 1e-13) << "K " << K << " rank " << r;
      EXPECT_LE(rel_err(loss[i], one.loss()), 1e-14) << "K " << K;
      EXPECT_LE(rel_err_vec(g[i], one.gradient()), 1e-13) << "K " << K;
      EXPECT_LE(rel_err_vec(diag[i], diag1), 1e-13) << "K " << K;
      EXPECT_LE(rel_err_vec(kfac[i], k1), 1e-11) << "K " << K;
      EXPECT_EQ(kfac[i], kfac[0]);
      // Every rank holds the same bits.
      EXPECT_EQ(y[i], y[0]);
      EXPECT_EQ(g[i], g[0]);
      EXPECT_EQ(loss[i], loss[0]);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Kinds, DistributedOperator,
                         ::testing::Values(Case{LikelihoodKind::categorical, FisherKind::exact},
                                           Case{LikelihoodKind::categorical, FisherKind::mc},
                                           Case{LikelihoodKind::categorical, FisherKind::empirical},
                                           Case{LikelihoodKind::gaussian, FisherKind::exact},
                                           Case{LikelihoodKind::bernoulli, FisherKind::mc}));

// A batch smaller than the ranks: the ranks without a sample take part in every sum with zeros, so loss,
// gradient, products, the empirical diagonal, K-FAC's factors and the Gram solve are the one-process ones on
// the same samples (here 2 samples on 3 and 5 ranks; with a convolution, whose gradient is summed over sample
// groups, and a linear layer split into weight blocks).
TEST(Distributed, ARankWithNoSampleContributesNothing) {
  ModelSpec spec;
  spec.input_shape = {1, 4, 4};
  spec.layers = {LayerSpec::conv2d(1, 2, 3, 1, 0), LayerSpec::activation(LayerType::tanh), LayerSpec::flatten(),
                 LayerSpec::linear(8, 300), LayerSpec::activation(LayerType::tanh), LayerSpec::linear(300, 3)};
  Network<double> model(spec);
  const Vec<double> theta = init_parameters(model, 4);
  const Index N = 2;
  const Dataset<double> data = test::random_dataset(model, N, LikelihoodKind::categorical, 6);
  for (FisherKind kind : {FisherKind::exact, FisherKind::mc}) {
    FisherOptions fo;
    fo.kind = kind;
    fo.seed = 3;
    fo.damping = 0.5;
    fo.num_threads = 1;
    FisherOperator<double> one(model, theta, LikelihoodKind::categorical, data, fo);
    const Vec<double> v = test::random_vec<double>(one.cols(), 8);
    Vec<double> y1(one.rows()), k1(one.rows());
    one.perform_op(v.data(), y1.data());
    KfacApproximation<double> kfac1(one);
    kfac1.set_damping(0.5);
    kfac1.apply(v.data(), k1.data());
    const Vec<double> gram1 = FisherGram<double>(one).solve(one.gradient(), {0.5}, true)[0].direction;
    for (int K : {3, 5}) {
      std::vector<Vec<double>> y(static_cast<std::size_t>(K)), g(y), diag(y), kfac(y), gram(y);
      std::vector<double> loss(static_cast<std::size_t>(K));
      const auto errors = on_ranks(K, [&](int r, const Communicator& comm) {
        const auto i = static_cast<std::size_t>(r);
        const SampleShare s = share_of(N, r, K);
        FisherOperator<double> F(model, theta, LikelihoodKind::categorical, data.slice(s.first, s.count),
                                 for_share(fo, comm, s, N));
        EXPECT_EQ(F.num_samples(), s.count);
        y[i].resize(F.rows());
        F.perform_op(v.data(), y[i].data());
        loss[i] = F.loss();
        g[i] = F.gradient();
        diag[i] = F.empirical_fisher_diagonal();
        KfacApproximation<double> kf(F);
        kf.set_damping(0.5);
        kfac[i].resize(F.rows());
        kf.apply(v.data(), kfac[i].data());
        gram[i] = FisherGram<double>(F).solve(g[i], {0.5}, true)[0].direction;
      });
      int empty = 0;
      for (int r = 0; r < K; ++r) {
        const auto i = static_cast<std::size_t>(r);
        empty += share_of(N, r, K).count == 0 ? 1 : 0;
        ASSERT_EQ(errors[i], "") << "K " << K << " rank " << r;
        EXPECT_LE(rel_err(loss[i], one.loss()), 1e-14) << "K " << K;
        EXPECT_LE(rel_err_vec(g[i], one.gradient()), 1e-13) << "K " << K;
        EXPECT_LE(rel_err_vec(y[i], y1), 1e-13) << "K " << K;
        EXPECT_LE(rel_err_vec(diag[i], one.empirical_fisher_diagonal()), 1e-13) << "K " << K;
        EXPECT_LE(rel_err_vec(kfac[i], k1), 1e-11) << "K " << K;
        EXPECT_LE(rel_err_vec(gram[i], gram1), 1e-11) << "K " << K;
        EXPECT_EQ(y[i], y[0]);
        EXPECT_EQ(gram[i], gram[0]);
      }
      EXPECT_EQ(empty, K - 2);  // the case is what it claims
    }
  }
}

// The scale s = 1/(N·T) and the damping λv are applied once, after the sums over samples and ranks: in one
// process and on 2 and 3 ranks, the product is s Σ_n J_nᵀ H_n J_n v + λv and the gradient s Σ_n J_nᵀ ∇_z ℓ_n
// with J_n from central differences of the forward pass and H_n, ℓ from the formulas (test_helpers.h). The
// models have weights split into several blocks (phase B) and a convolution summed over sample groups (phase
// C); the sequence model has T = 3 positions. The test first checks that it can tell: s applied twice or not
// at all, and λv applied never, twice or once per rank, each lie far outside its tolerance.
TEST(Distributed, ProductAndGradientApplyTheScaleAndTheDampingOnce) {
  ModelSpec conv;
  conv.input_shape = {1, 4, 4};
  conv.layers = {
      LayerSpec::conv2d(1, 2, 3, 1, 0), LayerSpec::activation(LayerType::tanh), LayerSpec::flatten(),
      LayerSpec::linear(8, 260),        LayerSpec::activation(LayerType::tanh), LayerSpec::linear(260, 3)};
  ModelSpec sequence;
  sequence.input_shape = {3, 4};
  sequence.layers = {LayerSpec::linear(4, 260), LayerSpec::activation(LayerType::tanh),
                     LayerSpec::linear(260, 5)};
  const double lambda = 0.05;
  for (const auto& [name, spec] : {std::make_pair("conv", conv), std::make_pair("sequence", sequence)}) {
    SCOPED_TRACE(name);
    Network<double> model(spec);
    const Index N = 7, T = model.output_positions(), C = model.output_size() / T, P = model.num_params();
    const Vec<double> theta = init_parameters(model, 11);
    Dataset<double> data;
    data.inputs = test::random_mat<double>(model.input_size(), N, 12);
    for (Index k = 0; k < N * T; ++k) data.labels.push_back(int64_t(CounterRng(13, 1).bits(k) % C));
    // The reference, never forming F (P × P): Σ_n J_nᵀ H_n J_n v and Σ_n J_nᵀ ∇_z ℓ_n (softmax − onehot per
    // position), then s and λ.
    const Mat<double> J = test::jacobian_by_finite_differences(model, theta, data.inputs);
    const Mat<double> Z = model.predict(theta.data(), data.inputs);
    const Vec<double> v = test::random_vec<double>(P, 14);
    Vec<double> sum_fv = Vec<double>::Zero(P), sum_g = Vec<double>::Zero(P);
    for (Index n = 0; n < N; ++n) {
      const Mat<double> Jn = J.middleRows(n * T * C, T * C);
      const Vec<double> z = Z.col(n);
      sum_fv += Jn.transpose() * (test::per_position_fisher(LikelihoodKind::categorical, FisherKind::exact, z,
                                                            data, n, T, 0, 1) *
                                  (Jn * v));
      Vec<double> score(T * C);
      for (Index t = 0; t < T; ++t) {
        const Vec<double> e = z.segment(t * C, C).array().exp();
        score.segment(t * C, C) = e / e.sum();
        score[t * C + data.labels[static_cast<std::size_t>(n * T + t)]] -= 1;
      }
      sum_g += Jn.transpose() * score;
    }
    const double s = 1.0 / double(N * T);
    const Vec<double> product = s * sum_fv + lambda * v, gradient = s * sum_g;
    const double tol = 1e-7;  // central differences: O(h²) + rounding/h, about 1e-9 here
    for (const Vec<double>& wrong :
         {Vec<double>(s * s * sum_fv + lambda * v), Vec<double>(sum_fv + lambda * v), Vec<double>(s * sum_fv),
          Vec<double>(s * sum_fv + 2 * lambda * v), Vec<double>(s * sum_fv + 3 * lambda * v)})
      ASSERT_GT(rel_err_vec(wrong, product), 1e3 * tol);
    ASSERT_GT(rel_err_vec(Vec<double>(sum_g), gradient), 1e3 * tol);
    ASSERT_GT(rel_err_vec(Vec<double>(s * s * sum_g), gradient), 1e3 * tol);

    FisherOptions fo;
    fo.damping = lambda;
    fo.chunk_size = 2;  // 4 chunks: the convolution's gradient is summed over sample groups
    fo.num_threads = 2;
    const FisherOperator<double> one(model, theta, LikelihoodKind::categorical, data, fo);
    EXPECT_LE(rel_err_vec(test::apply(one, v), product), tol);
    EXPECT_LE(rel_err_vec(one.gradient(), gradient), tol);
    for (int K : {2, 3}) {
      std::vector<Vec<double>> y(static_cast<std::size_t>(K)), g(y);
      const auto errors = on_ranks(K, [&](int r, const Communicator& comm) {
        const SampleShare sh = share_of(N, r, K);
        FisherOptions o = for_share(fo, comm, sh, N);
        o.num_threads = 1;
        const FisherOperator<double> F(model, theta, LikelihoodKind::categorical,
                                       data.slice(sh.first, sh.count), o);
        y[static_cast<std::size_t>(r)] = test::apply(F, v);
        g[static_cast<std::size_t>(r)] = F.gradient();
      });
      for (int r = 0; r < K; ++r) {
        const auto i = static_cast<std::size_t>(r);
        ASSERT_EQ(errors[i], "") << "K " << K << " rank " << r;
        EXPECT_LE(rel_err_vec(y[i], product), tol) << "K " << K << " rank " << r;
        EXPECT_LE(rel_err_vec(g[i], gradient), tol) << "K " << K << " rank " << r;
      }
    }
  }
}

// Ignored targets (−100): the count M of positions that count is summed over the ranks, so a share with no
// counted position contributes nothing and every rank divides by the global M. Against one process on the
// whole batch (itself checked against the reduced batch and dense references in test_ignore_index), for
// every Fisher kind and K-FAC; and a batch all of whose positions are ignored fails on every rank alike.
TEST(Distributed, IgnoredTargetsAreCountedOverAllRanks) {
  ModelSpec spec;
  spec.input_shape = {3, 4};
  spec.layers = {LayerSpec::linear(4, 6), LayerSpec::activation(LayerType::tanh), LayerSpec::linear(6, 5)};
  Network<double> model(spec);
  const Index N = 7, T = 3;
  const Vec<double> theta = init_parameters(model, 3);
  Dataset<double> data;
  data.inputs = test::random_mat<double>(model.input_size(), N, 4);
  for (Index k = 0; k < N * T; ++k) data.labels.push_back(int64_t(CounterRng(5, 1).bits(k) % 5));
  // Rank 1 of 3's share (two samples): all of it ignored; and scattered positions of samples 0, 5 and 6.
  const SampleShare idle = share_of(N, 1, 3);
  ASSERT_EQ(idle.count, 2);
  ASSERT_TRUE(idle.first > 0 && idle.first + idle.count < 5);
  for (Index k = idle.first * T; k < (idle.first + idle.count) * T; ++k) data.labels[static_cast<std::size_t>(k)] = -100;
  for (Index k : {1, 17, 20}) data.labels[static_cast<std::size_t>(k)] = -100;
  const Vec<double> v = test::random_vec<double>(model.num_params(), 6);
  for (FisherKind kind : {FisherKind::exact, FisherKind::mc, FisherKind::empirical}) {
    SCOPED_TRACE(to_string(kind));
    FisherOptions fo;
    fo.kind = kind;
    fo.mc_samples = 2;
    fo.seed = 8;
    fo.damping = 0.1;
    fo.num_threads = 1;
    FisherOperator<double> one(model, theta, LikelihoodKind::categorical, data, fo);
    ASSERT_EQ(one.counted_positions(), 12);
    const Vec<double> y1 = test::apply(one, v), diag1 = one.empirical_fisher_diagonal();
    KfacApproximation<double> kfac1(one);
    kfac1.set_damping(0.1);
    Vec<double> k1(one.rows());
    kfac1.apply(v.data(), k1.data());
    for (int K : {2, 3}) {
      std::vector<Vec<double>> y(static_cast<std::size_t>(K)), g(y), diag(y), kf(y);
      std::vector<double> loss(static_cast<std::size_t>(K));
      std::vector<Index> counted(static_cast<std::size_t>(K));
      const auto errors = on_ranks(K, [&](int r, const Communicator& comm) {
        const SampleShare s = share_of(N, r, K);
        FisherOperator<double> F(model, theta, LikelihoodKind::categorical, data.slice(s.first, s.count),
                                 for_share(fo, comm, s, N));
        const auto i = static_cast<std::size_t>(r);
        counted[i] = F.counted_positions();
        y[i] = test::apply(F, v);
        loss[i] = F.loss();
        g[i] = F.gradient();
        diag[i] = F.empirical_fisher_diagonal();
        KfacApproximation<double> kr(F);
        kr.set_damping(0.1);
        kf[i].resize(F.rows());
        kr.apply(v.data(), kf[i].data());
      });
      for (int r = 0; r < K; ++r) {
        const auto i = static_cast<std::size_t>(r);
        ASSERT_EQ(errors[i], "") << "K " << K << " rank " << r;
        EXPECT_EQ(counted[i], 12) << "K " << K << " rank " << r;
        EXPECT_LE(rel_err_vec(y[i], y1), 1e-13) << "K " << K << " rank " << r;
        EXPECT_LE(rel_err(loss[i], one.loss()), 1e-14) << "K " << K;
        EXPECT_LE(rel_err_vec(g[i], one.gradient()), 1e-13) << "K " << K;
        EXPECT_LE(rel_err_vec(diag[i], diag1), 1e-13) << "K " << K;
        EXPECT_LE(rel_err_vec(kf[i], k1), 1e-11) << "K " << K;
        EXPECT_EQ(y[i], y[0]);
        EXPECT_EQ(g[i], g[0]);
      }
    }
  }
  // Nothing counts anywhere: the same sentence on every rank.
  Dataset<double> padding = data;
  padding.labels.assign(padding.labels.size(), -100);
  const auto errors = on_ranks(3, [&](int r, const Communicator& comm) {
    const SampleShare s = share_of(N, r, 3);
    FisherOperator<double> F(model, theta, LikelihoodKind::categorical, padding.slice(s.first, s.count),
                             for_share(FisherOptions{}, comm, s, N));
  });
  for (const std::string& e : errors)
    EXPECT_NE(e.find("every target of the batch is the ignore index -100"), std::string::npos) << e;
}

TEST(Distributed, TraceAndDensityProbesAreTheOneProcessOnes) {
  // Hutchinson's and SLQ's Rademacher probes are keyed by the probe index, and each probe's products are
  // sums over the ranks: the estimates are the one-process ones.
  Network<double> model(test::mlp_spec(5, 6, 3));
  const Vec<double> theta = init_parameters(model, 2);
  const Index N = 19;
  const Dataset<double> data = test::random_dataset(model, N, LikelihoodKind::categorical, 4);
  FisherOptions fo;
  fo.num_threads = 1;
  const FisherOperator<double> one(model, theta, LikelihoodKind::categorical, data, fo);
  const TraceEstimate t1 = hutchinson_trace(one, 20, 3);
  const SpectralDensity d1 = slq_density(one, 12, 4, 3);
  std::vector<TraceEstimate> t(3);
  std::vector<SpectralDensity> d(3);
  const auto errors = on_ranks(3, [&](int r, const Communicator& comm) {
    const SampleShare s = share_of(N, r, 3);
    const FisherOperator<double> F(model, theta, LikelihoodKind::categorical, data.slice(s.first, s.count),
                                   for_share(fo, comm, s, N));
    t[static_cast<std::size_t>(r)] = hutchinson_trace(F, 20, 3);
    d[static_cast<std::size_t>(r)] = slq_density(F, 12, 4, 3);
  });
  for (int r = 0; r < 3; ++r) {
    const auto i = static_cast<std::size_t>(r);
    ASSERT_EQ(errors[i], "");
    EXPECT_LE(rel_err(t[i].trace, t1.trace), 1e-13);
    EXPECT_LE(rel_err(t[i].standard_error, t1.standard_error), 1e-10);
    ASSERT_EQ(d[i].nodes.size(), d1.nodes.size());
    double scale = 0;  // Ritz values near 0 are compared on the spectrum's scale
    for (double x : d1.nodes) scale = std::max(scale, std::abs(x));
    for (std::size_t k = 0; k < d1.nodes.size(); ++k) {
      EXPECT_LE(std::abs(d[i].nodes[k] - d1.nodes[k]), 1e-9 * scale) << k;
      EXPECT_LE(std::abs(d[i].weights[k] - d1.weights[k]), 1e-9) << k;
    }
  }
}

TEST(Distributed, EveryRankReportsTheFirstFailureWithTheGlobalSample) {
  Network<double> model(test::mlp_spec(4, 5, 3));
  const Vec<double> theta = init_parameters(model, 1);
  Dataset<double> data = test::random_dataset(model, 12, LikelihoodKind::categorical, 2);
  data.inputs(2, 10) = std::numeric_limits<double>::quiet_NaN();  // sample 10: rank 2's share
  std::vector<std::string> reported(3);
  const auto errors = on_ranks(3, [&](int r, const Communicator& comm) {
    const SampleShare s = share_of(12, r, 3);
    FisherOperator<double> F(model, theta, LikelihoodKind::categorical, data.slice(s.first, s.count),
                             for_share(FisherOptions(), comm, s, 12));
    reported[static_cast<std::size_t>(r)] = F.forward_error();
  });
  for (int r = 0; r < 3; ++r) {
    EXPECT_EQ(errors[static_cast<std::size_t>(r)], "");
    EXPECT_NE(reported[static_cast<std::size_t>(r)].find("NaN or Inf, first at sample 10"), std::string::npos)
        << "rank " << r << ": " << reported[static_cast<std::size_t>(r)];
  }
  // A label out of range in rank 1's share: every rank's constructor throws rank 1's error.
  Dataset<double> bad = test::random_dataset(model, 12, LikelihoodKind::categorical, 2);
  bad.labels[5] = 7;
  const auto thrown = on_ranks(3, [&](int r, const Communicator& comm) {
    const SampleShare s = share_of(12, r, 3);
    FisherOperator<double> F(model, theta, LikelihoodKind::categorical, bad.slice(s.first, s.count),
                             for_share(FisherOptions(), comm, s, 12));
  });
  for (int r = 0; r < 3; ++r) {
    EXPECT_FALSE(thrown[static_cast<std::size_t>(r)].empty()) << "rank " << r;
    EXPECT_EQ(thrown[static_cast<std::size_t>(r)], thrown[0]);
  }
}

// Whatever one rank's constructor throws — here its progress callback throws std::out_of_range, a type the
// ranks used not to catch — every rank fails with that message instead of waiting for the failed one: the
// failing rank with its own exception, the others with a std::runtime_error.
TEST(Distributed, AnUnusualExceptionOnOneRankFailsEveryRank) {
  Network<double> model(test::mlp_spec(4, 5, 3));
  const Vec<double> theta = init_parameters(model, 1);
  const Dataset<double> data = test::random_dataset(model, 24, LikelihoodKind::categorical, 2);
  std::vector<std::string> kinds(3);
  const auto errors = on_ranks(3, [&](int r, const Communicator& comm) {
    const SampleShare s = share_of(24, r, 3);
    FisherOptions opt = for_share(FisherOptions(), comm, s, 24);
    opt.chunk_size = 2;
    opt.num_threads = 1;  // the one thread reports every chunk
    if (r == 1)
      opt.on_progress = [](const char*, Index done, Index) {
        if (done == 2) throw std::out_of_range("rank 1's progress display failed");
      };
    try {
      FisherOperator<double> F(model, theta, LikelihoodKind::categorical, data.slice(s.first, s.count), opt);
    } catch (const std::out_of_range&) {
      kinds[static_cast<std::size_t>(r)] = "out_of_range";
      throw;
    } catch (const std::runtime_error&) {
      kinds[static_cast<std::size_t>(r)] = "runtime_error";
      throw;
    }
  });
  for (int r = 0; r < 3; ++r)
    EXPECT_EQ(errors[static_cast<std::size_t>(r)], "rank 1's progress display failed") << r;
  EXPECT_EQ(kinds, (std::vector<std::string>{"runtime_error", "out_of_range", "runtime_error"}));
}

// A stop requested on one rank only (rank 1) during a product: the ranks agree before the sum over them, so
// every rank throws Interrupted and none waits in the sum; the next product is the uninterrupted one, bit for
// bit. The same for gradient().
TEST(Distributed, AStopOnOneRankInterruptsEveryRankBeforeTheSum) {
  Network<double> model(test::mlp_spec(4, 5, 3));
  const Vec<double> theta = init_parameters(model, 1);
  const Dataset<double> data = test::random_dataset(model, 24, LikelihoodKind::categorical, 2);
  const Vec<double> v = test::random_vec<double>(model.num_params(), 3);
  std::vector<std::string> interrupted(2);
  std::vector<int> equal(2, 0);
  const auto errors = on_ranks(2, [&](int r, const Communicator& comm) {
    const SampleShare s = share_of(24, r, 2);
    bool stop = false;
    FisherOptions opt = for_share(FisherOptions(), comm, s, 24);
    opt.chunk_size = 3;
    opt.stop_requested = [&stop, r] { return r == 1 && stop; };  // every rank sets it; rank 1 asks
    FisherOperator<double> F(model, theta, LikelihoodKind::categorical, data.slice(s.first, s.count), opt);
    Vec<double> before(model.num_params()), after = Vec<double>::Constant(model.num_params(), 7.0);
    F.perform_op(v.data(), before.data());
    const Vec<double> g = F.take_gradient();  // moved out: the next gradient() computes it again
    stop = true;
    try {
      F.perform_op(v.data(), after.data());
    } catch (const Interrupted& e) {
      interrupted[static_cast<std::size_t>(r)] = e.what();
    }
    try {
      F.gradient();
    } catch (const Interrupted& e) {
      interrupted[static_cast<std::size_t>(r)] += std::string("; ") + e.what();
    }
    const bool untouched = (after.array() == 7.0).all();  // the interrupted product wrote nothing
    stop = false;
    F.perform_op(v.data(), after.data());
    equal[static_cast<std::size_t>(r)] = untouched && before == after && F.gradient() == g;
  });
  for (int r = 0; r < 2; ++r) {
    EXPECT_EQ(errors[static_cast<std::size_t>(r)], "") << r;
    EXPECT_EQ(
        interrupted[static_cast<std::size_t>(r)],
        "the product was interrupted after 0 of 4 chunks; the gradient was interrupted after 0 of 4 chunks")
        << r;
    EXPECT_TRUE(equal[static_cast<std::size_t>(r)]) << r;
  }
}

TEST(Distributed, SolveMatchesOneProcessAndStopsWhereRankZeroSays) {
  Network<double> model(test::mlp_spec(5, 6, 3));
  const Vec<double> theta = init_parameters(model, 4);
  const Index N = 17, Nc = 8;
  const Dataset<double> data = test::random_dataset(model, N, LikelihoodKind::categorical, 8);
  NaturalGradientOptions opt;
  opt.fisher.damping = 1e-2;
  opt.fisher.num_threads = 1;
  opt.cg.relative_tolerance = 1e-12;
  opt.curvature_batch = Nc;
  opt.spectrum_top_k = 2;
  const NaturalGradientResult<double> one = solve_natural_gradient(model, theta, LikelihoodKind::categorical, data, opt);
  ASSERT_TRUE(one.cg.is_converged()) << one.cg.message;
  const int K = 3;
  std::vector<NaturalGradientResult<double>> res(K);
  auto errors = on_ranks(K, [&](int r, const Communicator& comm) {
    NaturalGradientOptions o = opt;
    o.curvature_batch = 0;
    o.fisher.communicator = &comm;
    const SampleShare s = share_of(N, r, K), c = share_of(Nc, r, K);
    const Dataset<double> mine = data.slice(s.first, s.count), curvature = data.slice(c.first, c.count);
    res[static_cast<std::size_t>(r)] =
        solve_natural_gradient(model, theta, LikelihoodKind::categorical, BatchShare<double>{&mine, s.first, N},
                               BatchShare<double>{&curvature, c.first, Nc}, o);
  });
  for (int r = 0; r < K; ++r) {
    const auto& x = res[static_cast<std::size_t>(r)];
    ASSERT_EQ(errors[static_cast<std::size_t>(r)], "");
    EXPECT_EQ(x.samples, N);
    EXPECT_EQ(x.curvature_samples, Nc);
    EXPECT_LE(rel_err(x.loss, one.loss), 1e-14);
    EXPECT_LE(rel_err_vec(x.gradient, one.gradient), 1e-13);
    EXPECT_LE(rel_err_vec(x.direction, one.direction), 1e-8);  // two converged CG runs (cond · tolerance)
    EXPECT_LE(rel_err_vec(x.spectrum.eigenvalues, one.spectrum.eigenvalues), 1e-10);
    EXPECT_EQ(x.direction, res[0].direction);
  }
  // Rank r's solve on its share of the batch (gradient and curvature alike), with `o` and the rank's communicator.
  auto solve_share = [&](int r, const Communicator& comm, NaturalGradientOptions o) {
    o.fisher.communicator = &comm;
    const SampleShare s = share_of(N, r, K);
    const Dataset<double> mine = data.slice(s.first, s.count);
    res[static_cast<std::size_t>(r)] = solve_natural_gradient(
        model, theta, LikelihoodKind::categorical, BatchShare<double>{&mine, s.first, N},
        BatchShare<double>{&mine, s.first, N}, o);
  };
  // The callback asks to stop on rank 0 only, at iteration 3: every rank stops there, with the same iterate.
  errors = on_ranks(K, [&](int r, const Communicator& comm) {
    NaturalGradientOptions o = opt;
    o.curvature_batch = 0;
    o.spectrum_top_k = 0;
    o.cg.callback = [r](const CgIterationInfo& info) {
      return r == 0 && info.iteration == 3 ? CallbackResult::stop : CallbackResult::keep_going;
    };
    solve_share(r, comm, o);
  });
  for (int r = 0; r < K; ++r) {
    ASSERT_EQ(errors[static_cast<std::size_t>(r)], "");
    EXPECT_EQ(res[static_cast<std::size_t>(r)].cg.termination, CgTermination::user_stop) << "rank " << r;
    EXPECT_EQ(res[static_cast<std::size_t>(r)].cg.iterations, 3) << "rank " << r;
    EXPECT_EQ(res[static_cast<std::size_t>(r)].direction, res[0].direction);
  }
  // Several dampings (multi-shift CG) over the ranks: every damping's direction as in one process.
  NaturalGradientOptions multi = opt;
  multi.curvature_batch = 0;
  multi.spectrum_top_k = 0;
  multi.dampings = {1e-1, 1e-3, 1e-2};
  const auto one_multi = solve_natural_gradient(model, theta, LikelihoodKind::categorical, data, multi);
  ASSERT_EQ(one_multi.solves.size(), 3u);
  errors = on_ranks(K, [&](int r, const Communicator& comm) { solve_share(r, comm, multi); });
  for (int r = 0; r < K; ++r) {
    ASSERT_EQ(errors[static_cast<std::size_t>(r)], "");
    const auto& x = res[static_cast<std::size_t>(r)];
    ASSERT_EQ(x.solves.size(), 3u);
    for (std::size_t j = 0; j < 3; ++j) {
      EXPECT_EQ(x.solves[j].damping, one_multi.solves[j].damping);
      EXPECT_TRUE(x.solves[j].cg.is_converged()) << x.solves[j].cg.message;
      EXPECT_LE(rel_err_vec(x.solves[j].direction, one_multi.solves[j].direction), 1e-8);
      EXPECT_EQ(x.solves[j].direction, res[0].solves[j].direction);
    }
  }
  // A whole Dataset is one process's batch: with a communicator of several ranks the call is refused.
  errors = on_ranks(K, [&](int, const Communicator& comm) {
    NaturalGradientOptions o = opt;
    o.fisher.communicator = &comm;
    solve_natural_gradient(model, theta, LikelihoodKind::categorical, data, o);
  });
  for (const std::string& e : errors) EXPECT_NE(e.find("BatchShare overload"), std::string::npos) << e;
}

// The Gram under MPI: every rank gathers the whole batch's rows, so every rank holds the same G, solves the
// same systems and finds the same spectrum as one process (to rounding), down to one sample per rank. Chains (the Kronecker identity) and a CNN (explicit rows), each Fisher kind.
TEST(Distributed, GramSolvesAndSpectraEqualOneProcess) {
  for (const bool cnn : {false, true})
    for (const FisherKind kind : {FisherKind::exact, FisherKind::mc, FisherKind::empirical}) {
      SCOPED_TRACE(std::string(cnn ? "cnn " : "mlp ") + to_string(kind));
      Network<double> model(cnn ? test::cnn_spec(3) : test::mlp_spec(6, 7, 4));
      const Vec<double> theta = init_parameters(model, 1);
      const Index N = 7;
      const Dataset<double> data = test::random_dataset(model, N, LikelihoodKind::categorical, 9);
      FisherOptions fo;
      fo.kind = kind;
      fo.mc_samples = 2;
      fo.seed = 5;
      fo.num_threads = 1;
      FisherOperator<double> one(model, theta, LikelihoodKind::categorical, data, fo);
      const FisherGram<double> gram1(one);
      const Vec<double> g1 = one.gradient();
      const Vec<double> d1 = gram1.solve(g1, {1e-2, 1e-4}, true)[1].direction;
      const GramSpectrum s1 = gram1.spectrum(0);
      for (int K : {2, 3, 7}) {  // 7: one sample per rank
        std::vector<Mat<double>> G(static_cast<std::size_t>(K));
        std::vector<Vec<double>> d(G.size()), ev(G.size());
        const auto errors = on_ranks(K, [&](int r, const Communicator& comm) {
          const SampleShare s = share_of(N, r, K);
          FisherOperator<double> F(model, theta, LikelihoodKind::categorical, data.slice(s.first, s.count),
                                   for_share(fo, comm, s, N));
          const FisherGram<double> gram(F);
          G[static_cast<std::size_t>(r)] = gram.matrix();
          d[static_cast<std::size_t>(r)] = gram.solve(F.gradient(), {1e-2, 1e-4}, true)[1].direction;
          ev[static_cast<std::size_t>(r)] = gram.spectrum(0).eigenvalues;
        });
        for (int r = 0; r < K; ++r) {
          const auto i = static_cast<std::size_t>(r);
          ASSERT_EQ(errors[i], "") << "K " << K << " rank " << r;
          EXPECT_LE(rel_err_vec(G[i], gram1.matrix()), 1e-13) << "K " << K;
          EXPECT_LE(rel_err_vec(d[i], d1), 1e-10) << "K " << K;
          ASSERT_EQ(ev[i].size(), s1.eigenvalues.size()) << "K " << K;
          EXPECT_LE(rel_err_vec(ev[i], s1.eigenvalues), 1e-12) << "K " << K;
          EXPECT_EQ(G[i], G[0]);  // every rank the same bits
          EXPECT_EQ(d[i], d[0]);
        }
      }
    }
}

}  // namespace
}  // namespace natgrad
