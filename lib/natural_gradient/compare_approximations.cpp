#include <natgrad/curvature/kfac.h>
#include <natgrad/natural_gradient/compare_approximations.h>

#include <chrono>
#include <cmath>
#include <functional>
#include <memory>
#include <string>

#include "core/fail.h"

namespace natgrad {

const char* to_string(ApproximationKind kind) {
  switch (kind) {
    case ApproximationKind::empirical: return "empirical";
    case ApproximationKind::mc: return "mc";
    case ApproximationKind::diagonal: return "diagonal";
    case ApproximationKind::kfac: return "kfac";
  }
  return "unknown";
}

ApproximationKind approximation_from_string(const std::string& name) {
  for (ApproximationKind k : {ApproximationKind::empirical, ApproximationKind::mc, ApproximationKind::diagonal,
                              ApproximationKind::kfac})
    if (name == to_string(k)) return k;
  detail::fail("unknown approximation \"" + name + "\" (known: empirical, mc, diagonal, kfac)");
}

namespace {

double cosine(const Vec<double>& a, const Vec<double>& b) {
  const double na = a.norm(), nb = b.norm();
  return na > 0 && nb > 0 ? a.dot(b) / (na * nb) : 0.0;
}

}  // namespace

template <typename Scalar>
std::vector<ApproximationComparison> compare_approximations(const FisherOperator<Scalar>& F, const Vec<Scalar>& gradient,
                                                            const Vec<Scalar>& direction, const Mat<double>& eigenvectors,
                                                            const Vec<double>& eigenvalues,
                                                            const std::vector<ApproximationKind>& kinds,
                                                            const CgOptions& cg) {
  const double lambda = F.damping();
  const Index P = F.rows();
  if (!(lambda > 0)) detail::fail("comparing approximations needs a damping > 0 (F itself is singular)");
  if (gradient.size() != P || direction.size() != P || eigenvectors.rows() != P)
    detail::fail("compare_approximations: vectors of the wrong size");
  if (eigenvalues.size() == 0 || eigenvectors.cols() != eigenvalues.size())
    detail::fail("compare_approximations needs the top eigenpairs of F");
  if (eigenvalues.minCoeff() <= 0) detail::fail("compare_approximations: the eigenvalues must be positive");
  const Vec<double> d = direction.template cast<double>();
  using clock = std::chrono::steady_clock;

  // The largest ‖F̃ u − θ u‖ / θ over the eigenpairs, F̃ applied by `product` (x, y in Scalar).
  auto product_error = [&](const std::function<void(const Scalar*, Scalar*)>& product) {
    double worst = 0;
    Vec<Scalar> u(P), y(P);
    for (Index i = 0; i < eigenvalues.size(); ++i) {
      u = eigenvectors.col(i).template cast<Scalar>();
      product(u.data(), y.data());
      const double err = (y.template cast<double>() - eigenvalues[i] * eigenvectors.col(i)).norm() /
                         (eigenvalues[i] * eigenvectors.col(i).norm());
      worst = std::max(worst, err);
    }
    return worst;
  };

  std::vector<ApproximationComparison> rows;
  for (ApproximationKind kind : kinds) {
    ApproximationComparison c;
    c.kind = kind;
    const auto t0 = clock::now();
    Vec<Scalar> dk = Vec<Scalar>::Zero(P);
    switch (kind) {
      case ApproximationKind::empirical:
      case ApproximationKind::mc: {
        FisherOptions o = F.options();
        o.kind = kind == ApproximationKind::mc ? FisherKind::mc : FisherKind::empirical;
        o.damping = 0;
        o.on_progress = nullptr;
        Dataset<Scalar> batch = F.targets();
        batch.inputs = F.forward_cache().acts[0];
        FisherOperator<Scalar> Fk(F.model(), F.parameters(), F.likelihood(), batch, o);
        c.product_relative_error = product_error([&](const Scalar* x, Scalar* y) { Fk.perform_op(x, y); });
        Fk.set_damping(lambda);
        CgWorkspace<Scalar> ws;
        ws.resize(P, false);
        CgOptions co = cg;
        co.warm_start = false;
        co.callback = nullptr;
        c.cg = conjugate_gradient(Fk, IdentityPreconditioner<Scalar>(P), gradient.data(), dk.data(), co, ws);
        c.products = Fk.num_products();
        break;
      }
      case ApproximationKind::diagonal: {
        const Vec<Scalar> diag = F.empirical_fisher_diagonal();
        c.product_relative_error = product_error([&](const Scalar* x, Scalar* y) {
          VecMap<Scalar>(y, P) = diag.cwiseProduct(ConstVecMap<Scalar>(x, P));
        });
        dk = gradient.cwiseQuotient((diag.array() + Scalar(lambda)).matrix());
        break;
      }
      case ApproximationKind::kfac: {
        KfacApproximation<Scalar> K(F);
        c.product_relative_error = product_error([&](const Scalar* x, Scalar* y) { K.multiply(x, y); });
        K.set_damping(lambda);
        K.apply(gradient.data(), dk.data());
        break;
      }
    }
    c.direction_cosine = cosine(dk.template cast<double>(), d);
    c.time_s = std::chrono::duration<double>(clock::now() - t0).count();
    rows.push_back(std::move(c));
  }
  return rows;
}

template std::vector<ApproximationComparison> compare_approximations<float>(
    const FisherOperator<float>&, const Vec<float>&, const Vec<float>&, const Mat<double>&, const Vec<double>&,
    const std::vector<ApproximationKind>&, const CgOptions&);
template std::vector<ApproximationComparison> compare_approximations<double>(
    const FisherOperator<double>&, const Vec<double>&, const Vec<double>&, const Mat<double>&, const Vec<double>&,
    const std::vector<ApproximationKind>&, const CgOptions&);

}  // namespace natgrad
