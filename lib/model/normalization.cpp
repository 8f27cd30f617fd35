// Normalization: layer norm over a sample's trailing dimensions, and batch norm in evaluation mode (fixed
// running statistics, so each sample is normalized on its own and the per-sample Fisher exists).
//
// Layer norm, per group of D entries (one group per position of the leading dimensions):
//   x̂ = (x − μ) r,  r = 1/√(σ² + ε),  y = w ∘ x̂ + b
//   R-op:     dy = w ∘ r (dx − mean(dx) − x̂ mean(dx ∘ x̂)) + dw ∘ x̂ + db
//   backprop: ĝ = w ∘ gy,  gx = r (ĝ − mean(ĝ) − x̂ mean(ĝ ∘ x̂)),  gw += gy ∘ x̂,  gb += gy
// (the normalization's Jacobian is symmetric, so the adjoint has the same form). μ, σ² and x̂ are
// recomputed from x in each pass: one extra read instead of a cache as large as the activations.
#include <cmath>

#include "core/lane_sums.h"
#include "model/layers.h"

namespace natgrad {
namespace detail {
namespace {

template <typename Scalar>
class LayerNorm final : public Layer<Scalar>, public SquaredGradients<Scalar> {
 public:
  LayerNorm(const Shape& in, Index D, const Shape& normalized, double eps, bool affine)
      : Layer<Scalar>(in, in,
                      affine ? std::vector<ParamTensor>{{"weight", normalized}, {"bias", normalized}}
                             : std::vector<ParamTensor>{},
                      ParamInit::ones_zeros),
        D_(D),
        eps_(eps),
        affine_(affine) {}
  LayerType type() const override { return LayerType::layer_norm; }
  Index scratch_size(Index) const override { return 2 * D_; }
  Index squared_grads_scratch_size(Index ncols) const override { return scratch_size(ncols); }

  void forward(const Scalar* theta, ConstMatMap<Scalar> X, MatMap<Scalar> Y, int32_t*) const override {
    for (Index n = 0; n < X.cols(); ++n)
      for (Index g = 0; g < groups(); ++g) {
        const Scalar* x = X.col(n).data() + g * D_;
        Scalar* y = Y.col(n).data() + g * D_;
        normalize(x, y);
        if (affine_)
          for (Index k = 0; k < D_; ++k) y[k] = y[k] * theta[k] + theta[D_ + k];
      }
  }

  void jvp(const Scalar* theta, const Scalar* dtheta, ConstMatMap<Scalar> X, ConstMatMap<Scalar>, const int32_t*,
           const Scalar* dX, MatMap<Scalar> dY, Scalar* scratch) const override {
    Scalar* xh = scratch;
    for (Index n = 0; n < X.cols(); ++n)
      for (Index g = 0; g < groups(); ++g) {
        const Index o = n * X.rows() + g * D_;
        Scalar* dy = dY.data() + o;
        const Scalar r = normalize(X.data() + o, xh);
        if (dX) {
          project(dX + o, xh, r, dy);
          if (affine_)
            for (Index k = 0; k < D_; ++k) dy[k] *= theta[k];
        } else {
          std::fill(dy, dy + D_, Scalar(0));
        }
        if (affine_)
          for (Index k = 0; k < D_; ++k) dy[k] += dtheta[k] * xh[k] + dtheta[D_ + k];
      }
  }

  void vjp(const Scalar* theta, ConstMatMap<Scalar> X, ConstMatMap<Scalar>, const int32_t*, ConstMatMap<Scalar> gY,
           Scalar* gX, Scalar* gtheta, Scalar* scratch) const override {
    Scalar* xh = scratch;
    Scalar* gh = scratch + D_;
    for (Index n = 0; n < X.cols(); ++n)
      for (Index g = 0; g < groups(); ++g) {
        const Index o = n * X.rows() + g * D_;
        const Scalar* gy = gY.data() + o;
        const Scalar r = normalize(X.data() + o, xh);
        if (gtheta && affine_)
          for (Index k = 0; k < D_; ++k) {
            gtheta[k] += gy[k] * xh[k];
            gtheta[D_ + k] += gy[k];
          }
        if (gX) {
          for (Index k = 0; k < D_; ++k) gh[k] = affine_ ? gy[k] * theta[k] : gy[k];
          project(gh, xh, r, gX + o);
        }
      }
  }

  void accumulate_squared_grads(const Scalar*, ConstMatMap<Scalar> X, ConstMatMap<Scalar> gY, Scalar* gsq,
                                Scalar* scratch) const override {
    if (!affine_) return;
    // A sample's gradient sums over its groups before it is squared (once per solve: plain vectors).
    std::vector<Scalar> sw(static_cast<std::size_t>(D_)), sb(static_cast<std::size_t>(D_));
    Scalar* xh = scratch;
    for (Index n = 0; n < X.cols(); ++n) {
      std::fill(sw.begin(), sw.end(), Scalar(0));
      std::fill(sb.begin(), sb.end(), Scalar(0));
      for (Index g = 0; g < groups(); ++g) {
        const Index o = n * X.rows() + g * D_;
        normalize(X.data() + o, xh);
        for (Index k = 0; k < D_; ++k) {
          sw[static_cast<std::size_t>(k)] += gY.data()[o + k] * xh[k];
          sb[static_cast<std::size_t>(k)] += gY.data()[o + k];
        }
      }
      for (Index k = 0; k < D_; ++k) {
        gsq[k] += sw[static_cast<std::size_t>(k)] * sw[static_cast<std::size_t>(k)];
        gsq[D_ + k] += sb[static_cast<std::size_t>(k)] * sb[static_cast<std::size_t>(k)];
      }
    }
  }

 private:
  Index groups() const { return this->input_size() / D_; }

  // xh = (x − μ) r over one group; returns r = 1/√(σ² + ε) (biased variance, as PyTorch).
  Scalar normalize(const Scalar* x, Scalar* xh) const {
    Scalar mu = 0;
    for (Index k = 0; k < D_; ++k) mu += x[k];
    mu /= Scalar(D_);
    Scalar var = 0;
    for (Index k = 0; k < D_; ++k) {
      const Scalar d = x[k] - mu;
      var += d * d;
    }
    var /= Scalar(D_);
    const Scalar r = Scalar(1) / std::sqrt(var + Scalar(eps_));
    for (Index k = 0; k < D_; ++k) xh[k] = (x[k] - mu) * r;
    return r;
  }

  // out = r (t − mean(t) − x̂ mean(t ∘ x̂)): the normalization's Jacobian applied to t.
  void project(const Scalar* t, const Scalar* xh, Scalar r, Scalar* out) const {
    Scalar m = 0, mx = 0;
    for (Index k = 0; k < D_; ++k) {
      m += t[k];
      mx += t[k] * xh[k];
    }
    m /= Scalar(D_);
    mx /= Scalar(D_);
    for (Index k = 0; k < D_; ++k) out[k] = r * (t[k] - m - xh[k] * mx);
  }

  Index D_;
  double eps_;
  bool affine_;
};

// Batch norm in evaluation mode, per channel c over its S = H·W (or L) entries:
//   y = (x − m_c) s_c w_c + b_c with s_c = 1/√(v_c + ε) from the running mean m and variance v.
template <typename Scalar>
class BatchNorm final : public Layer<Scalar>, public SquaredGradients<Scalar>, public Buffers<Scalar> {
 public:
  BatchNorm(const Shape& in, double eps, bool affine)
      : Layer<Scalar>(in, in,
                      affine ? std::vector<ParamTensor>{{"weight", {in[0]}}, {"bias", {in[0]}}}
                             : std::vector<ParamTensor>{},
                      ParamInit::ones_zeros),
        C_(in[0]),
        S_(shape_size(in) / in[0]),
        eps_(eps),
        affine_(affine),
        mean_(Vec<Scalar>::Zero(C_)),
        var_(Vec<Scalar>::Ones(C_)),
        scale_(C_) {
    update_scale();
  }
  LayerType type() const override { return LayerType::batch_norm; }
  Index squared_grads_scratch_size(Index) const override { return 0; }
  std::vector<ParamTensor> buffer_tensors() const override { return {{"running_mean", {C_}}, {"running_var", {C_}}}; }
  std::vector<std::string> ignored_buffers() const override { return {"num_batches_tracked"}; }
  void set_buffer(std::size_t i, const Scalar* values) override {
    for (Index c = 0; c < C_; ++c) {
      if (!std::isfinite(values[c])) fail("entry " + std::to_string(c) + " is not finite");
      if (i == 1 && values[c] < 0) fail("entry " + std::to_string(c) + " is a negative variance");
    }
    (i == 0 ? mean_ : var_) = ConstVecMap<Scalar>(values, C_);
    update_scale();
  }

  void forward(const Scalar* theta, ConstMatMap<Scalar> X, MatMap<Scalar> Y, int32_t*) const override {
    for (Index n = 0; n < X.cols(); ++n)
      for (Index c = 0; c < C_; ++c) {
        const Scalar* x = X.col(n).data() + c * S_;
        Scalar* y = Y.col(n).data() + c * S_;
        const Scalar s = scale_[c] * (affine_ ? theta[c] : Scalar(1)), b = affine_ ? theta[C_ + c] : Scalar(0);
        const Scalar m = mean_[c];
        for (Index k = 0; k < S_; ++k) y[k] = (x[k] - m) * s + b;
      }
  }

  void jvp(const Scalar* theta, const Scalar* dtheta, ConstMatMap<Scalar> X, ConstMatMap<Scalar>, const int32_t*,
           const Scalar* dX, MatMap<Scalar> dY, Scalar*) const override {
    for (Index n = 0; n < X.cols(); ++n)
      for (Index c = 0; c < C_; ++c) {
        const Index o = n * X.rows() + c * S_;
        const Scalar* x = X.data() + o;
        Scalar* dy = dY.data() + o;
        const Scalar s = scale_[c] * (affine_ ? theta[c] : Scalar(1)), m = mean_[c], r = scale_[c];
        if (dX)
          for (Index k = 0; k < S_; ++k) dy[k] = dX[o + k] * s;
        else
          std::fill(dy, dy + S_, Scalar(0));
        if (affine_) {
          const Scalar dw = dtheta[c], db = dtheta[C_ + c];
          for (Index k = 0; k < S_; ++k) dy[k] += dw * ((x[k] - m) * r) + db;
        }
      }
  }

  void vjp(const Scalar* theta, ConstMatMap<Scalar> X, ConstMatMap<Scalar>, const int32_t*, ConstMatMap<Scalar> gY,
           Scalar* gX, Scalar* gtheta, Scalar*) const override {
    for (Index n = 0; n < X.cols(); ++n)
      for (Index c = 0; c < C_; ++c) {
        const Index o = n * X.rows() + c * S_;
        const Scalar* gy = gY.data() + o;
        const Scalar r = scale_[c];
        if (gX) {
          const Scalar s = r * (affine_ ? theta[c] : Scalar(1));
          for (Index k = 0; k < S_; ++k) gX[o + k] = gy[k] * s;
        }
        if (gtheta && affine_) {
          Scalar g[2];
          parameter_grad(X.data() + o, gy, c, g);
          gtheta[c] += g[0];
          gtheta[C_ + c] += g[1];
        }
      }
  }

  void accumulate_squared_grads(const Scalar*, ConstMatMap<Scalar> X, ConstMatMap<Scalar> gY, Scalar* gsq,
                                Scalar*) const override {
    if (!affine_) return;
    for (Index n = 0; n < X.cols(); ++n)
      for (Index c = 0; c < C_; ++c) {
        const Index o = n * X.rows() + c * S_;
        Scalar g[2];
        parameter_grad(X.data() + o, gY.data() + o, c, g);
        gsq[c] += g[0] * g[0];
        gsq[C_ + c] += g[1] * g[1];
      }
  }

 private:
  void update_scale() {
    for (Index c = 0; c < C_; ++c) scale_[c] = Scalar(1.0 / std::sqrt(double(var_[c]) + eps_));
  }
  // One sample's gradient of channel c's weight and bias: g = (Σ gy·x̂, Σ gy) over the channel's S positions,
  // x̂ = (x − mean)·scale, in lane_sums' fixed order (the backprop and the squared gradients agree bit for bit).
  void parameter_grad(const Scalar* x, const Scalar* gy, Index c, Scalar* g) const {
    const Scalar r = scale_[c], m = mean_[c];
    lane_sums<2>(S_, [&](Index k, Scalar* t) { t[0] = gy[k] * ((x[k] - m) * r), t[1] = gy[k]; }, g);
  }

  Index C_, S_;
  double eps_;
  bool affine_;
  Vec<Scalar> mean_, var_, scale_;
};

}  // namespace

template <typename Scalar>
std::unique_ptr<Layer<Scalar>> make_layer_norm(const LayerSpec& s, const Shape& in, const std::string& where) {
  if (s.normalized_shape.empty()) fail(where, "layer_norm needs a non-empty normalized_shape");
  if (!(s.eps > 0) || !std::isfinite(s.eps)) fail(where, "layer_norm eps must be positive and finite");
  bool suffix = s.normalized_shape.size() <= in.size();
  for (std::size_t k = 0; suffix && k < s.normalized_shape.size(); ++k)
    suffix = s.normalized_shape[s.normalized_shape.size() - 1 - k] == in[in.size() - 1 - k];
  if (!suffix)
    fail(where, "layer_norm's normalized_shape " + shape_to_string(s.normalized_shape) +
                    " is not the trailing part of its input shape " + shape_to_string(in));
  return std::make_unique<LayerNorm<Scalar>>(in, shape_size(s.normalized_shape), s.normalized_shape, s.eps, s.affine);
}

template <typename Scalar>
std::unique_ptr<Layer<Scalar>> make_batch_norm(const LayerSpec& s, const Shape& in, const std::string& where) {
  if (s.training)
    fail(where, "batch norm in training mode normalizes with the batch's statistics, which couples the samples: "
                "a per-sample Fisher does not exist. Export the model after model.eval(), so that it uses its "
                "running statistics");
  if (!(s.eps > 0) || !std::isfinite(s.eps)) fail(where, "batch_norm eps must be positive and finite");
  if (in.size() < 1 || in.size() > 3 || in[0] != s.num_features)
    fail(where, "batch_norm with num_features " + std::to_string(s.num_features) +
                    " expects input [C], [C, L] or [C, H, W] with C = " + std::to_string(s.num_features) +
                    " but receives " + shape_to_string(in));
  return std::make_unique<BatchNorm<Scalar>>(in, s.eps, s.affine);
}

#define NATGRAD_INSTANTIATE(S)                                                                                  \
  template std::unique_ptr<Layer<S>> make_layer_norm<S>(const LayerSpec&, const Shape&, const std::string&);    \
  template std::unique_ptr<Layer<S>> make_batch_norm<S>(const LayerSpec&, const Shape&, const std::string&);
NATGRAD_INSTANTIATE(float)
NATGRAD_INSTANTIATE(double)
#undef NATGRAD_INSTANTIATE

}  // namespace detail
}  // namespace natgrad
