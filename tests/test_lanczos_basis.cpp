// The Lanczos basis passes (lanczos_kernels.h, arnoldi_op.h) and the basis precision of top_eigenvalues:
// Vᵀy against double arithmetic and bit-identical for any thread count; the top eigenvalues of a float
// operator of 60,000 rows (so the basis passes run in many blocks) against its eigenvalues computed densely
// from its small factor, in a float and a double basis, and bit-identical for 1, 2 and 3 threads.
#include <natgrad/core/threads.h>
#include <natgrad/solvers/top_eigenvalues.h>

#include <Eigen/Eigenvalues>

#include "solvers/lanczos_kernels.h"
#include "test_helpers.h"

namespace natgrad {
namespace test {
namespace {

template <typename S>
Mat<S> random_mat(Index rows, Index cols, uint64_t seed) {
  const CounterRng rng(seed, 5);
  Mat<S> m(rows, cols);
  for (Index k = 0; k < m.size(); ++k) m.data()[k] = S(2 * rng.uniform(uint64_t(k)) - 1);
  return m;
}

// A = U diag(s) Uᵀ with a tall random U (n × r), applied in float: its nonzero eigenvalues are those of the
// r × r matrix diag(√s) UᵀU diag(√s), computed below in double by Eigen.
struct LowRankFloat {
  using Scalar = float;
  Mat<float> U;
  Vec<float> s;
  Index rows() const { return U.rows(); }
  Index cols() const { return U.rows(); }
  void perform_op(const float* x, float* y) const {
    const Vec<float> t = s.cwiseProduct(U.transpose() * ConstVecMap<float>(x, U.rows()));
    VecMap<float>(y, U.rows()).noalias() = U * t;
  }
  Vec<double> eigenvalues_descending() const {
    const Mat<double> Ud = U.cast<double>();
    const Vec<double> root = s.cast<double>().cwiseSqrt();
    const Mat<double> small = root.asDiagonal() * (Ud.transpose() * Ud) * root.asDiagonal();
    Eigen::SelfAdjointEigenSolver<Mat<double>> es(small);
    return es.eigenvalues().reverse();
  }
};

LowRankFloat low_rank(Index n, Index r) {
  LowRankFloat op{random_mat<float>(n, r, 3), Vec<float>(r)};
  for (Index i = 0; i < r; ++i) op.s[i] = float(1.0 / (1.0 + double(i) * double(i)));  // 1, 1/2, 1/5, 1/10, ...
  return op;
}

TEST(LanczosBasis, TransProductMatchesDoubleArithmeticAndIgnoresTheThreadCount) {
  const Index n = 70001, cols = 13, ld = n + 3;
  const Mat<double> Vd = random_mat<double>(ld, cols, 1);
  const Vec<double> yd = random_mat<double>(n, 1, 2);
  const Mat<float> Vf = Vd.cast<float>();
  const Vec<float> yf = yd.cast<float>();
  const Vec<double> ref = Vd.topRows(n).transpose() * yd;
  const Vec<double> ref_f = Vf.cast<double>().topRows(n).transpose() * yf.cast<double>();
  auto run = [&](int threads) {
    set_num_threads(threads);
    Vec<double> d(cols);
    Vec<float> f(cols);
    detail::basis_trans_product(Vd.data(), ld, n, cols, yd.data(), d.data());
    detail::basis_trans_product(Vf.data(), ld, n, cols, yf.data(), f.data());
    return std::make_pair(d, f);
  };
  const auto one = run(1), two = run(2), three = run(3);
#ifdef NATGRAD_HAVE_OPENMP
  EXPECT_EQ(detail::basis_last_team_size(), 3);  // the library-wide count reached the kernel
#endif
  set_num_threads(0);
  EXPECT_TRUE((one.first.array() == two.first.array()).all() && (one.first.array() == three.first.array()).all());
  EXPECT_TRUE((one.second.array() == two.second.array()).all() &&
              (one.second.array() == three.second.array()).all());
  // Each entry is a sum of 70,001 products of size ~1/3: compare against the norm of the terms.
  const double scale = std::sqrt(double(n)) / 3;
  EXPECT_LT((one.first - ref).cwiseAbs().maxCoeff(), 1e-13 * scale);
  // Accumulated in double, a float basis loses only the rounding of the result to float.
  EXPECT_LT((one.second.cast<double>() - ref_f).cwiseAbs().maxCoeff(), 1e-6 * scale);
}

TEST(LanczosBasis, FloatAndDoubleBasesFindTheEigenvaluesOfALargeFloatOperator) {
  const LowRankFloat op = low_rank(60000, 12);
  const Vec<double> ref = op.eigenvalues_descending();
  for (LanczosBasis basis : {LanczosBasis::operator_precision, LanczosBasis::double_precision}) {
    SpectrumOptions opt;
    opt.num_eigenvalues = 5;
    opt.tolerance = 1e-6;
    opt.basis = basis;
    opt.compute_eigenvectors = true;
    std::vector<SpectrumResult> runs;
    for (int threads : {1, 2, 3}) {
      set_num_threads(threads);
      runs.push_back(top_eigenvalues(op, opt));
    }
    set_num_threads(0);
    const SpectrumResult& r = runs[0];
    ASSERT_TRUE(r.converged) << r.status;
    const double tol = basis == LanczosBasis::operator_precision ? 1e-5 : 1e-6;
    for (Index i = 0; i < 5; ++i) EXPECT_LT(rel_err(r.eigenvalues[i], ref[i]), tol) << i;
    // The eigenvectors are unit vectors and A u ≈ θ u.
    for (Index i = 0; i < 5; ++i) {
      const Vec<float> u = r.eigenvectors.col(i).cast<float>();
      Vec<float> Au(u.size());
      op.perform_op(u.data(), Au.data());
      EXPECT_NEAR(r.eigenvectors.col(i).norm(), 1.0, 1e-5);
      EXPECT_LT((Au.cast<double>() - r.eigenvalues[i] * u.cast<double>()).norm(), 1e-4 * ref[0]) << i;
    }
    for (std::size_t t = 1; t < runs.size(); ++t) {
      EXPECT_TRUE((runs[t].eigenvalues.array() == r.eigenvalues.array()).all()) << "threads " << t + 1;
      EXPECT_TRUE((runs[t].eigenvectors.array() == r.eigenvectors.array()).all()) << "threads " << t + 1;
      EXPECT_EQ(runs[t].matvecs, r.matvecs);
    }
  }
}

TEST(LanczosBasis, AutomaticChoosesTheOperatorsPrecisionOnlyForLooseTolerances) {
  SpectrumOptions opt;
  opt.tolerance = 1e-8;
  EXPECT_FALSE(basis_in_operator_precision<LowRankFloat>(opt));
  opt.tolerance = 1e-5;
  EXPECT_TRUE(basis_in_operator_precision<LowRankFloat>(opt));
  opt.basis = LanczosBasis::double_precision;
  EXPECT_FALSE(basis_in_operator_precision<LowRankFloat>(opt));
  opt.tolerance = 1e-12;
  opt.basis = LanczosBasis::operator_precision;
  EXPECT_TRUE(basis_in_operator_precision<LowRankFloat>(opt));
}

}  // namespace
}  // namespace test
}  // namespace natgrad
