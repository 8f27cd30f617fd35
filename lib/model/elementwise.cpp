// Element-wise operations y = φ(x): the activations, and scalar arithmetic y = a x + b (x * 0.5, x - 1.0,
// h / 2, -x). The R-op and backprop both multiply by φ'(x), which is recomputed from the cached x and y in
// the same pass (fused: one read of x, y and the tangent, one write) — except for GELU and Mish, whose φ'
// costs transcendental functions per entry: in a Network their forward pass keeps φ'(x) (SavesForward), so
// that a product multiplies by it instead of evaluating it twice.
#include <cmath>

#include "core/link_functions.h"
#include "model/layers.h"

namespace natgrad {
namespace detail {
namespace {

template <typename Scalar>
class Elementwise final : public Layer<Scalar>, public ElementwiseDerivative<Scalar>, public SavesForward<Scalar> {
 public:
  // slope: leaky relu's negative slope, ELU's α, scalar_affine's scale; shift: scalar_affine's.
  Elementwise(LayerType type, Scalar slope, Scalar shift, bool tanh_gelu, const Shape& shape)
      : Layer<Scalar>(shape, shape), type_(type), slope_(slope), shift_(shift), tanh_gelu_(tanh_gelu) {}

  LayerType type() const override { return type_; }

  void forward(const Scalar*, ConstMatMap<Scalar> X, MatMap<Scalar> Y, int32_t*) const override {
    const Index n = X.size();
    const Scalar* x = X.data();
    Scalar* y = Y.data();
    switch (type_) {
      case LayerType::relu:
        for (Index k = 0; k < n; ++k) y[k] = x[k] > 0 ? x[k] : Scalar(0);
        break;
      case LayerType::leaky_relu:
        for (Index k = 0; k < n; ++k) y[k] = x[k] > 0 ? x[k] : slope_ * x[k];
        break;
      case LayerType::tanh:
        Y.array() = X.array().tanh();
        break;
      case LayerType::sigmoid:
        for (Index k = 0; k < n; ++k) y[k] = sigmoid(x[k]);
        break;
      case LayerType::gelu:  // x Φ(x), the exact (erf) form; or ½x(1 + tanh(√(2/π)(x + 0.044715x³)))
        if (tanh_gelu_)
          for (Index k = 0; k < n; ++k) y[k] = Scalar(0.5) * x[k] * (Scalar(1) + std::tanh(gelu_u(x[k])));
        else
          for (Index k = 0; k < n; ++k)
            y[k] = Scalar(0.5) * x[k] * (Scalar(1) + std::erf(x[k] * Scalar(M_SQRT1_2)));
        break;
      case LayerType::softplus:  // log(1 + eˣ), linear above 20 as PyTorch's threshold
        for (Index k = 0; k < n; ++k) y[k] = x[k] > Scalar(20) ? x[k] : std::log1p(std::exp(x[k]));
        break;
      case LayerType::silu:  // x σ(x)
        for (Index k = 0; k < n; ++k) y[k] = x[k] * sigmoid(x[k]);
        break;
      case LayerType::elu:  // x > 0 ? x : α (eˣ − 1)
        for (Index k = 0; k < n; ++k) y[k] = x[k] > 0 ? x[k] : slope_ * std::expm1(x[k]);
        break;
      case LayerType::mish:  // x tanh(softplus(x))
        for (Index k = 0; k < n; ++k) y[k] = x[k] * std::tanh(softplus(x[k]));
        break;
      case LayerType::scalar_affine:
        for (Index k = 0; k < n; ++k) y[k] = slope_ * x[k] + shift_;
        break;
      default:
        break;
    }
  }

  void jvp(const Scalar*, const Scalar*, ConstMatMap<Scalar> X, ConstMatMap<Scalar> Y, const int32_t*,
           const Scalar* dX, MatMap<Scalar> dY, Scalar*) const override {
    if (!dX) {
      dY.setZero();
      return;
    }
    apply_derivative(X.data(), Y.data(), dX, dY.data(), X.size());
  }

  void vjp(const Scalar*, ConstMatMap<Scalar> X, ConstMatMap<Scalar> Y, const int32_t*,
           ConstMatMap<Scalar> gY, Scalar* gX, Scalar*, Scalar*) const override {
    // φ'(x) is diagonal, so the adjoint is the same product.
    if (gX) apply_derivative(X.data(), Y.data(), gY.data(), gX, X.size());
  }

  Index saved_per_sample() const override {
    return type_ == LayerType::gelu || type_ == LayerType::mish ? this->input_size() : 0;
  }
  void forward_saving(ConstMatMap<Scalar> X, MatMap<Scalar> Y, Scalar* saved) const override {
    forward(nullptr, X, Y, nullptr);
    derivative(X.data(), saved, X.size());
  }
  void jvp_saved(ConstMatMap<Scalar> X, const Scalar* saved, const Scalar* dX, MatMap<Scalar> dY,
                 Scalar*) const override {
    if (!dX) {
      dY.setZero();
      return;
    }
    for (Index k = 0; k < X.size(); ++k) dY.data()[k] = saved[k] * dX[k];
  }
  void vjp_saved(ConstMatMap<Scalar> X, const Scalar* saved, ConstMatMap<Scalar> gY, Scalar* gX,
                 Scalar*) const override {
    for (Index k = 0; k < X.size(); ++k) gX[k] = saved[k] * gY.data()[k];
  }

  bool derivative_needs_input() const override {
    return type_ == LayerType::gelu || type_ == LayerType::softplus || type_ == LayerType::silu ||
           type_ == LayerType::elu || type_ == LayerType::mish || (type_ == LayerType::leaky_relu && !(slope_ >= 0));
  }
  void scale_by_derivative(const Scalar* x, const Scalar* y, const Scalar* in, Scalar* out,
                           Index n) const override {
    apply_derivative(x, y, in, out, n);
  }

 private:
  // out = φ'(x) ∘ in, with y = φ(x) where that is cheaper. One fused pass over contiguous arrays, which the
  // compiler vectorizes.
  void apply_derivative(const Scalar* x, const Scalar* y, const Scalar* in, Scalar* out, Index n) const {
    switch (type_) {
      case LayerType::relu:  // y > 0 exactly where x > 0 (a NaN fails both)
        for (Index k = 0; k < n; ++k) out[k] = y[k] > 0 ? in[k] : Scalar(0);
        break;
      case LayerType::leaky_relu:  // from y too when the slope keeps the sign of x
        if (slope_ >= 0)
          for (Index k = 0; k < n; ++k) out[k] = y[k] > 0 ? in[k] : slope_ * in[k];
        else
          for (Index k = 0; k < n; ++k) out[k] = x[k] > 0 ? in[k] : slope_ * in[k];
        break;
      case LayerType::tanh:  // 1 − y²
        for (Index k = 0; k < n; ++k) {
          const Scalar yk = y[k];
          out[k] = (Scalar(1) - yk * yk) * in[k];
        }
        break;
      case LayerType::sigmoid:  // y (1 − y)
        for (Index k = 0; k < n; ++k) {
          const Scalar yk = y[k];
          out[k] = yk * (Scalar(1) - yk) * in[k];
        }
        break;
      case LayerType::gelu:
      case LayerType::mish:
        for (Index k = 0; k < n; ++k) out[k] = derivative_at(x[k]) * in[k];
        break;
      case LayerType::elu:  // 1, or α eˣ (= y + α) below 0
        for (Index k = 0; k < n; ++k) out[k] = x[k] > 0 ? in[k] : slope_ * std::exp(x[k]) * in[k];
        break;
      case LayerType::scalar_affine:
        for (Index k = 0; k < n; ++k) out[k] = slope_ * in[k];
        break;
      case LayerType::softplus:  // σ(x); 1 above PyTorch's threshold, where the layer is the identity
        for (Index k = 0; k < n; ++k) {
          const Scalar xk = x[k];
          out[k] = (xk > Scalar(20) ? Scalar(1) : sigmoid(xk)) * in[k];
        }
        break;
      case LayerType::silu:  // σ(x) (1 + x (1 − σ(x)))
        for (Index k = 0; k < n; ++k) {
          const Scalar xk = x[k], sk = sigmoid(xk);
          out[k] = sk * (Scalar(1) + xk * (Scalar(1) - sk)) * in[k];
        }
        break;
      default:
        break;
    }
  }

  // φ' at n entries (of GELU and Mish, the activations the network keeps it for).
  void derivative(const Scalar* x, Scalar* d, Index n) const {
    for (Index k = 0; k < n; ++k) d[k] = derivative_at(x[k]);
  }
  Scalar derivative_at(Scalar xk) const { return type_ == LayerType::mish ? mish_derivative(xk) : gelu_derivative(xk); }
  // softplus with PyTorch's threshold 20 (F.mish's inner function).
  static Scalar softplus(Scalar x) { return x > Scalar(20) ? x : std::log1p(std::exp(x)); }
  // d/dx x tanh(s(x)) = t + x (1 − t²) σ(x), t = tanh(s(x)), s' = σ (1 above the threshold).
  static Scalar mish_derivative(Scalar xk) {
    const Scalar t = std::tanh(softplus(xk));
    const Scalar ds = xk > Scalar(20) ? Scalar(1) : sigmoid(xk);
    return t + xk * (Scalar(1) - t * t) * ds;
  }
  // Φ(x) + x φ(x); tanh form: ½(1 + t) + ½x(1 − t²)u'(x), t = tanh(u(x)).
  Scalar gelu_derivative(Scalar xk) const {
    if (tanh_gelu_) {
      const Scalar t = std::tanh(gelu_u(xk));
      const Scalar du = Scalar(kSqrt2OverPi) * (Scalar(1) + Scalar(3 * kGeluCubic) * xk * xk);
      return Scalar(0.5) * (Scalar(1) + t) + Scalar(0.5) * xk * (Scalar(1) - t * t) * du;
    }
    const Scalar cdf = Scalar(0.5) * (Scalar(1) + std::erf(xk * Scalar(M_SQRT1_2)));
    return cdf + xk * Scalar(0.3989422804014327) * std::exp(Scalar(-0.5) * xk * xk);
  }

  static constexpr double kSqrt2OverPi = 0.7978845608028654, kGeluCubic = 0.044715;
  static Scalar gelu_u(Scalar x) { return Scalar(kSqrt2OverPi) * (x + Scalar(kGeluCubic) * x * x * x); }

  LayerType type_;
  Scalar slope_, shift_;
  bool tanh_gelu_;
};

}  // namespace

template <typename Scalar>
std::unique_ptr<Layer<Scalar>> make_elementwise(const LayerSpec& spec, const Shape& in,
                                                const std::string& where) {
  if (spec.type == LayerType::leaky_relu && !std::isfinite(spec.negative_slope))
    fail(where, "leaky_relu negative_slope is not finite");
  if (spec.type == LayerType::elu && !std::isfinite(spec.alpha)) fail(where, "elu alpha is not finite");
  if (spec.type == LayerType::scalar_affine && !(std::isfinite(spec.scale) && std::isfinite(spec.shift)))
    fail(where, "scalar_affine scale and shift must be finite numbers");
  const double slope = spec.type == LayerType::elu             ? spec.alpha
                       : spec.type == LayerType::scalar_affine ? spec.scale
                                                               : spec.negative_slope;
  return std::make_unique<Elementwise<Scalar>>(spec.type, Scalar(slope), Scalar(spec.shift),
                                               spec.type == LayerType::gelu && spec.tanh_approximation, in);
}


template std::unique_ptr<Layer<float>> make_elementwise<float>(const LayerSpec&, const Shape&,
                                                               const std::string&);
template std::unique_ptr<Layer<double>> make_elementwise<double>(const LayerSpec&, const Shape&,
                                                                 const std::string&);

}  // namespace detail
}  // namespace natgrad
