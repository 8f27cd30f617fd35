// Fully connected layer y = W x + b, W of shape [out, in] stored row-major (PyTorch's nn.Linear). On an input
// [..., in] it acts on the last dimension, as PyTorch does: a sample of L = prod(leading dims) rows of `in`
// values is L columns of X, so every pass is the same GEMM over n·L columns.
#include <algorithm>

#include "core/gemm.h"
#include "model/layers.h"

namespace natgrad {
namespace detail {
namespace {

template <typename Scalar>
class Linear final : public Layer<Scalar>,
                     public BlockGradient<Scalar>,
                     public KroneckerFactors<Scalar>,
                     public SquaredGradients<Scalar>,
                     public PackedWeightProducts<Scalar> {
  using RowMat = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  using ConstW = Eigen::Map<const RowMat>;
  using ConstB = Eigen::Map<const Vec<Scalar>>;
  using MutB = Eigen::Map<Vec<Scalar>>;

 public:
  Linear(const Shape& input, Index in, Index out, bool bias)
      : Layer<Scalar>(input, with_last(input, out), tensors(in, out, bias), ParamInit::fan_in_uniform),
        in_(in),
        out_(out),
        L_(shape_size(input) / in),
        bias_(bias) {}

  LayerType type() const override { return LayerType::linear; }
  // The products' packing space (core/gemm.h) for any chunk of up to ncols samples.
  Index scratch_size(Index ncols) const override { return pack_size(ncols); }
  // accumulate_squared_grads: the squared activations and cotangents of a chunk, or for a sequence input one
  // sample's in × out gradient; then the packing space.
  Index squared_grads_scratch_size(Index ncols) const override {
    return (L_ > 1 ? in_ * out_ : (in_ + out_) * ncols) + pack_size(ncols);
  }
  Index pack_size(Index ncols) const {
    Index pack = 0;
    for (Index c = 1; c <= ncols * L_; ++c)
      pack = std::max({pack, gemm_pack_size<Scalar>(out_, c, in_), gemm_pack_size<Scalar>(in_, c, out_),
                       gemm_pack_size<Scalar>(in_, out_, c)});
    return pack;
  }

  void forward(const Scalar* theta, ConstMatMap<Scalar> X0, MatMap<Scalar> Y0, int32_t*) const override {
    ConstMatMap<Scalar> X = columns(X0);
    MatMap<Scalar> Y(Y0.data(), out_, Y0.cols() * L_);
    Y.noalias() = ConstW(theta, out_, in_) * X;
    if (bias_) Y.colwise() += ConstB(theta + out_ * in_, out_);
  }

  // dY = dW X + W dX + db.  W is row-major [out, in].
  void jvp(const Scalar* theta, const Scalar* dtheta, ConstMatMap<Scalar> X0, ConstMatMap<Scalar>,
           const int32_t*, const Scalar* dX, MatMap<Scalar> dY0, Scalar* scratch) const override {
    ConstMatMap<Scalar> X = columns(X0);
    MatMap<Scalar> dY(dY0.data(), out_, X.cols());
    const Index n = X.cols();
    gemm(out_, n, in_, row_major(dtheta, in_), col_major(X.data(), in_), dY.data(), out_, false, scratch);
    if (dX) gemm(out_, n, in_, row_major(theta, in_), col_major(dX, in_), dY.data(), out_, true, scratch);
    if (bias_) dY.colwise() += ConstB(dtheta + out_ * in_, out_);
  }

  // gX = Wᵀ gY;  gW += gY Xᵀ;  gb += Σ_n gY_n.  Read column-major, the row-major W is Wᵀ (in × out), and
  // gW is accumulated as gWᵀ += X gYᵀ.
  void vjp(const Scalar* theta, ConstMatMap<Scalar> X0, ConstMatMap<Scalar>, const int32_t*,
           ConstMatMap<Scalar> gY0, Scalar* gX, Scalar* gtheta, Scalar* scratch) const override {
    ConstMatMap<Scalar> X = columns(X0), gY(gY0.data(), out_, X.cols());
    const Index n = X.cols();
    if (gX) gemm(in_, n, out_, col_major(theta, in_), col_major(gY.data(), out_), gX, in_, false, scratch);
    if (!gtheta) return;
    gemm(in_, out_, n, col_major(X.data(), in_), row_major(gY.data(), out_), gtheta, in_, true, scratch);
    if (bias_) MutB(gtheta + out_ * in_, out_) += gY.rowwise().sum();
  }

  // The same products with the weight operands packed once per pass (PackedWeightProducts): the row-major
  // W (and dW) is the out × in left operand of the R-op, and read column-major it is Wᵀ (in × out).
  GemmOperand<Scalar> weight_operand(typename PackedWeightProducts<Scalar>::Operand op, const Scalar* p,
                                     Index& m, Index& k) const override {
    const bool t = op == PackedWeightProducts<Scalar>::transposed;
    m = t ? in_ : out_;
    k = t ? out_ : in_;
    return t ? col_major(p, in_) : row_major(p, in_);
  }
  Index columns_per_sample() const override { return L_; }
  void jvp_packed(const Scalar* dtheta, ConstMatMap<Scalar> X0, const Scalar* dX, MatMap<Scalar> dY0,
                  const PackedLhs<Scalar>& dW, const PackedLhs<Scalar>* W, Scalar* scratch) const override {
    ConstMatMap<Scalar> X = columns(X0);
    MatMap<Scalar> dY(dY0.data(), out_, X.cols());
    const Index n = X.cols();
    NATGRAD_CHECK(W != nullptr || dX == nullptr);
    gemm_packed(n, dW, col_major(X.data(), in_), dY.data(), out_, false, scratch);
    if (dX) gemm_packed(n, *W, col_major(dX, in_), dY.data(), out_, true, scratch);
    if (bias_) dY.colwise() += ConstB(dtheta + out_ * in_, out_);
  }
  void input_cotangent_packed(ConstMatMap<Scalar> gY, Scalar* gX, const PackedLhs<Scalar>& Wt,
                              Scalar* scratch) const override {
    gemm_packed(gY.cols() * L_, Wt, col_major(gY.data(), out_), gX, in_, false, scratch);
  }

  double macs_per_sample() const override { return double(in_) * double(out_) * double(L_); }

  // gW(r, c) = Σ_n gY(r, n) X(c, n) and gb_r = Σ_n gY(r, n): blocks of gW need no reduction. Read
  // column-major, the row-major gW is gWᵀ = X gYᵀ (in × out, leading dimension in); its block of rows
  // [c0, c0 + k) and columns [r0, r0 + m) is X's rows c0 … c0 + k − 1 (column-major, stride in) times gY's
  // rows r0 … r0 + m − 1 read row-major (stride out). One GEMM of depth N (all samples).
  std::pair<Index, Index> grad_grid() const override { return {out_, in_}; }
  Index grad_block_scratch(Index m, Index k, Index ncols) const override {
    return gemm_pack_size<Scalar>(k, m, ncols * L_);
  }
  void grad_block(ConstMatMap<Scalar> X0, ConstMatMap<Scalar> gY0, Index r0, Index m, Index c0, Index k,
                  Scalar* out, Scalar* scratch) const override {
    ConstMatMap<Scalar> X = columns(X0), gY(gY0.data(), out_, X.cols());
    const Index n = X.cols();
    gemm(k, m, n, col_major(X.data() + c0, in_), row_major(gY.data() + r0, out_), out + r0 * in_ + c0, in_,
         false, scratch);
    if (bias_ && c0 == 0) MutB(out + out_ * in_ + r0, m) = gY.middleRows(r0, m).rowwise().sum();
  }

  // K-FAC: a sample's gradient is Σ_r gY_r x_rᵀ over its L rows.
  typename KroneckerFactors<Scalar>::KroneckerShape kronecker_shape() const override {
    return {L_, out_, in_};
  }
  void kronecker_inputs(ConstMatMap<Scalar> X, Scalar* A, Index lda) const override {
    Eigen::Map<Mat<Scalar>, 0, Eigen::OuterStride<>>(A, X.cols() * L_, in_, Eigen::OuterStride<>(lda)) =
        columns(X).transpose();
  }
  void kronecker_cotangents(ConstMatMap<Scalar> gY, Scalar* G, Index ldg) const override {
    Eigen::Map<Mat<Scalar>, 0, Eigen::OuterStride<>>(G, gY.cols() * L_, out_, Eigen::OuterStride<>(ldg)) =
        ConstMatMap<Scalar>(gY.data(), out_, gY.cols() * L_).transpose();
  }

  // Without leading dimensions the per-sample weight gradient is the outer product gY_n X_nᵀ, so
  // Σ_n (gY_n X_nᵀ)² = (gY∘gY)(X∘X)ᵀ: one GEMM instead of a loop over samples. A sequence sample's gradient
  // sums L outer products: it is formed per sample (one GEMM of depth L) and squared.
  void accumulate_squared_grads(const Scalar*, ConstMatMap<Scalar> X, ConstMatMap<Scalar> gY, Scalar* gsq,
                                Scalar* scratch) const override {
    const Index n = X.cols();
    if (L_ > 1) {
      MatMap<Scalar> g(scratch, in_, out_);
      MatMap<Scalar> gsqW(gsq, in_, out_);
      for (Index j = 0; j < n; ++j) {
        ConstMatMap<Scalar> x(X.col(j).data(), in_, L_), gy(gY.col(j).data(), out_, L_);
        gemm(in_, out_, L_, col_major(x.data(), in_), row_major(gy.data(), out_), g.data(), in_, false,
             scratch + in_ * out_);
        gsqW.array() += g.array().square();
        if (bias_) MutB(gsq + out_ * in_, out_).array() += gy.rowwise().sum().array().square();
      }
      return;
    }
    MatMap<Scalar> X2(scratch, in_, n), G2(scratch + in_ * n, out_, n);
    X2 = X.array().square();
    G2 = gY.array().square();
    gemm(in_, out_, n, col_major(X2.data(), in_), row_major(G2.data(), out_), gsq, in_, true,
         scratch + (in_ + out_) * n);
    if (bias_) MutB(gsq + out_ * in_, out_) += G2.rowwise().sum();
  }

 private:
  static std::vector<ParamTensor> tensors(Index in, Index out, bool bias) {
    std::vector<ParamTensor> t{{"weight", {out, in}}};
    if (bias) t.push_back({"bias", {out}});
    return t;
  }
  static Shape with_last(Shape s, Index out) {
    s.back() = out;
    return s;
  }
  // A chunk of n samples as the in × (n·L) matrix of its rows.
  ConstMatMap<Scalar> columns(ConstMatMap<Scalar> X) const { return ConstMatMap<Scalar>(X.data(), in_, X.cols() * L_); }

  Index in_, out_, L_;
  bool bias_;
};

}  // namespace

template <typename Scalar>
std::unique_ptr<Layer<Scalar>> make_linear(const LayerSpec& spec, const Shape& in, const std::string& where) {
  if (spec.in_features <= 0 || spec.out_features <= 0)
    fail(where, "linear needs positive in_features and out_features (got " +
                    std::to_string(spec.in_features) + ", " + std::to_string(spec.out_features) + ")");
  if (double(spec.in_features) * double(spec.out_features) > kMaxElements)
    fail(where, "linear " + std::to_string(spec.in_features) + " x " + std::to_string(spec.out_features) +
                    " is absurdly large");
  if (in.back() != spec.in_features)
    fail(where, "linear expects input shape [" + std::string(in.size() > 1 ? "..., " : "") +
                    std::to_string(spec.in_features) + "] but receives " +
                    shape_to_string(in) +
                    (in.size() == 1 ? ""
                     : shape_size(in) == spec.in_features ? " (add a flatten layer before it)"
                                                           : " (it acts on the last dimension)"));
  if (double(shape_size(in)) / double(spec.in_features) * double(spec.out_features) > kMaxElements)
    fail(where, "linear output is absurdly large");
  return std::make_unique<Linear<Scalar>>(in, spec.in_features, spec.out_features, spec.bias);
}

template std::unique_ptr<Layer<float>> make_linear<float>(const LayerSpec&, const Shape&, const std::string&);
template std::unique_ptr<Layer<double>> make_linear<double>(const LayerSpec&, const Shape&,
                                                            const std::string&);

}  // namespace detail
}  // namespace natgrad
