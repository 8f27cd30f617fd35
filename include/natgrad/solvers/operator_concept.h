/// \file operator_concept.h
/// \brief Compile-time checks that turn a wrong operator or preconditioner type into one readable error.
///
/// An operator (for CG and Lanczos) is Spectra's concept: a `Scalar` type, `rows()`, and
/// `void perform_op(const Scalar* x, Scalar* y) const` computing y = A x. A preconditioner has
/// `void apply(const Scalar* r, Scalar* z) const` computing z = M⁻¹ r.
///
/// \code
/// static_assert(natgrad::is_operator<natgrad::FisherOperator<float>>::value, "");
/// \endcode
#pragma once

#include <type_traits>
#include <utility>

namespace natgrad {

template <typename Op, typename = void>
struct is_operator : std::false_type {};
template <typename Op>
struct is_operator<Op, std::void_t<typename Op::Scalar, decltype(std::declval<const Op&>().rows()),
                                   decltype(std::declval<const Op&>().perform_op(
                                       std::declval<const typename Op::Scalar*>(), std::declval<typename Op::Scalar*>()))>>
    : std::true_type {};

template <typename P, typename Scalar, typename = void>
struct is_preconditioner : std::false_type {};
template <typename P, typename Scalar>
struct is_preconditioner<P, Scalar, std::void_t<decltype(std::declval<const P&>().apply(std::declval<const Scalar*>(),
                                                                                       std::declval<Scalar*>()))>>
    : std::true_type {};

#define NATGRAD_CHECK_OPERATOR(Op)                                                                        \
  static_assert(::natgrad::is_operator<Op>::value,                                                        \
                "natgrad: the operator type must provide `using Scalar = ...;`, `Index rows() const` and " \
                "`void perform_op(const Scalar* x, Scalar* y) const` (Spectra's operator concept)")
#define NATGRAD_CHECK_PRECONDITIONER(P, Scalar)                                                    \
  static_assert(::natgrad::is_preconditioner<P, Scalar>::value,                                    \
                "natgrad: the preconditioner type must provide "                                   \
                "`void apply(const Scalar* r, Scalar* z) const` computing z = M^{-1} r")

}  // namespace natgrad
