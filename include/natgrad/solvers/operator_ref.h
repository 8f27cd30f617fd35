/// \file operator_ref.h
/// \brief Non-owning views of any operator and any preconditioner of a given scalar: what the solvers'
/// templates hand to their bodies, which the library compiles once per scalar (float and double).
///
/// conjugate_gradient, multi_shift_conjugate_gradient, top_eigenvalues, condition_number, slq_density and
/// hutchinson_trace are function templates over the operator (and preconditioner) type, as Spectra's
/// operator concept asks, but their bodies, the vector kernels and the Spectra adapters they use are private
/// to the library. Each template wraps its arguments in these views and calls the compiled body; a product
/// then costs one indirect call, nothing next to a product's own work (a Fisher-vector product is at least a
/// forward and a backward pass). Exceptions thrown by the operator (natgrad::Interrupted, a stop request)
/// pass through the view unchanged.
///
/// \code
/// natgrad::OperatorRef<float> A(F);   // any type with Scalar, rows() and perform_op(x, y) const
/// A.perform_op(x.data(), y.data());   // calls F.perform_op(x.data(), y.data())
/// \endcode
#pragma once

#include <natgrad/core/types.h>
#include <natgrad/solvers/operator_concept.h>
#include <natgrad/solvers/preconditioner.h>

#include <type_traits>

/// The solvers' bodies are compiled for these scalars only: anything else is one readable error.
#define NATGRAD_CHECK_SOLVER_SCALAR(S)                                           \
  static_assert(std::is_same<S, float>::value || std::is_same<S, double>::value, \
                "natgrad: the solvers are compiled for operators whose Scalar is float or double")

namespace natgrad {

/// A view of a square operator with scalar S (Spectra's concept: rows(), perform_op). The operator must
/// outlive the view.
template <typename S>
class OperatorRef {
 public:
  using Scalar = S;
  template <typename Op, typename = std::enable_if_t<!std::is_same<std::decay_t<Op>, OperatorRef>::value>>
  explicit OperatorRef(const Op& op)
      : self_(&op),
        rows_(op.rows()),
        apply_([](const void* self, const S* x, S* y) { static_cast<const Op*>(self)->perform_op(x, y); }) {
    NATGRAD_CHECK_OPERATOR(Op);
    static_assert(std::is_same<typename Op::Scalar, S>::value,
                  "natgrad: OperatorRef<S> needs an operator whose Scalar is S");
  }
  Index rows() const { return rows_; }
  Index cols() const { return rows_; }
  /// y = A x
  void perform_op(const S* x, S* y) const { apply_(self_, x, y); }

 private:
  const void* self_;
  Index rows_;
  void (*apply_)(const void*, const S*, S*);
};

/// A view of a preconditioner with scalar S (apply(r, z): z = M⁻¹ r). A view of IdentityPreconditioner
/// knows it is one: CG then uses r in place of z and needs no z in its workspace.
template <typename S>
class PreconditionerRef {
 public:
  template <typename P, typename = std::enable_if_t<!std::is_same<std::decay_t<P>, PreconditionerRef>::value>>
  explicit PreconditionerRef(const P& p)
      : self_(&p),
        identity_(std::is_same<P, IdentityPreconditioner<S>>::value),
        apply_([](const void* self, const S* r, S* z) { static_cast<const P*>(self)->apply(r, z); }) {
    NATGRAD_CHECK_PRECONDITIONER(P, S);
  }
  /// Whether this is the identity (z = r).
  bool is_identity() const { return identity_; }
  /// z = M⁻¹ r
  void apply(const S* r, S* z) const { apply_(self_, r, z); }

 private:
  const void* self_;
  bool identity_;
  void (*apply_)(const void*, const S*, S*);
};

}  // namespace natgrad
