// Attention: the core of nn.MultiheadAttention, and the expansion of a multihead_attention node into the
// three nodes the network runs.
//
// The core reads a sample's projections [T, 3E] (row t = q_t, k_t, v_t of all heads) and writes the heads'
// outputs [T, E]. Per head, with d = E / H, s = 1/√d and S the scores (Sᵀ stored: column i is query i):
//   Sᵀ(j, i) = s k_j·q_i,  P(i, ·) = softmax over the keys j the mask allows (j ≤ i when causal),
//   o_i = Σ_j P(i, j) v_j,                                                       i.e. O = V Pᵀ.
// The softmax's Jacobian in closed form, per query row p: ∂p = p ∘ (∂s − p·∂s), so
//   R-op:      dSᵀ = s (dKᵀ Q + Kᵀ dQ),  dPᵀ = Pᵀ ∘ (dSᵀ − 1 colsum(Pᵀ ∘ dSᵀ)),  dO = dV Pᵀ + V dPᵀ
//   backprop:  gPᵀ = Vᵀ gO,  gSᵀ = s Pᵀ ∘ (gPᵀ − 1 colsum(Pᵀ ∘ gPᵀ)),
//              gV = gO P,  gQ = K gSᵀ,  gK = Q (gSᵀ)ᵀ.
// Masked entries have P = 0, so their tangents and cotangents are exactly zero. A Network keeps P per
// sample (H T² scalars) from the forward pass (SavesForward); the plain Layer methods recompute it.
#include <cmath>
#include <limits>

#include "core/gemm.h"
#include "model/layers.h"

namespace natgrad {
namespace detail {
namespace {

template <typename Scalar>
class Attention final : public Layer<Scalar>, public SavesForward<Scalar>, public Buffers<Scalar> {
 public:
  Attention(const Shape& in, Index heads, bool causal, bool mask_bool)
      : Layer<Scalar>(in, {in[0], in[1] / 3}), T_(in[0]), E_(in[1] / 3), H_(heads), d_(E_ / heads),
        causal_(causal), mask_bool_(mask_bool), scale_(Scalar(1) / std::sqrt(Scalar(E_ / heads))) {}

  LayerType type() const override { return LayerType::attention; }
  std::vector<ParamTensor> buffer_tensors() const override {
    if (!causal_) return {};
    return {{"attn_mask", {T_, T_}}};
  }
  void set_buffer(std::size_t, const Scalar* m) override {
    // Row i is query i: a causal mask allows keys j ≤ i (0 / False) and masks the rest (−inf / True).
    for (Index i = 0; i < T_; ++i)
      for (Index j = 0; j < T_; ++j) {
        const Scalar v = m[i * T_ + j];
        const bool allowed = v == Scalar(0);
        const bool masked = mask_bool_ ? v == Scalar(1) : (std::isinf(v) && v < 0);
        if (j <= i ? allowed : masked) continue;
        fail("is not a causal mask: entry (" + std::to_string(i) + ", " + std::to_string(j) + ") is " +
             (mask_bool_ ? (v == Scalar(1) ? std::string("True") : std::string("False"))
                         : std::to_string(double(v))) +
             " (natgrad supports no mask or a causal one: " + (mask_bool_ ? "False" : "0") +
             " on and below the diagonal, " + (mask_bool_ ? "True" : "-inf") + " above it)");
      }
  }
  std::vector<Scalar> buffer(std::size_t) const override {
    // The causal mask set_buffer accepts (the only one): masked above the diagonal.
    const Scalar masked = mask_bool_ ? Scalar(1) : -std::numeric_limits<Scalar>::infinity();
    std::vector<Scalar> m(static_cast<std::size_t>(T_ * T_), Scalar(0));
    for (Index i = 0; i < T_; ++i)
      for (Index j = i + 1; j < T_; ++j) m[static_cast<std::size_t>(i * T_ + j)] = masked;
    return m;
  }
  Index saved_per_sample() const override { return H_ * T_ * T_; }
  Index scratch_size(Index) const override { return T_ * T_ + pack_size(); }
  Index forward_scratch_size(Index) const override { return H_ * T_ * T_ + pack_size(); }

  void forward(const Scalar*, ConstMatMap<Scalar> X, MatMap<Scalar> Y, int32_t*) const override {
    std::vector<Scalar> probs(static_cast<std::size_t>(forward_scratch_size(1)));
    for (Index n = 0; n < X.cols(); ++n) forward_sample(X.col(n).data(), Y.col(n).data(), probs.data());
  }
  void forward_saving(ConstMatMap<Scalar> X, MatMap<Scalar> Y, Scalar* saved) const override {
    std::vector<Scalar> pack(static_cast<std::size_t>(pack_size()));
    for (Index n = 0; n < X.cols(); ++n) {
      Scalar* P = saved + n * saved_per_sample();
      probabilities(X.col(n).data(), P, pack.data());
      context(X.col(n).data(), P, Y.col(n).data(), pack.data());
    }
  }

  void jvp(const Scalar*, const Scalar*, ConstMatMap<Scalar> X, ConstMatMap<Scalar>, const int32_t*,
           const Scalar* dX, MatMap<Scalar> dY, Scalar* scratch) const override {
    std::vector<Scalar> P(static_cast<std::size_t>(saved_per_sample()));
    for (Index n = 0; n < X.cols(); ++n) {
      probabilities(X.col(n).data(), P.data(), scratch + T_ * T_);
      jvp_sample(X.col(n).data(), P.data(), dX ? dX + n * X.rows() : nullptr, dY.col(n).data(), scratch);
    }
  }
  void jvp_saved(ConstMatMap<Scalar> X, const Scalar* saved, const Scalar* dX, MatMap<Scalar> dY,
                 Scalar* scratch) const override {
    for (Index n = 0; n < X.cols(); ++n)
      jvp_sample(X.col(n).data(), saved + n * saved_per_sample(), dX ? dX + n * X.rows() : nullptr,
                 dY.col(n).data(), scratch);
  }

  void vjp(const Scalar*, ConstMatMap<Scalar> X, ConstMatMap<Scalar>, const int32_t*, ConstMatMap<Scalar> gY,
           Scalar* gX, Scalar*, Scalar* scratch) const override {
    if (!gX) return;
    std::vector<Scalar> P(static_cast<std::size_t>(saved_per_sample()));
    for (Index n = 0; n < X.cols(); ++n) {
      probabilities(X.col(n).data(), P.data(), scratch + T_ * T_);
      vjp_sample(X.col(n).data(), P.data(), gY.col(n).data(), gX + n * X.rows(), scratch);
    }
  }
  void vjp_saved(ConstMatMap<Scalar> X, const Scalar* saved, ConstMatMap<Scalar> gY, Scalar* gX,
                 Scalar* scratch) const override {
    for (Index n = 0; n < X.cols(); ++n)
      vjp_sample(X.col(n).data(), saved + n * saved_per_sample(), gY.col(n).data(), gX + n * X.rows(), scratch);
  }

 private:
  // The scores' and the context's products, T × T × d and d × T × T, both ways round.
  Index pack_size() const {
    return std::max({gemm_pack_size<Scalar>(T_, T_, d_), gemm_pack_size<Scalar>(d_, T_, T_)});
  }
  // Head h's queries, keys and values of a sample x: d × T blocks of its [T, 3E] projections.
  const Scalar* q(const Scalar* x, Index h) const { return x + h * d_; }
  const Scalar* k(const Scalar* x, Index h) const { return x + E_ + h * d_; }
  const Scalar* v(const Scalar* x, Index h) const { return x + 2 * E_ + h * d_; }
  // The keys query i may attend: 0 … last(i).
  Index last(Index i) const { return causal_ ? i : T_ - 1; }

  void forward_sample(const Scalar* x, Scalar* y, Scalar* buffer) const {
    probabilities(x, buffer, buffer + saved_per_sample());
    context(x, buffer, y, buffer + saved_per_sample());
  }

  // P (H blocks of Pᵀ, T × T column-major: column i is query i's distribution over the keys).
  void probabilities(const Scalar* x, Scalar* P, Scalar* pack) const {
    const Index ld = 3 * E_;
    for (Index h = 0; h < H_; ++h) {
      Scalar* Pt = P + h * T_ * T_;
      gemm<Scalar>(T_, T_, d_, row_major(k(x, h), ld), col_major(q(x, h), ld), Pt, T_, false, pack);
      for (Index i = 0; i < T_; ++i) {
        Scalar* p = Pt + i * T_;
        const Index m = last(i) + 1;
        Scalar top = -std::numeric_limits<Scalar>::infinity();
        for (Index j = 0; j < m; ++j) top = std::max(top, p[j]);
        Scalar sum = 0;
        for (Index j = 0; j < m; ++j) {
          p[j] = std::exp(scale_ * (p[j] - top));
          sum += p[j];
        }
        const Scalar inv = Scalar(1) / sum;
        for (Index j = 0; j < m; ++j) p[j] *= inv;
        std::fill(p + m, p + T_, Scalar(0));
      }
    }
  }

  // y: O = V Pᵀ per head, written into the head's d columns of the [T, E] output.
  void context(const Scalar* x, const Scalar* P, Scalar* y, Scalar* pack) const {
    for (Index h = 0; h < H_; ++h)
      gemm<Scalar>(d_, T_, T_, col_major(v(x, h), 3 * E_), col_major(P + h * T_ * T_, T_), y + h * d_, E_, false,
                   pack);
  }

  // t ← Pᵀ ∘ (t − 1 colsum(Pᵀ ∘ t)) · factor, per query column (zero where masked).
  void softmax_adjoint(const Scalar* Pt, Scalar* t, Scalar factor) const {
    for (Index i = 0; i < T_; ++i) {
      const Scalar* p = Pt + i * T_;
      Scalar* c = t + i * T_;
      const Index m = last(i) + 1;
      Scalar dot = 0;
      for (Index j = 0; j < m; ++j) dot += p[j] * c[j];
      for (Index j = 0; j < m; ++j) c[j] = factor * p[j] * (c[j] - dot);
      std::fill(c + m, c + T_, Scalar(0));
    }
  }

  void jvp_sample(const Scalar* x, const Scalar* P, const Scalar* dx, Scalar* dy, Scalar* scratch) const {
    if (!dx) {
      std::fill(dy, dy + E_ * T_, Scalar(0));
      return;
    }
    const Index ld = 3 * E_;
    Scalar* dS = scratch;
    Scalar* pack = scratch + T_ * T_;
    for (Index h = 0; h < H_; ++h) {
      const Scalar* Pt = P + h * T_ * T_;
      gemm<Scalar>(T_, T_, d_, row_major(k(dx, h), ld), col_major(q(x, h), ld), dS, T_, false, pack);
      gemm<Scalar>(T_, T_, d_, row_major(k(x, h), ld), col_major(q(dx, h), ld), dS, T_, true, pack);
      softmax_adjoint(Pt, dS, scale_);  // the softmax's Jacobian is symmetric: its R-op has the same form
      gemm<Scalar>(d_, T_, T_, col_major(v(dx, h), ld), col_major(Pt, T_), dy + h * d_, E_, false, pack);
      gemm<Scalar>(d_, T_, T_, col_major(v(x, h), ld), col_major(dS, T_), dy + h * d_, E_, true, pack);
    }
  }

  void vjp_sample(const Scalar* x, const Scalar* P, const Scalar* gy, Scalar* gx, Scalar* scratch) const {
    const Index ld = 3 * E_;
    Scalar* gS = scratch;
    Scalar* pack = scratch + T_ * T_;
    for (Index h = 0; h < H_; ++h) {
      const Scalar* Pt = P + h * T_ * T_;
      const Scalar* go = gy + h * d_;
      gemm<Scalar>(T_, T_, d_, row_major(v(x, h), ld), col_major(go, E_), gS, T_, false, pack);
      softmax_adjoint(Pt, gS, scale_);
      gemm<Scalar>(d_, T_, T_, col_major(go, E_), row_major(Pt, T_), gx + 2 * E_ + h * d_, ld, false, pack);
      gemm<Scalar>(d_, T_, T_, col_major(k(x, h), ld), col_major(gS, T_), gx + h * d_, ld, false, pack);
      gemm<Scalar>(d_, T_, T_, col_major(q(x, h), ld), row_major(gS, T_), gx + E_ + h * d_, ld, false, pack);
    }
  }

  Index T_, E_, H_, d_;
  bool causal_, mask_bool_;
  Scalar scale_;
};

}  // namespace

template <typename Scalar>
std::unique_ptr<Layer<Scalar>> make_attention(const LayerSpec& spec, const Shape& in, const std::string& where) {
  if (in.size() != 2 || in[1] % 3 != 0)
    fail(where + ": reads a sequence's projections [T, 3 embed_dim], given " + shape_to_string(in));
  const Index E = in[1] / 3;
  if (spec.num_heads <= 0) fail(where + ": num_heads must be positive");
  if (E % spec.num_heads != 0)
    fail(where + ": embed_dim " + std::to_string(E) + " is not divisible by num_heads " +
         std::to_string(spec.num_heads));
  if (double(spec.num_heads) * double(in[0]) * double(in[0]) > kMaxElements)
    fail(where + ": the attention probabilities (num_heads × T × T) exceed 2^40 elements");
  return std::make_unique<Attention<Scalar>>(in, spec.num_heads, !spec.attn_mask.empty(), spec.attn_mask_bool);
}

ModelSpec expand_attention(const ModelSpec& spec) {
  bool any = false;
  for (const LayerSpec& s : spec.layers) any = any || s.type == LayerType::multihead_attention;
  if (!any) return spec;
  ModelSpec out = spec;
  out.layers.clear();
  for (std::size_t i = 0; i < spec.layers.size(); ++i) {
    LayerSpec s = spec.layers[i];
    // Node indices shift: every node keeps its id and module name explicitly, and its inputs.
    const std::string id = node_id(spec, i), name = module_name(spec, i);
    if (s.inputs.empty()) s.inputs = {i == 0 ? std::string(kModelInputId) : node_id(spec, i - 1)};
    s.id = id;
    s.name = name;
    if (s.type != LayerType::multihead_attention) {
      out.layers.push_back(s);
      continue;
    }
    if (s.embed_dim <= 0) fail("layer " + std::to_string(i) + " \"" + id + "\" (multihead_attention): embed_dim must be positive");
    LayerSpec in_proj = LayerSpec::linear(s.embed_dim, 3 * s.embed_dim, s.bias);
    in_proj.id = id + "/in_proj";
    in_proj.name = name;
    in_proj.inputs = s.inputs;
    in_proj.param_names = {name + ".in_proj_weight"};
    if (s.bias) in_proj.param_names.push_back(name + ".in_proj_bias");
    LayerSpec core = LayerSpec::activation(LayerType::attention);
    core.id = id + "/attention";
    core.name = name;
    core.inputs = {in_proj.id};
    core.num_heads = s.num_heads;
    core.attn_mask = s.attn_mask;
    core.attn_mask_bool = s.attn_mask_bool;
    LayerSpec out_proj = LayerSpec::linear(s.embed_dim, s.embed_dim, s.bias);
    out_proj.id = id;
    out_proj.name = name + ".out_proj";
    out_proj.inputs = {core.id};
    in_proj.origin = core.origin = out_proj.origin = s.origin;  // one PyTorch module, three nodes
    out.layers.push_back(in_proj);
    out.layers.push_back(core);
    out.layers.push_back(out_proj);
  }
  return out;
}

template std::unique_ptr<Layer<float>> make_attention<float>(const LayerSpec&, const Shape&, const std::string&);
template std::unique_ptr<Layer<double>> make_attention<double>(const LayerSpec&, const Shape&, const std::string&);

}  // namespace detail
}  // namespace natgrad
