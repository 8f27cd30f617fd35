// Embedding: token indices in, rows of a [num_embeddings, embedding_dim] table out. Each entry of a sample's
// input (stored as a Scalar holding an integer) becomes embedding_dim values, so an input of shape S gives
// an output S + [embedding_dim]. The input is not differentiable: the R-op is dy_t = dW[idx_t], backprop
// gW[idx_t] += gy_t. The padding_idx row, if any, is a constant (PyTorch gives it no gradient).
#include <algorithm>
#include <cmath>

#include "model/layers.h"

namespace natgrad {
namespace detail {
namespace {

template <typename Scalar>
class Embedding final : public Layer<Scalar>, public SquaredGradients<Scalar>, public TokenInput<Scalar> {
 public:
  Embedding(const Shape& in, Index V, Index d, Index padding_idx)
      : Layer<Scalar>(in, with_dim(in, d), {{"weight", {V, d}}}, ParamInit::normal),
        V_(V),
        d_(d),
        padding_idx_(padding_idx) {}
  LayerType type() const override { return LayerType::embedding; }
  Index squared_grads_scratch_size(Index) const override { return 0; }

  void check_input(ConstMatMap<Scalar> X) const override {
    for (Index n = 0; n < X.cols(); ++n)
      for (Index t = 0; t < X.rows(); ++t) {
        const Scalar v = X(t, n);
        if (!(v >= 0 && v < Scalar(V_) && v == std::floor(v)))
          fail("sample " + std::to_string(n) + ", position " + std::to_string(t) + ": token index " +
               (v == std::floor(v) && std::abs(double(v)) < 1e15 ? std::to_string(static_cast<long long>(v))
                                                                 : std::to_string(double(v))) +
               " is not an integer in [0, " + std::to_string(V_) + ") (the vocabulary of " + std::to_string(V_) +
               " embeddings)");
      }
  }

  void forward(const Scalar* theta, ConstMatMap<Scalar> X, MatMap<Scalar> Y, int32_t*) const override {
    for (Index n = 0; n < X.cols(); ++n)
      for (Index t = 0; t < X.rows(); ++t)
        std::copy_n(theta + index(X(t, n)) * d_, d_, Y.col(n).data() + t * d_);
  }
  void jvp(const Scalar*, const Scalar* dtheta, ConstMatMap<Scalar> X, ConstMatMap<Scalar>, const int32_t*,
           const Scalar*, MatMap<Scalar> dY, Scalar*) const override {
    for (Index n = 0; n < X.cols(); ++n)
      for (Index t = 0; t < X.rows(); ++t) {
        const Index i = index(X(t, n));
        Scalar* dy = dY.col(n).data() + t * d_;
        if (i == padding_idx_)
          std::fill(dy, dy + d_, Scalar(0));
        else
          std::copy_n(dtheta + i * d_, d_, dy);
      }
  }
  void vjp(const Scalar*, ConstMatMap<Scalar> X, ConstMatMap<Scalar>, const int32_t*, ConstMatMap<Scalar> gY, Scalar*,
           Scalar* gtheta, Scalar*) const override {
    if (!gtheta) return;
    for (Index n = 0; n < X.cols(); ++n)
      for (Index t = 0; t < X.rows(); ++t) {
        const Index i = index(X(t, n));
        if (i == padding_idx_) continue;
        VecMap<Scalar>(gtheta + i * d_, d_) += ConstVecMap<Scalar>(gY.col(n).data() + t * d_, d_);
      }
  }
  void accumulate_squared_grads(const Scalar*, ConstMatMap<Scalar> X, ConstMatMap<Scalar> gY, Scalar* gsq,
                                Scalar*) const override {
    // A token that occurs several times in a sample: its rows' gradients are summed before squaring. The
    // positions are visited grouped by token (once per solve: plain vectors).
    std::vector<std::pair<Index, Index>> by_token(static_cast<std::size_t>(X.rows()));
    Vec<Scalar> row(d_);
    for (Index n = 0; n < X.cols(); ++n) {
      for (Index t = 0; t < X.rows(); ++t) by_token[static_cast<std::size_t>(t)] = {index(X(t, n)), t};
      std::sort(by_token.begin(), by_token.end());
      for (std::size_t a = 0; a < by_token.size();) {
        const Index i = by_token[a].first;
        row.setZero();
        std::size_t b = a;
        for (; b < by_token.size() && by_token[b].first == i; ++b)
          row += ConstVecMap<Scalar>(gY.col(n).data() + by_token[b].second * d_, d_);
        if (i != padding_idx_) VecMap<Scalar>(gsq + i * d_, d_).array() += row.array().square();
        a = b;
      }
    }
  }

 private:
  static Shape with_dim(Shape s, Index d) {
    s.push_back(d);
    return s;
  }
  static Index index(Scalar v) { return static_cast<Index>(v); }

  Index V_, d_, padding_idx_;
};

}  // namespace

template <typename Scalar>
std::unique_ptr<Layer<Scalar>> make_embedding(const LayerSpec& s, const Shape& in, const std::string& where) {
  if (s.num_embeddings <= 0 || s.embedding_dim <= 0)
    fail(where, "embedding needs positive num_embeddings and embedding_dim");
  if (double(s.num_embeddings) * double(s.embedding_dim) > kMaxElements ||
      double(shape_size(in)) * double(s.embedding_dim) > kMaxElements)
    fail(where, "embedding sizes are absurdly large");
  if (std::is_same<Scalar, float>::value && s.num_embeddings > (Index(1) << 24))
    fail(where, "embedding with more than 2^24 entries: float32 cannot hold every token index exactly (use "
                "--dtype float64)");
  if (s.padding_idx < -1 || s.padding_idx >= s.num_embeddings)
    fail(where, "embedding padding_idx " + std::to_string(s.padding_idx) + " is out of range");
  return std::make_unique<Embedding<Scalar>>(in, s.num_embeddings, s.embedding_dim, s.padding_idx);
}

template std::unique_ptr<Layer<float>> make_embedding<float>(const LayerSpec&, const Shape&, const std::string&);
template std::unique_ptr<Layer<double>> make_embedding<double>(const LayerSpec&, const Shape&, const std::string&);

}  // namespace detail
}  // namespace natgrad
