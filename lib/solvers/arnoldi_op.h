// Private: Spectra's ArnoldiOp (the wrapper through which its Lanczos factorization takes inner products,
// norms and the reorthogonalization's Vᵀf) for natgrad's BasisOperator (basis_operator.h), so those passes
// over the basis run on natgrad's threads with fixed-order reductions (lanczos_kernels.h) instead of one
// core.
//
// Spectra's own ArnoldiOp<Scalar, OpType, IdentityBOp> computes the same quantities with Eigen; this
// partial specialization is more specialized, so every Spectra solver built on a BasisOperator uses it.
// Spectra's headers are not modified.
#pragma once

#include <Spectra/MatOp/internal/ArnoldiOp.h>

#include <cmath>

#include "solvers/basis_operator.h"
#include "solvers/cg_kernels.h"
#include "solvers/lanczos_kernels.h"

namespace Spectra {

template <typename Op, typename B>
class ArnoldiOp<B, natgrad::detail::BasisOperator<Op, B>, IdentityBOp> {
 private:
  using Index = Eigen::Index;
  using Vector = Eigen::Matrix<B, Eigen::Dynamic, 1>;
  using Matrix = Eigen::Matrix<B, Eigen::Dynamic, Eigen::Dynamic>;
  const natgrad::detail::BasisOperator<Op, B>& m_op;

 public:
  ArnoldiOp(const natgrad::detail::BasisOperator<Op, B>& op, const IdentityBOp&) : m_op(op) {}

  Index rows() const { return m_op.rows(); }

  /// xᵀy
  template <typename Arg1, typename Arg2>
  B inner_product(const Arg1& x, const Arg2& y) const {
    const Eigen::Ref<const Vector> xr(x), yr(y);
    return B(natgrad::detail::cg_dot(xr.data(), yr.data(), xr.size()));
  }

  /// res = Xᵀy
  template <typename Arg1, typename Arg2>
  void trans_product(const Arg1& x, const Arg2& y, Eigen::Ref<Vector> res) const {
    const Eigen::Ref<const Matrix> X(x);
    const Eigen::Ref<const Vector> yr(y);
    natgrad::detail::basis_trans_product(X.data(), X.outerStride(), X.rows(), X.cols(), yr.data(),
                                         res.data());
  }

  /// ‖x‖₂
  template <typename Arg>
  B norm(const Arg& x) const {
    const Eigen::Ref<const Vector> xr(x);
    return B(std::sqrt(natgrad::detail::cg_dot(xr.data(), xr.data(), xr.size())));
  }

  void perform_op(const B* x_in, B* y_out) const { m_op.perform_op(x_in, y_out); }
};

}  // namespace Spectra
