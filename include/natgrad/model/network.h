/// \file network.h
/// \brief A network — a graph of layers over one flat parameter vector — with batched forward, R-op and
/// backprop.
///
/// The nodes run in topological order (forward and R-op) and in reverse (backprop, summing the cotangents
/// of a value read by several nodes). A chain (`nn.Sequential`) is the simplest graph. The parameter vector
/// is ordered as PyTorch's `model.parameters()` ("0.weight", "0.bias", "2.weight", ...), each tensor
/// row-major: a flat vector here is `torch.nn.utils.parameters_to_vector(model.parameters())` there.
/// Buffers (batch norm's running statistics) are fixed values held by the network, set once after
/// construction (load_parameters does it from a weights file).
///
/// The passes run on a chunk of columns [col0, col0 + n) of a ForwardCache, so callers can process a batch
/// in independent chunks in parallel. After its buffers are set a Network is immutable and thread-safe; each
/// thread must use its own Workspace.
///
/// \code
/// natgrad::Network<float> model(spec);                     // throws if the graph is invalid
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
#include <utility>
#include <vector>

namespace natgrad {

template <typename Scalar>
class Network;

/// Activations of every node on a batch: acts[0] is the model input, acts[l + 1] the output of node l (in
/// topological order); the last is the network's output.
template <typename Scalar>
struct ForwardCache {
  std::vector<Mat<Scalar>> acts;
  std::vector<std::vector<int32_t>> aux;  ///< per node, aux_per_sample() × N
  /// Per node, the values its R-op and backprop read beyond its input and output (attention's
  /// probabilities, heads × T × T per sample) × N; empty for most nodes.
  std::vector<Mat<Scalar>> saved;
};

/// Cotangents ∂ℓ/∂y at the output of every node with parameters, for a whole batch (g[l] is
/// output_size × N for such a node, empty otherwise): written chunk by chunk by
/// Network::backprop_cotangents, then read whole by the parameter-gradient pass, which needs every sample
/// of a layer at once.
template <typename Scalar>
struct CotangentCache {
  std::vector<Mat<Scalar>> g;
};

/// Per-thread buffers for the jvp and vjp passes on chunks of at most `max_cols` samples
/// (Network::make_workspace). What it holds follows the network's buffer plan and is private
/// (lib/model/workspace_buffers.h).
template <typename Scalar>
class Workspace {
 public:
  /// Aligned to Eigen's maximum alignment: Eigen's small products peel their reductions by pointer alignment,
  /// so equal alignment in every thread's buffers is what keeps results bit-identical whichever thread
  /// computes a chunk.
  using Buffer = std::vector<Scalar, Eigen::aligned_allocator<Scalar>>;

  Workspace();
  ~Workspace();
  Workspace(Workspace&&) noexcept;
  Workspace& operator=(Workspace&&) noexcept;

  /// The widest chunk the workspace serves.
  Index max_cols() const;
  /// Where the last jvp left its output (output_size × n), valid until the next pass with this workspace.
  const Scalar* result() const;
  /// Profiling: the passes run with this workspace add each node's seconds to (*seconds)[l] (num_layers()
  /// entries; a fused activation's to the max-pool it is fused into). nullptr (the default): off.
  void time_nodes(std::vector<double>* seconds);

 private:
  friend class Network<Scalar>;
  struct Buffers;
  std::unique_ptr<Buffers> b_;
};

/// The weight operands of the GEMMs a pass runs on every chunk, packed once per pass instead of once per
/// chunk (Network::make_packed_weights, Network::pack_weights): for a linear node the R-op's dW and W and
/// backprop's Wᵀ. A pass over K chunks otherwise packs each of them K times, which took 30% of the R-op's
/// time on 64-sample chunks of a 784-1024-1024-10 MLP. Results are bit for bit the same with and without.
/// Filled by pack_weights, then read by the passes of every thread (shared, read-only).
template <typename Scalar>
class PackedWeights {
 public:
  PackedWeights();
  ~PackedWeights();
  PackedWeights(PackedWeights&&) noexcept;
  PackedWeights& operator=(PackedWeights&&) noexcept;
  /// Pieces of packing work (Network::pack_weights): independent, any thread may pack any of them.
  Index pieces() const;

 private:
  friend class Network<Scalar>;
  struct Parts;
  std::unique_ptr<Parts> p_;
};

/// A named tensor with its place in the flat vector: "fc1.weight" at [offset, offset + size).
struct NamedParam {
  std::string name;
  Shape shape;
  Index offset = 0;
  Index size = 0;
};

/// A buffer of a node: "bn1.running_mean" of node `node`, its index among that layer's buffers.
struct NamedBuffer {
  std::string name;
  Shape shape;
  std::size_t node = 0;
  std::size_t index = 0;
};

template <typename Scalar>
class Network {
 public:
  /// Builds the graph; throws std::invalid_argument naming the node when it is invalid (a cycle, an input
  /// that names no node, a node whose output is never used, shapes that do not match). A multihead_attention
  /// node becomes three nodes: its input projection "<id>/in_proj", "<id>/attention" and its output
  /// projection "<id>".
  explicit Network(const ModelSpec& spec);
  ~Network();
  Network(Network&&) noexcept;
  Network& operator=(Network&&) noexcept;

  /// The spec as given.
  const ModelSpec& spec() const { return spec_; }
  /// Nodes in topological order (for a chain, the layers in order).
  std::size_t num_layers() const { return layers_.size(); }
  const Layer<Scalar>& layer(std::size_t l) const { return *layers_[l]; }
  /// Node l's spec, id and the values it reads (0 the model input, k + 1 the output of node k).
  const LayerSpec& layer_spec(std::size_t l) const { return graph_.layers[order_[l]]; }
  const std::string& node_id(std::size_t l) const { return ids_[l]; }
  const std::vector<int>& node_inputs(std::size_t l) const { return inputs_[l]; }
  /// Node l's (first) input activations in a cache.
  const Mat<Scalar>& input_act(const ForwardCache<Scalar>& cache, std::size_t l) const {
    return cache.acts[static_cast<std::size_t>(inputs_[l][0])];
  }
  /// The node whose parameter tensors node l uses: l itself, or for a tied node (an output layer sharing the
  /// token embedding's weight) the node that holds them. A tied node's parameters are its owner's slice of
  /// the flat vector: its R-op reads it, and its backprop adds to it.
  std::size_t tied_to(std::size_t l) const { return tied_to_[l]; }
  /// The nodes tied to node l, in topological order (empty for most).
  const std::vector<std::size_t>& aliases(std::size_t l) const { return aliases_[l]; }
  /// For each tensor of a tied node, the name it would have on its own ("head.weight") and the tensor it is
  /// ("tok.weight"): a state_dict holds both.
  const std::vector<std::pair<std::string, std::string>>& tied_names() const { return tied_names_; }
  /// Offset of node l's parameters in the flat vector.
  Index param_offset(std::size_t l) const { return offsets_[l]; }
  Index num_params() const { return num_params_; }
  const Shape& input_shape() const { return spec_.input_shape; }
  Index input_size() const { return shape_size(spec_.input_shape); }
  Index output_size() const { return layers_.empty() ? input_size() : layers_.back()->output_size(); }
  const Shape& output_shape() const { return layers_.empty() ? spec_.input_shape : layers_.back()->output_shape(); }
  /// T when the output is [T, C] (a sequence: the likelihood applies at each of T positions), else 1.
  Index output_positions() const { return output_shape().size() == 2 ? output_shape()[0] : 1; }
  /// Scalars per sample the forward pass keeps beyond the activations (ForwardCache::saved).
  Index saved_per_sample() const;
  /// The largest activation (features per sample) of any node, input included.
  Index max_width() const { return max_width_; }
  /// Tangent / cotangent buffers a Workspace holds (2 for a chain), plus one for sums at fan-out when the
  /// graph has any.
  Index workspace_buffers() const;
  /// Their widths summed (features per sample): each buffer is as wide as the widest value the plan puts in
  /// it, so a language model's logits occupy one or two buffers, not all.
  Index workspace_width() const;
  /// Node l's capabilities (layer.h), asked once when the network was built: nullptr when it lacks one.
  const BlockGradient<Scalar>* block_gradient(std::size_t l) const;
  const KroneckerFactors<Scalar>* kronecker_factors(std::size_t l) const;
  const SquaredGradients<Scalar>* squared_gradients_of(std::size_t l) const;
  /// All parameter tensors in flat-vector order with their offsets.
  const std::vector<NamedParam>& named_params() const { return named_params_; }
  /// All buffers the nodes use, and names a weights file may hold that are ignored (num_batches_tracked).
  const std::vector<NamedBuffer>& named_buffers() const { return named_buffers_; }
  const std::vector<std::string>& ignored_buffers() const { return ignored_buffers_; }
  /// Sets buffer k of named_buffers() from `values` (shape_size of its shape entries); throws
  /// std::invalid_argument if the layer rejects them (a negative running variance).
  void set_buffer(std::size_t k, const Scalar* values);
  /// Buffer k's values (a training checkpoint holds them).
  std::vector<Scalar> buffer(std::size_t k) const;

  /// Throws std::invalid_argument unless theta has num_params() entries.
  void check_params(Index size) const;
  /// Throws std::invalid_argument naming the sample if `inputs` are invalid for the nodes that read the model
  /// input (a token index out of an embedding's range).
  void check_inputs(const Mat<Scalar>& inputs) const;

  /// A cache whose acts[0] is `inputs` (input_size × N, checked by check_inputs) and whose other buffers are
  /// sized for N samples.
  ForwardCache<Scalar> make_cache(const Mat<Scalar>& inputs) const;
  Workspace<Scalar> make_workspace(Index max_cols) const;
  /// Scalars of layer scratch a Workspace for chunks of at most `max_cols` samples holds.
  Index scratch_size(Index max_cols) const;
  /// Scalars of layer scratch the squared per-sample gradients need on chunks of `max_cols` samples.
  Index squared_scratch_size(Index max_cols) const;
  /// Scalars the forward pass allocates per call on a chunk of `max_cols` samples (the largest layer's own).
  Index forward_scratch_size(Index max_cols) const;

  /// Runs the nodes on columns [col0, col0 + n) of cache.acts[0], filling the other activations; with
  /// `seconds` (profiling), adds each node's seconds to (*seconds)[l].
  void forward(const Scalar* theta, ForwardCache<Scalar>& cache, Index col0, Index n,
               std::vector<double>* seconds = nullptr) const;

  /// Output tangent J v on columns [col0, col0 + n) for parameter tangent v; the result (output_size × n)
  /// is at ws.result(), valid until the next call with that workspace. `packed`: nullptr, or weights packed
  /// by pack_weights from this theta and v, which the nodes it holds use instead of packing their own.
  void jvp(const Scalar* theta, const Scalar* v, const ForwardCache<Scalar>& cache, Index col0, Index n,
           Workspace<Scalar>& ws, const PackedWeights<Scalar>* packed = nullptr) const;

  /// gtheta += Jᵀ gZ summed over columns [col0, col0 + n), where gZ is output_size × n.
  void vjp(const Scalar* theta, const ForwardCache<Scalar>& cache, Index col0, Index n,
           ConstMatMap<Scalar> gZ, Scalar* gtheta, Workspace<Scalar>& ws) const;

  /// Cotangent buffers for N samples.
  CotangentCache<Scalar> make_cotangents(Index N) const;

  /// Backpropagates gZ (output_size × n) over columns [col0, col0 + n) to the nodes with parameters, storing
  /// the cotangent at the output of every node with parameters in columns [col0, col0 + n) of cot.g; no
  /// parameter gradient is formed (the parameter-gradient pass does that from cot). `packed`: nullptr, or
  /// weights packed by pack_weights from this theta.
  void backprop_cotangents(const Scalar* theta, const ForwardCache<Scalar>& cache, Index col0, Index n,
                           ConstMatMap<Scalar> gZ, CotangentCache<Scalar>& cot, Workspace<Scalar>& ws,
                           const PackedWeights<Scalar>* packed = nullptr) const;

  /// Whether node l's chunk GEMMs can run on weights packed once per pass (PackedWeights: linear nodes),
  /// and the GEMM columns such a node has per sample (a sequence's rows).
  bool packs_weights(std::size_t l) const;
  Index packed_columns_per_sample(std::size_t l) const;
  /// Scalars of the packed weights of the nodes with nodes[l] (nodes without packs_weights are skipped):
  /// dW for each, and W and Wᵀ for each whose input has a tangent.
  Index packed_weights_size(const std::vector<bool>& nodes) const;
  /// The packed weights of those nodes (allocated here, filled by pack_weights).
  PackedWeights<Scalar> make_packed_weights(const std::vector<bool>& nodes) const;
  /// Packs piece `piece` of packed.pieces(): a part of W or Wᵀ from theta (a no-op when theta is nullptr:
  /// they are packed from the same theta already), or of dW from the tangent v (a no-op when v is nullptr: a
  /// pass without the R-op). Every piece must be packed, and the packed weights
  /// then serve the passes on theta (and v) until the next pack_weights. With `seconds` (profiling), adds
  /// the seconds to (*seconds)[node].
  void pack_weights(const Scalar* theta, const Scalar* v, Index piece, PackedWeights<Scalar>& packed,
                    std::vector<double>* seconds = nullptr) const;

  /// **The parameter gradient from stored cotangents**, Σ_n J_nᵀ gZ_n once backprop_cotangents has stored
  /// every chunk's cotangents in `cot`: the pieces a parallel schedule (FisherOperator) runs. Each piece
  /// writes or adds into its own part of the result in a fixed order, so the result does not depend on which
  /// thread runs which piece (lib/model/parameter_gradient.cpp).
  ///
  /// Rows [r0, r0 + m) × columns [c0, c0 + k) of the weight of node l, which has a blocked gradient
  /// (block_gradient(l)), over every sample of the cache: set in g (a whole parameter vector), with the bias
  /// entries of those rows when c0 = 0; nothing else of g is touched. `scratch` holds
  /// block_gradient(l)->grad_block_scratch(m, k, N) scalars.
  void gradient_block(std::size_t l, const ForwardCache<Scalar>& cache, const CotangentCache<Scalar>& cot,
                      Index r0, Index m, Index c0, Index k, Scalar* g, Scalar* scratch) const;
  /// partial += node l's own parameter gradient (num_params() of the node) over samples [col0, col1), one vjp
  /// per chunk of at most `chunk` ≤ ws.max_cols samples, in order.
  void gradient_of_samples(std::size_t l, const Scalar* theta, const ForwardCache<Scalar>& cache,
                           const CotangentCache<Scalar>& cot, Index col0, Index col1, Index chunk,
                           Scalar* partial, Workspace<Scalar>& ws) const;
  /// gsq += Σ_n g_n² over samples [col0, col1), g_n sample n's gradient of node l's tensors (a tied tensor's
  /// uses, l and aliases(l), summed before squaring): the empirical Fisher's diagonal, unscaled. Through the
  /// SquaredGradients capability, chunk by chunk (at most `chunk` samples), when the node has it and is not
  /// tied; otherwise sample by sample with one-column vjps. `scratch` holds squared_scratch_size(chunk)
  /// scalars.
  void squared_gradients(std::size_t l, const Scalar* theta, const ForwardCache<Scalar>& cache,
                         const CotangentCache<Scalar>& cot, Index col0, Index col1, Index chunk, Scalar* gsq,
                         Workspace<Scalar>& ws, Scalar* scratch) const;

  /// Convenience: the network outputs (output_size × N) for a whole batch, single-threaded.
  Mat<Scalar> predict(const Scalar* theta, const Mat<Scalar>& inputs) const;

 private:
  template <typename AtLayer>
  void backprop(const ForwardCache<Scalar>& cache, Index col0, Index n, ConstMatMap<Scalar> gZ,
                Workspace<Scalar>& ws, AtLayer at_layer) const;
  // The scratch node l's passes get: none (nullptr) unless it declared some.
  Scalar* scratch_for(std::size_t l, Workspace<Scalar>& ws) const;

  ModelSpec spec_;
  ModelSpec graph_;                                     // spec_ with attention expanded (detail::expand_attention)
  std::vector<std::unique_ptr<Layer<Scalar>>> layers_;  // topological order
  std::vector<std::size_t> order_;                      // node l is graph_.layers[order_[l]]
  std::vector<std::string> ids_;
  std::vector<std::vector<int>> inputs_;                // values read by node l
  std::vector<Index> offsets_;
  std::vector<std::size_t> tied_to_;
  std::vector<std::vector<std::size_t>> aliases_;
  std::vector<std::pair<std::string, std::string>> tied_names_;
  std::vector<NamedParam> named_params_;
  std::vector<NamedBuffer> named_buffers_;
  std::vector<std::string> ignored_buffers_;
  Index num_params_ = 0;
  Index max_width_ = 0;
  // How the passes run, fixed at construction: each node's capabilities and the buffer plan
  // (lib/model/network_schedule.h).
  struct Schedule;
  std::unique_ptr<Schedule> sched_;
};

}  // namespace natgrad
