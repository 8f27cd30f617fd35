// CG deflated with known eigenpairs (DeflationPreconditioner) and the solve that reuses its spectrum for it:
// against Eigen's dense solvers and the iteration counts theory predicts.
#include "test_helpers.h"

#include <natgrad/core/threads.h>
#include <natgrad/natural_gradient/solve_natural_gradient.h>
#include <natgrad/solvers/conjugate_gradient.h>
#include <natgrad/solvers/deflation_preconditioner.h>

#include <Eigen/Dense>

namespace natgrad {
namespace {

using test::rel_err_vec;
using DenseOp = test::DenseOp<double>;

// A = Q diag(values) Qᵀ for a random orthogonal Q (from the QR of a random matrix).
Mat<double> with_eigenvalues(const Vec<double>& values, Mat<double>* Q) {
  const Index n = values.size();
  const Mat<double> R = test::random_mat<double>(n, n, 11);
  *Q = Eigen::HouseholderQR<Mat<double>>(R).householderQ() * Mat<double>::Identity(n, n);
  return *Q * values.asDiagonal() * Q->transpose();
}

TEST(Deflation, RemovesTheDeflatedEigenvaluesFromTheIterationCount) {
  // 5 large distinct eigenvalues over a tail of 6 distinct small ones (60 in all): CG needs one iteration per
  // distinct eigenvalue, 11; deflated by the 5 top eigenvectors, M⁻¹A has 6 + 1 distinct eigenvalues (1 on
  // their span), so at most 7.
  const Index n = 60;
  Vec<double> values(n);
  for (Index i = 0; i < n; ++i) values[i] = i < 5 ? 100.0 - 10.0 * double(i) : 1.0 - 0.1 * double((i - 5) % 6);
  Mat<double> Q;
  DenseOp A{with_eigenvalues(values, &Q)};
  const Vec<double> b = test::random_vec<double>(n, 3);
  const Vec<double> ref = A.A.llt().solve(b);
  CgOptions opt;
  opt.relative_tolerance = 1e-10;
  CgWorkspace<double> ws(n, true);
  Vec<double> x = Vec<double>::Zero(n);
  const CgSummary plain = conjugate_gradient(A, IdentityPreconditioner<double>(n), b.data(), x.data(), opt, ws);
  ASSERT_TRUE(plain.is_converged());
  EXPECT_GE(plain.iterations, 11);  // (15 here: finite precision loses a few to the spread 100 : 0.5)
  // Q's first 5 columns are the eigenvectors of 100, 90, …, 60 (λ = 0: A itself).
  const DeflationPreconditioner<double> M(Q.leftCols(5), values.head(5), 0.0);
  M.initial_guess(b.data(), x.data());
  // The starting guess solves the system on the deflated span: its residual has no component there.
  EXPECT_LE((Q.leftCols(5).transpose() * (b - A.A * x)).norm(), 1e-12 * b.norm());
  opt.warm_start = true;
  const CgSummary deflated = conjugate_gradient(A, M, b.data(), x.data(), opt, ws);
  ASSERT_TRUE(deflated.is_converged()) << deflated.full_report();
  EXPECT_LE(deflated.iterations, 7) << deflated.brief_report();
  EXPECT_LE(rel_err_vec(x, ref), 1e-9);
}

TEST(Deflation, ApplyIsSymmetricPositiveAndTheSameForAnyThreadCount) {
  const Index n = 1000, k = 7;
  Vec<double> values(n);
  for (Index i = 0; i < n; ++i) values[i] = 1.0 / double(1 + i);
  Mat<double> Q;
  with_eigenvalues(values.head(n), &Q);
  const DeflationPreconditioner<float> M(Q.leftCols(k), values.head(k), 1e-3);
  const Vec<float> u = test::random_vec<float>(n, 1), v = test::random_vec<float>(n, 2);
  Vec<float> Mu(n), Mv(n);
  M.apply(u.data(), Mu.data());
  M.apply(v.data(), Mv.data());
  EXPECT_NEAR(double(v.dot(Mu)), double(u.dot(Mv)), 1e-5 * double(u.norm() * v.norm()) * 1e3);
  EXPECT_GT(double(u.dot(Mu)), 0.0);
  // The dense M⁻¹ of the formula, in double.
  const Mat<double> V = Q.leftCols(k);
  const double c = 1.0 / (values[k - 1] + 1e-3);
  const Mat<double> Minv = V * (values.head(k).array() + 1e-3).inverse().matrix().asDiagonal() * V.transpose() +
                           c * (Mat<double>::Identity(n, n) - V * V.transpose());
  EXPECT_LE(rel_err_vec(Mu, Minv * u.cast<double>()), 1e-5);
  const int before = num_threads();
  for (int t : {1, 2, 3}) {
    set_num_threads(t);
    Vec<float> z(n);
    M.apply(u.data(), z.data());
    EXPECT_EQ(z, Mu) << t << " threads";
  }
  set_num_threads(before);
  EXPECT_THROW(DeflationPreconditioner<float>(Q.leftCols(k), values.head(k - 1), 1e-3), std::invalid_argument);
  EXPECT_THROW(DeflationPreconditioner<float>(Q.leftCols(k), Vec<double>::Zero(k), 0.0), std::invalid_argument);
}

TEST(Deflation, ASolveReusesItsSpectrumForTheSameDirectionWithFewerProducts) {
  Network<double> model(test::mlp_spec(6, 12, 5));
  const Vec<double> theta = init_parameters(model, 3);
  const Dataset<double> data = test::random_dataset(model, 40, LikelihoodKind::categorical, 4);
  const Mat<double> Fd = test::dense_fisher(model, theta, data, LikelihoodKind::categorical, FisherKind::exact);
  NaturalGradientOptions opt;
  opt.fisher.damping = 1e-3;
  opt.cg.relative_tolerance = 1e-10;
  opt.cg.max_iterations = 2000;
  opt.spectrum_top_k = 8;
  opt.condition_number = true;
  const auto deflated = solve_natural_gradient(model, theta, LikelihoodKind::categorical, data, opt);
  opt.reuse_spectrum = false;
  const auto plain = solve_natural_gradient(model, theta, LikelihoodKind::categorical, data, opt);
  ASSERT_TRUE(deflated.cg.is_converged()) << deflated.cg.full_report();
  ASSERT_TRUE(plain.cg.is_converged());
  EXPECT_EQ(deflated.deflated, 8);
  EXPECT_EQ(plain.deflated, 0);
  const Mat<double> A = Fd + 1e-3 * Mat<double>::Identity(Fd.rows(), Fd.cols());
  const Vec<double> ref = A.ldlt().solve(deflated.gradient);
  EXPECT_LE(rel_err_vec(deflated.direction, ref), 1e-6);
  EXPECT_LE(rel_err_vec(plain.direction, ref), 1e-6);
  EXPECT_LT(deflated.cg.operator_applications, plain.cg.operator_applications);
  // The same spectrum and condition number either way (the condition number takes λ_max from it).
  EXPECT_LE(rel_err_vec(deflated.spectrum.eigenvalues, plain.spectrum.eigenvalues), 1e-8);
  EXPECT_EQ(deflated.spectrum.eigenvalues.size(), 8);
  EXPECT_NEAR(deflated.condition.lambda_max, plain.condition.lambda_max, 1e-8 * plain.condition.lambda_max);
  std::cout << "[ info ] CG products: deflated by 8 eigenpairs " << deflated.cg.operator_applications
            << ", plain " << plain.cg.operator_applications << "\n";
  // Deflation and the diagonal preconditioner do not combine.
  opt.deflate = 4;
  opt.preconditioner = PreconditionerKind::diagonal;
  EXPECT_ERROR(solve_natural_gradient(model, theta, LikelihoodKind::categorical, data, opt), "do not combine");
}

}  // namespace
}  // namespace natgrad
