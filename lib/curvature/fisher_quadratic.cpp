// FisherOperator::quadratic_forms: vᵢᵀ F vⱼ from the R-op alone. With u_in = J_n vᵢ (the forward-mode pass
// of a product, step 1 of perform_op's derivation),
//
//     vᵢᵀ F vⱼ = s Σ_n vᵢᵀ J_nᵀ H_n J_n vⱼ = s Σ_n u_inᵀ (H_n u_jn),   s = 1/M,
//
// so the backprop and the parameter-sized sum of a product (its steps 3 and 4) are never run: per chunk of
// samples one R-op per vector, H_n applied to each (OutputCurvature::apply, the product's own step 2), and
// the k × k dot products of the chunk's columns.
#include <natgrad/curvature/fisher_operator.h>

#include <algorithm>
#include <cstdint>
#include <exception>

#include "core/check.h"
#include "curvature/fisher_state.h"

#ifdef NATGRAD_HAVE_OPENMP
#include <omp.h>
#endif

namespace natgrad {

template <typename Scalar>
Eigen::MatrixXd FisherOperator<Scalar>::quadratic_forms(const std::vector<const Scalar*>& v) const {
  State& st = *s_;
  st.require_forward();
  const Index k = static_cast<Index>(v.size()), C = st.model.output_size(), cs = st.plan.chunk_size;
  for (const Scalar* p : v) NATGRAD_CHECK(p != nullptr);
  // The vectors the R-op reads, at Eigen's alignment (as perform_op's: the bits must not depend on where
  // the caller put them).
  std::vector<Vec<Scalar>> copies(v.size());
  std::vector<const Scalar*> tangents(v);
  for (std::size_t i = 0; i < v.size(); ++i)
    if (reinterpret_cast<std::uintptr_t>(v[i]) % std::uintptr_t(EIGEN_MAX_ALIGN_BYTES) != 0) {
      copies[i] = Eigen::Map<const Vec<Scalar>>(v[i], num_params_);
      tangents[i] = copies[i].data();
    }
  const Index chunks = st.plan.num_chunks;
  std::vector<Eigen::MatrixXd> partial(static_cast<std::size_t>(chunks), Eigen::MatrixXd::Zero(k, k));
  std::exception_ptr failed;
#ifdef NATGRAD_HAVE_OPENMP
#pragma omp parallel num_threads(st.num_threads)
#endif
  {
#ifdef NATGRAD_HAVE_OPENMP
    const int t = omp_get_thread_num();
#else
    const int t = 0;
#endif
    Workspace<Scalar>& ws = st.workspaces[static_cast<std::size_t>(t)];
    Mat<Scalar> U, HU;
#ifdef NATGRAD_HAVE_OPENMP
#pragma omp for schedule(static)
#endif
    for (Index c = 0; c < chunks; ++c) {
      try {
        const Index c0 = c * cs, n = std::min(cs, st.num_samples - c0);
        U.resize(C, n * k);
        HU.resize(C, n);
        for (Index i = 0; i < k; ++i) {
          st.model.jvp(st.theta.data(), tangents[static_cast<std::size_t>(i)], st.cache, c0, n, ws);
          U.middleCols(i * n, n) = ConstMatMap<Scalar>(ws.result(), C, n);
        }
        Eigen::MatrixXd& q = partial[static_cast<std::size_t>(c)];
        for (Index j = 0; j < k; ++j) {
          st.curvature.apply(c0, ConstMatMap<Scalar>(U.data() + j * n * C, C, n), MatMap<Scalar>(HU.data(), C, n));
          const Eigen::MatrixXd h = HU.template cast<double>();
          for (Index i = 0; i <= j; ++i) q(i, j) = U.middleCols(i * n, n).template cast<double>().cwiseProduct(h).sum();
        }
      } catch (...) {
#ifdef NATGRAD_HAVE_OPENMP
#pragma omp critical(natgrad_quadratic_forms)
#endif
        if (!failed) failed = std::current_exception();
      }
    }
  }
  if (failed) std::rethrow_exception(failed);
  Eigen::MatrixXd Q = Eigen::MatrixXd::Zero(k, k);
  for (const Eigen::MatrixXd& q : partial) Q += q;  // in chunk order
  if (st.distributed()) st.comm->sum(Q.data(), Q.size());
  Q /= static_cast<double>(st.counted);
  Q.template triangularView<Eigen::StrictlyLower>() = Q.transpose();
  return Q;
}

template Eigen::MatrixXd FisherOperator<float>::quadratic_forms(const std::vector<const float*>&) const;
template Eigen::MatrixXd FisherOperator<double>::quadratic_forms(const std::vector<const double*>&) const;

}  // namespace natgrad
