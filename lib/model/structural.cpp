// Layers that move values without arithmetic on them, and the merge nodes of a graph: flatten and reshape
// (free: a sample's values keep their row-major order), permute of a sample's dimensions, identity (and
// dropout in evaluation mode), add (residual connections, with an optional parameter operand broadcast
// over the leading dimensions) and cat along the channel / feature dimension.
#include <algorithm>

#include "core/fail.h"
#include "model/gather.h"
#include "model/layers.h"

namespace natgrad {
namespace detail {
namespace {

// A layer whose every pass is a copy: flatten and reshape (a sample's row-major layout is the same under any
// shape of its size), identity and dropout in evaluation mode. A Network runs only its forward pass; its
// R-op and backprop are views (ValueView); these passes serve the layer on its own.
template <typename Scalar>
class Copy final : public Layer<Scalar>, public ValueView {
 public:
  Copy(LayerType type, const Shape& in, const Shape& out) : Layer<Scalar>(in, out), type_(type) {}
  LayerType type() const override { return type_; }

  void forward(const Scalar*, ConstMatMap<Scalar> X, MatMap<Scalar> Y, int32_t*) const override { Y = X; }
  void jvp(const Scalar*, const Scalar*, ConstMatMap<Scalar> X, ConstMatMap<Scalar>, const int32_t*,
           const Scalar* dX, MatMap<Scalar> dY, Scalar*) const override {
    if (dX)
      dY = ConstMatMap<Scalar>(dX, X.rows(), X.cols());
    else
      dY.setZero();
  }
  void vjp(const Scalar*, ConstMatMap<Scalar> X, ConstMatMap<Scalar>, const int32_t*, ConstMatMap<Scalar> gY,
           Scalar* gX, Scalar*, Scalar*) const override {
    if (gX) MatMap<Scalar>(gX, X.rows(), X.cols()) = gY;
  }

 private:
  LayerType type_;
};

// y = x_0 + … + x_{k-1} (+ p, a parameter whose shape is a suffix of the operands': each sample's output is
// `repeats` copies of p's size, and p is added to each).
template <typename Scalar>
class Add final : public MergeLayer<Scalar>, public SquaredGradients<Scalar> {
 public:
  Add(const Shape& shape, std::size_t operands, const Shape& param)
      : MergeLayer<Scalar>(shape, shape,
                           param.empty() ? std::vector<ParamTensor>{} : std::vector<ParamTensor>{{"", param}},
                           ParamInit::normal),
        operands_(operands),
        psize_(param.empty() ? 0 : shape_size(param)) {}
  LayerType type() const override { return LayerType::add; }

  void forward_multi(const Scalar* const* X, const Scalar* theta, Index n, Scalar* Y) const override {
    const Index rows = this->output_size();
    MatMap<Scalar> y(Y, rows, n);
    y = ConstMatMap<Scalar>(X[0], rows, n);
    for (std::size_t i = 1; i < operands_; ++i) y += ConstMatMap<Scalar>(X[i], rows, n);
    if (psize_) add_parameter(theta, y);
  }
  void jvp_multi(const Scalar* const*, const Scalar* const* dX, const Scalar* dtheta, Index n,
                 Scalar* dY) const override {
    const Index rows = this->output_size();
    MatMap<Scalar> y(dY, rows, n);
    bool any = false;
    for (std::size_t i = 0; i < operands_; ++i) {
      if (!dX[i]) continue;
      if (any)
        y += ConstMatMap<Scalar>(dX[i], rows, n);
      else
        y = ConstMatMap<Scalar>(dX[i], rows, n);
      any = true;
    }
    if (!any) y.setZero();
    if (psize_ && dtheta) add_parameter(dtheta, y);
  }
  void vjp_operand(std::size_t, const Scalar* const*, const Scalar* gY, Index n, Scalar* gX,
                   bool accumulate) const override {
    const Index rows = this->output_size();
    if (accumulate)
      MatMap<Scalar>(gX, rows, n) += ConstMatMap<Scalar>(gY, rows, n);
    else
      MatMap<Scalar>(gX, rows, n) = ConstMatMap<Scalar>(gY, rows, n);
  }

  // The single-operand vjp (Network calls forward_multi / jvp_multi / vjp_operand for the operands): only
  // the parameter gradient, gp += Σ_n Σ_r gY[r·|p| + j, n].
  void vjp(const Scalar*, ConstMatMap<Scalar>, ConstMatMap<Scalar>, const int32_t*, ConstMatMap<Scalar> gY, Scalar*,
           Scalar* gtheta, Scalar*) const override {
    if (!gtheta || !psize_) return;
    VecMap<Scalar> g(gtheta, psize_);
    const Index repeats = this->output_size() / psize_;
    for (Index n = 0; n < gY.cols(); ++n)
      for (Index r = 0; r < repeats; ++r) g += ConstVecMap<Scalar>(gY.col(n).data() + r * psize_, psize_);
  }
  Index squared_grads_scratch_size(Index) const override { return psize_; }
  void accumulate_squared_grads(const Scalar*, ConstMatMap<Scalar>, ConstMatMap<Scalar> gY, Scalar* gsq,
                                Scalar* scratch) const override {
    if (!psize_) return;
    VecMap<Scalar> s(scratch, psize_), q(gsq, psize_);
    const Index repeats = this->output_size() / psize_;
    for (Index n = 0; n < gY.cols(); ++n) {
      s.setZero();
      for (Index r = 0; r < repeats; ++r) s += ConstVecMap<Scalar>(gY.col(n).data() + r * psize_, psize_);
      q.array() += s.array().square();
    }
  }

 private:
  void add_parameter(const Scalar* p, MatMap<Scalar>& y) const {
    const Index repeats = this->output_size() / psize_;
    ConstVecMap<Scalar> pv(p, psize_);
    for (Index n = 0; n < y.cols(); ++n)
      for (Index r = 0; r < repeats; ++r) VecMap<Scalar>(y.col(n).data() + r * psize_, psize_) += pv;
  }

  std::size_t operands_;
  Index psize_;
};

// Concatenation along dimension 1 (the first of a sample): each sample's output is its operands' samples
// one after the other.
template <typename Scalar>
class Cat final : public MergeLayer<Scalar> {
 public:
  Cat(const std::vector<Shape>& in, const Shape& out) : MergeLayer<Scalar>(in[0], out) {
    Index off = 0;
    for (const Shape& s : in) {
      sizes_.push_back(shape_size(s));
      offsets_.push_back(off);
      off += shape_size(s);
    }
  }
  LayerType type() const override { return LayerType::cat; }

  void forward_multi(const Scalar* const* X, const Scalar*, Index n, Scalar* Y) const override {
    MatMap<Scalar> y(Y, this->output_size(), n);
    for (std::size_t i = 0; i < sizes_.size(); ++i)
      y.middleRows(offsets_[i], sizes_[i]) = ConstMatMap<Scalar>(X[i], sizes_[i], n);
  }
  void jvp_multi(const Scalar* const*, const Scalar* const* dX, const Scalar*, Index n, Scalar* dY) const override {
    MatMap<Scalar> y(dY, this->output_size(), n);
    for (std::size_t i = 0; i < sizes_.size(); ++i)
      if (dX[i])
        y.middleRows(offsets_[i], sizes_[i]) = ConstMatMap<Scalar>(dX[i], sizes_[i], n);
      else
        y.middleRows(offsets_[i], sizes_[i]).setZero();
  }
  void vjp_operand(std::size_t i, const Scalar* const*, const Scalar* gY, Index n, Scalar* gX,
                   bool accumulate) const override {
    ConstMatMap<Scalar> g(gY, this->output_size(), n);
    if (accumulate)
      MatMap<Scalar>(gX, sizes_[i], n) += g.middleRows(offsets_[i], sizes_[i]);
    else
      MatMap<Scalar>(gX, sizes_[i], n) = g.middleRows(offsets_[i], sizes_[i]);
  }

 private:
  std::vector<Index> sizes_, offsets_;
};

}  // namespace

template <typename Scalar>
std::unique_ptr<Layer<Scalar>> make_flatten(const LayerSpec&, const Shape& in, const std::string&) {
  return std::make_unique<Copy<Scalar>>(LayerType::flatten, in, Shape{shape_size(in)});
}

template <typename Scalar>
std::unique_ptr<Layer<Scalar>> make_reshape(const LayerSpec& spec, const Shape& in, const std::string& where) {
  if (spec.shape.empty()) fail(where, "reshape needs the sample's new shape (\"shape\")");
  double elements = 1;
  for (Index d : spec.shape) {
    if (d <= 0) fail(where, "reshape: the shape " + shape_to_string(spec.shape) + " has a dimension below 1");
    elements *= double(d);
  }
  if (elements != double(shape_size(in)))
    fail(where, "reshape: the shape " + shape_to_string(spec.shape) + " does not hold the " +
                    std::to_string(shape_size(in)) + " values of a sample of shape " + shape_to_string(in));
  return std::make_unique<Copy<Scalar>>(LayerType::reshape, in, spec.shape);
}

template <typename Scalar>
std::unique_ptr<Layer<Scalar>> make_permute(const LayerSpec& spec, const Shape& in, const std::string& where) {
  const std::size_t r = in.size() + 1;  // with the batch
  std::vector<Index> seen(r, 0);
  bool valid = spec.dims.size() == r;
  for (std::size_t k = 0; valid && k < r; ++k) valid = spec.dims[k] >= 0 && Index(spec.dims[k]) < Index(r) && !seen[spec.dims[k]]++;
  if (!valid || spec.dims[0] != 0)
    fail(where, "permute: \"dims\" must order all " + std::to_string(r) + " dimensions of [N, " +
                    shape_to_string(in).substr(1) + ", counting the batch as 0 and keeping it first");
  if (double(shape_size(in)) >= 2147483647.0) fail(where, "permute: a sample of more than 2^31 values");
  Shape out(in.size());
  for (std::size_t k = 0; k < in.size(); ++k) out[k] = in[static_cast<std::size_t>(spec.dims[k + 1] - 1)];
  const std::vector<Index> stride = strides_of(in);
  std::vector<int32_t> source(static_cast<std::size_t>(shape_size(in)));
  for_each_index(out, [&](Index o, const std::vector<Index>& idx) {
    Index i = 0;
    for (std::size_t k = 0; k < idx.size(); ++k) i += idx[k] * stride[static_cast<std::size_t>(spec.dims[k + 1] - 1)];
    source[static_cast<std::size_t>(o)] = static_cast<int32_t>(i);
  });
  return std::make_unique<Gather<Scalar>>(LayerType::permute, in, out, std::move(source), true);
}

template <typename Scalar>
std::unique_ptr<Layer<Scalar>> make_identity(const LayerSpec& spec, const Shape& in, const std::string& where) {
  if (spec.type == LayerType::dropout && spec.training)
    fail(where, "dropout in training mode zeroes random entries, so the model is not a function of its input: "
                "export the model after model.eval()");
  return std::make_unique<Copy<Scalar>>(spec.type, in, in);
}

template <typename Scalar>
std::unique_ptr<Layer<Scalar>> make_merge(const LayerSpec& spec, const std::vector<Shape>& in,
                                          const std::string& where) {
  if (spec.type == LayerType::mul) return make_mul<Scalar>(in, where);
  if (spec.type == LayerType::add) {
    for (std::size_t i = 1; i < in.size(); ++i)
      if (in[i] != in[0])
        fail(where, "add: operand " + std::to_string(i) + " has shape " + shape_to_string(in[i]) +
                        " but operand 0 has " + shape_to_string(in[0]));
    Shape p = spec.parameter_shape;
    if (!spec.parameter.empty()) {
      // PyTorch broadcasting against [N, ...]: leading ones of the parameter (the batch's, say) drop out, and
      // what is left must be a trailing part of the operands' shape.
      while (p.size() > in[0].size() && p.front() == 1) p.erase(p.begin());
      if (p.empty()) p = {1};
      bool suffix = p.size() <= in[0].size();
      for (std::size_t k = 0; suffix && k < p.size(); ++k) suffix = p[p.size() - 1 - k] == in[0][in[0].size() - 1 - k];
      if (!suffix)
        fail(where, "add: the parameter \"" + spec.parameter + "\" of shape " + shape_to_string(spec.parameter_shape) +
                        " does not broadcast to the operands' shape " + shape_to_string(in[0]) +
                        " (it must match their trailing dimensions)");
    }
    // The weights file and the flat vector hold the tensor under its own (unbroadcast) shape.
    return std::make_unique<Add<Scalar>>(in[0], in.size(), spec.parameter.empty() ? Shape{} : spec.parameter_shape);
  }
  if (spec.dim != 1)
    fail(where, "cat is supported along dimension 1 (channels or features), not " + std::to_string(spec.dim));
  Shape out = in[0];
  for (std::size_t i = 1; i < in.size(); ++i) {
    bool same = in[i].size() == in[0].size();
    for (std::size_t k = 1; same && k < in[0].size(); ++k) same = in[i][k] == in[0][k];
    if (!same)
      fail(where, "cat: operand " + std::to_string(i) + " has shape " + shape_to_string(in[i]) +
                      ", which differs from operand 0's " + shape_to_string(in[0]) + " outside dimension 1");
    out[0] += in[i][0];
  }
  return std::make_unique<Cat<Scalar>>(in, out);
}

#define NATGRAD_INSTANTIATE(S)                                                                                  \
  template std::unique_ptr<Layer<S>> make_flatten<S>(const LayerSpec&, const Shape&, const std::string&);       \
  template std::unique_ptr<Layer<S>> make_identity<S>(const LayerSpec&, const Shape&, const std::string&);      \
  template std::unique_ptr<Layer<S>> make_reshape<S>(const LayerSpec&, const Shape&, const std::string&);       \
  template std::unique_ptr<Layer<S>> make_permute<S>(const LayerSpec&, const Shape&, const std::string&);       \
  template std::unique_ptr<Layer<S>> make_merge<S>(const LayerSpec&, const std::vector<Shape>&, const std::string&);
NATGRAD_INSTANTIATE(float)
NATGRAD_INSTANTIATE(double)
#undef NATGRAD_INSTANTIATE

}  // namespace detail
}  // namespace natgrad
