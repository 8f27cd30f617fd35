/// \file layer.h
/// \brief The interface every network layer implements: forward, forward-mode (R-op) and reverse-mode
/// products.
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
///   == nullptr` the parameter one).
///
/// Layers are immutable after construction; every method is const and thread-safe as long as each thread
/// passes its own output and scratch buffers.
///
/// \code
/// const natgrad::Layer<double>& l = model.layer(0);
/// std::cout << l.name() << " " << natgrad::shape_to_string(l.output_shape()) << "\n";
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
  Layer(const Shape& input_shape, const Shape& output_shape)
      : input_shape_(input_shape), output_shape_(output_shape) {}
  virtual ~Layer() = default;

  virtual LayerType type() const = 0;
  const char* name() const { return to_string(type()); }
  const Shape& input_shape() const { return input_shape_; }
  const Shape& output_shape() const { return output_shape_; }
  Index input_size() const { return shape_size(input_shape_); }
  Index output_size() const { return shape_size(output_shape_); }

  /// Number of parameters (the sum of the tensors' sizes).
  virtual Index num_params() const { return 0; }
  /// Parameter tensors in `state_dict` order (weight, then bias).
  virtual std::vector<ParamTensor> param_tensors() const { return {}; }
  virtual ParamInit param_init() const { return ParamInit::fan_in_uniform; }
  /// int32 values per sample that forward keeps for the other passes.
  virtual Index aux_per_sample() const { return 0; }
  /// Scalars of scratch the jvp/vjp/squared-gradient passes need for a chunk of `ncols` samples.
  virtual Index scratch_size(Index /*ncols*/) const { return 0; }
  /// Scalars of scratch accumulate_squared_grads needs (at least scratch_size: a linear layer on sequences
  /// needs a whole per-sample gradient, which the products do not).
  virtual Index squared_grads_scratch_size(Index ncols) const { return scratch_size(ncols); }
  /// Scalars forward allocates for itself on a chunk of `ncols` samples (it has no scratch argument; only the
  /// memory estimate needs this).
  virtual Index forward_scratch_size(Index /*ncols*/) const { return 0; }

  virtual void forward(const Scalar* theta, ConstMatMap<Scalar> X, MatMap<Scalar> Y, int32_t* aux) const = 0;
  virtual void jvp(const Scalar* theta, const Scalar* dtheta, ConstMatMap<Scalar> X, ConstMatMap<Scalar> Y,
                   const int32_t* aux, const Scalar* dX, MatMap<Scalar> dY, Scalar* scratch) const = 0;
  virtual void vjp(const Scalar* theta, ConstMatMap<Scalar> X, ConstMatMap<Scalar> Y, const int32_t* aux,
                   ConstMatMap<Scalar> gY, Scalar* gX, Scalar* gtheta, Scalar* scratch) const = 0;


  /// Multiply-adds per sample of the layer's main product (W x for linear, the im2col GEMM for conv2d); 0
  /// for layers without parameters. The cost model of the parallel schedule (FisherOperator).
  virtual double macs_per_sample() const { return 0; }

  /// Blocks of the parameter gradient: when the weight gradient's entry (r, c) is Σ_n gY(r, n) X(c, n) (and a
  /// bias entry r is Σ_n gY(r, n)), a batch's gradient splits into independent blocks of rows × columns
  /// with no reduction buffer. Such a layer (linear) returns its weight's {rows, columns} and implements
  /// grad_block; {0, 0} (the default) means the gradient is a sum over samples that must be reduced.
  virtual std::pair<Index, Index> grad_grid() const { return {0, 0}; }
  /// For such layers, over all columns of X and gY: the weight entries of rows [r0, r0 + m) and columns
  /// [c0, c0 + k) of the layer's slice `out` of a parameter vector are set to scale · Σ_n gY(r, n) X(c, n) +
  /// λ x (x, the layer's slice of a vector, is read only when λ ≠ 0); the block with c0 = 0 also sets the
  /// bias entries of its rows. `scratch` holds grad_block_scratch(m, k, X.cols()) scalars.
  virtual void grad_block(ConstMatMap<Scalar> /*X*/, ConstMatMap<Scalar> /*gY*/, Index /*r0*/, Index /*m*/,
                          Index /*c0*/, Index /*k*/, Scalar /*scale*/, const Scalar* /*x*/, Scalar /*lambda*/,
                          Scalar* /*out*/, Scalar* /*scratch*/) const {}
  virtual Index grad_block_scratch(Index /*m*/, Index /*k*/, Index /*ncols*/) const { return 0; }

  /// Fixed tensors the layer reads (batch norm's running statistics), in `state_dict` order; they hold the
  /// layer's defaults (PyTorch's initial values) until set_buffer.
  virtual std::vector<ParamTensor> buffer_tensors() const { return {}; }
  /// Buffer names a `state_dict` holds for this layer that it does not use ("num_batches_tracked").
  virtual std::vector<std::string> ignored_buffers() const { return {}; }
  /// Sets buffer i (shape_size of its shape values); throws std::invalid_argument saying what is wrong if
  /// the values are invalid for it (a negative variance).
  virtual void set_buffer(std::size_t /*i*/, const Scalar* /*values*/) {}
  /// False when the input is not differentiable (token indices): the input may not depend on the parameters,
  /// and no input cotangent is formed.
  virtual bool differentiable_input() const { return true; }
  /// Throws std::invalid_argument naming the sample (column) if an input is invalid (a token index out of
  /// range).
  virtual void check_input(ConstMatMap<Scalar> /*X*/) const {}

  /// **K-FAC.** A layer whose weight (rows × cols, row-major, then an optional bias of `rows`) has, for one
  /// sample, the gradient Σ_r g_r a_rᵀ over R positions r — linear (R = the rows of a sequence input, else 1)
  /// and conv2d (R = the output pixels, a_r the input patch) — returns {R, rows, cols}; every other layer
  /// {0, 0, 0} (the default).
  struct KroneckerShape {
    Index positions = 0, rows = 0, cols = 0;
  };
  virtual KroneckerShape kronecker_shape() const { return {}; }
  /// For such a layer, over the n = X.cols() samples: row r + R·j of A (column-major, leading dimension lda,
  /// `cols` columns) is a_r of sample j.
  virtual void kronecker_inputs(ConstMatMap<Scalar> /*X*/, Scalar* /*A*/, Index /*lda*/) const {}
  /// And row r + R·j of G (column-major, leading dimension ldg, `rows` columns) is g_r of sample j, for the
  /// output cotangents gY (output_size × n).
  virtual void kronecker_cotangents(ConstMatMap<Scalar> /*gY*/, Scalar* /*G*/, Index /*ldg*/) const {}

  /// gsq += Σ_n (∂ℓ_n/∂θ)², the per-sample parameter gradients squared, where column n of gY is ∂ℓ_n/∂y_n.
  /// Layers without parameters do nothing.
  virtual void accumulate_squared_grads(const Scalar* /*theta*/, ConstMatMap<Scalar> /*X*/,
                                        ConstMatMap<Scalar> /*gY*/, Scalar* /*gsq*/,
                                        Scalar* /*scratch*/) const {}

 private:
  Shape input_shape_;
  Shape output_shape_;
};

/// Builds the layer for `spec` receiving samples of `input_shape`; throws std::invalid_argument (prefixed
/// with `where`) if the spec is invalid or does not accept that shape.
template <typename Scalar>
std::unique_ptr<Layer<Scalar>> make_layer(const LayerSpec& spec, const Shape& input_shape,
                                          const std::string& where);

}  // namespace natgrad
