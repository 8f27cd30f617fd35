/// \file sequential.h
/// \brief A sequential network over one flat parameter vector, with batched forward, R-op and backprop.
///
/// The parameter vector is ordered as PyTorch's `state_dict()` of the equivalent `nn.Sequential`
/// ("0.weight", "0.bias", "2.weight", ...), each tensor row-major: a flat vector here is
/// `torch.nn.utils.parameters_to_vector(model.parameters())` there.
///
/// The passes run on a chunk of columns [col0, col0 + n) of a ForwardCache, so callers can process a batch
/// in independent chunks in parallel. A Sequential is immutable and thread-safe; each thread must use its
/// own Workspace.
///
/// \code
/// natgrad::Sequential<float> model(spec);                  // throws if layers don't chain
/// natgrad::Vec<float> theta = natgrad::init_parameters<float>(model, /*seed=*/0);
/// auto cache = model.make_cache(data.inputs);
/// model.forward(theta.data(), cache, 0, data.size());
/// const natgrad::Mat<float>& logits = cache.acts.back();
/// \endcode
#pragma once

#include <natgrad/core/types.h>
#include <natgrad/model/layer.h>
#include <natgrad/model/layer_spec.h>

#include <memory>
#include <string>
#include <vector>

namespace natgrad {

/// Activations of every layer on a batch: acts[0] is the input, acts[i + 1] the output of layer i.
template <typename Scalar>
struct ForwardCache {
  std::vector<Mat<Scalar>> acts;
  std::vector<std::vector<int32_t>> aux;  ///< per layer, aux_per_sample() × N
};

/// Cotangents ∂ℓ/∂y at the output of every layer with parameters, for a whole batch (g[l] is
/// output_size × N for such a layer, empty otherwise): written chunk by chunk by
/// Sequential::backprop_cotangents, then read whole by the parameter-gradient pass, which needs every sample
/// of a layer at once.
template <typename Scalar>
struct CotangentCache {
  std::vector<Mat<Scalar>> g;
};

/// Per-thread buffers for the jvp and vjp passes on chunks of at most `max_cols` samples.
///
/// The buffers are aligned to Eigen's maximum alignment: Eigen's small products peel their reductions by
/// pointer alignment, so equal alignment in every thread's workspace is what keeps results bit-identical
/// whichever thread computes a chunk.
template <typename Scalar>
struct Workspace {
  using Buffer = std::vector<Scalar, Eigen::aligned_allocator<Scalar>>;
  Index max_cols = 0;
  Buffer a, b;                     ///< ping-pong tangents / cotangents, max width × max_cols
  Buffer scratch;                  ///< layer scratch (im2col buffers)
  const Scalar* result = nullptr;  ///< where the last jvp left its output (output_size × n)
};

/// A named parameter tensor with its place in the flat vector: "{i}.weight" at [offset, offset + size).
struct NamedParam {
  std::string name;
  Shape shape;
  Index offset = 0;
  Index size = 0;
};

template <typename Scalar>
class Sequential {
 public:
  /// Builds the layers; throws std::invalid_argument naming the layer index and the shapes when a layer
  /// does not accept its input.
  explicit Sequential(const ModelSpec& spec);

  const ModelSpec& spec() const { return spec_; }
  std::size_t num_layers() const { return layers_.size(); }
  const Layer<Scalar>& layer(std::size_t i) const { return *layers_[i]; }
  /// Offset of layer i's parameters in the flat vector.
  Index param_offset(std::size_t i) const { return offsets_[i]; }
  Index num_params() const { return num_params_; }
  const Shape& input_shape() const { return spec_.input_shape; }
  Index input_size() const { return shape_size(spec_.input_shape); }
  Index output_size() const { return layers_.empty() ? input_size() : layers_.back()->output_size(); }
  /// The largest activation (features per sample) of any layer, input included.
  Index max_width() const { return max_width_; }
  /// All parameter tensors in state_dict order with their offsets.
  const std::vector<NamedParam>& named_params() const { return named_params_; }

  /// Throws std::invalid_argument unless theta has num_params() entries.
  void check_params(Index size) const;

  /// A cache whose acts[0] is `inputs` (input_size × N) and whose other buffers are sized for N samples.
  ForwardCache<Scalar> make_cache(const Mat<Scalar>& inputs) const;
  Workspace<Scalar> make_workspace(Index max_cols) const;
  /// Scalars of layer scratch a Workspace for chunks of at most `max_cols` samples holds.
  Index scratch_size(Index max_cols) const;

  /// Runs the layers on columns [col0, col0 + n) of cache.acts[0], filling the other activations.
  void forward(const Scalar* theta, ForwardCache<Scalar>& cache, Index col0, Index n) const;

  /// Output tangent J v on columns [col0, col0 + n) for parameter tangent v; the result (output_size × n)
  /// is at ws.result, valid until the next call with that workspace.
  void jvp(const Scalar* theta, const Scalar* v, const ForwardCache<Scalar>& cache, Index col0, Index n,
           Workspace<Scalar>& ws) const;

  /// gtheta += Jᵀ gZ summed over columns [col0, col0 + n), where gZ is output_size × n.
  void vjp(const Scalar* theta, const ForwardCache<Scalar>& cache, Index col0, Index n,
           ConstMatMap<Scalar> gZ, Scalar* gtheta, Workspace<Scalar>& ws) const;

  /// Cotangent buffers for N samples.
  CotangentCache<Scalar> make_cotangents(Index N) const;

  /// Backpropagates gZ (output_size × n) over columns [col0, col0 + n) to the first layer with parameters,
  /// storing the cotangent at the output of every layer with parameters in columns [col0, col0 + n) of
  /// cot.g; no parameter gradient is formed (the parameter-gradient pass does that from cot).
  void backprop_cotangents(const Scalar* theta, const ForwardCache<Scalar>& cache, Index col0, Index n,
                           ConstMatMap<Scalar> gZ, CotangentCache<Scalar>& cot, Workspace<Scalar>& ws) const;

  /// gsq += Σ_n (J_nᵀ gZ_n)², the squared per-sample parameter gradients (for the empirical Fisher diagonal).
  void squared_vjp(const Scalar* theta, const ForwardCache<Scalar>& cache, Index col0, Index n,
                   ConstMatMap<Scalar> gZ, Scalar* gsq, Workspace<Scalar>& ws) const;

  /// Convenience: the network outputs (output_size × N) for a whole batch, single-threaded.
  Mat<Scalar> predict(const Scalar* theta, const Mat<Scalar>& inputs) const;

 private:
  ModelSpec spec_;
  std::vector<std::unique_ptr<Layer<Scalar>>> layers_;
  std::vector<Index> offsets_;
  std::vector<NamedParam> named_params_;
  Index num_params_ = 0;
  Index max_width_ = 0;
  std::size_t first_param_layer_ = 0;
  // fused_[l]: layer l is element-wise and layer l + 1 a max-pool; jvp and vjp run the pair as one pass that
  // touches only the selected inputs (see jvp_fused / vjp_fused in sequential.cpp).
  std::vector<bool> fused_;
};

}  // namespace natgrad
