#include <natgrad/core/threads.h>
#include <natgrad/curvature/kfac.h>

#include <Eigen/Cholesky>
#include <Eigen/Eigenvalues>
#include <algorithm>
#include <cmath>
#include <limits>
#include <new>
#include <numeric>
#include <stdexcept>
#include <string>

#include "core/fail.h"
#include "core/format_number.h"
#include "core/gemm.h"
#include "curvature/fisher_plan.h"

#ifdef NATGRAD_HAVE_OPENMP
#include <omp.h>
#endif

namespace natgrad {

namespace {

// Columns per task of apply()'s products (a fixed width, so that the results do not depend on the threads).
constexpr Index kApplyChunk = 128;

// out += scale · MᵀM on the lower triangle (with the diagonal), the output's columns split into fixed 64-wide
// blocks shared by the threads: each block is one product in the working precision, added in double, so the
// result does not depend on the thread count. The upper triangle is mirrored once the accumulation is done
// (symmetrize_lower).
template <typename Scalar>
void add_gram(const Mat<Scalar>& M, double scale, Mat<double>& out, int threads) {
  const Index d = M.cols(), block = 64, blocks = (d + block - 1) / block;
  (void)threads;
#ifdef NATGRAD_HAVE_OPENMP
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
#endif
  for (Index b = 0; b < blocks; ++b) {
    const Index j0 = b * block, w = std::min(block, d - j0);
    const Mat<Scalar> P = M.middleCols(j0, d - j0).transpose() * M.middleCols(j0, w);
    out.block(j0, j0, d - j0, w) += scale * P.template cast<double>();
  }
}

// The upper triangle of a matrix whose lower triangle add_gram accumulated.
void symmetrize_lower(Mat<double>& S) {
  for (Index j = 1; j < S.cols(); ++j)
    for (Index i = 0; i < j; ++i) S(i, j) = S(j, i);
}

// Samples per block of a factor's accumulation: about 2^20 rows × columns of the unfolded matrix.
Index samples_per_block(Index positions, Index width, Index num_samples) {
  const double rows = std::max(1.0, double(1 << 20) / double(std::max<Index>(width, 1)) / double(positions));
  return std::max<Index>(1, std::min<Index>(num_samples, static_cast<Index>(rows)));
}

// The Kronecker blocks (their factors not yet allocated) and the nodes outside them: every node with a
// Kronecker-shaped weight that is its own gets a block, any other node with parameters of its own (a tied
// weight among them) the diagonal. One rule for the constructor and for required_bytes.
template <typename Scalar>
struct Layout {
  std::vector<typename KfacApproximation<Scalar>::Block> blocks;
  std::vector<bool> diagonal_nodes;
  bool any_diagonal = false;
};

template <typename Scalar>
Layout<Scalar> layout(const Network<Scalar>& model) {
  Layout<Scalar> out;
  out.diagonal_nodes.assign(model.num_layers(), false);
  for (std::size_t l = 0; l < model.num_layers(); ++l) {
    const Layer<Scalar>& layer = model.layer(l);
    if (layer.num_params() == 0 || model.tied_to(l) != l) continue;
    const KroneckerFactors<Scalar>* kronecker = model.kronecker_factors(l);
    if (kronecker && model.aliases(l).empty()) {
      const auto shape = kronecker->kronecker_shape();
      typename KfacApproximation<Scalar>::Block b;
      b.node = l;
      b.offset = model.param_offset(l);
      b.rows = shape.rows;
      b.cols = shape.cols;
      b.positions = shape.positions;
      b.bias = layer.num_params() > shape.rows * shape.cols;
      out.blocks.push_back(std::move(b));
    } else {
      out.diagonal_nodes[l] = true;
      out.any_diagonal = true;
    }
  }
  return out;
}

// Whether the exact kind backpropagates H_n's closed-form factor (else sampled labels' scores).
bool closed_form(const FisherOptions& fisher, Index classes, const KfacOptions& options) {
  return fisher.kind == FisherKind::exact && classes <= options.max_closed_form_outputs;
}

}  // namespace

template <typename Scalar>
Index KfacApproximation<Scalar>::backprops_for(const Network<Scalar>& model, const FisherOptions& fisher,
                                               const KfacOptions& options) {
  if (fisher.kind == FisherKind::empirical) return 1;
  const Index C = model.output_size() / model.output_positions();
  return closed_form(fisher, C, options) ? C : std::max(fisher.mc_samples, 1);
}

template <typename Scalar>
std::size_t KfacApproximation<Scalar>::required_bytes(const Network<Scalar>& model, Index num_samples,
                                                      const FisherOptions& fisher, const KfacOptions& options,
                                                      bool multiplies) {
  const double s = double(sizeof(Scalar)), d8 = double(sizeof(double)), P = double(model.num_params());
  const int threads = resolve_threads(fisher.num_threads);
  const Layout<Scalar> L = layout(model);
  // Eigen's packing space for one d × w × k product in double (the Gram products, the inverses, multiply())
  // or in Scalar (apply()).
  auto packing = [&](double d, double w, double k) {
    return double(detail::gemm_pack_size<double>(Index(d), Index(w), Index(k))) * d8;
  };
  auto packing_scalar = [&](Index d, Index w, Index k) {
    return double(detail::gemm_pack_size<Scalar>(d, w, k)) * s;
  };
  // A block of unfolded inputs (width d = cols + bias, for A) or cotangents (d = rows, for G) in Scalar, its
  // copy, and the packing space of each thread taking one of its 64-column Gram products.
  auto accumulating = [&](Index R, Index d) {
    const Index rows = R * samples_per_block(R, d, num_samples), w = std::min<Index>(d, 64);
    const double products = double(std::min<Index>(threads, (d + 63) / 64));
    // Per thread a column block's product, in Scalar and then in double.
    return double(rows) * double(d) * 2 * s +
           products * (packing_scalar(d, w, rows) + double(d) * double(w) * (s + d8));
  };
  // What stays: the covered flags (std::vector<bool>, 64 per word); per block A and G, their eigenvectors and
  // eigenvalues (double); the diagonal (Scalar).
  const double covered = std::ceil(P / 64) * 8;
  double factors = 0, eigen = 0, unfold_a = 0, unfold_g = 0;
  std::vector<double> dims;  // the factors' sizes, in the order set_damping inverts them
  // apply: every block's slice V, G⁻¹V and the result (Scalar) at once, and each thread's packing space for
  // a chunk's product. multiply, a block on one thread: its V and result (Scalar), V, GV and (GV)A in double
  // (the last allocated before GV is formed) with the packing space.
  std::vector<double> products;
  double apply_packing = 0;
  for (const Block& b : L.blocks) {
    const Index a = b.cols + (b.bias ? 1 : 0), g = b.rows;
    dims.push_back(double(a));
    dims.push_back(double(g));
    unfold_a = std::max(unfold_a, accumulating(b.positions, a));
    unfold_g = std::max(unfold_g, accumulating(b.positions, g));
    const double V = double(g) * double(a);
    const Index w = std::min(a, kApplyChunk);
    apply_packing = std::max({apply_packing, packing_scalar(g, w, g), packing_scalar(g, w, a)});
    if (multiplies)
      products.push_back(std::max(V * (2 * s + 3 * d8) + packing(double(g), double(a), double(g)),
                                  V * (2 * s + 2 * d8) + packing(double(g), double(a), double(a))));
  }
  for (double d : dims) {
    factors += d * d * d8;
    eigen += (d * d + d) * d8;
  }
  // The eigensolvers running at once (the largest factors first) each hold a copy of their factor.
  std::vector<double> by_size = dims;
  std::sort(by_size.rbegin(), by_size.rend());
  double decomposing = 0;
  for (std::size_t i = 0; i < by_size.size() && i < static_cast<std::size_t>(threads); ++i)
    decomposing += by_size[i] * by_size[i] * d8;
  // While G is accumulated: per thread a chunk's sampled scores (unless the closed form is used); the squared
  // gradients of the nodes outside the blocks; their running sum in double.
  const detail::FisherPlan plan = detail::FisherPlan::make(model, num_samples, fisher);
  const Index T = model.output_positions(), TC = model.output_size();
  const double scores = closed_form(fisher, TC / T, options) || fisher.kind == FisherKind::empirical
                            ? 0
                            : double(threads) * double(TC) * double(plan.chunk_size) *
                                  double(std::max(fisher.mc_samples, 1)) * s;
  const double squared = L.any_diagonal
                             ? double(detail::squared_gradients_bytes(
                                   model, plan, plan.threads_for(fisher.num_threads), L.diagonal_nodes))
                             : 0;
  const double sum = L.any_diagonal ? P * d8 : 0;
  // set_damping, factor by factor: Q·diag(1/(e + damping)) and its product with Qᵀ in double, and the
  // product's packing space, beside the inverses made so far; then the inverse diagonal.
  const double kept = covered + factors + eigen + P * s;
  double damping = 0, inverses = 0;
  for (double d : dims) {
    damping = std::max(damping, kept + inverses + 2 * d * d * d8 + packing(d, d, d));
    inverses += d * d * s;
  }
  damping = std::max(damping, kept + inverses + P * s);
  // In use: everything kept, and apply's working space or multiply's products of the blocks the threads take
  // at once (the largest first, at most).
  std::sort(products.rbegin(), products.rend());
  double multiplying = 0;
  for (std::size_t i = 0; i < products.size() && i < static_cast<std::size_t>(threads); ++i)
    multiplying += products[i];
  const double in_use = kept + inverses + P * s + std::max(3 * P * s + double(threads) * apply_packing, multiplying);
  const double steps[] = {
      covered + factors + unfold_a,                                     // A
      covered + factors + sum + std::max({unfold_g, scores, squared}),  // G and the diagonal
      covered + factors + sum + P * s,                                  // the means
      covered + factors + sum + P * s + eigen + decomposing,            // the eigendecompositions
      damping,
      in_use};
  return static_cast<std::size_t>(*std::max_element(std::begin(steps), std::end(steps)));
}

template <typename Scalar>
KfacApproximation<Scalar>::KfacApproximation(const FisherOperator<Scalar>& F, const KfacOptions& options) try
    : num_params_(F.rows()), num_threads_(resolve_threads(F.options().num_threads)) {
  const Network<Scalar>& model = F.model();
  const FisherOptions& fo = F.options();
  const Index N = F.num_samples(), T = model.output_positions(), TC = model.output_size(), C = TC / T;
  if (options.max_closed_form_outputs < 0)
    detail::fail("max_closed_form_outputs must be non-negative, got " +
                 std::to_string(options.max_closed_form_outputs));
  if (fo.kind == FisherKind::empirical) check_targets(F.likelihood(), F.targets(), C, T);

  // The blocks (layout()), their factors zeroed.
  covered_.assign(static_cast<std::size_t>(num_params_), false);
  Layout<Scalar> parts = layout(model);
  const std::vector<bool>& diagonal_nodes = parts.diagonal_nodes;
  const bool any_diagonal = parts.any_diagonal;
  blocks_ = std::move(parts.blocks);
  for (Block& b : blocks_) {
    b.A = Mat<double>::Zero(b.cols + (b.bias ? 1 : 0), b.cols + (b.bias ? 1 : 0));
    b.G = Mat<double>::Zero(b.rows, b.rows);
    std::fill(covered_.begin() + b.offset, covered_.begin() + b.offset + b.size(), true);
  }

  // Ignored positions (categorical labels kIgnoreIndex) are left out of A: a block with R = T rows per sample
  // (a layer applied per output position) drops the rows of ignored positions, any other block the samples
  // none of whose positions counts. G and the diagonal leave them out by themselves (their output cotangents
  // are zero). Each factor is then a mean over what it kept, over all ranks.
  const std::vector<int64_t>& labels = F.targets().labels;
  const bool has_labels = F.likelihood() == LikelihoodKind::categorical && Index(labels.size()) == N * T;
  const bool ignoring = has_labels && counted_labels(labels) < N * T;
  const int64_t* label_ptr = has_labels ? labels.data() : nullptr;
  auto row_kept = [&](Index R, Index j, Index r) {  // row r of sample j of a block with R rows per sample
    const int64_t* y = labels.data() + j * T;
    if (R == T) return y[r] != kIgnoreIndex;
    return std::any_of(y, y + T, [](int64_t v) { return v != kIgnoreIndex; });
  };
  std::vector<double> rows_kept(blocks_.size(), 0.0);

  // A: the layers' inputs, unfolded (a conv's patches, a sequence's rows), with a column of ones for a bias.
  const ForwardCache<Scalar>& cache = F.forward_cache();
  for (std::size_t bi = 0; bi < blocks_.size(); ++bi) {
    Block& b = blocks_[bi];
    const Layer<Scalar>& layer = model.layer(b.node);
    const Index in = layer.input_size(), R = b.positions, d = b.A.cols();
    const Index per = samples_per_block(R, d, N);
    Mat<Scalar> unfolded(R * per, d);
    Mat<Scalar> M;
    for (Index c0 = 0; c0 < N; c0 += per) {
      const Index n = std::min(per, N - c0);
      model.kronecker_factors(b.node)->kronecker_inputs(
          ConstMatMap<Scalar>(model.input_act(cache, b.node).data() + c0 * in, in, n), unfolded.data(),
          unfolded.rows());
      if (b.bias) unfolded.col(b.cols).setOnes();
      if (!ignoring) {
        M = unfolded.topRows(R * n);
      } else {
        Index kept = 0;
        for (Index j = 0; j < n; ++j)
          for (Index r = 0; r < R; ++r) kept += row_kept(R, c0 + j, r) ? 1 : 0;
        M.resize(kept, d);
        Index i = 0;
        for (Index j = 0; j < n; ++j)
          for (Index r = 0; r < R; ++r)
            if (row_kept(R, c0 + j, r)) M.row(i++) = unfolded.row(r + R * j);
      }
      rows_kept[bi] += double(M.rows());
      add_gram(M, 1.0, b.A, num_threads_);
    }
  }

  // G and the diagonal: the cotangents of output directions whose outer products sum to H_n.
  const bool closed = closed_form(fo, C, options);
  const int draws = fo.kind == FisherKind::empirical ? 1 : closed ? 1 : std::max(fo.mc_samples, 1);
  const Index directions = backprops_for(model, fo, options);  // C for the closed form, else the draws
  const double weight = closed ? 1.0 : 1.0 / double(draws);
  const Mat<Scalar>& Z = F.outputs();
  Vec<double> diagonal = Vec<double>::Zero(any_diagonal ? num_params_ : 0);
  for (Index k = 0; k < directions; ++k) {
    F.backprop_outputs([&](Index c0, Index n, MatMap<Scalar> gz) {
      ConstMatMap<Scalar> Zc(Z.data() + c0 * TC, TC, n);
      if (closed) {
        exact_fisher_factor<Scalar>(F.likelihood(), Zc, k, fo.seed, fo.first_sample + c0, gz, T,
                                    label_ptr ? label_ptr + c0 * T : nullptr);
      } else if (fo.kind == FisherKind::empirical) {
        nll_gradient<Scalar>(F.likelihood(), Zc, F.targets(), c0, gz, T);
      } else {  // draw k of the operator's Monte-Carlo labels
        Mat<Scalar> S(TC, n * draws);
        sample_scores<Scalar>(F.likelihood(), Zc, fo.seed, fo.first_sample + c0, draws,
                              MatMap<Scalar>(S.data(), TC, n * draws), T, label_ptr ? label_ptr + c0 * T : nullptr);
        for (Index j = 0; j < n; ++j) gz.col(j) = S.col(j * draws + k);
      }
    });
    ++backprops_;
    const CotangentCache<Scalar>& cot = F.cotangents();
    for (Block& b : blocks_) {
      const Layer<Scalar>& layer = model.layer(b.node);
      const Index out = layer.output_size(), R = b.positions;
      const Index per = samples_per_block(R, b.rows, N);
      Mat<Scalar> unfolded(R * per, b.rows);
      Mat<Scalar> M;
      for (Index c0 = 0; c0 < N; c0 += per) {
        const Index n = std::min(per, N - c0);
        model.kronecker_factors(b.node)->kronecker_cotangents(
            ConstMatMap<Scalar>(cot.g[b.node].data() + c0 * out, out, n), unfolded.data(), unfolded.rows());
        M = unfolded.topRows(R * n);
        add_gram(M, weight, b.G, num_threads_);
      }
    }
    if (any_diagonal) diagonal += weight * F.squared_gradients(diagonal_nodes).template cast<double>();
  }

  // Means over the samples (and positions), summed over the ranks: A over its kept rows, G and the diagonal
  // over the positions that count (F.counted_positions(): N·T when none is ignored).
  const double counted = double(F.counted_positions());
  const Communicator* comm = fo.communicator && fo.communicator->size() > 1 ? fo.communicator : nullptr;
  if (comm && !rows_kept.empty()) comm->sum(rows_kept.data(), Index(rows_kept.size()));
  for (std::size_t bi = 0; bi < blocks_.size(); ++bi) {
    Block& b = blocks_[bi];
    if (comm) {
      comm->sum(b.A.data(), b.A.size());
      comm->sum(b.G.data(), b.G.size());
    }
    // Without a communicator the samples of total_samples outside this operator's share count all R rows.
    const double a_rows = comm ? rows_kept[bi] : rows_kept[bi] + double(F.total_samples() - N) * double(b.positions);
    symmetrize_lower(b.A);
    symmetrize_lower(b.G);
    b.A /= std::max(a_rows, 1.0);
    b.G /= counted;
  }
  if (comm && any_diagonal) comm->sum(diagonal.data(), diagonal.size());
  diagonal_ = Vec<Scalar>::Zero(num_params_);
  if (any_diagonal)
    for (Index i = 0; i < num_params_; ++i)
      if (!covered_[static_cast<std::size_t>(i)]) diagonal_[i] = Scalar(diagonal[i] / counted);

  if (options.decompose) decompose();
} catch (const std::bad_alloc&) {
  throw std::runtime_error(
      "out of memory building K-FAC's factors (" +
      detail::format_bytes(double(required_bytes(F.model(), F.num_samples(), F.options(), options))) +
      " at the peak)");
}

template <typename Scalar>
KfacApproximation<Scalar>::KfacApproximation(const Network<Scalar>& model, int threads)
    : num_params_(model.num_params()), num_threads_(resolve_threads(threads)) {
  covered_.assign(static_cast<std::size_t>(num_params_), false);
  blocks_ = layout(model).blocks;
  for (Block& b : blocks_) {
    b.A = Mat<double>::Zero(b.cols + (b.bias ? 1 : 0), b.cols + (b.bias ? 1 : 0));
    b.G = Mat<double>::Zero(b.rows, b.rows);
    std::fill(covered_.begin() + b.offset, covered_.begin() + b.offset + b.size(), true);
  }
  diagonal_ = Vec<Scalar>::Zero(num_params_);
}

template <typename Scalar>
void KfacApproximation<Scalar>::decompose() {
  // Each factor's eigendecomposition, the largest blocks first.
  factored_.resize(blocks_.size());
  std::vector<std::size_t> order(blocks_.size());
  std::iota(order.begin(), order.end(), std::size_t(0));
  std::sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
    return blocks_[a].A.rows() + blocks_[a].G.rows() > blocks_[b].A.rows() + blocks_[b].G.rows();
  });
  const Index factors = static_cast<Index>(2 * order.size());
#ifdef NATGRAD_HAVE_OPENMP
#pragma omp parallel for schedule(dynamic, 1) num_threads(num_threads_)
#endif
  for (Index f = 0; f < factors; ++f) {
    const std::size_t i = order[static_cast<std::size_t>(f / 2)];
    Eigen::SelfAdjointEigenSolver<Mat<double>> eig(f % 2 == 0 ? blocks_[i].A : blocks_[i].G);
    (f % 2 == 0 ? factored_[i].QA : factored_[i].QG) = eig.eigenvectors();
    // Eigenvalues at the level of rounding (a rank-deficient factor) are zeros.
    const Vec<double>& e = eig.eigenvalues();
    const double floor = e.cwiseAbs().maxCoeff() * double(e.size()) * std::numeric_limits<double>::epsilon();
    (f % 2 == 0 ? factored_[i].eA : factored_[i].eG) =
        e.unaryExpr([floor](double v) { return v <= floor ? 0.0 : v; });
  }
  damping_ = -1;
}

template <typename Scalar>
void KfacApproximation<Scalar>::blend(const KfacApproximation& newer, double keep) {
  if (!(keep >= 0 && keep <= 1)) detail::fail("K-FAC: the running average's weight must be in [0, 1]");
  bool same = newer.num_params_ == num_params_ && newer.blocks_.size() == blocks_.size();
  for (std::size_t i = 0; same && i < blocks_.size(); ++i)
    same = newer.blocks_[i].node == blocks_[i].node && newer.blocks_[i].A.rows() == blocks_[i].A.rows() &&
           newer.blocks_[i].G.rows() == blocks_[i].G.rows();
  if (!same) detail::fail("K-FAC: cannot average the factors of two different models");
  for (std::size_t i = 0; i < blocks_.size(); ++i) {
    blocks_[i].A = keep * blocks_[i].A + (1 - keep) * newer.blocks_[i].A;
    blocks_[i].G = keep * blocks_[i].G + (1 - keep) * newer.blocks_[i].G;
  }
  diagonal_ = (keep * diagonal_.template cast<double>() + (1 - keep) * newer.diagonal_.template cast<double>())
                  .template cast<Scalar>();
}

template <typename Scalar>
Vec<double> KfacApproximation<Scalar>::packed_factors() const {
  Index n = 0;
  for (const Block& b : blocks_) n += b.A.size() + b.G.size();
  Vec<double> out(n + num_params_);
  Index at = 0;
  for (const Block& b : blocks_) {
    out.segment(at, b.A.size()) = b.A.reshaped();
    at += b.A.size();
    out.segment(at, b.G.size()) = b.G.reshaped();
    at += b.G.size();
  }
  out.tail(num_params_) = diagonal_.template cast<double>();
  return out;
}

template <typename Scalar>
void KfacApproximation<Scalar>::load_factors(const Vec<double>& packed) {
  Index n = 0;
  for (const Block& b : blocks_) n += b.A.size() + b.G.size();
  if (packed.size() != n + num_params_)
    detail::fail("K-FAC: stored factors have " + std::to_string(packed.size()) + " entries, this model's " +
                 std::to_string(n + num_params_));
  Index at = 0;
  for (Block& b : blocks_) {
    b.A.reshaped() = packed.segment(at, b.A.size());
    at += b.A.size();
    b.G.reshaped() = packed.segment(at, b.G.size());
    at += b.G.size();
  }
  diagonal_ = packed.tail(num_params_).template cast<Scalar>();
}

template <typename Scalar>
void KfacApproximation<Scalar>::set_damping(double lambda) {
  if (!(lambda >= 0) || !std::isfinite(lambda)) detail::fail("K-FAC damping must be finite and >= 0");
  if (factored_.empty()) detail::fail("K-FAC: set_damping before the factors were decomposed");
  const double root = std::sqrt(lambda);
  for (std::size_t i = 0; i < blocks_.size(); ++i) {
    Factored& f = factored_[i];
    // π balances the damping between the factors by their mean eigenvalues.
    const double mean_A = f.eA.mean(), mean_G = f.eG.mean();
    const double pi = mean_A > 0 && mean_G > 0 ? std::sqrt(mean_A / mean_G) : 1.0;
    const Vec<double> dA = (f.eA.array() + pi * root).matrix(), dG = (f.eG.array() + root / pi).matrix();
    if (dA.minCoeff() <= 0 || dG.minCoeff() <= 0)
      detail::fail("K-FAC: a Kronecker factor of node " + std::to_string(blocks_[i].node) +
                   " is singular; give a damping > 0");
    f.inverse_A = (f.QA * dA.cwiseInverse().asDiagonal() * f.QA.transpose()).template cast<Scalar>();
    f.inverse_G = (f.QG * dG.cwiseInverse().asDiagonal() * f.QG.transpose()).template cast<Scalar>();
  }
  invert_diagonal(lambda);
  damping_ = lambda;
}

template <typename Scalar>
void KfacApproximation<Scalar>::invert_diagonal(double lambda) {
  inverse_diagonal_ = Vec<Scalar>::Zero(num_params_);
  for (Index i = 0; i < num_params_; ++i) {
    if (covered_[static_cast<std::size_t>(i)]) continue;
    const double d = double(diagonal_[i]) + lambda;
    if (!(d > 0)) detail::fail("K-FAC: the Fisher's diagonal has a zero entry; give a damping > 0");
    inverse_diagonal_[i] = Scalar(1.0 / d);
  }
}

template <typename Scalar>
void KfacApproximation<Scalar>::invert(double lambda) {
  if (!(lambda >= 0) || !std::isfinite(lambda)) detail::fail("K-FAC damping must be finite and >= 0");
  const double root = std::sqrt(lambda);
  factored_.resize(blocks_.size());
  // Each damped factor D = LLᵀ (Cholesky), then D⁻¹ = L⁻ᵀ L⁻¹ column block by column block: column j of L⁻¹
  // is zero above row j, and D⁻¹'s rows from j down need only those rows of it and Lᵀ's trailing part (back
  // substitution from the bottom), so a block starting at column j0 solves twice with the trailing
  // (d − j0)-square part of L only, for D⁻¹'s lower part, and writes its transpose as the upper part (a
  // third of the work of two full solves). The factorizations are tasks (the largest first), then the column
  // blocks of every factor (their writes are disjoint): the
  // classifier's 785-wide A no longer keeps one thread busy while the other has finished. Each block is one
  // task whatever the threads, so the inverses are bit-identical for any thread count.
  struct Factor {
    std::size_t block;
    bool is_A;
    Mat<double> L;  // the damped factor, decomposed in place: L in its lower triangle (the upper one unread)
    bool ok = true;
  };
  std::vector<Factor> factors;
  for (std::size_t i = 0; i < blocks_.size(); ++i) {
    factors.push_back({i, true, Mat<double>(), true});
    factors.push_back({i, false, Mat<double>(), true});
  }
  const auto matrix = [&](const Factor& f) -> const Mat<double>& {
    return f.is_A ? blocks_[f.block].A : blocks_[f.block].G;
  };
  std::stable_sort(factors.begin(), factors.end(),
                   [&](const Factor& a, const Factor& b) { return matrix(a).rows() > matrix(b).rows(); });
  const Index count = static_cast<Index>(factors.size());
#ifdef NATGRAD_HAVE_OPENMP
#pragma omp parallel for schedule(dynamic, 1) num_threads(num_threads_)
#endif
  for (Index i = 0; i < count; ++i) {
    Factor& f = factors[static_cast<std::size_t>(i)];
    const Block& b = blocks_[f.block];
    const double mean_A = b.A.trace() / double(b.A.rows()), mean_G = b.G.trace() / double(b.G.rows());
    const double pi = mean_A > 0 && mean_G > 0 ? std::sqrt(mean_A / mean_G) : 1.0;
    f.L = matrix(f);
    f.L.diagonal().array() += f.is_A ? pi * root : root / pi;
    const Eigen::LLT<Eigen::Ref<Mat<double>>> llt(f.L);  // (no copies of a factor 785 or 1001 wide)
    f.ok = llt.info() == Eigen::Success;
    Factored& out = factored_[f.block];
    (f.is_A ? out.inverse_A : out.inverse_G).resize(f.L.rows(), f.L.cols());
  }
  for (const Factor& f : factors)
    if (!f.ok)
      detail::fail("K-FAC: a damped Kronecker factor of node " + std::to_string(blocks_[f.block].node) +
                   " is not positive definite; give a larger damping");
  constexpr Index kColumns = 64;
  std::vector<std::pair<std::size_t, Index>> tasks;  // (factor, first column)
  for (std::size_t i = 0; i < factors.size(); ++i)
    for (Index j0 = 0; j0 < factors[i].L.rows(); j0 += kColumns) tasks.emplace_back(i, j0);
  const Index task_count = static_cast<Index>(tasks.size());
#ifdef NATGRAD_HAVE_OPENMP
#pragma omp parallel for schedule(dynamic, 1) num_threads(num_threads_)
#endif
  for (Index t = 0; t < task_count; ++t) {
    const Factor& f = factors[tasks[static_cast<std::size_t>(t)].first];
    const Index j0 = tasks[static_cast<std::size_t>(t)].second, d = f.L.rows(), w = std::min(kColumns, d - j0);
    Mat<double> Y = Mat<double>::Zero(d - j0, w);  // rows j0 … of L⁻¹'s columns j0 … j0 + w (zero above)
    Y.topRows(w).setIdentity();
    const auto trailing = f.L.bottomRightCorner(d - j0, d - j0);
    trailing.template triangularView<Eigen::Lower>().solveInPlace(Y);
    trailing.transpose().template triangularView<Eigen::Upper>().solveInPlace(Y);  // rows j0 … of D⁻¹'s columns
    Factored& out = factored_[f.block];
    Mat<Scalar>& inverse = f.is_A ? out.inverse_A : out.inverse_G;
    inverse.block(j0, j0, d - j0, w) = Y.template cast<Scalar>();
    inverse.block(j0, j0, w, d - j0) = Y.transpose().template cast<Scalar>();
  }
  invert_diagonal(lambda);
  damping_ = lambda;
}

template <typename Scalar>
void KfacApproximation<Scalar>::gather(const Block& b, const Scalar* x, Mat<Scalar>& V) const {
  V.resize(b.rows, b.cols + (b.bias ? 1 : 0));
  V.leftCols(b.cols) =
      Eigen::Map<const Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>>(
          x + b.offset, b.rows, b.cols);
  if (b.bias) V.col(b.cols) = ConstVecMap<Scalar>(x + b.offset + b.rows * b.cols, b.rows);
}

template <typename Scalar>
void KfacApproximation<Scalar>::scatter(const Block& b, const Mat<Scalar>& V, Scalar* y) const {
  Eigen::Map<Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>>(
      y + b.offset, b.rows, b.cols) = V.leftCols(b.cols);
  if (b.bias) VecMap<Scalar>(y + b.offset + b.rows * b.cols, b.rows) = V.col(b.cols);
}

// y = D x outside the blocks, then per block (in parallel, one block per thread at a time) Y = G V A in double,
// V the block's slice of x as a matrix.
template <typename Scalar>
void KfacApproximation<Scalar>::multiply(const Scalar* x, Scalar* y) const {
  VecMap<Scalar>(y, num_params_) = diagonal_.cwiseProduct(ConstVecMap<Scalar>(x, num_params_));
  const Index count = static_cast<Index>(blocks_.size());
#ifdef NATGRAD_HAVE_OPENMP
#pragma omp parallel for schedule(dynamic, 1) num_threads(num_threads_)
#endif
  for (Index i = 0; i < count; ++i) {
    const Block& b = blocks_[static_cast<std::size_t>(i)];
    Mat<Scalar> V;
    gather(b, x, V);
    scatter(b, (b.G * V.template cast<double>() * b.A).template cast<Scalar>(), y);
  }
}

template <typename Scalar>
void KfacApproximation<Scalar>::apply(const Scalar* r, Scalar* z) const {
  if (damping_ < 0) detail::fail("KfacApproximation::apply before set_damping");
  VecMap<Scalar>(z, num_params_) = inverse_diagonal_.cwiseProduct(ConstVecMap<Scalar>(r, num_params_));
  apply_blocks(r, z, nullptr);
}

template <typename Scalar>
bool KfacApproximation<Scalar>::low_rank_cheaper(const Block& b, Index num_samples) {
  const double rows = double(b.positions) * double(num_samples), a = double(b.cols + (b.bias ? 1 : 0)),
               g = double(b.rows);
  return rows * (a * a + g * g + g * a) < g * a * (g + a);
}

template <typename Scalar>
Index KfacApproximation<Scalar>::apply_gradient(const FisherOperator<Scalar>& F, const Scalar* g, Scalar* z) const {
  if (damping_ < 0) detail::fail("KfacApproximation::apply_gradient before set_damping");
  if (F.rows() != num_params_) detail::fail("K-FAC: apply_gradient with the operator of another model");
  VecMap<Scalar>(z, num_params_) = inverse_diagonal_.cwiseProduct(ConstVecMap<Scalar>(g, num_params_));
  const Communicator* comm = F.options().communicator;
  if (comm && comm->size() > 1) {  // a rank's cotangents are its share of the batch
    apply_blocks(g, z, nullptr);
    return 0;
  }
  const Network<Scalar>& model = F.model();
  const Index N = F.num_samples();
  const ForwardCache<Scalar>& cache = F.forward_cache();
  const CotangentCache<Scalar>& cot = F.cotangents();
  const Scalar s = Scalar(1) / Scalar(F.counted_positions());
  std::vector<bool> low(blocks_.size(), false);
  // Per low-rank block: its unfolded inputs Ã (R·N × a, with the bias's ones) and output cotangents D
  // (R·N × rows), so that its slice of g is s·DᵀÃ.
  std::vector<Mat<Scalar>> inputs(blocks_.size()), cotangents(blocks_.size()), DG(blocks_.size());
  std::vector<std::pair<std::size_t, Index>> chunks[3];  // (block, first column) per round
  Index taken = 0;
  for (std::size_t i = 0; i < blocks_.size(); ++i) {
    const Block& b = blocks_[i];
    if (!low_rank_cheaper(b, N)) continue;
    low[i] = true;
    ++taken;
    const Index rows = b.positions * N, a = b.cols + (b.bias ? 1 : 0);
    inputs[i].resize(rows, a);
    cotangents[i].resize(rows, b.rows);
    DG[i].resize(rows, b.rows);
    chunks[0].emplace_back(i, 0);  // unfold the inputs
    chunks[0].emplace_back(i, 1);  // unfold the cotangents
    for (Index j0 = 0; j0 < Index(b.rows); j0 += kApplyChunk) chunks[1].emplace_back(i, j0);
    for (Index j0 = 0; j0 < a; j0 += kApplyChunk) chunks[2].emplace_back(i, j0);
  }
  apply_blocks(g, z, &low);
  // G⁻¹(s DᵀÃ)A⁻¹ = s (D G⁻¹)ᵀ (Ã A⁻¹) (the inverses are symmetric), in three rounds of tasks: the unfolding,
  // D G⁻¹ by column chunks, then each chunk of V's columns as s (Ã A⁻¹)ᵀ(D G⁻¹) — its rows are the chunk's
  // columns of the row-major weight, written in place (and the bias's, if the chunk holds it).
  for (int round = 0; round < 3; ++round) {
    const Index tasks = static_cast<Index>(chunks[round].size());
#ifdef NATGRAD_HAVE_OPENMP
#pragma omp parallel for schedule(dynamic, 1) num_threads(num_threads_)
#endif
    for (Index t = 0; t < tasks; ++t) {
      const auto [i, j0] = chunks[round][static_cast<std::size_t>(t)];
      const Block& b = blocks_[i];
      const Factored& f = factored_[i];
      if (round == 0) {
        const Layer<Scalar>& layer = model.layer(b.node);
        const KroneckerFactors<Scalar>& kf = *model.kronecker_factors(b.node);
        const Index rows = b.positions * N;
        if (j0 == 0) {
          kf.kronecker_inputs(ConstMatMap<Scalar>(model.input_act(cache, b.node).data(), layer.input_size(), N),
                              inputs[i].data(), rows);
          if (b.bias) inputs[i].col(b.cols).setOnes();
        } else {
          kf.kronecker_cotangents(ConstMatMap<Scalar>(cot.g[b.node].data(), layer.output_size(), N),
                                  cotangents[i].data(), rows);
        }
      } else if (round == 1) {
        const Index w = std::min(kApplyChunk, Index(b.rows) - j0);
        DG[i].middleCols(j0, w).noalias() = cotangents[i] * f.inverse_G.middleCols(j0, w);
      } else {
        const Index w = std::min(kApplyChunk, inputs[i].cols() - j0);
        const Mat<Scalar> XA = inputs[i] * f.inverse_A.middleCols(j0, w);
        const Mat<Scalar> ZT = s * (XA.transpose() * DG[i]);  // w × rows: V's columns j0 … as rows
        const Index weights = std::max<Index>(0, std::min(w, b.cols - j0));
        Scalar* y = z + b.offset;
        for (Index o = 0; o < b.rows; ++o) {
          std::copy_n(ZT.col(o).data(), weights, y + o * b.cols + j0);
          if (weights < w) y[b.rows * b.cols + o] = ZT(weights, o);  // the bias, V's last column
        }
      }
    }
  }
  return taken;
}

template <typename Scalar>
void KfacApproximation<Scalar>::apply_blocks(const Scalar* r, Scalar* z, const std::vector<bool>* skip) const {
  // Per block Z = G⁻¹ V A⁻¹ in two rounds of column chunks, W = G⁻¹ V then Z = W A⁻¹, so a large block is
  // shared by the threads. Each chunk is one product of a fixed shape, so the result does not depend on the
  // thread count.
  const std::size_t count = blocks_.size();
  std::vector<Mat<Scalar>> V(count), W(count), Z(count);
  std::vector<std::pair<std::size_t, Index>> chunks;  // (block, first column)
  for (std::size_t b = 0; b < count; ++b) {
    if (skip && (*skip)[b]) continue;
    gather(blocks_[b], r, V[b]);
    W[b].resize(V[b].rows(), V[b].cols());
    Z[b].resize(V[b].rows(), V[b].cols());
    for (Index j0 = 0; j0 < V[b].cols(); j0 += kApplyChunk) chunks.emplace_back(b, j0);
  }
  const Index tasks = static_cast<Index>(chunks.size());
  for (int round = 0; round < 2; ++round) {
#ifdef NATGRAD_HAVE_OPENMP
#pragma omp parallel for schedule(dynamic, 1) num_threads(num_threads_)
#endif
    for (Index t = 0; t < tasks; ++t) {
      const auto [b, j0] = chunks[static_cast<std::size_t>(t)];
      const Index w = std::min(kApplyChunk, V[b].cols() - j0);
      if (round == 0)
        W[b].middleCols(j0, w).noalias() = factored_[b].inverse_G * V[b].middleCols(j0, w);
      else
        Z[b].middleCols(j0, w).noalias() = W[b] * factored_[b].inverse_A.middleCols(j0, w);
    }
  }
  for (std::size_t b = 0; b < count; ++b)
    if (!(skip && (*skip)[b])) scatter(blocks_[b], Z[b], z);
}

template class KfacApproximation<float>;
template class KfacApproximation<double>;

}  // namespace natgrad
