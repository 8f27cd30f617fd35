/// \file layer.h
/// \brief The interface every network operation implements — shapes, parameters, forward, forward-mode (R-op)
/// and reverse-mode products — and the optional capabilities an operation opts into.
///
/// All three passes work on a chunk of samples at once, **samples as columns**, so linear and convolutional
/// layers reduce to GEMMs. A layer holds no parameters: it receives a pointer to its slice of the model's one
/// flat parameter vector (PyTorch `state_dict` order, each tensor row-major).
///
/// For a layer y = f(x; θ):
///   - forward:  Y = f(X; θ), storing in `aux` whatever the other passes need beyond X and Y
///               (the argmax of a max-pool);
///   - jvp:      dY = ∂f/∂x · dX + ∂f/∂θ · dθ           (the R-operator; `dX == nullptr` means dX = 0);
///   - vjp:      gX = (∂f/∂x)ᵀ gY,  gθ += (∂f/∂θ)ᵀ gY   (`gX == nullptr` skips the input cotangent, `gtheta
///               == nullptr` the parameter one).
/// These, the shapes and the parameter tensors are the whole required interface (class Layer). Everything
/// else a caller may want from an operation is a **capability**, a separate interface the operation's class
/// also derives from when it has it:
///
///   - BlockGradient: the weight gradient in independent row × column blocks (linear), which the product's
///     parameter-gradient pass computes as one GEMM each. Without it the gradient is summed over sample
///     groups with vjp (always correct).
///   - KroneckerFactors: a sample's weight gradient as Σ_r g_r a_rᵀ (linear, conv2d and conv1d with one
///     group; a grouped convolution's is block-diagonal over its groups and it does not offer this), K-FAC's
///     A and G.
///   Without
///     it K-FAC uses the Fisher's diagonal for the layer.
///   - SquaredGradients: Σ_n (∂ℓ_n/∂θ)² in one pass (the empirical Fisher's diagonal). Without it the network
///     forms each sample's gradient with a one-column vjp and squares it (correct, slower).
///   - Buffers: fixed tensors a weights file holds (batch norm's running statistics, an attention mask).
///     Without it the layer has none.
///   - TokenInput: an input of token indices (embedding), checked by Network::check_inputs and not
///     differentiable. Without it the input is real-valued and differentiable.
///
/// The network asks for each capability once, when it is built (Layer::as, a dynamic_cast), and keeps the
/// answer; no default of an interface silently does nothing. (Network has five more, private, capabilities
/// for its own scheduling — merge nodes, saved forward values, fusable activations and selections, and
/// weights packed once per pass — in lib/model/layers.h.)
///
/// **Adding an operation.**
///   1. Its LayerType and spec fields (layer_spec.h, lib/model/layer_spec.cpp) and its JSON keys
///      (lib/io/model_spec_json.cpp).
///   2. A class in the file of its family under lib/model/ (one family per file: linear, convolution,
///      pooling, upsampling, element-wise, products, reductions, normalization, embedding, attention,
///      structural) deriving from Layer<Scalar>:
///      a constructor giving the input and output shapes, and for a layer with parameters its ParamTensor
///      list and ParamInit; type(), forward, jvp and vjp. Override aux_per_sample() if forward keeps int32
///      values for the other passes, scratch_size() if jvp or vjp need scratch (a layer that declares none
///      receives nullptr), forward_scratch_size() if forward allocates, and macs_per_sample() if it runs a
///      GEMM (the parallel schedule's cost model).
///   3. Derive from the capabilities it has (above) and implement them.
///   4. A factory make_<op> declared in lib/model/layers.h and its case in make_layer
///      (lib/model/network_build.cpp).
///   5. Its case in tests/test_layers.cpp's layer_cases(): the R-op, backprop, adjoint identity and the
///      capabilities are checked there against finite differences, for float and double.
/// Nothing outside lib/model/ needs to change: the curvature layer sees only the network's passes and the
/// capabilities.
///
/// Layers are immutable after construction (apart from Buffers::set_buffer, before use); every method is
/// const and thread-safe as long as each thread passes its own output and scratch buffers.
///
/// \code
/// const natgrad::Layer<double>& l = model.layer(0);
/// std::cout << l.name() << " " << natgrad::shape_to_string(l.output_shape()) << "\n";
/// if (const auto* k = l.as<natgrad::KroneckerFactors<double>>()) std::cout << k->kronecker_shape().rows;
/// \endcode
#pragma once

#include <natgrad/core/types.h>
#include <natgrad/model/layer_spec.h>

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace natgrad {

/// A named parameter tensor of a layer: ("weight", {out, in}), ("bias", {out}).
struct ParamTensor {
  std::string name;
  Shape shape;
};

/// How init_parameters fills a layer's parameters without a weights file, as PyTorch initializes the module.
enum class ParamInit {
  fan_in_uniform,  ///< every tensor uniform in ±1/√fan_in of the first (linear, conv2d)
  ones_zeros,      ///< weight 1, bias 0 (layer norm, batch norm)
  normal,          ///< standard normal (embedding, a parameter operand)
};

template <typename Scalar>
class Layer {
 public:
  /// A layer without parameters.
  Layer(const Shape& input_shape, const Shape& output_shape)
      : input_shape_(input_shape), output_shape_(output_shape) {}
  /// A layer with parameter tensors (in `state_dict` order: weight, then bias) that init_parameters fills by
  /// `init` when no weights file is given.
  Layer(const Shape& input_shape, const Shape& output_shape, std::vector<ParamTensor> params, ParamInit init)
      : input_shape_(input_shape), output_shape_(output_shape), params_(std::move(params)), init_(init) {
    for (const ParamTensor& t : params_) num_params_ += shape_size(t.shape);
  }
  virtual ~Layer() = default;
  Layer(const Layer&) = delete;
  Layer& operator=(const Layer&) = delete;

  virtual LayerType type() const = 0;
  const char* name() const { return to_string(type()); }
  const Shape& input_shape() const { return input_shape_; }
  const Shape& output_shape() const { return output_shape_; }
  Index input_size() const { return shape_size(input_shape_); }
  Index output_size() const { return shape_size(output_shape_); }

  /// Number of parameters (the sum of the tensors' sizes).
  Index num_params() const { return num_params_; }
  /// Parameter tensors in `state_dict` order (weight, then bias); empty for a layer without parameters.
  const std::vector<ParamTensor>& param_tensors() const { return params_; }
  ParamInit param_init() const { return init_; }

  /// int32 values per sample that forward keeps for the other passes (max-pool's argmax). Default none.
  virtual Index aux_per_sample() const { return 0; }
  /// Scalars of scratch jvp and vjp need for a chunk of `ncols` samples. Default none: the network then
  /// passes nullptr, so a layer that uses scratch it did not declare fails at once.
  virtual Index scratch_size(Index /*ncols*/) const { return 0; }
  /// Scalars forward allocates for itself on a chunk of `ncols` samples (it has no scratch argument; only the
  /// memory estimate needs this). Default none.
  virtual Index forward_scratch_size(Index /*ncols*/) const { return 0; }

  virtual void forward(const Scalar* theta, ConstMatMap<Scalar> X, MatMap<Scalar> Y, int32_t* aux) const = 0;
  virtual void jvp(const Scalar* theta, const Scalar* dtheta, ConstMatMap<Scalar> X, ConstMatMap<Scalar> Y,
                   const int32_t* aux, const Scalar* dX, MatMap<Scalar> dY, Scalar* scratch) const = 0;
  virtual void vjp(const Scalar* theta, ConstMatMap<Scalar> X, ConstMatMap<Scalar> Y, const int32_t* aux,
                   ConstMatMap<Scalar> gY, Scalar* gX, Scalar* gtheta, Scalar* scratch) const = 0;

  /// The cost model of the parallel schedule (FisherOperator) and of the profile's FLOP counts: multiply-adds
  /// per sample of the layer's GEMM (W x for linear, the im2col GEMM for conv2d). Default 0, right for a
  /// layer without one; a layer with a GEMM that keeps it is scheduled as if free (correct, unbalanced).
  virtual double macs_per_sample() const { return 0; }

  /// The layer as capability `Capability` (BlockGradient<Scalar>, KroneckerFactors<Scalar>, …), or nullptr
  /// when it does not have it.
  template <class Capability>
  const Capability* as() const {
    return dynamic_cast<const Capability*>(this);
  }
  template <class Capability>
  Capability* as() {
    return dynamic_cast<Capability*>(this);
  }

 private:
  Shape input_shape_;
  Shape output_shape_;
  std::vector<ParamTensor> params_;
  ParamInit init_ = ParamInit::fan_in_uniform;
  Index num_params_ = 0;
};

/// **Capability: a blocked parameter gradient.** A layer whose weight gradient's entry (r, c) is
/// Σ_n gY(r, n) X(c, n) (and bias entry r, if any, Σ_n gY(r, n)) — linear — splits a batch's gradient into
/// independent blocks of rows × columns, each one GEMM of depth N that needs no reduction buffer. Its
/// parameters are the rows × cols weight, row-major, then an optional bias of `rows`.
template <typename Scalar>
class BlockGradient {
 public:
  virtual ~BlockGradient() = default;
  /// The weight's {rows, cols}.
  virtual std::pair<Index, Index> grad_grid() const = 0;
  /// Scalars of scratch grad_block needs for a block of m rows and k columns over `ncols` samples.
  virtual Index grad_block_scratch(Index m, Index k, Index ncols) const = 0;
  /// Over all columns of X and gY: the weight entries of rows [r0, r0 + m) and columns [c0, c0 + k) of the
  /// layer's slice `out` of a parameter vector are set to Σ_n gY(r, n) X(c, n); the block with c0 = 0 also
  /// sets the bias entries of its rows to Σ_n gY(r, n). Nothing else of `out` is touched.
  virtual void grad_block(ConstMatMap<Scalar> X, ConstMatMap<Scalar> gY, Index r0, Index m, Index c0, Index k,
                          Scalar* out, Scalar* scratch) const = 0;
};

/// **Capability: Kronecker factors (K-FAC).** A layer whose weight (rows × cols, row-major, then an optional
/// bias of `rows`) has, for one sample, the gradient Σ_r g_r a_rᵀ over R positions r — linear (R = the rows
/// of a sequence input, else 1) and conv2d, conv1d with one group (R = the output pixels, a_r the input patch).
template <typename Scalar>
class KroneckerFactors {
 public:
  struct KroneckerShape {
    Index positions = 0, rows = 0, cols = 0;
  };
  virtual ~KroneckerFactors() = default;
  /// {R, rows, cols}.
  virtual KroneckerShape kronecker_shape() const = 0;
  /// Over the n = X.cols() samples: row r + R·j of A (column-major, leading dimension lda, `cols` columns) is
  /// a_r of sample j.
  virtual void kronecker_inputs(ConstMatMap<Scalar> X, Scalar* A, Index lda) const = 0;
  /// Row r + R·j of G (column-major, leading dimension ldg, `rows` columns) is g_r of sample j, for the
  /// output cotangents gY (output_size × n).
  virtual void kronecker_cotangents(ConstMatMap<Scalar> gY, Scalar* G, Index ldg) const = 0;
};

/// **Capability: squared per-sample gradients in one pass** (the empirical Fisher's diagonal). Without it the
/// network forms each sample's parameter gradient with a one-column vjp and squares it.
template <typename Scalar>
class SquaredGradients {
 public:
  virtual ~SquaredGradients() = default;
  /// Scalars of scratch accumulate_squared_grads needs for `ncols` samples.
  virtual Index squared_grads_scratch_size(Index ncols) const = 0;
  /// gsq += Σ_n (∂ℓ_n/∂θ)², the per-sample parameter gradients squared, where column n of gY is ∂ℓ_n/∂y_n.
  virtual void accumulate_squared_grads(const Scalar* theta, ConstMatMap<Scalar> X, ConstMatMap<Scalar> gY,
                                        Scalar* gsq, Scalar* scratch) const = 0;
};

/// **Capability: buffers**, fixed tensors the layer reads (batch norm's running statistics, an attention
/// mask) that a weights file holds beside the parameters.
template <typename Scalar>
class Buffers {
 public:
  virtual ~Buffers() = default;
  /// The buffers in `state_dict` order; they hold the layer's defaults (PyTorch's initial values) until
  /// set_buffer.
  virtual std::vector<ParamTensor> buffer_tensors() const = 0;
  /// Buffer names a `state_dict` holds for this layer that it does not use ("num_batches_tracked").
  virtual std::vector<std::string> ignored_buffers() const { return {}; }
  /// Sets buffer i (shape_size of its shape values); throws std::invalid_argument saying what is wrong if
  /// the values are invalid for it (a negative variance).
  virtual void set_buffer(std::size_t i, const Scalar* values) = 0;
  /// Buffer i's values (shape_size of its shape), as set_buffer took them or the defaults.
  virtual std::vector<Scalar> buffer(std::size_t i) const = 0;
};

/// **Capability: an input of token indices** (embedding). Such an input is not differentiable: it may not
/// depend on the parameters, and no input cotangent is formed.
template <typename Scalar>
class TokenInput {
 public:
  virtual ~TokenInput() = default;
  /// Throws std::invalid_argument naming the sample (column) if an input is invalid (a token index out of
  /// range).
  virtual void check_input(ConstMatMap<Scalar> X) const = 0;
};

/// Builds the layer for `spec` receiving samples of `input_shape`; throws std::invalid_argument (prefixed
/// with `where`) if the spec is invalid or does not accept that shape.
template <typename Scalar>
std::unique_ptr<Layer<Scalar>> make_layer(const LayerSpec& spec, const Shape& input_shape,
                                          const std::string& where);

}  // namespace natgrad
