// Normalization: layer norm over a sample's trailing dimensions, group norm over blocks of channels, and batch
// norm in evaluation mode (fixed running statistics, so each sample is normalized on its own and the
// per-sample Fisher exists).
//
// Layer norm, per group of D entries (one group per position of the leading dimensions):
//   x̂ = (x − μ) r,  r = 1/√(σ² + ε),  y = w ∘ x̂ + b
//   R-op:     dy = w ∘ r (dx − mean(dx) − x̂ mean(dx ∘ x̂)) + dw ∘ x̂ + db
//   backprop: ĝ = w ∘ gy,  gx = r (ĝ − mean(ĝ) − x̂ mean(ĝ ∘ x̂)),  gw += gy ∘ x̂,  gb += gy
// (the normalization's Jacobian is symmetric, so the adjoint has the same form). μ, σ² and x̂ are
// recomputed from x in each pass: one extra read instead of a cache as large as the activations.
//
// Group norm on a sample [C, *spatial] with S spatial entries per channel and G groups: group g is the
// contiguous block of channels [g C/G, (g + 1) C/G), D = (C/G)·S entries normalized as one layer-norm group;
// the affine weight and bias are per channel (w_c, b_c for all S entries of channel c), so the formulas above
// hold with w, dw, db broadcast over a channel's entries, and gw_c += Σ_s gy·x̂, gb_c += Σ_s gy.
// nn.InstanceNorm1d/2d without running statistics is group norm with G = C.
#include <algorithm>
#include <cmath>

#include "core/lane_sums.h"
#include "model/layers.h"

namespace natgrad {
namespace detail {
namespace {

// xh = (x − μ) r over one group of D entries; returns r = 1/√(σ² + ε) (biased variance, as PyTorch).
template <typename Scalar>
Scalar normalize_group(const Scalar* x, Index D, double eps, Scalar* xh) {
  Scalar mu = 0;
  for (Index k = 0; k < D; ++k) mu += x[k];
  mu /= Scalar(D);
  Scalar var = 0;
  for (Index k = 0; k < D; ++k) {
    const Scalar d = x[k] - mu;
    var += d * d;
  }
  var /= Scalar(D);
  const Scalar r = Scalar(1) / std::sqrt(var + Scalar(eps));
  for (Index k = 0; k < D; ++k) xh[k] = (x[k] - mu) * r;
  return r;
}

// out = r (t − mean(t) − x̂ mean(t ∘ x̂)) over one group of D entries: the normalization's Jacobian applied
// to t (out may alias t).
template <typename Scalar>
void project_group(const Scalar* t, const Scalar* xh, Scalar r, Index D, Scalar* out) {
  Scalar m = 0, mx = 0;
  for (Index k = 0; k < D; ++k) {
    m += t[k];
    mx += t[k] * xh[k];
  }
  m /= Scalar(D);
  mx /= Scalar(D);
  for (Index k = 0; k < D; ++k) out[k] = r * (t[k] - m - xh[k] * mx);
}

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

  Scalar normalize(const Scalar* x, Scalar* xh) const { return normalize_group(x, D_, eps_, xh); }
  void project(const Scalar* t, const Scalar* xh, Scalar r, Scalar* out) const { project_group(t, xh, r, D_, out); }

  Index D_;
  double eps_;
  bool affine_;
};

// Group norm: per sample [C, *spatial], G groups of Cg = C/G channels, each channel S entries; a group is the
// D = Cg·S contiguous entries of its channels.
template <typename Scalar>
class GroupNorm final : public Layer<Scalar>, public SquaredGradients<Scalar> {
 public:
  GroupNorm(const Shape& in, Index G, double eps, bool affine)
      : Layer<Scalar>(in, in,
                      affine ? std::vector<ParamTensor>{{"weight", {in[0]}}, {"bias", {in[0]}}}
                             : std::vector<ParamTensor>{},
                      ParamInit::ones_zeros),
        C_(in[0]),
        S_(shape_size(in) / in[0]),
        G_(G),
        Cg_(in[0] / G),
        D_(in[0] / G * (shape_size(in) / in[0])),
        eps_(eps),
        affine_(affine) {}
  LayerType type() const override { return LayerType::group_norm; }
  Index scratch_size(Index) const override { return 2 * D_; }
  Index squared_grads_scratch_size(Index ncols) const override { return scratch_size(ncols); }

  void forward(const Scalar* theta, ConstMatMap<Scalar> X, MatMap<Scalar> Y, int32_t*) const override {
    for (Index n = 0; n < X.cols(); ++n)
      for (Index g = 0; g < G_; ++g) {
        const Index o = g * D_;
        Scalar* y = Y.col(n).data() + o;
        normalize_group(X.col(n).data() + o, D_, eps_, y);
        if (affine_)
          for (Index j = 0; j < Cg_; ++j) {
            const Index c = g * Cg_ + j;
            const Scalar w = theta[c], b = theta[C_ + c];
            for (Index s = 0; s < S_; ++s) y[j * S_ + s] = y[j * S_ + s] * w + b;
          }
      }
  }

  void jvp(const Scalar* theta, const Scalar* dtheta, ConstMatMap<Scalar> X, ConstMatMap<Scalar>, const int32_t*,
           const Scalar* dX, MatMap<Scalar> dY, Scalar* scratch) const override {
    Scalar* xh = scratch;
    for (Index n = 0; n < X.cols(); ++n)
      for (Index g = 0; g < G_; ++g) {
        const Index o = n * X.rows() + g * D_;
        Scalar* dy = dY.data() + o;
        const Scalar r = normalize_group(X.data() + o, D_, eps_, xh);
        if (dX) {
          project_group(dX + o, xh, r, D_, dy);
          if (affine_) scale_channels(theta + g * Cg_, dy);
        } else {
          std::fill(dy, dy + D_, Scalar(0));
        }
        if (affine_)
          for (Index j = 0; j < Cg_; ++j) {
            const Index c = g * Cg_ + j;
            const Scalar dw = dtheta[c], db = dtheta[C_ + c];
            for (Index s = 0; s < S_; ++s) dy[j * S_ + s] += dw * xh[j * S_ + s] + db;
          }
      }
  }

  void vjp(const Scalar* theta, ConstMatMap<Scalar> X, ConstMatMap<Scalar>, const int32_t*, ConstMatMap<Scalar> gY,
           Scalar* gX, Scalar* gtheta, Scalar* scratch) const override {
    Scalar* xh = scratch;
    Scalar* gh = scratch + D_;
    for (Index n = 0; n < X.cols(); ++n)
      for (Index g = 0; g < G_; ++g) {
        const Index o = n * X.rows() + g * D_;
        const Scalar* gy = gY.data() + o;
        const Scalar r = normalize_group(X.data() + o, D_, eps_, xh);
        if (gtheta && affine_)
          for (Index j = 0; j < Cg_; ++j) {
            Scalar p[2];
            channel_grad(gy + j * S_, xh + j * S_, p);
            gtheta[g * Cg_ + j] += p[0];
            gtheta[C_ + g * Cg_ + j] += p[1];
          }
        if (gX) {
          std::copy(gy, gy + D_, gh);
          if (affine_) scale_channels(theta + g * Cg_, gh);
          project_group(gh, xh, r, D_, gX + o);
        }
      }
  }

  void accumulate_squared_grads(const Scalar*, ConstMatMap<Scalar> X, ConstMatMap<Scalar> gY, Scalar* gsq,
                                Scalar* scratch) const override {
    if (!affine_) return;
    // Each channel lies in one group, so a sample's gradient of w_c and b_c is one channel_grad.
    Scalar* xh = scratch;
    for (Index n = 0; n < X.cols(); ++n)
      for (Index g = 0; g < G_; ++g) {
        const Index o = n * X.rows() + g * D_;
        normalize_group(X.data() + o, D_, eps_, xh);
        for (Index j = 0; j < Cg_; ++j) {
          Scalar p[2];
          channel_grad(gY.data() + o + j * S_, xh + j * S_, p);
          gsq[g * Cg_ + j] += p[0] * p[0];
          gsq[C_ + g * Cg_ + j] += p[1] * p[1];
        }
      }
  }

 private:
  // t ∘= w over one group's channels (w: the group's first weight).
  void scale_channels(const Scalar* w, Scalar* t) const {
    for (Index j = 0; j < Cg_; ++j)
      for (Index s = 0; s < S_; ++s) t[j * S_ + s] *= w[j];
  }
  // One channel's (Σ gy·x̂, Σ gy) over its S entries, in lane_sums' fixed order (backprop and the squared
  // gradients agree bit for bit).
  void channel_grad(const Scalar* gy, const Scalar* xh, Scalar* p) const {
    lane_sums<2>(S_, [&](Index k, Scalar* t) { t[0] = gy[k] * xh[k], t[1] = gy[k]; }, p);
  }

  Index C_, S_, G_, Cg_, D_;
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
  std::vector<Scalar> buffer(std::size_t i) const override {
    const Vec<Scalar>& b = i == 0 ? mean_ : var_;
    return std::vector<Scalar>(b.data(), b.data() + C_);
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

template <typename Scalar>
std::unique_ptr<Layer<Scalar>> make_group_norm(const LayerSpec& s, const Shape& in, const std::string& where) {
  if (s.num_groups < 1 || s.num_channels < 1)
    fail(where, "group_norm needs num_groups >= 1 and num_channels >= 1 (given " + std::to_string(s.num_groups) +
                    " and " + std::to_string(s.num_channels) + ")");
  if (s.num_channels % s.num_groups != 0)
    fail(where, "group_norm's num_channels " + std::to_string(s.num_channels) + " is not divisible by num_groups " +
                    std::to_string(s.num_groups));
  if (!(s.eps > 0) || !std::isfinite(s.eps)) fail(where, "group_norm eps must be positive and finite");
  if (in.empty() || in[0] != s.num_channels)
    fail(where, "group_norm with num_channels " + std::to_string(s.num_channels) +
                    " expects input [C, ...] (channels first: [C], [C, L], [C, H, W]) with C = " +
                    std::to_string(s.num_channels) + " but receives " + shape_to_string(in));
  return std::make_unique<GroupNorm<Scalar>>(in, s.num_groups, s.eps, s.affine);
}

#define NATGRAD_INSTANTIATE(S)                                                                                  \
  template std::unique_ptr<Layer<S>> make_layer_norm<S>(const LayerSpec&, const Shape&, const std::string&);    \
  template std::unique_ptr<Layer<S>> make_batch_norm<S>(const LayerSpec&, const Shape&, const std::string&);   \
  template std::unique_ptr<Layer<S>> make_group_norm<S>(const LayerSpec&, const Shape&, const std::string&);
NATGRAD_INSTANTIATE(float)
NATGRAD_INSTANTIATE(double)
#undef NATGRAD_INSTANTIATE

}  // namespace detail
}  // namespace natgrad
