#include <natgrad/core/random.h>
#include <natgrad/likelihood/likelihood.h>

#include "core/link_functions.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include "core/fail.h"

namespace natgrad {

const char* to_string(LikelihoodKind kind) {
  switch (kind) {
    case LikelihoodKind::categorical: return "categorical";
    case LikelihoodKind::gaussian: return "gaussian";
    case LikelihoodKind::bernoulli: return "bernoulli";
  }
  return "unknown";
}

const char* to_string(FisherKind kind) {
  switch (kind) {
    case FisherKind::exact: return "exact";
    case FisherKind::mc: return "mc";
    case FisherKind::empirical: return "empirical";
  }
  return "unknown";
}

LikelihoodKind likelihood_from_string(const std::string& name) {
  for (auto k : {LikelihoodKind::categorical, LikelihoodKind::gaussian, LikelihoodKind::bernoulli})
    if (name == to_string(k)) return k;
  detail::fail("unknown likelihood \"" + name + "\" (known: categorical, gaussian, bernoulli)");
}

FisherKind fisher_kind_from_string(const std::string& name) {
  for (auto k : {FisherKind::exact, FisherKind::mc, FisherKind::empirical})
    if (name == to_string(k)) return k;
  detail::fail("unknown Fisher kind \"" + name + "\" (known: exact, mc, empirical)");
}

Index counted_labels(const std::vector<int64_t>& labels) {
  return static_cast<Index>(labels.size()) - static_cast<Index>(std::count(labels.begin(), labels.end(), kIgnoreIndex));
}

template <typename Scalar>
void check_targets(LikelihoodKind kind, const Dataset<Scalar>& data, Index C, Index positions) {
  const Index N = data.size(), T = positions;
  const std::string per = T > 1 ? " per position" : "";
  if (kind == LikelihoodKind::categorical) {
    if (static_cast<Index>(data.labels.size()) != N * T)
      detail::fail("categorical likelihood needs " + std::to_string(N * T) + " class labels" +
                   (T > 1 ? " (" + std::to_string(N) + " samples × " + std::to_string(T) + " positions)" : "") +
                   ", got " + std::to_string(data.labels.size()));
    for (std::size_t k = 0; k < data.labels.size(); ++k)
      if ((data.labels[k] < 0 && data.labels[k] != kIgnoreIndex) || data.labels[k] >= C)
        detail::fail("class label " + std::to_string(data.labels[k]) + " of sample " + std::to_string(Index(k) / T) +
                     (T > 1 ? ", position " + std::to_string(Index(k) % T) : "") + " is outside [0, " +
                     std::to_string(C) + ")");
    return;
  }
  if (data.targets.rows() != C * T || data.targets.cols() != N)
    detail::fail(std::string(to_string(kind)) + " likelihood needs targets of shape [" + std::to_string(N) + ", " +
                 (T > 1 ? std::to_string(T) + ", " : "") + std::to_string(C) + "], got " + std::to_string(data.targets.cols()) +
                 " samples of " + std::to_string(data.targets.rows()) + " values" + per);
  if (!data.targets.allFinite()) detail::fail("targets contain NaN or Inf");
  if (kind == LikelihoodKind::bernoulli && (data.targets.minCoeff() < 0 || data.targets.maxCoeff() > 1))
    detail::fail("bernoulli targets must lie in [0, 1]");
}

using detail::sigmoid;
using detail::softmax;

namespace {
// y ~ Bernoulli(σ(z)) from draw `counter` of rng: exactly 0 or 1.
template <typename Scalar>
Scalar bernoulli_draw(const CounterRng& rng, Index counter, Scalar z) {
  return rng.uniform(static_cast<uint64_t>(counter)) < double(sigmoid(z)) ? Scalar(1) : Scalar(0);
}
}  // namespace

// Per-position outputs: a sample's T·C outputs are T blocks of C ([T, C] row-major), so a chunk of n samples
// is C × (n·T) with column j·T + t for position t of sample j; labels are [N, T] row-major and targets
// (T·C) × N, so column k of that view reads label (col0·T + k) and target column (col0·T + k) of a C × (N·T)
// view of the targets.
template <typename Scalar>
double nll_sum(LikelihoodKind kind, ConstMatMap<Scalar> Z0, const Dataset<Scalar>& data, Index col0, Index T) {
  const Index C = Z0.rows() / T, K = Z0.cols() * T, k0 = col0 * T;
  ConstMatMap<Scalar> Z(Z0.data(), C, K);
  double total = 0;
  for (Index j = 0; j < K; ++j) {
    const Scalar* z = Z.col(j).data();
    switch (kind) {
      case LikelihoodKind::categorical: {
        if (data.labels[static_cast<std::size_t>(k0 + j)] == kIgnoreIndex) break;  // counts for nothing
        const Scalar m = *std::max_element(z, z + C);
        double s = 0;
        for (Index c = 0; c < C; ++c) s += std::exp(double(z[c] - m));
        total += double(m) + std::log(s) - double(z[data.labels[static_cast<std::size_t>(k0 + j)]]);
        break;
      }
      case LikelihoodKind::gaussian:
        total += 0.5 * (ConstVecMap<Scalar>(data.targets.data() + (k0 + j) * C, C) - ConstVecMap<Scalar>(z, C))
                           .template cast<double>()
                           .squaredNorm();
        break;
      case LikelihoodKind::bernoulli: {
        const Scalar* y = data.targets.data() + (k0 + j) * C;
        for (Index c = 0; c < C; ++c) {
          const double x = z[c];
          total += std::max(x, 0.0) - x * double(y[c]) + std::log1p(std::exp(-std::abs(x)));
        }
        break;
      }
    }
  }
  return total;
}

template <typename Scalar>
void nll_gradient(LikelihoodKind kind, ConstMatMap<Scalar> Z0, const Dataset<Scalar>& data, Index col0,
                  MatMap<Scalar> G0, Index T) {
  const Index C = Z0.rows() / T, K = Z0.cols() * T, k0 = col0 * T;
  ConstMatMap<Scalar> Z(Z0.data(), C, K);
  MatMap<Scalar> G(G0.data(), C, K);
  for (Index j = 0; j < K; ++j) {
    Scalar* g = G.col(j).data();
    switch (kind) {
      case LikelihoodKind::categorical: {
        const int64_t y = data.labels[static_cast<std::size_t>(k0 + j)];
        if (y == kIgnoreIndex) {
          std::fill(g, g + C, Scalar(0));
          break;
        }
        softmax(Z.col(j).data(), C, g);
        g[y] -= Scalar(1);
        break;
      }
      case LikelihoodKind::gaussian: {
        const Scalar* y = data.targets.data() + (k0 + j) * C;
        for (Index c = 0; c < C; ++c) g[c] = Z(c, j) - y[c];
        break;
      }
      case LikelihoodKind::bernoulli: {
        const Scalar* y = data.targets.data() + (k0 + j) * C;
        for (Index c = 0; c < C; ++c) g[c] = sigmoid(Z(c, j)) - y[c];
        break;
      }
    }
  }
}

template <typename Scalar>
void sample_scores(LikelihoodKind kind, ConstMatMap<Scalar> Z, uint64_t seed, Index sample0, int draws,
                   MatMap<Scalar> S, Index T, const int64_t* labels) {
  const Index C = Z.rows() / T;
  Vec<Scalar> p(C);
  for (Index j = 0; j < Z.cols(); ++j) {
    const CounterRng rng(seed, rng_stream(RngDomain::mc_labels, static_cast<uint64_t>(sample0 + j)));
    for (Index t = 0; t < T; ++t) {
      if (labels && kind == LikelihoodKind::categorical && labels[j * T + t] == kIgnoreIndex) {
        // An ignored position: a zero score, no draw (the others' counters s·T + t do not depend on it).
        for (int s = 0; s < draws; ++s) VecMap<Scalar>(S.col(j * draws + s).data() + t * C, C).setZero();
        continue;
      }
      const Scalar* z = Z.col(j).data() + t * C;
      if (kind == LikelihoodKind::categorical) softmax(z, C, p.data());  // once per position, for every draw
      for (int s = 0; s < draws; ++s) {
        Scalar* out = S.col(j * draws + s).data() + t * C;
        const Index d = Index(s) * T + t;  // the draw's counter: (draw, position)
        switch (kind) {
          case LikelihoodKind::categorical: {  // y by inverse CDF; score onehot(y) − p
            const Index y = detail::sample_categorical(p.data(), C, rng.uniform(static_cast<uint64_t>(d)));
            for (Index c = 0; c < C; ++c) out[c] = -p[c];
            out[y] += Scalar(1);
            break;
          }
          case LikelihoodKind::gaussian:  // y = z + ε; score y − z = ε
            for (Index c = 0; c < C; ++c) out[c] = static_cast<Scalar>(rng.normal(static_cast<uint64_t>(d * C + c)));
            break;
          case LikelihoodKind::bernoulli:  // y_c ~ Bernoulli(σ(z_c)); score y − σ(z)
            for (Index c = 0; c < C; ++c) out[c] = bernoulli_draw(rng, d * C + c, z[c]) - sigmoid(z[c]);
            break;
        }
      }
    }
  }
}

template <typename Scalar>
Dataset<Scalar> sample_targets(LikelihoodKind kind, ConstMatMap<Scalar> Z, uint64_t seed, Index T) {
  // The same draws as sample_scores' draw 0, but the targets themselves: reading a label back from its score
  // onehot(y) − p ties when p_y rounds to 1, and (y − σ) + σ need not be exactly 0 or 1.
  const Index C = Z.rows() / T, N = Z.cols();
  Dataset<Scalar> out;
  Vec<Scalar> p(C);
  if (kind != LikelihoodKind::categorical) out.targets.resize(C * T, N);
  for (Index j = 0; j < N; ++j) {
    const CounterRng rng(seed, rng_stream(RngDomain::mc_labels, static_cast<uint64_t>(j)));
    for (Index t = 0; t < T; ++t) {
      const Scalar* z = Z.col(j).data() + t * C;
      switch (kind) {
        case LikelihoodKind::categorical:
          softmax(z, C, p.data());
          out.labels.push_back(detail::sample_categorical(p.data(), C, rng.uniform(static_cast<uint64_t>(t))));
          break;
        case LikelihoodKind::gaussian:
          for (Index c = 0; c < C; ++c)
            out.targets(t * C + c, j) = z[c] + static_cast<Scalar>(rng.normal(static_cast<uint64_t>(t * C + c)));
          break;
        case LikelihoodKind::bernoulli:
          for (Index c = 0; c < C; ++c) out.targets(t * C + c, j) = bernoulli_draw(rng, t * C + c, z[c]);
          break;
      }
    }
  }
  return out;
}

#define NATGRAD_INSTANTIATE(S)                                                                                   \
  template void check_targets<S>(LikelihoodKind, const Dataset<S>&, Index, Index);                             \
  template double nll_sum<S>(LikelihoodKind, ConstMatMap<S>, const Dataset<S>&, Index, Index);                 \
  template void nll_gradient<S>(LikelihoodKind, ConstMatMap<S>, const Dataset<S>&, Index, MatMap<S>, Index);   \
  template void sample_scores<S>(LikelihoodKind, ConstMatMap<S>, uint64_t, Index, int, MatMap<S>, Index,      \
                                 const int64_t*);                                                              \
  template Dataset<S> sample_targets<S>(LikelihoodKind, ConstMatMap<S>, uint64_t, Index);
NATGRAD_INSTANTIATE(float)
NATGRAD_INSTANTIATE(double)
#undef NATGRAD_INSTANTIATE

}  // namespace natgrad
