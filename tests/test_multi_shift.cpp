// Multi-shift CG (multi_shift_cg.h) against Eigen's dense solves of every (F + λ_j I) d = g, on the dense
// Fisher of a small network (singular: rank ≤ N(C − 1)) and on the FisherOperator itself: the same
// directions, the products of the smallest damping alone, larger dampings converging sooner; float; the
// callback's stop; invalid arguments.
#include <natgrad/solvers/multi_shift_cg.h>

#include <Eigen/Cholesky>

#include "test_helpers.h"

namespace natgrad {
namespace test {
namespace {

struct Case {
  Network<double> model;
  Vec<double> theta;
  Dataset<double> data;
  Mat<double> F;
  Vec<double> g;
  Case()
      : model(mlp_spec(6, 9, 4)),
        theta(init_parameters(model, 3)),
        data(random_dataset(model, 7, LikelihoodKind::categorical, 4)),
        F(dense_fisher(model, theta, data, LikelihoodKind::categorical, FisherKind::exact)) {
    FisherOperator<double> op(model, theta, LikelihoodKind::categorical, data);
    g = op.gradient();
  }
  Vec<double> dense_solve(double lambda) const {
    const Mat<double> A = F + lambda * Mat<double>::Identity(F.rows(), F.cols());
    return A.llt().solve(g);
  }
};

TEST(MultiShiftCg, EveryShiftedSystemMatchesTheDenseSolve) {
  const Case c;
  const std::vector<double> lambdas = {1e-3, 1e-1, 1e-2, 1.0};
  DenseOp<double> A{c.F + lambdas[0] * Mat<double>::Identity(c.F.rows(), c.F.cols())};
  std::vector<double> shifts;
  for (double l : lambdas) shifts.push_back(l - lambdas[0]);
  CgOptions opt;
  opt.relative_tolerance = 1e-10;
  opt.max_iterations = 2000;
  std::vector<Vec<double>> x;
  const std::vector<CgSummary> s = multi_shift_conjugate_gradient(A, shifts, c.g.data(), x, opt);
  ASSERT_EQ(s.size(), lambdas.size());
  Index shared = 0;
  for (std::size_t j = 0; j < lambdas.size(); ++j) {
    SCOPED_TRACE("lambda " + std::to_string(lambdas[j]));
    EXPECT_EQ(s[j].termination, CgTermination::converged) << s[j].message;
    EXPECT_LE(s[j].relative_residual, 1e-10);
    EXPECT_LT(rel_err_vec(x[j], c.dense_solve(lambdas[j])), 1e-8);
    shared = std::max(shared, s[j].iterations);
  }
  // The larger the damping, the better conditioned: fewer iterations.
  EXPECT_LT(s[3].iterations, s[1].iterations);
  EXPECT_LT(s[1].iterations, s[2].iterations);
  EXPECT_LT(s[2].iterations, s[0].iterations);
  // The products are those of the base system alone (plus one residual check per shift), and the base
  // system needs what plain CG needs.
  EXPECT_EQ(A.calls, shared + Index(lambdas.size()));
  DenseOp<double> B{A.A};
  Vec<double> x0 = Vec<double>::Zero(c.g.size());
  CgWorkspace<double> ws(c.g.size());
  const CgSummary plain = conjugate_gradient(B, IdentityPreconditioner<double>(B.rows()), c.g.data(), x0.data(), opt, ws);
  EXPECT_EQ(plain.iterations, s[0].iterations);
  EXPECT_LT(rel_err_vec(x0, x[0]), 1e-9);
}

TEST(MultiShiftCg, OnTheFisherOperatorInFloatAndDouble) {
  const Case c;
  FisherOptions fo;
  fo.damping = 1e-2;
  FisherOperator<double> Fd(c.model, c.theta, LikelihoodKind::categorical, c.data, fo);
  Network<float> mf(c.model.spec());
  FisherOperator<float> Ff(mf, c.theta.cast<float>(), LikelihoodKind::categorical, c.data.cast<float>(), fo);
  const std::vector<double> shifts = {0.0, 0.09, 0.99};  // λ = 1e-2, 1e-1, 1
  CgOptions opt;
  opt.max_iterations = 1000;
  opt.relative_tolerance = 1e-9;
  std::vector<Vec<double>> xd;
  const auto sd = multi_shift_conjugate_gradient(Fd, shifts, c.g.data(), xd, opt);
  opt.relative_tolerance = 1e-4;
  std::vector<Vec<float>> xf;
  const Vec<float> gf = c.g.cast<float>();
  const auto sf = multi_shift_conjugate_gradient(Ff, shifts, gf.data(), xf, opt);
  for (std::size_t j = 0; j < shifts.size(); ++j) {
    const Vec<double> ref = c.dense_solve(1e-2 + shifts[j]);
    EXPECT_TRUE(sd[j].is_converged()) << sd[j].message;
    EXPECT_LT(rel_err_vec(xd[j], ref), 1e-7) << j;
    EXPECT_TRUE(sf[j].is_converged()) << sf[j].message;
    EXPECT_LT(rel_err_vec(xf[j], ref), 1e-3) << j;
  }
}

// The finishing pass (a system whose true residual falls short of the recursive one) follows
// conjugate_gradient's rule: at the iteration limit it returns its last iterate, even when that iterate's
// residual is larger than the one it started from. The operator is diag(200, 2) for the shared phase's two
// products and diag(100, 1) afterwards, with b = (2, 20): the shared phase converges to x₀ = (0.01, 10),
// whose true residual under diag(100, 1) is r₀ = (1, 10); one finishing iteration (the limit 3 minus the 2
// shared ones) gives, by hand, α = r₀ᵀr₀ / r₀ᵀA r₀ = 101/200 and x₁ = x₀ + α r₀ = (0.515, 15.05), with
// ‖b − A x₁‖ = ‖(−49.5, 4.95)‖ = 49.75 > ‖r₀‖ = 10.05 but a lower φ.
TEST(MultiShiftCg, TheFinishingPassReturnsItsLastIterateAtTheIterationLimit) {
  struct Switching {
    using Scalar = double;
    mutable Index calls = 0;
    Index rows() const { return 2; }
    Index cols() const { return 2; }
    void perform_op(const double* x, double* y) const {
      const double scale = calls++ < 2 ? 2.0 : 1.0;
      y[0] = scale * 100 * x[0];
      y[1] = scale * x[1];
    }
  } A;
  const Vec<double> b = (Vec<double>(2) << 2, 20).finished();
  CgOptions opt;
  opt.relative_tolerance = 1e-10;
  opt.max_iterations = 3;
  std::vector<Vec<double>> x;
  const std::vector<CgSummary> s = multi_shift_conjugate_gradient(A, {0.0}, b.data(), x, opt);
  ASSERT_EQ(s.size(), 1u);
  EXPECT_EQ(s[0].termination, CgTermination::max_iterations) << s[0].message;
  EXPECT_EQ(s[0].restarts, 1) << s[0].message;  // it went through the finishing pass
  EXPECT_EQ(s[0].iterations, 3);
  EXPECT_EQ(s[0].returned_iterate, 3);
  EXPECT_NEAR(x[0][0], 0.515, 1e-12);
  EXPECT_NEAR(x[0][1], 15.05, 1e-12);
  const Mat<double> Ad = (Vec<double>(2) << 100, 1).finished().asDiagonal();
  auto phi = [&](const Vec<double>& v) { return 0.5 * v.dot(Ad * v) - b.dot(v); };
  const Vec<double> x0 = (Vec<double>(2) << 0.01, 10).finished();
  EXPECT_LT(phi(x[0]), phi(x0));
  EXPECT_NEAR(s[0].relative_residual, (b - Ad * x[0]).norm() / b.norm(), 1e-12);
  EXPECT_GT((b - Ad * x[0]).norm(), (b - Ad * x0).norm());
  EXPECT_EQ(s[0].operator_applications, 6);  // 2 shared, the check, the warm start, 1 iteration, the check
}

// A stop request thrown by the shared phase's 4th product stops every system with its 3rd iterate, which
// for each shift σ is the minimizer of its own φ over the shared Krylov space K_3(A, b) (formed densely);
// nothing is rethrown and the true residuals no product could give are NaN.
TEST(MultiShiftCg, AnInterruptedProductStopsEverySystemWithItsLastCompletedIterate) {
  const Case c;
  const InterruptedAt A{c.F + 1e-3 * Mat<double>::Identity(c.F.rows(), c.F.cols()), 4};
  const std::vector<double> shifts = {0.0, 1e-2, 1.0};
  std::vector<Vec<double>> x;
  std::vector<CgSummary> s;
  EXPECT_NO_THROW(s = multi_shift_conjugate_gradient(A, shifts, c.g.data(), x, CgOptions()));
  ASSERT_EQ(s.size(), shifts.size());
  for (std::size_t j = 0; j < shifts.size(); ++j) {
    SCOPED_TRACE("shift " + std::to_string(shifts[j]));
    EXPECT_EQ(s[j].termination, CgTermination::user_stop) << s[j].message;
    EXPECT_EQ(s[j].iterations, 3);
    EXPECT_EQ(s[j].returned_iterate, 3);
    EXPECT_EQ(s[j].operator_applications, 3);
    EXPECT_TRUE(std::isnan(s[j].relative_residual));
    const Mat<double> Aj = A.A + shifts[j] * Mat<double>::Identity(A.rows(), A.rows());
    EXPECT_LT(rel_err_vec(x[j], krylov_minimizer(Aj, c.g, 3)), 1e-8);
    EXPECT_NE(s[j].message.find("interrupted after 3 iterations"), std::string::npos) << s[j].message;
  }
}

TEST(MultiShiftCg, TheCallbackStopsEverySystemAndArgumentsAreChecked) {
  const Case c;
  DenseOp<double> A{c.F + 1e-4 * Mat<double>::Identity(c.F.rows(), c.F.cols())};
  CgOptions opt;
  opt.relative_tolerance = 1e-12;
  opt.callback = [](const CgIterationInfo& info) {
    return info.iteration == 3 ? CallbackResult::stop : CallbackResult::keep_going;
  };
  std::vector<Vec<double>> x;
  const auto s = multi_shift_conjugate_gradient(A, {0.0, 1e-3}, c.g.data(), x, opt);
  for (const CgSummary& si : s) {
    EXPECT_EQ(si.termination, CgTermination::user_stop);
    EXPECT_EQ(si.iterations, 3);
  }
  CgOptions plain;
  EXPECT_THROW(multi_shift_conjugate_gradient(A, {0.0, -1e-3}, c.g.data(), x, plain), std::invalid_argument);
  EXPECT_THROW(multi_shift_conjugate_gradient(A, {}, c.g.data(), x, plain), std::invalid_argument);
  plain.warm_start = true;
  EXPECT_THROW(multi_shift_conjugate_gradient(A, {0.0}, c.g.data(), x, plain), std::invalid_argument);
  // b = 0: x = 0 for every shift, no product.
  const Vec<double> zero = Vec<double>::Zero(c.g.size());
  const auto z = multi_shift_conjugate_gradient(A, {0.0, 1.0}, zero.data(), x, CgOptions());
  EXPECT_EQ(z[1].termination, CgTermination::converged);
  EXPECT_EQ(x[1].norm(), 0.0);
}

}  // namespace
}  // namespace test
}  // namespace natgrad
