// Private: any operator presented to Spectra in the basis precision (double unless asked), counting its
// products and noting the first that returned NaN or Inf.
#pragma once

#include <natgrad/core/types.h>

#include <functional>
#include <type_traits>
#include <utility>

namespace natgrad {

namespace detail {
/// Presents any operator to Spectra as one in the basis scalar B (double by default, whatever the operator's
/// scalar) and counts its applications.
template <typename Op, typename B = double>
class BasisOperator {
 public:
  using Scalar = B;
  explicit BasisOperator(const Op& op, double shift = 0, double scale = 1,
                         std::function<void(Index)> on_product = nullptr)
      : op_(op),
        shift_(shift),
        scale_(scale),
        on_product_(std::move(on_product)),
        x_(converts ? op.rows() : 0),
        y_(converts ? op.rows() : 0) {}
  Index rows() const { return op_.rows(); }
  Index cols() const { return op_.rows(); }
  /// y = shift·x + scale·(A x)
  void perform_op(const B* x, B* y) const {
    using S = typename Op::Scalar;
    const Index n = rows();
    if constexpr (converts) {
      x_ = ConstVecMap<B>(x, n).template cast<S>();
      op_.perform_op(x_.data(), y_.data());
      VecMap<B>(y, n) = B(scale_) * y_.template cast<B>() + B(shift_) * ConstVecMap<B>(x, n);
    } else {  // the operator's own scalar: no copies (Spectra's x and y never overlap)
      op_.perform_op(x, y);
      if (scale_ != 1 || shift_ != 0)
        VecMap<B>(y, n) = B(scale_) * VecMap<B>(y, n) + B(shift_) * ConstVecMap<B>(x, n);
    }
    ++count_;
    if (first_bad_ == 0 && !ConstVecMap<B>(y, n).allFinite()) first_bad_ = count_;
    if (on_product_) on_product_(count_);
  }
  Index count() const { return count_; }
  /// The 1-based product at which the operator first returned NaN or Inf, or 0.
  Index first_non_finite() const { return first_bad_; }

 private:
  const Op& op_;
  double shift_, scale_;
  std::function<void(Index)> on_product_;
  static constexpr bool converts = !std::is_same<B, typename Op::Scalar>::value;
  mutable Vec<typename Op::Scalar> x_, y_;  // the conversions' buffers (empty without conversion)
  mutable Index count_ = 0;
  mutable Index first_bad_ = 0;
};

/// Presents any operator to Spectra as a double-precision one and counts its applications.
template <typename Op>
using DoubleOperator = BasisOperator<Op, double>;
}  // namespace detail

}  // namespace natgrad
