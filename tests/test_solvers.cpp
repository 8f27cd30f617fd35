// Conjugate gradient against Eigen's LLT on the dense F + λI, hand-solvable and breakdown cases, warm
// starts and preconditioning; the spectrum against SelfAdjointEigenSolver; Hutchinson and SLQ against the
// dense trace; solve_natural_gradient against the dense solve for every Fisher kind.
#include <natgrad/core/interrupted.h>
#include <natgrad/core/threads.h>
#include <natgrad/natural_gradient/solve_natural_gradient.h>
#include <natgrad/solvers/conjugate_gradient.h>
#include <natgrad/solvers/preconditioner.h>
#include <natgrad/solvers/spectrum.h>

#include <Eigen/Cholesky>
#include <Eigen/Eigenvalues>
#include <functional>
#include <limits>

#include "solvers/cg_kernels.h"
#include "test_helpers.h"

using namespace natgrad;
using namespace natgrad::test;

namespace {

template <typename Op>
CgSummary solve(const Op& A, const Vec<typename Op::Scalar>& b, Vec<typename Op::Scalar>& x, CgOptions opt) {
  using S = typename Op::Scalar;
  CgWorkspace<S> ws(A.rows());
  if (x.size() != A.rows()) x = Vec<S>::Zero(A.rows());
  return conjugate_gradient(A, IdentityPreconditioner<S>(A.rows()), b.data(), x.data(), opt, ws);
}

struct Problem {
  Network<double> model;
  Vec<double> theta;
  Dataset<double> data;
  Problem(const ModelSpec& spec, Index N, uint64_t seed)
      : model(spec),
        theta(init_parameters(model, seed)),
        data(random_dataset(model, N, LikelihoodKind::categorical, seed + 1)) {}
};

}  // namespace

TEST(ConjugateGradient, MatchesCholeskyOnTheDenseDampedFisher) {
  Problem p(mlp_spec(4, 6, 3), 8, 1);
  const Mat<double> Fd =
      dense_fisher(p.model, p.theta, p.data, LikelihoodKind::categorical, FisherKind::exact);
  for (double lambda : {1e-1, 1e-3}) {
    FisherOptions fo;
    fo.damping = lambda;
    FisherOperator<double> F(p.model, p.theta, LikelihoodKind::categorical, p.data, fo);
    const Vec<double> b = F.gradient();
    const Mat<double> A = Fd + lambda * Mat<double>::Identity(Fd.rows(), Fd.cols());
    const Vec<double> ref = A.llt().solve(b);
    CgOptions opt;
    opt.relative_tolerance = 1e-14;
    opt.max_iterations = 20 * F.rows();
    Vec<double> x;
    const CgSummary s = solve(F, b, x, opt);
    EXPECT_TRUE(s.is_converged()) << s.full_report();
    EXPECT_LT(rel_err_vec(x, ref), 1e-8) << "lambda " << lambda << ", " << s.brief_report();
    EXPECT_EQ(s.operator_applications, s.iterations + 1);  // + the true residual at exit
    EXPECT_EQ(F.num_products(), s.operator_applications);
    std::cout << "[ info ] lambda = " << lambda << ": " << s.brief_report() << " (P = " << F.rows() << ")\n";
  }
}

TEST(ConjugateGradient, FloatMatchesCholesky) {
  Problem p(mlp_spec(4, 6, 3), 8, 2);
  const Mat<double> Fd =
      dense_fisher(p.model, p.theta, p.data, LikelihoodKind::categorical, FisherKind::exact);
  Network<float> mf(p.model.spec());
  FisherOptions fo;
  fo.damping = 1e-1;
  FisherOperator<float> F(mf, p.theta.cast<float>(), LikelihoodKind::categorical, p.data.cast<float>(), fo);
  const Vec<float> b = F.gradient();
  const Vec<double> ref =
      (Fd + 1e-1 * Mat<double>::Identity(Fd.rows(), Fd.cols())).llt().solve(b.cast<double>());
  CgOptions opt;
  opt.relative_tolerance = 1e-6;
  opt.max_iterations = 10 * F.rows();
  Vec<float> x;
  const CgSummary s = solve(F, b, x, opt);
  EXPECT_TRUE(s.is_converged()) << s.full_report();
  EXPECT_LT(rel_err_vec(x, ref), 1e-4);
}

TEST(ConjugateGradient, HandSolvedThreeByThree) {
  // [4 1 0; 1 3 1; 0 1 2] x = [1 2 3]  has  x = [2/9, 1/9, 13/9].
  DenseOp<double> A;
  A.A.resize(3, 3);
  A.A << 4, 1, 0, 1, 3, 1, 0, 1, 2;
  Vec<double> b(3), x;
  b << 1, 2, 3;
  CgOptions opt;
  opt.relative_tolerance = 1e-15;
  const CgSummary s = solve(A, b, x, opt);
  EXPECT_TRUE(s.is_converged());
  EXPECT_LE(s.iterations, 3);
  EXPECT_NEAR(x[0], 2.0 / 9, 1e-14);
  EXPECT_NEAR(x[1], 1.0 / 9, 1e-14);
  EXPECT_NEAR(x[2], 13.0 / 9, 1e-14);
}

TEST(ConjugateGradient, ConvergesInAtMostNIterations) {
  const Index n = 40;
  const Mat<double> R = random_mat<double>(n, n, 3);
  DenseOp<double> A;
  A.A = R * R.transpose() / double(n) + Mat<double>::Identity(n, n);  // eigenvalues in [1, ~5]
  const Vec<double> b = random_vec<double>(n, 4);
  CgOptions opt;
  opt.relative_tolerance = 1e-12;
  Vec<double> x;
  const CgSummary s = solve(A, b, x, opt);
  EXPECT_TRUE(s.is_converged());
  EXPECT_LE(s.iterations, n);
  EXPECT_LT((A.A * x - b).norm() / b.norm(), 1e-11);
  EXPECT_EQ(A.calls, s.operator_applications);
  EXPECT_EQ(s.residual_history.size(), static_cast<std::size_t>(s.iterations + 1));
  // φ decreases monotonically for SPD A.
  for (std::size_t i = 1; i < s.quadratic_history.size(); ++i)
    EXPECT_LE(s.quadratic_history[i], s.quadratic_history[i - 1] + 1e-12);
}

TEST(ConjugateGradient, IndefiniteOperatorIsABreakdownWithAMessage) {
  DenseOp<double> A;
  A.A = Mat<double>::Identity(4, 4);
  A.A(2, 2) = -3;
  Vec<double> b = Vec<double>::Ones(4), x;
  const CgSummary s = solve(A, b, x, CgOptions());
  EXPECT_EQ(s.termination, CgTermination::breakdown);
  EXPECT_EQ(s.breakdown, CgBreakdown::curvature_nonpositive);
  EXPECT_FALSE(s.is_numerical_failure());
  EXPECT_NE(s.message.find("<= 0"), std::string::npos) << s.message;
  EXPECT_TRUE(x.allFinite());
}

TEST(ConjugateGradient, NaNOperatorIsABreakdownAndKeepsTheLastGoodIterate) {
  struct NanAfterTwo {
    using Scalar = double;
    mutable int calls = 0;
    Index rows() const { return 5; }
    void perform_op(const double* x, double* y) const {
      for (int i = 0; i < 5; ++i) y[i] = (i + 1.0) * x[i];
      if (++calls >= 3) y[1] = std::numeric_limits<double>::quiet_NaN();
    }
  } A;
  Vec<double> b = Vec<double>::Ones(5), x;
  const CgSummary s = solve(A, b, x, CgOptions());
  EXPECT_EQ(s.termination, CgTermination::breakdown);
  EXPECT_EQ(s.iterations, 2);
  EXPECT_NE(s.message.find("not finite"), std::string::npos) << s.message;
  EXPECT_EQ(s.breakdown, CgBreakdown::curvature_not_finite);
  EXPECT_TRUE(s.is_numerical_failure());
  EXPECT_TRUE(x.allFinite());
  EXPECT_LT(s.recursive_relative_residual, 1.0);  // two good iterations made progress
  EXPECT_TRUE(std::isnan(s.relative_residual));   // the operator is broken: no true residual to report
}

// The true residual is what decides convergence: an operator that changes after the recursive residual has
// converged (as float rounding makes the recursive residual drift from the true one) is caught by the
// check product, CG restarts from x with the true residual and converges on what the operator now is.
TEST(ConjugateGradient, ConvergenceIsDecidedOnTheTrueResidual) {
  struct Switching {
    using Scalar = double;
    Mat<double> A;
    Index switch_at = 0;
    mutable Index calls = 0;
    Index rows() const { return A.rows(); }
    void perform_op(const double* x, double* y) const {
      VecMap<double> out(y, A.rows());
      out.noalias() = A * ConstVecMap<double>(x, A.cols());
      if (calls++ >= switch_at) out += 1e-3 * ConstVecMap<double>(x, A.cols());
    }
  };
  const Index n = 12;
  std::srand(3);
  Mat<double> Q = Mat<double>::Random(n, n);
  Switching op;
  op.A = Q * Q.transpose() + Mat<double>::Identity(n, n);
  op.switch_at = 1000;
  Vec<double> b = Vec<double>::Ones(n), x;
  CgOptions opt;
  opt.relative_tolerance = 1e-10;
  opt.max_iterations = 200;
  const CgSummary base = solve(op, b, x, opt);  // never switches: converged, true residual checked once
  ASSERT_TRUE(base.is_converged()) << base.full_report();
  EXPECT_EQ(base.restarts, 0);
  const Index recursive_products = base.iterations;
  op.calls = 0;
  op.switch_at = recursive_products;  // the check product sees A + 1e-3 I
  const CgSummary s = solve(op, b, x, opt);
  EXPECT_TRUE(s.is_converged()) << s.full_report();
  EXPECT_EQ(s.restarts, 1) << s.full_report();
  EXPECT_GT(s.iterations, recursive_products);
  const Mat<double> A2 = op.A + 1e-3 * Mat<double>::Identity(n, n);
  const double true_rel = (b - A2 * x).norm() / b.norm();
  EXPECT_LE(true_rel, 1e-10);
  EXPECT_NEAR(s.relative_residual, true_rel, 1e-12);
  EXPECT_NE(s.message.find("residual replacement"), std::string::npos) << s.message;
}

TEST(ConjugateGradient, ReportsTheTrueResidualBesideTheRecursiveOneInFloat) {
  // Condition 1e4 in float32: the recursive residual keeps falling long after the true one has stalled.
  const Index n = 60;
  std::srand(5);  // Eigen's Random draws from rand(): the same matrix whether run alone or after other tests
  Eigen::HouseholderQR<Mat<double>> qr(Mat<double>::Random(n, n));
  const Mat<double> Q = qr.householderQ();
  Vec<double> ev(n);
  for (Index i = 0; i < n; ++i) ev[i] = std::pow(10.0, 4.0 * double(i) / double(n - 1));
  DenseOp<float> A;
  A.A = (Q * ev.asDiagonal() * Q.transpose()).cast<float>();
  const Vec<float> b = Vec<float>::Ones(n);
  Vec<float> x;
  CgOptions opt;
  opt.relative_tolerance = 1e-7;
  opt.max_iterations = 2000;
  const CgSummary s = solve(A, b, x, opt);
  const double true_rel = (b.cast<double>() - A.A.cast<double>() * x.cast<double>()).norm() / b.cast<double>().norm();
  // What is reported is the true residual (evaluated in float, so to float rounding of ‖A x‖).
  EXPECT_NEAR(s.relative_residual, true_rel, 1e-6 * A.A.cast<double>().norm() * x.cast<double>().norm() / b.norm());
  // The recursive residual claims the tolerance; the true one does not reach it even after the residual
  // replacements, so this is stagnation, not convergence.
  EXPECT_LE(s.recursive_relative_residual, opt.relative_tolerance);
  EXPECT_GT(s.relative_residual, opt.relative_tolerance);
  EXPECT_EQ(s.termination, CgTermination::stagnation) << s.full_report();
  EXPECT_EQ(s.restarts, CgOptions::kMaxRestarts);
  EXPECT_FALSE(s.is_converged());
  std::cout << "[ info ] float32, condition 1e4: " << s.brief_report() << ", recursive |r|/|b| = "
            << s.recursive_relative_residual << ", restarts " << s.restarts << "\n";
}

TEST(ConjugateGradient, NaNFromThePreconditionerIsAnRzBreakdownNotACurvatureOne) {
  struct NanOnSecond {
    using Scalar = double;
    mutable int calls = 0;
    void apply(const double* r, double* z) const {
      for (int i = 0; i < 4; ++i) z[i] = r[i];
      if (++calls == 2) z[3] = std::numeric_limits<double>::quiet_NaN();
    }
  };
  DenseOp<double> A;
  A.A = Mat<double>::Identity(4, 4);
  A.A.diagonal() << 1, 2, 3, 4;
  const Vec<double> b = Vec<double>::Ones(4);
  Vec<double> x = Vec<double>::Zero(4);
  CgWorkspace<double> ws(4);
  const CgSummary s = conjugate_gradient(A, NanOnSecond(), b.data(), x.data(), CgOptions(), ws);
  EXPECT_EQ(s.termination, CgTermination::breakdown);
  EXPECT_EQ(s.breakdown, CgBreakdown::rz_not_finite);
  EXPECT_TRUE(std::isnan(s.breakdown_value));
  EXPECT_TRUE(s.is_numerical_failure());
  EXPECT_NE(s.message.find("r^T z = nan is not finite while p^T A p = "), std::string::npos) << s.message;
  EXPECT_TRUE(x.allFinite());
}

TEST(ConjugateGradient, SingularOperatorWithoutDampingBreaksDownWithItsSmallestResidualIterate) {
  // F of 2 samples × 3 classes has rank ≤ 4 but P ≫ 4; with λ = 0 and b outside the range, CG exhausts the
  // range within a few iterations (8 here: rounding costs a few more than the rank) and then meets
  // pᵀFp ≤ 0: a breakdown (not a division by zero) long before the limit, after which the iterate with the
  // smallest residual is returned.
  Problem p(mlp_spec(4, 6, 3), 2, 5);
  FisherOperator<double> F(p.model, p.theta, LikelihoodKind::categorical, p.data);
  const Vec<double> b = random_vec<double>(F.rows(), 6);
  CgOptions opt;
  opt.relative_tolerance = 1e-10;
  opt.max_iterations = 200;
  Vec<double> x;
  const CgSummary s = solve(F, b, x, opt);
  EXPECT_EQ(s.termination, CgTermination::breakdown) << s.full_report();
  EXPECT_EQ(s.breakdown, CgBreakdown::curvature_nonpositive) << s.message;
  EXPECT_LT(s.iterations, 20);
  EXPECT_TRUE(x.allFinite());
  EXPECT_NE(s.message.find("smallest residual"), std::string::npos) << s.message;
  // x is the best iterate: its residual is the smallest in the history, and is what it claims.
  const double best = *std::min_element(s.residual_history.begin(), s.residual_history.end());
  EXPECT_EQ(s.relative_residual, best);
  EXPECT_EQ(s.residual_history[static_cast<std::size_t>(s.returned_iterate)], best);
  EXPECT_LT(rel_err((apply(F, x) - b).norm() / b.norm(), best), 1e-6);
}

// The case: A = diag(100, 1), b = (1, 10), one iteration. By hand: p = r₀ = b, α = bᵀb / bᵀAb =
// 101 / 200, x₁ = 0.505 b = (0.505, 5.05), r₁ = b − A x₁ = (−49.5, 4.95), ‖r₁‖/‖b‖ = 4.95 (the residual grew
// fivefold) while φ(x₁) = ½ x₁ᵀA x₁ − bᵀx₁ = −25.5025 < φ(0) = 0. Returning the smallest-residual iterate
// would return x = 0; CG at its iteration limit returns x₁.
TEST(ConjugateGradient, IterationLimitReturnsTheLastIterateEvenWhenItsResidualGrew) {
  DenseOp<double> A;
  A.A = Mat<double>::Zero(2, 2);
  A.A.diagonal() << 100, 1;
  Vec<double> b(2), x;
  b << 1, 10;
  CgOptions opt;
  opt.max_iterations = 1;
  const CgSummary s = solve(A, b, x, opt);
  EXPECT_EQ(s.termination, CgTermination::max_iterations) << s.message;
  EXPECT_EQ(s.iterations, 1);
  EXPECT_EQ(s.returned_iterate, 1);
  EXPECT_NEAR(x[0], 0.505, 1e-15);
  EXPECT_NEAR(x[1], 5.05, 1e-14);
  const double phi = 0.5 * x.dot(A.A * x) - b.dot(x);
  EXPECT_NEAR(phi, -25.5025, 1e-12);
  EXPECT_NEAR(s.quadratic_history.back(), phi, 1e-12);
  EXPECT_NEAR(s.relative_residual, 4.95, 1e-13);  // the true residual of x₁
  EXPECT_NEAR(s.recursive_relative_residual, 4.95, 1e-13);
  EXPECT_GT(s.residual_history[1], s.residual_history[0]);
  EXPECT_NE(s.message.find("returned the last iterate, 1"), std::string::npos) << s.message;
}

TEST(ConjugateGradient, WithoutTheExitCheckTheIterationLimitCostsOneProductLessAndTheSameIterate) {
  // The 2 × 2 above: ‖b − A x₁‖ / ‖b‖ = 4.95 by hand. Off, the recursive residual is reported (exact here up
  // to rounding) and no product follows the last iteration; a solve that converges still checks.
  DenseOp<double> with, without;
  with.A = without.A = Mat<double>::Zero(2, 2);
  with.A.diagonal() << 100, 1;
  without.A = with.A;
  Vec<double> b(2), x, y;
  b << 1, 10;
  CgOptions opt;
  opt.max_iterations = 1;
  const CgSummary s = solve(with, b, x, opt);
  opt.recompute_residual_at_exit = false;
  const CgSummary t = solve(without, b, y, opt);
  EXPECT_EQ(x, y);
  EXPECT_EQ(s.operator_applications, 2);
  EXPECT_EQ(t.operator_applications, 1);
  EXPECT_EQ(without.calls, 1);
  EXPECT_NEAR(t.relative_residual, 4.95, 1e-13);
  opt.max_iterations = 5;  // converges in 2: decided on the true residual, so its product remains
  DenseOp<double> again;
  again.A = with.A;
  Vec<double> z;
  const CgSummary u = solve(again, b, z, opt);
  EXPECT_EQ(u.termination, CgTermination::converged) << u.message;
  EXPECT_EQ(u.operator_applications, u.iterations + 1);
}

// CG's i-th iterate minimizes φ over the Krylov space K_i(A, b): at the limit the returned x is that
// minimizer, formed here densely from the finite-difference Fisher (krylov_minimizer).
TEST(ConjugateGradient, IterationLimitReturnsTheKrylovMinimizerOfPhi) {
  Problem p(mlp_spec(6, 10, 4), 20, 7);
  FisherOptions fo;
  fo.damping = 1e-2;
  FisherOperator<double> F(p.model, p.theta, LikelihoodKind::categorical, p.data, fo);
  const Vec<double> b = F.gradient();
  CgOptions opt;
  opt.relative_tolerance = 1e-12;
  opt.max_iterations = 3;
  Vec<double> x;
  const CgSummary s = solve(F, b, x, opt);
  ASSERT_EQ(s.termination, CgTermination::max_iterations);
  EXPECT_EQ(s.iterations, 3);
  EXPECT_EQ(s.returned_iterate, 3);
  // The tolerance as itself (std::to_string printed 1e-12 as 0.000000) and the reached residual.
  EXPECT_NE(s.message.find("reached max_iterations = 3 with |r|/|b| = "), std::string::npos) << s.message;
  EXPECT_NE(s.message.find(" > 1e-12"), std::string::npos) << s.message;
  const Mat<double> A =
      dense_fisher(p.model, p.theta, p.data, LikelihoodKind::categorical, FisherKind::exact) +
      1e-2 * Mat<double>::Identity(F.rows(), F.rows());
  const Vec<double> ref = krylov_minimizer(A, b, 3);
  EXPECT_LT(rel_err_vec(x, ref), 1e-7);
  auto phi = [&](const Vec<double>& v) { return 0.5 * v.dot(A * v) - b.dot(v); };
  EXPECT_LT(rel_err(s.quadratic_history.back(), phi(ref)), 1e-7);
  EXPECT_LT(rel_err(s.relative_residual, (b - A * x).norm() / b.norm()), 1e-6);
  for (std::size_t i = 1; i < s.quadratic_history.size(); ++i)  // φ never increases
    EXPECT_LT(s.quadratic_history[i], s.quadratic_history[i - 1]);
}

TEST(ConjugateGradient, WarmStartNeedsFewerIterations) {
  Problem p(mlp_spec(6, 10, 4), 20, 7);
  FisherOptions fo;
  fo.damping = 1e-2;
  FisherOperator<double> F(p.model, p.theta, LikelihoodKind::categorical, p.data, fo);
  const Vec<double> b = F.gradient();
  CgOptions opt;
  opt.relative_tolerance = 1e-8;
  opt.max_iterations = 1000;
  Vec<double> x;
  solve(F, b, x, opt);
  // A nearby system: slightly more damping and a slightly different right-hand side.
  F.set_damping(1.1e-2);
  const Vec<double> b2 = b + 1e-3 * b.norm() / std::sqrt(double(b.size())) * random_vec<double>(b.size(), 8);
  Vec<double> cold;
  const CgSummary sc = solve(F, b2, cold, opt);
  CgOptions warm_opt = opt;
  warm_opt.warm_start = true;
  Vec<double> warm = x;
  const CgSummary sw = solve(F, b2, warm, warm_opt);
  EXPECT_TRUE(sc.is_converged());
  EXPECT_TRUE(sw.is_converged());
  EXPECT_LT(sw.iterations, sc.iterations);
  EXPECT_LT(rel_err_vec(warm, cold), 1e-6);
  std::cout << "[ info ] cold start " << sc.iterations << " iterations, warm start " << sw.iterations << "\n";
}

TEST(ConjugateGradient, DiagonalPreconditionerHelpsABadlyScaledNetwork) {
  // Badly scaled parameters: the first layer's weights ×30 and the last layer's ×0.03, so the Fisher's
  // diagonal spans many orders of magnitude across blocks, the case a diagonal preconditioner is for.
  // (When ill-conditioning comes from input features of very different scales, a diagonal — even the
  // exact Fisher's — does not help CG; see docs/solvers.md.)
  Network<double> model(mlp_spec(6, 8, 4, LayerType::relu));
  Vec<double> theta = init_parameters(model, 9);
  const Dataset<double> data = random_dataset(model, 400, LikelihoodKind::gaussian, 10);
  const auto& np = model.named_params();
  theta.segment(np.front().offset, np.front().size) *= 30;
  theta.segment(np[np.size() - 2].offset, np[np.size() - 2].size) *= 0.03;
  FisherOptions fo;
  fo.damping = 1e-4;
  FisherOperator<double> F(model, theta, LikelihoodKind::gaussian, data, fo);
  const Vec<double> b = F.gradient();
  CgOptions opt;
  opt.relative_tolerance = 1e-6;
  opt.max_iterations = 5000;
  CgWorkspace<double> ws(F.rows());
  Vec<double> x1(F.rows()), x2(F.rows());
  const CgSummary plain =
      conjugate_gradient(F, IdentityPreconditioner<double>(F.rows()), b.data(), x1.data(), opt, ws);
  const DiagonalPreconditioner<double> M(F.empirical_fisher_diagonal(), fo.damping, 0.75);
  const CgSummary pre = conjugate_gradient(F, M, b.data(), x2.data(), opt, ws);
  EXPECT_TRUE(plain.is_converged()) << plain.full_report();
  EXPECT_TRUE(pre.is_converged()) << pre.full_report();
  EXPECT_LT(pre.iterations, plain.iterations * 3 / 4);
  // Both solve the same system: check the true residuals.
  for (const Vec<double>* x : {&x1, &x2}) EXPECT_LT((apply(F, *x) - b).norm() / b.norm(), 2e-6);
  std::cout << "[ info ] badly scaled MLP (P = " << F.rows() << "): no preconditioner " << plain.iterations
            << " iterations, diagonal (alpha 0.75) " << pre.iterations << "\n";
}

TEST(ConjugateGradient, RelativeProgressRuleAndCallbackStop) {
  Problem p(mlp_spec(6, 10, 4), 20, 10);
  FisherOptions fo;
  fo.damping = 1e-6;
  FisherOperator<double> F(p.model, p.theta, LikelihoodKind::categorical, p.data, fo);
  const Vec<double> b = F.gradient();
  CgOptions opt;
  opt.relative_tolerance = 1e-15;
  opt.max_iterations = 2000;
  opt.use_relative_progress = true;
  opt.progress_epsilon = 1e-2;
  Vec<double> x;
  const CgSummary s = solve(F, b, x, opt);
  EXPECT_EQ(s.termination, CgTermination::relative_progress) << s.full_report();
  EXPECT_GT(s.iterations, 10);

  CgOptions stop;
  int seen = 0;
  stop.callback = [&](const CgIterationInfo& info) {
    ++seen;
    EXPECT_EQ(info.iteration, seen);
    return info.iteration == 3 ? CallbackResult::stop : CallbackResult::keep_going;
  };
  Vec<double> y;
  const CgSummary s2 = solve(F, b, y, stop);
  EXPECT_EQ(s2.termination, CgTermination::user_stop);
  EXPECT_EQ(s2.iterations, 3);
  EXPECT_NE(s2.brief_report().find("user_stop"), std::string::npos);
}

// The callback's hook for keeping iterates (CG backtracking in the natural-gradient optimizer): while it
// runs, the caller's x holds iteration i's iterate, the Krylov minimizer of φ over K_i formed densely.
TEST(ConjugateGradient, TheCallbackSeesEachIterateInX) {
  const Index n = 12;
  const Mat<double> R = random_mat<double>(n, n, 31);
  DenseOp<double> A{R * R.transpose() / double(n) + 0.05 * Mat<double>::Identity(n, n)};
  const Vec<double> b = random_vec<double>(n, 32);
  Vec<double> x = Vec<double>::Zero(n);
  std::vector<Vec<double>> seen;
  CgOptions opt;
  opt.relative_tolerance = 1e-10;
  opt.callback = [&](const CgIterationInfo&) {
    seen.push_back(x);
    return CallbackResult::keep_going;
  };
  const CgSummary s = solve(A, b, x, opt);
  ASSERT_EQ(static_cast<Index>(seen.size()), s.iterations);
  ASSERT_GE(s.iterations, 5);
  for (Index i = 1; i <= 5; ++i)
    EXPECT_LT(rel_err_vec(seen[static_cast<std::size_t>(i - 1)], krylov_minimizer(A.A, b, i)), 1e-9) << i;
  EXPECT_EQ(seen.back(), x);  // the last one seen is the one returned
}

namespace {
InterruptedAt spd_interrupted_at(Index throw_at) {
  const Index n = 30;
  const Mat<double> R = random_mat<double>(n, n, 13);
  return InterruptedAt{R * R.transpose() / double(n) + 0.1 * Mat<double>::Identity(n, n), throw_at};
}
}  // namespace

// A stop request thrown by the product of iteration 4 ends CG as the callback's stop does: user_stop, the
// iterate of the last completed iteration (the Krylov minimizer of φ over K_3), nothing rethrown; no product
// can give the true residual, so it is NaN and the recursive one is reported.
TEST(ConjugateGradient, AnInterruptedProductStopsWithTheLastCompletedIterate) {
  const InterruptedAt A = spd_interrupted_at(4);
  const Vec<double> b = random_vec<double>(A.rows(), 14);
  Vec<double> x;
  CgSummary s;
  EXPECT_NO_THROW(s = solve(A, b, x, CgOptions()));
  EXPECT_EQ(s.termination, CgTermination::user_stop) << s.message;
  EXPECT_EQ(s.iterations, 3);
  EXPECT_EQ(s.returned_iterate, 3);
  EXPECT_EQ(s.operator_applications, 3);
  EXPECT_LT(rel_err_vec(x, krylov_minimizer(A.A, b, 3)), 1e-10);
  EXPECT_TRUE(std::isnan(s.relative_residual));
  EXPECT_LT(rel_err(s.recursive_relative_residual, (b - A.A * x).norm() / b.norm()), 1e-10);
  EXPECT_EQ(s.recursive_relative_residual, s.residual_history.back());
  EXPECT_NE(s.message.find("interrupted after 3 iterations (the product was interrupted)"), std::string::npos)
      << s.message;
  EXPECT_NE(s.brief_report().find("user_stop"), std::string::npos);
}

// Where else the stop request can land: in the product checking the true residual after the callback's
// stop (the termination stays user_stop, x the stopped iterate), in the check of a recursive convergence
// (not confirmed: user_stop, not converged), and in a warm start's first product (x stays x₀).
TEST(ConjugateGradient, AnInterruptedCheckOrWarmStartKeepsTheIterateItHas) {
  const Vec<double> b = random_vec<double>(30, 15);
  {
    const InterruptedAt A = spd_interrupted_at(3);  // products 1, 2: iterations; 3: the check
    CgOptions opt;
    opt.callback = [](const CgIterationInfo& info) {
      return info.iteration == 2 ? CallbackResult::stop : CallbackResult::keep_going;
    };
    Vec<double> x;
    const CgSummary s = solve(A, b, x, opt);
    EXPECT_EQ(s.termination, CgTermination::user_stop) << s.message;
    EXPECT_EQ(s.returned_iterate, 2);
    EXPECT_LT(rel_err_vec(x, krylov_minimizer(A.A, b, 2)), 1e-10);
    EXPECT_TRUE(std::isnan(s.relative_residual));
    EXPECT_NE(s.message.find("the true residual was not recomputed: the product was interrupted"),
              std::string::npos)
        << s.message;
  }
  {
    InterruptedAt A{Mat<double>::Identity(2, 2), 3};
    A.A(1, 1) = 3;  // two distinct eigenvalues: the recursive residual converges at iteration 2
    const Vec<double> b2 = (Vec<double>(2) << 1, 1).finished();
    Vec<double> x;
    const CgSummary s = solve(A, b2, x, CgOptions());
    EXPECT_EQ(s.termination, CgTermination::user_stop) << s.message;
    EXPECT_FALSE(s.is_converged());
    EXPECT_EQ(s.iterations, 2);
    EXPECT_NEAR(x[0], 1.0, 1e-14);
    EXPECT_NEAR(x[1], 1.0 / 3, 1e-14);
  }
  {
    const InterruptedAt A = spd_interrupted_at(1);
    CgOptions opt;
    opt.warm_start = true;
    Vec<double> x = Vec<double>::Constant(30, 0.25);
    const CgSummary s = solve(A, b, x, opt);
    EXPECT_EQ(s.termination, CgTermination::user_stop) << s.message;
    EXPECT_EQ(s.iterations, 0);
    EXPECT_EQ(s.operator_applications, 0);
    EXPECT_TRUE((x.array() == 0.25).all());
  }
}

TEST(ConjugateGradient, InvalidOptionsAreRejected) {
  CgOptions opt;
  std::string why;
  opt.relative_tolerance = 0;
  EXPECT_FALSE(opt.is_valid(&why));
  EXPECT_NE(why.find("relative_tolerance"), std::string::npos);
  opt = CgOptions();
  opt.max_iterations = 0;
  EXPECT_FALSE(opt.is_valid(&why));
  DenseOp<double> A;
  A.A = Mat<double>::Identity(2, 2);
  Vec<double> b = Vec<double>::Ones(2), x;
  EXPECT_THROW(solve(A, b, x, opt), std::invalid_argument);
}

TEST(Spectrum, TopEigenvaluesMatchTheDenseFisher) {
  for (const ModelSpec& spec : {mlp_spec(5, 7, 4), cnn_spec(3)}) {
    Problem p(spec, 12, 11);
    FisherOperator<double> F(p.model, p.theta, LikelihoodKind::categorical, p.data);
    const Mat<double> Fd =
        dense_fisher(p.model, p.theta, p.data, LikelihoodKind::categorical, FisherKind::exact);
    Eigen::SelfAdjointEigenSolver<Mat<double>> es(Fd);
    SpectrumOptions opt;
    opt.num_eigenvalues = 5;
    opt.compute_eigenvectors = true;
    const Index before = F.num_products();
    const SpectrumResult r = top_eigenvalues(F, opt);
    ASSERT_TRUE(r.converged) << r.status;
    EXPECT_EQ(r.matvecs, F.num_products() - before);
    for (Index i = 0; i < 5; ++i) {
      const double ref = es.eigenvalues()[Fd.rows() - 1 - i];
      EXPECT_LT(rel_err(r.eigenvalues[i], ref), 1e-8) << i;
      // (F − θ) u ≈ 0 for the returned eigenvector.
      EXPECT_LT((Fd * r.eigenvectors.col(i) - r.eigenvalues[i] * r.eigenvectors.col(i)).norm(), 1e-7 * ref);
    }
    std::cout << "[ info ] top-5 of P = " << F.rows() << ": " << r.matvecs << " products, " << r.restarts
              << " restarts\n";
  }
}

TEST(Spectrum, FloatOperatorThroughTheDoubleAdapter) {
  Problem p(mlp_spec(5, 7, 4), 12, 12);
  Network<float> mf(p.model.spec());
  FisherOperator<float> F(mf, p.theta.cast<float>(), LikelihoodKind::categorical, p.data.cast<float>());
  const Mat<double> Fd =
      dense_fisher(p.model, p.theta, p.data, LikelihoodKind::categorical, FisherKind::exact);
  Eigen::SelfAdjointEigenSolver<Mat<double>> es(Fd);
  SpectrumOptions opt;
  opt.num_eigenvalues = 3;
  opt.tolerance = 1e-6;
  const SpectrumResult r = top_eigenvalues(F, opt);
  ASSERT_TRUE(r.converged) << r.status;
  for (Index i = 0; i < 3; ++i)
    EXPECT_LT(rel_err(r.eigenvalues[i], es.eigenvalues()[Fd.rows() - 1 - i]), 1e-4);
}

TEST(Spectrum, ConditionNumberOfTheDampedFisher) {
  // A full-rank Fisher with a well-separated bottom of the spectrum (a categorical Fisher is never full
  // rank: softmax ignores a common shift of the logits): a linear-softplus-linear regression network on
  // more samples than parameters. λ_min comes from Lanczos on the shifted operator λ_max·I − F.
  ModelSpec spec;
  spec.input_shape = {3};
  spec.layers = {LayerSpec::linear(3, 2), LayerSpec::activation(LayerType::softplus),
                 LayerSpec::linear(2, 2)};
  Network<double> model(spec);
  const Vec<double> theta = init_parameters(model, 13);
  const Dataset<double> data = random_dataset(model, 40, LikelihoodKind::gaussian, 14);
  FisherOptions fo;
  fo.damping = 1e-2;
  FisherOperator<double> F(model, theta, LikelihoodKind::gaussian, data, fo);
  const Mat<double> Fd = dense_fisher(model, theta, data, LikelihoodKind::gaussian, FisherKind::exact) +
                         1e-2 * Mat<double>::Identity(F.rows(), F.rows());
  Eigen::SelfAdjointEigenSolver<Mat<double>> es(Fd);
  const ConditionEstimate c = condition_number(F, -1, 1e-10, 2000);
  ASSERT_EQ(c.kind, ConditionMethod::lanczos) << c.method;
  EXPECT_FALSE(c.exact_min);  // an estimate, with its bound
  EXPECT_LT(rel_err(c.lambda_max, es.eigenvalues().maxCoeff()), 1e-8);
  EXPECT_LT(rel_err(c.lambda_min, es.eigenvalues().minCoeff()), 1e-6);
  EXPECT_LT(rel_err(c.condition_number, es.eigenvalues().maxCoeff() / es.eigenvalues().minCoeff()), 1e-6);
  // The bound holds and is not vacuous.
  EXPECT_LE(std::abs(c.lambda_min - es.eigenvalues().minCoeff()), c.lambda_min_error + 1e-14);
  EXPECT_LT(c.lambda_min_error, 1e-3 * c.lambda_min);
}

TEST(Spectrum, ConditionNumberOfAFloatOperatorReportsItsAccuracyHonestly) {
  // λ_min = 1e-6·λ_max in float32: λ_max − θ cancels to about 1e-7·λ_max. The reported bound must cover the
  // true error (against the double eigensolver), whatever the estimate is.
  const Index n = 40;
  std::srand(11);
  Eigen::HouseholderQR<Mat<double>> qr(Mat<double>::Random(n, n));
  const Mat<double> Q = qr.householderQ();
  Vec<double> ev = Vec<double>::LinSpaced(n, 1.0, 2.0);
  ev[0] = 2e-6;
  struct FloatOp {
    using Scalar = float;
    Mat<float> A;
    Index rows() const { return A.rows(); }
    void perform_op(const float* x, float* y) const { VecMap<float>(y, A.rows()).noalias() = A * ConstVecMap<float>(x, A.cols()); }
  } op{(Q * ev.asDiagonal() * Q.transpose()).cast<float>()};
  const double truth = Eigen::SelfAdjointEigenSolver<Mat<double>>(op.A.cast<double>()).eigenvalues().minCoeff();
  const ConditionEstimate c = condition_number(op, -1, 1e-10, 2000);
  ASSERT_EQ(c.kind, ConditionMethod::lanczos) << c.method;
  EXPECT_FALSE(c.exact_min);
  EXPECT_LE(std::abs(c.lambda_min - truth), c.lambda_min_error) << c.method;
  EXPECT_NE(c.method.find("|lambda_min error| <= "), std::string::npos);
}

TEST(Spectrum, ConditionNumberOnANaNOperatorFailsWithoutThrowing) {
  struct NanOp {
    using Scalar = double;
    Index rows() const { return 30; }
    void perform_op(const double* x, double* y) const {
      for (int i = 0; i < 30; ++i) y[i] = (i + 1.0) * x[i];
      y[3] = std::numeric_limits<double>::quiet_NaN();
    }
  };
  ConditionEstimate c;
  EXPECT_NO_THROW(c = condition_number(NanOp()));
  EXPECT_EQ(c.kind, ConditionMethod::failed);
  EXPECT_TRUE(std::isnan(c.condition_number));
  EXPECT_NE(c.method.find("NaN or Inf"), std::string::npos) << c.method;
}

TEST(Spectrum, HutchinsonTraceWithinThreeStandardErrors) {
  Problem p(cnn_spec(4), 10, 14);
  FisherOperator<double> F(p.model, p.theta, LikelihoodKind::categorical, p.data);
  const double tr =
      dense_fisher(p.model, p.theta, p.data, LikelihoodKind::categorical, FisherKind::exact).trace();
  const TraceEstimate t = hutchinson_trace(F, 200, 15);
  EXPECT_GT(t.standard_error, 0);
  EXPECT_LT(std::abs(t.trace - tr), 3 * t.standard_error)
      << t.trace << " vs " << tr << " ± " << t.standard_error;
  EXPECT_LT(t.standard_error, 0.2 * tr);  // the estimate is informative
}

TEST(Spectrum, SlqDensityIntegratesToOneWithTheRightMean) {
  Problem p(mlp_spec(5, 7, 4), 12, 16);
  FisherOperator<double> F(p.model, p.theta, LikelihoodKind::categorical, p.data);
  const Mat<double> Fd =
      dense_fisher(p.model, p.theta, p.data, LikelihoodKind::categorical, FisherKind::exact);
  const SpectralDensity d = slq_density(F, 30, 20, 17, 2000);
  double integral = 0, weights = 0;
  for (std::size_t i = 1; i < d.grid.size(); ++i)
    integral += 0.5 * (d.density[i] + d.density[i - 1]) * (d.grid[i] - d.grid[i - 1]);
  for (double w : d.weights) weights += w;
  EXPECT_NEAR(integral, 1.0, 1e-6);
  EXPECT_NEAR(weights, 1.0, 1e-12);
  const double mean = Fd.trace() / double(Fd.rows());
  EXPECT_LT(std::abs(d.first_moment - mean), 3 * d.first_moment_standard_error + 1e-12)
      << d.first_moment << " vs " << mean << " ± " << d.first_moment_standard_error;
  // The quadrature nodes lie within the spectrum.
  Eigen::SelfAdjointEigenSolver<Mat<double>> es(Fd);
  for (double node : d.nodes) {
    EXPECT_GE(node, es.eigenvalues().minCoeff() - 1e-8);
    EXPECT_LE(node, es.eigenvalues().maxCoeff() + 1e-8);
  }
}

// The SLQ density against the dense spectrum: the Wasserstein-1 distance between the quadrature measure
// (nodes, weights) and the eigenvalue histogram (1/n at each eigenvalue) is W1 = ∫ |F_slq − F_eig| dx over the
// two cumulative distributions. With 40 Lanczos steps and 30 probes it is about 0.1% of the spectrum's
// width (bound: 1%); the same density against a spectrum shifted by 10% of the width is far off, so the bound has teeth.
TEST(Spectrum, SlqDensityIsCloseToTheDenseSpectrumInWasserstein1) {
  const Index n = 300;
  std::srand(21);
  Eigen::HouseholderQR<Mat<double>> qr(Mat<double>::Random(n, n));
  const Mat<double> Q = qr.householderQ();
  Vec<double> ev(n);  // a bulk near 0, a middle band and a few outliers, as Fisher spectra look
  for (Index i = 0; i < n; ++i) ev[i] = i < 200 ? 1e-3 * double(i) / 200 : i < 290 ? 0.5 + 0.5 * double(i - 200) / 90 : 3.0 + double(i - 290);
  DenseOp<double> A;
  A.A = Q * ev.asDiagonal() * Q.transpose();
  const SpectralDensity d = slq_density(A, 40, 30, 5, 100);
  auto w1 = [&](const Vec<double>& eig) {
    std::vector<std::pair<double, double>> pts;  // (x, mass): SLQ positive, eigenvalues negative
    for (std::size_t i = 0; i < d.nodes.size(); ++i) pts.push_back({d.nodes[i], d.weights[i]});
    for (Index i = 0; i < eig.size(); ++i) pts.push_back({eig[i], -1.0 / double(eig.size())});
    std::sort(pts.begin(), pts.end());
    double cdf = 0, dist = 0;
    for (std::size_t i = 0; i + 1 < pts.size(); ++i) {
      cdf += pts[i].second;
      dist += std::abs(cdf) * (pts[i + 1].first - pts[i].first);
    }
    return dist;
  };
  const double width = ev.maxCoeff() - ev.minCoeff();
  const double close = w1(ev), shifted = w1((ev.array() + 0.1 * width).matrix());
  std::cout << "[ info ] W1(SLQ, dense spectrum) = " << close << " = " << close / width << " of the width; "
            << "against a spectrum shifted by 10%: " << shifted / width << "\n";
  EXPECT_LT(close, 0.01 * width);
  EXPECT_GT(shifted, 0.05 * width);
}

// The null space the condition number relies on is real: for a categorical likelihood behind a final linear
// layer, ΔW = 1 aᵀ, Δb = 1 c (every logit moved by the same aᵀh + c) changes no prediction, so F u = 0.
TEST(Spectrum, TheSoftmaxShiftDirectionsAreInTheNullSpace) {
  Problem p(mlp_spec(4, 6, 3), 12, 31);
  FisherOperator<double> F(p.model, p.theta, LikelihoodKind::categorical, p.data);
  const auto& params = p.model.named_params();  // the last linear layer's weight [3, 6] and bias [3]
  const NamedParam& w = params[params.size() - 2];
  const NamedParam& b = params.back();
  ASSERT_EQ(w.shape, Shape({3, 6}));
  const Vec<double> a = random_vec<double>(6, 32);
  Vec<double> u = Vec<double>::Zero(F.rows());
  for (Index r = 0; r < 3; ++r) u.segment(w.offset + r * 6, 6) = a;
  u.segment(b.offset, 3).setConstant(0.7);
  const Vec<double> v = random_vec<double>(F.rows(), 33);
  const double scale = apply(F, v).norm() / v.norm();  // ~ ‖F‖ along a random direction
  EXPECT_LT(apply(F, u).norm() / u.norm(), 1e-12 * scale);
  EXPECT_GT(scale, 1e-3);
}

TEST(SolveNaturalGradient, MatchesTheDenseSolveForEveryFisherKind) {
  Problem p(mlp_spec(4, 6, 3), 16, 18);
  for (FisherKind fk : {FisherKind::exact, FisherKind::mc, FisherKind::empirical}) {
    SCOPED_TRACE(to_string(fk));
    NaturalGradientOptions opt;
    opt.fisher.kind = fk;
    opt.fisher.mc_samples = 4;
    opt.fisher.damping = 1e-2;
    opt.cg.relative_tolerance = 1e-13;
    opt.cg.max_iterations = 2000;
    opt.curvature_batch = 10;  // curvature on fewer samples than the gradient
    const auto r = solve_natural_gradient(p.model, p.theta, LikelihoodKind::categorical, p.data, opt);
    EXPECT_TRUE(r.cg.is_converged()) << r.cg.full_report();
    // Dense reference: the gradient on all 16 samples, the Fisher on the first 10. For mc the H_n come from
    // labels drawn in the test from the documented (seed, sample, draw) key.
    const Dataset<double> sub = p.data.head(10);
    Mat<double> Fd;
    if (fk == FisherKind::mc) {
      const Mat<double> J = jacobian_by_finite_differences(p.model, p.theta, sub.inputs);
      const Mat<double> Z = p.model.predict(p.theta.data(), sub.inputs);
      Fd = Mat<double>::Zero(p.model.num_params(), p.model.num_params());
      for (Index n = 0; n < 10; ++n)
        Fd += J.middleRows(n * 3, 3).transpose() *
              mc_output_fisher(LikelihoodKind::categorical, Z.col(n), opt.fisher.seed, n, opt.fisher.mc_samples) *
              J.middleRows(n * 3, 3);
      Fd /= 10.0;
    } else {
      Fd = dense_fisher(p.model, p.theta, sub, LikelihoodKind::categorical, fk);
    }
    // The loss and its gradient on all 16 samples from the forward pass alone: the formula, and central
    // differences of it. The direction solves with the gradient the solve returned (checked here).
    auto loss_at = [&](const Vec<double>& theta) {
      return categorical_nll(p.model.predict(theta.data(), p.data.inputs), p.data.labels);
    };
    EXPECT_LT(rel_err_vec(r.gradient, gradient_by_finite_differences(loss_at, p.theta)), 1e-8);
    EXPECT_NEAR(r.loss, loss_at(p.theta), 1e-14);
    const Vec<double> ref = (Fd + 1e-2 * Mat<double>::Identity(Fd.rows(), Fd.cols())).llt().solve(r.gradient);
    EXPECT_LT(rel_err_vec(r.direction, ref), fk == FisherKind::mc ? 1e-6 : 1e-8);
    EXPECT_EQ(r.samples, 16);
    EXPECT_EQ(r.curvature_samples, 10);
  }
}

TEST(SolveNaturalGradient, SpectrumConditionAndPreconditionerOptions) {
  Problem p(mlp_spec(4, 6, 3), 16, 19);
  NaturalGradientOptions opt;
  opt.fisher.damping = 1e-3;
  opt.spectrum_top_k = 3;
  opt.condition_number = true;
  opt.preconditioner = PreconditionerKind::diagonal;
  opt.cg.relative_tolerance = 1e-10;
  opt.cg.max_iterations = 1000;
  const auto r = solve_natural_gradient(p.model, p.theta, LikelihoodKind::categorical, p.data, opt);
  EXPECT_TRUE(r.cg.is_converged());
  const Mat<double> Fd =
      dense_fisher(p.model, p.theta, p.data, LikelihoodKind::categorical, FisherKind::exact);
  Eigen::SelfAdjointEigenSolver<Mat<double>> es(Fd);
  ASSERT_TRUE(r.spectrum.converged);
  // Summary-style reports: a termination kind and the numbers.
  EXPECT_EQ(r.termination(), NaturalGradientTermination::solved);
  EXPECT_EQ(r.spectrum.termination, SpectrumTermination::converged);
  EXPECT_NE(r.brief_report().find("natural gradient solved: loss "), std::string::npos) << r.brief_report();
  const std::string full = r.full_report();
  for (const char* part : {"Conjugate gradient summary", "Spectrum summary", "Condition estimate", "timing (s)"})
    EXPECT_NE(full.find(part), std::string::npos) << part << "\n" << full;
  EXPECT_NE(r.condition.brief_report().find("condition number "), std::string::npos);
  EXPECT_LT(rel_err(r.spectrum.eigenvalues[0], es.eigenvalues().maxCoeff()), 1e-8);
  ASSERT_TRUE(r.has_condition);
  // A categorical Fisher behind a final linear layer is singular (softmax shift invariance), so
  // λ_min(F) = 0 and κ = (λ_max + λ) / λ.
  EXPECT_LT(rel_err(r.condition.condition_number, (es.eigenvalues().maxCoeff() + 1e-3) / 1e-3), 1e-8);
  const Vec<double> ref = (Fd + 1e-3 * Mat<double>::Identity(Fd.rows(), Fd.cols())).llt().solve(r.gradient);
  EXPECT_LT(rel_err_vec(r.direction, ref), 1e-6);

  NaturalGradientOptions bad;
  bad.batch = 4;
  bad.curvature_batch = 8;
  EXPECT_THROW(solve_natural_gradient(p.model, p.theta, LikelihoodKind::categorical, p.data, bad),
               std::invalid_argument);
}

// One solve per preconditioner choice (none, diagonal, K-FAC, deflation by `deflate` and by the reused
// spectrum) and over two dampings (multi-shift CG): each direction is the dense solve's, and each reports
// the choice it made.
TEST(SolveNaturalGradient, EveryPreconditionerChoiceGivesTheDenseDirection) {
  Problem p(mlp_spec(4, 6, 3), 16, 21);
  const Mat<double> Fd =
      dense_fisher(p.model, p.theta, p.data, LikelihoodKind::categorical, FisherKind::exact);
  FisherOperator<double> full(p.model, p.theta, LikelihoodKind::categorical, p.data);
  const Vec<double> g = full.gradient();
  auto dense = [&](double lambda) {
    return Vec<double>((Fd + lambda * Mat<double>::Identity(Fd.rows(), Fd.cols())).llt().solve(g));
  };
  Eigen::SelfAdjointEigenSolver<Mat<double>> es(Fd);
  struct Case {
    const char* name;
    PreconditionerKind kind;
    Index deflate, spectrum;
    std::vector<double> dampings;
    Index deflated;
  };
  const Case cases[] = {{"none", PreconditionerKind::none, 0, 0, {}, 0},
                        {"diagonal", PreconditionerKind::diagonal, 0, 0, {}, 0},
                        {"kfac", PreconditionerKind::kfac, 0, 0, {}, 0},
                        {"deflate 3", PreconditionerKind::none, 3, 0, {}, 3},
                        {"reused spectrum of 2", PreconditionerKind::none, 0, 2, {}, 2},
                        {"two dampings", PreconditionerKind::none, 0, 2, {1e-2, 1e-1}, 0}};
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    NaturalGradientOptions opt;
    opt.fisher.damping = 1e-2;
    opt.preconditioner = c.kind;
    opt.deflate = c.deflate;
    opt.spectrum_top_k = c.spectrum;
    opt.dampings = c.dampings;
    opt.cg.relative_tolerance = 1e-12;
    opt.cg.max_iterations = 2000;
    const auto r = solve_natural_gradient(p.model, p.theta, LikelihoodKind::categorical, p.data, opt);
    EXPECT_EQ(r.cg.termination, CgTermination::converged) << r.cg.message;
    EXPECT_TRUE(r.interrupted.empty());
    EXPECT_LT(rel_err_vec(r.direction, dense(1e-2)), 1e-8);
    EXPECT_EQ(r.deflated, c.deflated);
    ASSERT_EQ(r.solves.size(), c.dampings.size());
    for (const auto& d : r.solves) EXPECT_LT(rel_err_vec(d.direction, dense(d.damping)), 1e-8) << d.damping;
    ASSERT_EQ(r.spectrum.eigenvalues.size(), std::max(c.spectrum, c.deflate));
    for (Index i = 0; i < r.spectrum.eigenvalues.size(); ++i)
      EXPECT_LT(rel_err(r.spectrum.eigenvalues[i], es.eigenvalues()[Fd.rows() - 1 - i]), 1e-8);
  }
}

// NaturalGradientOptions::is_valid holds every rule about a solve's options, each message naming the fields
// with their values (the command line names its options in their place); the parameter count's rules
// need the model and are checked by solve_natural_gradient before any pass.
TEST(SolveNaturalGradient, EveryOptionRuleIsIsValidsWithTheFieldsNamed) {
  struct Case {
    const char* message;
    std::function<void(NaturalGradientOptions&)> set;
  };
  const Case cases[] = {
      {"deflate 4 and preconditioner diagonal do not combine: choose one",
       [](NaturalGradientOptions& o) {
         o.deflate = 4;
         o.preconditioner = PreconditionerKind::diagonal;
       }},
      {"several dampings (multi-shift CG) and preconditioner kfac do not combine",
       [](NaturalGradientOptions& o) {
         o.dampings = {1e-1, 1e-2};
         o.preconditioner = PreconditionerKind::kfac;
       }},
      {"several dampings (multi-shift CG) and deflate 2 do not combine",
       [](NaturalGradientOptions& o) {
         o.dampings = {1e-1, 1e-2};
         o.deflate = 2;
       }},
      {"damping 0.01 is listed twice",
       [](NaturalGradientOptions& o) {
         o.dampings = {1e-1, 1e-2, 1e-2};
       }},
      {"dampings holds one value", [](NaturalGradientOptions& o) { o.dampings = {1e-1}; }},
      {"compare lists kfac twice",
       [](NaturalGradientOptions& o) {
         o.spectrum_top_k = 2;
         o.compare = {ApproximationKind::kfac, ApproximationKind::mc, ApproximationKind::kfac};
       }},
      {"compare needs fisher.damping > 0 (F itself is singular), got 0",
       [](NaturalGradientOptions& o) {
         o.spectrum_top_k = 2;
         o.fisher.damping = 0;
         o.compare = {ApproximationKind::kfac};
       }},
      {"compare needs one fisher.damping > 0, not a list",
       [](NaturalGradientOptions& o) {
         o.spectrum_top_k = 2;
         o.fisher.damping = 1e-2;
         o.dampings = {1e-1, 1e-2};
         o.compare = {ApproximationKind::kfac};
       }},
      {"compare needs spectrum_top_k > 0",
       [](NaturalGradientOptions& o) {
         o.fisher.damping = 1e-2;
         o.compare = {ApproximationKind::kfac};
       }},
      {"cg.relative_tolerance must be in (0, 1)",
       [](NaturalGradientOptions& o) { o.cg.relative_tolerance = 2; }},
      {"fisher.mc_samples must be >= 1",
       [](NaturalGradientOptions& o) {
         o.fisher.kind = FisherKind::mc;
         o.fisher.mc_samples = 0;
       }},
      {"curvature_batch 7 exceeds batch 5",
       [](NaturalGradientOptions& o) {
         o.batch = 5;
         o.curvature_batch = 7;
       }},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.message);
    NaturalGradientOptions o;
    c.set(o);
    std::string why;
    EXPECT_FALSE(o.is_valid(&why));
    EXPECT_EQ(why.rfind(c.message, 0), 0u) << why;
    EXPECT_FALSE(o.is_valid(1000, &why));  // the model's rules come on top of these
  }
  // The parameter count: Lanczos finds at most P − 1 eigenpairs.
  Problem p(mlp_spec(3, 4, 2), 6, 22);
  const Index P = p.model.num_params();
  NaturalGradientOptions o;
  o.spectrum_top_k = P - 1;
  std::string why;
  EXPECT_TRUE(o.is_valid(P, &why)) << why;
  o.spectrum_top_k = P;
  EXPECT_TRUE(o.is_valid(&why));
  EXPECT_FALSE(o.is_valid(P, &why));
  EXPECT_EQ(
      why, "spectrum_top_k " + std::to_string(P) + " must be below the parameter count " + std::to_string(P));
  EXPECT_ERROR(solve_natural_gradient(p.model, p.theta, LikelihoodKind::categorical, p.data, o),
               "must be below the parameter count");
  o.spectrum_top_k = 0;
  o.deflate = P + 3;
  EXPECT_FALSE(o.is_valid(P, &why));
  EXPECT_EQ(why,
            "deflate " + std::to_string(P + 3) + " must be below the parameter count " + std::to_string(P));
}

// CG's fused vector kernels: each against plain double-precision arithmetic, and bit-identical whatever the
// number of OpenMP threads (the reductions sum fixed blocks in a fixed order). n spans many blocks and ends
// in a partial one.
TEST(CgKernels, MatchDoubleArithmeticAndIgnoreTheThreadCount) {
#ifndef NATGRAD_HAVE_OPENMP
  GTEST_SKIP() << "built without OpenMP (NATGRAD_USE_OPENMP=OFF): one thread only, nothing to compare";
#endif
  const Index n = 300007;
  const Vec<float> a = random_vec<float>(n, 1), b = random_vec<float>(n, 2), c = random_vec<float>(n, 3);
  const float alpha = 0.37f;
  struct Out {
    double dot, rr, xbr;
    Vec<float> r, x, p;
  };
  auto run = [&](int threads) {
    set_num_threads(threads);
    Out o{0, 0, 0, a, b, c};
    o.dot = detail::cg_dot(a.data(), b.data(), n);
    o.rr = detail::cg_update_residual(o.r.data(), b.data(), alpha, n);  // r = a − α b
    o.xbr = detail::cg_update_solution(o.x.data(), c.data(), alpha, a.data(), o.r.data(), n);  // x = b + α c
    detail::cg_update_direction(o.p.data(), a.data(), alpha, n);                               // p = a + α c
    return o;
  };
  const Out one = run(1), two = run(2);
  EXPECT_EQ(detail::cg_last_team_size(), 2);  // the library-wide count reached the kernels
  const Out three = run(3);
  EXPECT_EQ(detail::cg_last_team_size(), 3);
  set_num_threads(0);
  EXPECT_EQ(num_threads(), available_cores());
  EXPECT_THROW(set_num_threads(-1), std::invalid_argument);
  EXPECT_EQ(one.dot, three.dot);
  EXPECT_EQ(one.dot, two.dot);
  EXPECT_EQ(one.rr, two.rr);
  EXPECT_EQ(one.xbr, two.xbr);
  EXPECT_TRUE((one.r.array() == two.r.array()).all() && (one.x.array() == two.x.array()).all() &&
              (one.p.array() == two.p.array()).all());

  const Eigen::VectorXd ad = a.cast<double>(), bd = b.cast<double>(), cd = c.cast<double>();
  EXPECT_LT(rel_err(one.dot, ad.dot(bd)), 1e-5);
  const Eigen::VectorXd r = ad - double(alpha) * bd, x = bd + double(alpha) * cd;
  EXPECT_LT(rel_err_vec(one.r, r), 1e-6);
  EXPECT_LT(rel_err(one.rr, r.squaredNorm()), 1e-5);
  EXPECT_LT(rel_err_vec(one.x, x), 1e-6);
  EXPECT_LT(rel_err(one.xbr, x.dot(ad + r)), 1e-5);
  EXPECT_LT(rel_err_vec(one.p, ad + double(alpha) * cd), 1e-6);
}

// Without a preconditioner CG uses r for z: a workspace sized without z serves it, and the same x comes out;
// a preconditioned solve refuses such a workspace.
TEST(ConjugateGradient, WorkspaceWithoutZServesTheUnpreconditionedSolve) {
  Problem p(mlp_spec(4, 6, 3), 8, 1);
  FisherOptions fo;
  fo.damping = 1e-2;
  FisherOperator<double> F(p.model, p.theta, LikelihoodKind::categorical, p.data, fo);
  const Vec<double> b = F.gradient();
  CgOptions opt;
  opt.max_iterations = 40;
  CgWorkspace<double> full(F.rows()), lean(F.rows(), false);
  EXPECT_EQ(lean.z.size(), 0);
  Vec<double> x1(F.rows()), x2(F.rows());
  conjugate_gradient(F, IdentityPreconditioner<double>(F.rows()), b.data(), x1.data(), opt, full);
  conjugate_gradient(F, IdentityPreconditioner<double>(F.rows()), b.data(), x2.data(), opt, lean);
  EXPECT_EQ(x1, x2);
  const DiagonalPreconditioner<double> M(F.empirical_fisher_diagonal(), 1e-2, 1.0);
  EXPECT_THROW(conjugate_gradient(F, M, b.data(), x2.data(), opt, lean), std::invalid_argument);
}
