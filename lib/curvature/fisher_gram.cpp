// FisherGram: the rows of U = M^(-1/2) [J_nᵀ f_nk] as backpropagated cotangents, and the Gram G = UUᵀ formed
// from them layer by layer (the Kronecker identity for linear layers on single positions, explicit per-row
// gradients for every other node), in double and in tiles whose order does not depend on the threads. The
// solves and the spectrum on G are in gram_solve.cpp.
#include <natgrad/core/threads.h>
#include <natgrad/curvature/fisher_gram.h>

#include <algorithm>
#include <chrono>
#include <cmath>

#include "core/fail.h"
#include "core/link_functions.h"

namespace natgrad {

namespace {

constexpr Index kTile = 128;

// The lower tiles (I ≥ J) of an R × R matrix, in a fixed order.
std::vector<std::pair<Index, Index>> lower_tiles(Index R) {
  std::vector<std::pair<Index, Index>> tiles;
  for (Index i = 0; i < R; i += kTile)
    for (Index j = 0; j <= i; j += kTile) tiles.emplace_back(i, j);
  return tiles;
}

// G's lower tiles += X Xᵀ (X: R × D), or with `rowdot` (N × N) the Hadamard product with rowdot(i % N, j % N):
// each tile by one thread, so every entry's sum has one fixed order.
void add_gram(Eigen::MatrixXd& G, const Eigen::MatrixXd& X, const Eigen::MatrixXd* rowdot, int threads) {
  const Index R = G.rows();
  const auto tiles = lower_tiles(R);
  const long count = static_cast<long>(tiles.size());
#pragma omp parallel for schedule(dynamic) num_threads(threads)
  for (long t = 0; t < count; ++t) {
    const Index i0 = tiles[static_cast<std::size_t>(t)].first, j0 = tiles[static_cast<std::size_t>(t)].second;
    const Index bi = std::min(kTile, R - i0), bj = std::min(kTile, R - j0);
    Eigen::MatrixXd block = X.middleRows(i0, bi) * X.middleRows(j0, bj).transpose();
    if (rowdot) {
      const Index N = rowdot->rows();
      for (Index j = 0; j < bj; ++j)
        for (Index i = 0; i < bi; ++i) block(i, j) *= (*rowdot)((i0 + i) % N, (j0 + j) % N);
    }
    G.block(i0, j0, bi, bj) += block;
  }
}

template <typename Scalar>
std::vector<std::size_t> uses_of(const Network<Scalar>& net, std::size_t l) {
  std::vector<std::size_t> uses{l};
  uses.insert(uses.end(), net.aliases(l).begin(), net.aliases(l).end());
  return uses;
}

// A linear layer on single positions whose weight is not tied: the Kronecker identity applies.
template <typename Scalar>
const KroneckerFactors<Scalar>* kronecker_identity(const Network<Scalar>& net, std::size_t l) {
  const KroneckerFactors<Scalar>* k = net.kronecker_factors(l);
  if (!k || !net.aliases(l).empty() || k->kronecker_shape().positions != 1) return nullptr;
  return k;
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

template <typename Scalar>
Index FisherGram<Scalar>::rows_for(const Network<Scalar>& model, Index num_samples, FisherKind kind,
                                   int mc_samples) {
  switch (kind) {
    case FisherKind::exact:
      return num_samples * model.output_size();
    case FisherKind::mc:
      return num_samples * mc_samples;
    case FisherKind::empirical:
      return num_samples;
  }
  return 0;
}

template <typename Scalar>
GramFootprint FisherGram<Scalar>::required_bytes(const Network<Scalar>& model, Index num_samples,
                                                 const FisherOptions& options) {
  const double R = double(rows_for(model, num_samples, options.kind, options.mc_samples));
  const double K = R / double(std::max<Index>(num_samples, 1)), N = double(num_samples);
  const double threads = double(resolve_threads(options.num_threads));
  double cot = 0, rows = 0;
  for (std::size_t l = 0; l < model.num_layers(); ++l) {
    const Layer<Scalar>& layer = model.layer(l);
    if (layer.num_params() == 0) continue;
    cot += double(layer.output_size()) * N * double(sizeof(Scalar));
    if (model.tied_to(l) != l) continue;
    double need;
    if (const auto* k = kronecker_identity(model, l)) {
      const auto s = k->kronecker_shape();
      need = (N * double(s.cols) + N * N + R * double(s.rows)) * 8 + R * double(s.rows) * double(sizeof(Scalar));
    } else {
      need = R * double(layer.num_params()) * 8 + threads * double(layer.num_params()) * double(sizeof(Scalar));
    }
    rows = std::max(rows, need);
  }
  GramFootprint f;
  f.gram = static_cast<std::size_t>(2 * R * R * 8);
  f.cotangents = static_cast<std::size_t>(K * cot);
  f.rows = static_cast<std::size_t>(rows);
  return f;
}

template <typename Scalar>
FisherGram<Scalar>::FisherGram(const FisherOperator<Scalar>& F) : F_(F) {
  const Network<Scalar>& net = F.model();
  if (F.options().communicator && F.options().communicator->size() > 1) {
    comm_ = F.options().communicator;
    first_ = F.options().first_sample;
  }
  N_ = F.num_samples();
  Nt_ = F.total_samples();
  T_ = net.output_positions();
  TC_ = net.output_size();
  M_ = double(F.counted_positions());
  const FisherKind kind = F.options().kind;
  const int S = F.options().mc_samples;
  R_ = rows_for(net, Nt_, kind, S);
  K_ = Nt_ > 0 ? R_ / Nt_ : 0;
  const Mat<Scalar>& Z = F.outputs();
  const Dataset<Scalar>& targets = F.targets();
  const int64_t* labels = F.likelihood() == LikelihoodKind::categorical &&
                                  static_cast<Index>(targets.labels.size()) == N_ * T_
                              ? targets.labels.data()
                              : nullptr;
  if (kind == FisherKind::mc) {
    scores_.resize(TC_, N_ * S);
    sample_scores<Scalar>(F.likelihood(), ConstMatMap<Scalar>(Z.data(), Z.rows(), Z.cols()), F.options().seed,
                          F.options().first_sample, S, MatMap<Scalar>(scores_.data(), TC_, N_ * S), T_, labels);
  } else if (kind == FisherKind::empirical) {
    scores_.resize(TC_, N_);
    nll_gradient<Scalar>(F.likelihood(), ConstMatMap<Scalar>(Z.data(), Z.rows(), Z.cols()), targets, 0,
                         MatMap<Scalar>(scores_.data(), TC_, N_), T_);
  }

  // r with Uᵀr = g: Σ_k f_nk r_(kN+n) = e_n / √M, e_n = ∇_z ℓ_n.
  const double root = std::sqrt(M_);
  if (kind == FisherKind::empirical) {
    r_ = Eigen::VectorXd::Constant(R_, 1.0 / root);
  } else if (kind == FisherKind::exact) {
    r_ = Eigen::VectorXd::Zero(R_);  // this rank's rows, then summed over the ranks
    const Index C = TC_ / T_;
    std::vector<double> p(static_cast<std::size_t>(C));
    bool finite = true;
    for (Index n = 0; n < N_; ++n)
      for (Index t = 0; t < T_; ++t) {
        const Scalar* z = Z.data() + n * TC_ + t * C;
        const bool ignored = labels && labels[n * T_ + t] == kIgnoreIndex;
        std::vector<double> zd(z, z + C);
        if (F.likelihood() == LikelihoodKind::categorical && !ignored) detail::softmax(zd.data(), C, p.data());
        for (Index c = 0; c < C; ++c) {
          double v = 0;
          if (ignored) {
            v = 0;
          } else if (F.likelihood() == LikelihoodKind::categorical) {
            const Index y = labels ? static_cast<Index>(labels[n * T_ + t]) : static_cast<Index>(targets.labels[n]);
            if (c != y) {
              v = std::sqrt(p[c]);
            } else {  // √p_y − 1/√p_y = −(Σ_{c' ≠ y} p_c')/√p_y, without cancellation
              double rest = 0;
              for (Index d = 0; d < C; ++d) rest += d == y ? 0 : p[d];
              v = -rest / std::sqrt(p[c]);
            }
          } else if (F.likelihood() == LikelihoodKind::gaussian) {
            v = zd[c] - double(targets.targets(t * C + c, n));
          } else {  // bernoulli: (σ − y)/√(σ(1 − σ))
            const double s = detail::sigmoid(zd[c]), e = s - double(targets.targets(t * C + c, n));
            const double h = detail::sigmoid_derivative(zd[c]);
            v = e == 0 ? 0 : e / std::sqrt(h);
          }
          finite = finite && std::isfinite(v);
          r_(row(t * C + c, n)) = finite ? v / root : 0.0;
        }
      }
    if (comm_) {
      comm_->sum(r_.data(), R_);
      finite = comm_->max(finite ? 0.0 : 1.0) == 0.0;
    }
    if (!finite) r_.resize(0);
  }
  form();
}

template <typename Scalar>
void FisherGram<Scalar>::factor(Index k, Index n, Scalar* f) const {
  switch (F_.options().kind) {
    case FisherKind::mc: {
      const Scalar inv = Scalar(1) / std::sqrt(Scalar(F_.options().mc_samples));
      VecMap<Scalar>(f, TC_) = scores_.col(n * F_.options().mc_samples + k) * inv;
      return;
    }
    case FisherKind::empirical:
      VecMap<Scalar>(f, TC_) = scores_.col(n);
      return;
    case FisherKind::exact:
      break;
  }
  std::fill(f, f + TC_, Scalar(0));
  const Index C = TC_ / T_, t = k / C, c = k % C;
  const Dataset<Scalar>& targets = F_.targets();
  if (F_.likelihood() == LikelihoodKind::categorical && static_cast<Index>(targets.labels.size()) == N_ * T_ &&
      targets.labels[static_cast<std::size_t>(n * T_ + t)] == kIgnoreIndex)
    return;
  const Scalar* z = F_.outputs().data() + n * TC_ + t * C;
  Scalar* out = f + t * C;
  switch (F_.likelihood()) {
    case LikelihoodKind::gaussian:
      out[c] = 1;
      return;
    case LikelihoodKind::bernoulli:
      out[c] = Scalar(std::sqrt(detail::sigmoid_derivative(double(z[c]))));
      return;
    case LikelihoodKind::categorical: {  // √p_c (e_c − p), with 1 − p_c as the sum of the other p
      std::vector<double> zd(z, z + C), p(static_cast<std::size_t>(C));
      detail::softmax(zd.data(), C, p.data());
      const double root = std::sqrt(p[c]);
      double rest = 0;
      for (Index d = 0; d < C; ++d) {
        if (d != c) rest += p[d];
        out[d] = Scalar(-root * p[d]);
      }
      out[c] = Scalar(root * rest);
      return;
    }
  }
}

template <typename Scalar>
void FisherGram<Scalar>::form() {
  const auto t0 = std::chrono::steady_clock::now();
  const Network<Scalar>& net = F_.model();
  const int threads = resolve_threads(F_.options().num_threads);
  // The cotangents of every node with parameters, per factor column k.
  std::vector<CotangentCache<Scalar>> cots(static_cast<std::size_t>(K_));
  for (Index k = 0; k < K_; ++k) {
    F_.backprop_outputs([&](Index c0, Index n, MatMap<Scalar> gz) {
      for (Index j = 0; j < n; ++j) factor(k, c0 + j, gz.col(j).data());
    });
    cots[static_cast<std::size_t>(k)] = F_.cotangents();
  }
  G_ = Eigen::MatrixXd::Zero(R_, R_);
  const ForwardCache<Scalar>& cache = F_.forward_cache();
  const Scalar* theta = F_.parameters().data();
  for (std::size_t l = 0; l < net.num_layers(); ++l) {
    const Layer<Scalar>& layer = net.layer(l);
    if (layer.num_params() == 0 || net.tied_to(l) != l) continue;
    if (const auto* kf = kronecker_identity(net, l)) {
      // (ÃÃᵀ ⊗ 1) ∘ (BBᵀ): a sample's weight gradient is b aᵀ (and its bias gradient b).
      const auto s = kf->kronecker_shape();
      const Mat<Scalar>& X = net.input_act(cache, l);
      Mat<Scalar> A = Mat<Scalar>::Zero(Nt_, s.cols), B = Mat<Scalar>::Zero(R_, s.rows);
      kf->kronecker_inputs(ConstMatMap<Scalar>(X.data(), X.rows(), N_), A.data() + first_, Nt_);
      for (Index k = 0; k < K_; ++k) {
        const Mat<Scalar>& gy = cots[static_cast<std::size_t>(k)].g[l];
        kf->kronecker_cotangents(ConstMatMap<Scalar>(gy.data(), gy.rows(), N_), B.data() + row(k, 0), R_);
      }
      if (comm_) {  // every rank's rows on every rank (the others' entries are zero here: the sums are exact)
        comm_->sum(A.data(), A.size());
        comm_->sum(B.data(), B.size());
      }
      const Eigen::MatrixXd Ad = A.template cast<double>();
      Eigen::MatrixXd AA = Ad * Ad.transpose();
      if (layer.num_params() > s.rows * s.cols) AA.array() += 1.0;  // the bias
      add_gram(G_, B.template cast<double>(), &AA, threads);
      continue;
    }
    // Explicit rows: row kN + n is sample n's gradient of the node's tensors (every use summed) for the
    // cotangents of column k.
    const Index P = layer.num_params();
    const std::vector<std::size_t> uses = uses_of(net, l);
    Eigen::MatrixXd U = Eigen::MatrixXd::Zero(R_, P);
    const long local = static_cast<long>(K_ * N_);
#pragma omp parallel num_threads(threads)
    {
      Workspace<Scalar> ws = net.make_workspace(1);
      Vec<Scalar> g(P);
#pragma omp for schedule(static)
      for (long i = 0; i < local; ++i) {
        const Index k = Index(i) / N_, n = Index(i) % N_;
        g.setZero();
        for (std::size_t u : uses)
          net.gradient_of_samples(u, theta, cache, cots[static_cast<std::size_t>(k)], n, n + 1, 1, g.data(), ws);
        U.row(row(k, n)) = g.template cast<double>().transpose();
      }
    }
    if (comm_) comm_->sum(U.data(), U.size());
    add_gram(G_, U, nullptr, threads);
  }
  G_ *= 1.0 / M_;
  G_.template triangularView<Eigen::StrictlyUpper>() = G_.transpose();
  form_s_ = seconds_since(t0);
}

template <typename Scalar>
Eigen::VectorXd FisherGram<Scalar>::times(const Vec<Scalar>& v) const {
  const Network<Scalar>& net = F_.model();
  if (v.size() != net.num_params()) detail::fail("U v: v has " + std::to_string(v.size()) + " entries, not P");
  Eigen::VectorXd out = Eigen::VectorXd::Zero(R_);
  const int threads = resolve_threads(F_.options().num_threads);
  const Index chunk = 32;
  const long chunks = static_cast<long>((N_ + chunk - 1) / chunk);
  const double scale = 1.0 / std::sqrt(M_);
#pragma omp parallel num_threads(threads)
  {
    Workspace<Scalar> ws = net.make_workspace(chunk);
    Vec<Scalar> f(TC_);
#pragma omp for schedule(static)
    for (long c = 0; c < chunks; ++c) {
      const Index c0 = Index(c) * chunk, n = std::min(chunk, N_ - c0);
      net.jvp(F_.parameters().data(), v.data(), F_.forward_cache(), c0, n, ws, nullptr);
      ConstMatMap<Scalar> Jv(ws.result(), TC_, n);
      for (Index j = 0; j < n; ++j)
        for (Index k = 0; k < K_; ++k) {
          factor(k, c0 + j, f.data());
          out(row(k, c0 + j)) = scale * f.template cast<double>().dot(Jv.col(j).template cast<double>());
        }
    }
  }
  if (comm_) comm_->sum(out.data(), R_);
  return out;
}

template <typename Scalar>
Vec<Scalar> FisherGram<Scalar>::transpose_times(const Eigen::VectorXd& w) const {
  const Network<Scalar>& net = F_.model();
  if (w.size() != R_) detail::fail("Uᵀw: w has " + std::to_string(w.size()) + " entries, not R");
  const double scale = 1.0 / std::sqrt(M_);
  F_.backprop_outputs([&](Index c0, Index n, MatMap<Scalar> gz) {
    Vec<Scalar> f(TC_);
    for (Index j = 0; j < n; ++j) {
      gz.col(j).setZero();
      for (Index k = 0; k < K_; ++k) {
        factor(k, c0 + j, f.data());
        gz.col(j) += Scalar(scale * w(row(k, c0 + j))) * f;
      }
    }
  });
  Vec<Scalar> out = Vec<Scalar>::Zero(net.num_params());
  std::vector<std::size_t> owners;
  for (std::size_t l = 0; l < net.num_layers(); ++l)
    if (net.layer(l).num_params() > 0 && net.tied_to(l) == l) owners.push_back(l);
  const int threads = resolve_threads(F_.options().num_threads);
  const Index chunk = 64;
#pragma omp parallel num_threads(threads)
  {
    Workspace<Scalar> ws = net.make_workspace(chunk);
#pragma omp for schedule(dynamic)
    for (long o = 0; o < static_cast<long>(owners.size()); ++o)
      for (std::size_t u : uses_of(net, owners[static_cast<std::size_t>(o)]))
        net.gradient_of_samples(u, F_.parameters().data(), F_.forward_cache(), F_.cotangents(), 0, N_, chunk,
                                out.data() + net.param_offset(u), ws);
  }
  if (comm_) comm_->sum(out.data(), out.size());
  return out;
}

template class FisherGram<float>;
template class FisherGram<double>;

}  // namespace natgrad
