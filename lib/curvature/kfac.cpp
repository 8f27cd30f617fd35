#include <natgrad/core/threads.h>
#include <natgrad/curvature/kfac.h>

#include <Eigen/Eigenvalues>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <string>

#include "core/fail.h"

#ifdef NATGRAD_HAVE_OPENMP
#include <omp.h>
#endif

namespace natgrad {

namespace {

// out += scale · MᵀM, the output's columns split into fixed blocks shared by the threads: each entry is one
// dot product of M's columns, whichever thread computes it.
void add_gram(const Mat<double>& M, double scale, Mat<double>& out, int threads) {
  const Index d = M.cols(), block = 64, blocks = (d + block - 1) / block;
  (void)threads;
#ifdef NATGRAD_HAVE_OPENMP
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
#endif
  for (Index b = 0; b < blocks; ++b) {
    const Index j0 = b * block, w = std::min(block, d - j0);
    out.middleCols(j0, w).noalias() += scale * (M.transpose() * M.middleCols(j0, w));
  }
}

// Samples per block of a factor's accumulation: about 2^20 rows × columns of the unfolded matrix.
Index samples_per_block(Index positions, Index width, Index num_samples) {
  const double rows = std::max(1.0, double(1 << 20) / double(std::max<Index>(width, 1)) / double(positions));
  return std::max<Index>(1, std::min<Index>(num_samples, static_cast<Index>(rows)));
}

}  // namespace

template <typename Scalar>
KfacApproximation<Scalar>::KfacApproximation(const FisherOperator<Scalar>& F, const KfacOptions& options)
    : num_params_(F.rows()), num_threads_(resolve_threads(F.options().num_threads)) {
  const Network<Scalar>& model = F.model();
  const FisherOptions& fo = F.options();
  const Index N = F.num_samples(), T = model.output_positions(), TC = model.output_size(), C = TC / T;
  if (options.max_closed_form_outputs < 0)
    detail::fail("max_closed_form_outputs must be non-negative, got " + std::to_string(options.max_closed_form_outputs));
  if (fo.kind == FisherKind::empirical) check_targets(F.likelihood(), F.targets(), C, T);

  // The blocks: every node with a Kronecker-shaped weight that is its own (a tied weight gets the diagonal).
  covered_.assign(static_cast<std::size_t>(num_params_), false);
  std::vector<bool> diagonal_nodes(model.num_layers(), false);
  bool any_diagonal = false;
  for (std::size_t l = 0; l < model.num_layers(); ++l) {
    const Layer<Scalar>& layer = model.layer(l);
    if (layer.num_params() == 0 || model.tied_to(l) != l) continue;
    const KroneckerFactors<Scalar>* kronecker = model.kronecker_factors(l);
    if (kronecker && model.aliases(l).empty()) {
      const auto shape = kronecker->kronecker_shape();
      Block b;
      b.node = l;
      b.offset = model.param_offset(l);
      b.rows = shape.rows;
      b.cols = shape.cols;
      b.positions = shape.positions;
      b.bias = layer.num_params() > shape.rows * shape.cols;
      b.A = Mat<double>::Zero(b.cols + (b.bias ? 1 : 0), b.cols + (b.bias ? 1 : 0));
      b.G = Mat<double>::Zero(b.rows, b.rows);
      std::fill(covered_.begin() + b.offset, covered_.begin() + b.offset + b.size(), true);
      blocks_.push_back(std::move(b));
    } else {
      diagonal_nodes[l] = true;
      any_diagonal = true;
    }
  }

  // A: the layers' inputs, unfolded (a conv's patches, a sequence's rows), with a column of ones for a bias.
  const ForwardCache<Scalar>& cache = F.forward_cache();
  for (Block& b : blocks_) {
    const Layer<Scalar>& layer = model.layer(b.node);
    const Index in = layer.input_size(), R = b.positions, d = b.A.cols();
    const Index per = samples_per_block(R, d, N);
    Mat<Scalar> unfolded(R * per, d);
    Mat<double> M;
    for (Index c0 = 0; c0 < N; c0 += per) {
      const Index n = std::min(per, N - c0);
      model.kronecker_factors(b.node)->kronecker_inputs(
          ConstMatMap<Scalar>(model.input_act(cache, b.node).data() + c0 * in, in, n), unfolded.data(),
          unfolded.rows());
      if (b.bias) unfolded.col(b.cols).setOnes();
      M = unfolded.topRows(R * n).template cast<double>();
      add_gram(M, 1.0, b.A, num_threads_);
    }
  }

  // G and the diagonal: the cotangents of output directions whose outer products sum to H_n.
  const bool closed_form = fo.kind == FisherKind::exact && C <= options.max_closed_form_outputs;
  const int draws = fo.kind == FisherKind::empirical ? 1 : closed_form ? 1 : std::max(fo.mc_samples, 1);
  const Index directions = closed_form ? C : draws;
  const double weight = closed_form ? 1.0 : 1.0 / double(draws);
  const Mat<Scalar>& Z = F.outputs();
  Vec<double> diagonal = Vec<double>::Zero(any_diagonal ? num_params_ : 0);
  for (Index k = 0; k < directions; ++k) {
    F.backprop_outputs([&](Index c0, Index n, MatMap<Scalar> gz) {
      ConstMatMap<Scalar> Zc(Z.data() + c0 * TC, TC, n);
      if (closed_form) {
        exact_fisher_factor<Scalar>(F.likelihood(), Zc, k, fo.seed, fo.first_sample + c0, gz, T);
      } else if (fo.kind == FisherKind::empirical) {
        nll_gradient<Scalar>(F.likelihood(), Zc, F.targets(), c0, gz, T);
      } else {  // draw k of the operator's Monte-Carlo labels
        Mat<Scalar> S(TC, n * draws);
        sample_scores<Scalar>(F.likelihood(), Zc, fo.seed, fo.first_sample + c0, draws,
                              MatMap<Scalar>(S.data(), TC, n * draws), T);
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
      Mat<double> M;
      for (Index c0 = 0; c0 < N; c0 += per) {
        const Index n = std::min(per, N - c0);
        model.kronecker_factors(b.node)->kronecker_cotangents(
            ConstMatMap<Scalar>(cot.g[b.node].data() + c0 * out, out, n), unfolded.data(), unfolded.rows());
        M = unfolded.topRows(R * n).template cast<double>();
        add_gram(M, weight, b.G, num_threads_);
      }
    }
    if (any_diagonal) diagonal += weight * F.squared_gradients(diagonal_nodes).template cast<double>();
  }

  // Means over the samples (and positions), summed over the ranks.
  const double total = double(F.total_samples());
  const Communicator* comm = fo.communicator && fo.communicator->size() > 1 ? fo.communicator : nullptr;
  for (Block& b : blocks_) {
    if (comm) {
      comm->sum(b.A.data(), b.A.size());
      comm->sum(b.G.data(), b.G.size());
    }
    b.A = (b.A + b.A.transpose()).eval() * (0.5 / (total * double(b.positions)));
    b.G = (b.G + b.G.transpose()).eval() * (0.5 / (total * double(T)));
  }
  if (comm && any_diagonal) comm->sum(diagonal.data(), diagonal.size());
  diagonal_ = Vec<Scalar>::Zero(num_params_);
  if (any_diagonal)
    for (Index i = 0; i < num_params_; ++i)
      if (!covered_[static_cast<std::size_t>(i)]) diagonal_[i] = Scalar(diagonal[i] / (total * double(T)));

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
    (f % 2 == 0 ? factored_[i].eA : factored_[i].eG) = e.unaryExpr([floor](double v) { return v <= floor ? 0.0 : v; });
  }
}

template <typename Scalar>
void KfacApproximation<Scalar>::set_damping(double lambda) {
  if (!(lambda >= 0) || !std::isfinite(lambda)) detail::fail("K-FAC damping must be finite and >= 0");
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
  inverse_diagonal_ = Vec<Scalar>::Zero(num_params_);
  for (Index i = 0; i < num_params_; ++i) {
    if (covered_[static_cast<std::size_t>(i)]) continue;
    const double d = double(diagonal_[i]) + lambda;
    if (!(d > 0)) detail::fail("K-FAC: the Fisher's diagonal has a zero entry; give a damping > 0");
    inverse_diagonal_[i] = Scalar(1.0 / d);
  }
  damping_ = lambda;
}

template <typename Scalar>
void KfacApproximation<Scalar>::gather(const Block& b, const Scalar* x, Mat<Scalar>& V) const {
  V.resize(b.rows, b.cols + (b.bias ? 1 : 0));
  V.leftCols(b.cols) = Eigen::Map<const Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>>(
      x + b.offset, b.rows, b.cols);
  if (b.bias) V.col(b.cols) = ConstVecMap<Scalar>(x + b.offset + b.rows * b.cols, b.rows);
}

template <typename Scalar>
void KfacApproximation<Scalar>::scatter(const Block& b, const Mat<Scalar>& V, Scalar* y) const {
  Eigen::Map<Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>>(y + b.offset, b.rows, b.cols) =
      V.leftCols(b.cols);
  if (b.bias) VecMap<Scalar>(y + b.offset + b.rows * b.cols, b.rows) = V.col(b.cols);
}

// y = diag ∘ x, then per block (in parallel, one block per thread at a time) y_b = left · V · right with V
// the block's slice of x as a matrix: right and left in double for the product, in Scalar for the inverse.
template <typename Scalar>
template <typename Product>
void KfacApproximation<Scalar>::blockwise(const Vec<Scalar>& diag, const Scalar* x, Scalar* y, Product product) const {
  VecMap<Scalar>(y, num_params_) = diag.cwiseProduct(ConstVecMap<Scalar>(x, num_params_));
  const Index count = static_cast<Index>(blocks_.size());
#ifdef NATGRAD_HAVE_OPENMP
#pragma omp parallel for schedule(dynamic, 1) num_threads(num_threads_)
#endif
  for (Index i = 0; i < count; ++i) {
    const std::size_t b = static_cast<std::size_t>(i);
    Mat<Scalar> V;
    gather(blocks_[b], x, V);
    scatter(blocks_[b], product(b, V), y);
  }
}

template <typename Scalar>
void KfacApproximation<Scalar>::multiply(const Scalar* x, Scalar* y) const {
  blockwise(diagonal_, x, y, [&](std::size_t b, const Mat<Scalar>& V) -> Mat<Scalar> {
    return (blocks_[b].G * V.template cast<double>() * blocks_[b].A).template cast<Scalar>();
  });
}

template <typename Scalar>
void KfacApproximation<Scalar>::apply(const Scalar* r, Scalar* z) const {
  if (damping_ < 0) detail::fail("KfacApproximation::apply before set_damping");
  blockwise(inverse_diagonal_, r, z, [&](std::size_t b, const Mat<Scalar>& V) -> Mat<Scalar> {
    return factored_[b].inverse_G * V * factored_[b].inverse_A;
  });
}

template class KfacApproximation<float>;
template class KfacApproximation<double>;

}  // namespace natgrad
